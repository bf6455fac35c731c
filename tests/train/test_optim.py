"""The learning-rate schedule: warm-up, cosine, and warm restarts (``cycles``), whose first cycle must be
exactly the shorter run so that a finished run can be resumed with the longer config."""

import math

import pytest

from train.trainer import OptimConfig, lr_lambda


def factors(total: int, **kw) -> list[float]:
    cfg = OptimConfig(lr=1e-3, max_steps=total, warmup_steps=40, schedule="cosine", min_lr_ratio=0.05, **kw)
    f = lr_lambda(cfg, total)
    return [f(s) for s in range(total)]


def test_one_cycle_is_warm_up_then_cosine_to_the_floor():
    f = factors(632)
    assert f[0] == pytest.approx(1 / 40) and f[39] == pytest.approx(1.0)
    assert f[40] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 591 / 592)))
    assert all(a >= b for a, b in zip(f[40:], f[41:]))


def test_two_cycles_repeat_the_one_cycle_run_and_restart_with_a_warm_up():
    one, two = factors(632), factors(1264, cycles=2)
    assert two[:632] == one  # resuming the finished 632-step run with the 2-cycle config continues it exactly
    assert two[632:] == one
    assert two[632] == pytest.approx(1 / 40)


def test_a_remainder_joins_the_last_cycle():
    f = factors(101 * 3 + 2, cycles=3)
    assert f[:101] == factors(101) and f[101:202] == factors(101)
    assert f[202:] == factors(103)


def test_cycles_must_be_positive():
    with pytest.raises(ValueError, match="cycles"):
        OptimConfig(lr=1e-3, max_steps=10, cycles=0)


def test_weight_decay_is_decoupled_from_the_gradient():
    """With no loss gradient a weight decays by lr·wd of itself per step (AdamW), not by ~lr whatever its
    size (Adam's coupled L2, normalised by the gradient it makes)."""
    import torch

    from train.trainer import Trainer

    class Zero:
        def __init__(self):
            self.module = torch.nn.Linear(4, 4)
            self.n_train = 8

        def head_parameters(self):
            return set()

        def loss(self, rows, offset, env):
            return (self.module.weight * 0).sum(), {}

        def validate(self, env):
            return {}

        def extra_state(self):
            return {}

    import tempfile

    from train.distributed import DistEnv

    recipe = Zero()
    with torch.no_grad():
        recipe.module.weight.fill_(0.05)
    cfg = OptimConfig(lr=1e-2, max_steps=10, weight_decay=0.1, grad_clip=None, batch_size=4, eval_every_epochs=0,
                      checkpoint_every=1000)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(recipe, cfg, out, DistEnv(), progress=False)
        for _ in range(10):
            trainer.train_step([0, 1, 2, 3])
    assert float(recipe.module.weight.detach().mean()) == pytest.approx(0.05 * (1 - 1e-2 * 0.1) ** 10, rel=1e-5)
