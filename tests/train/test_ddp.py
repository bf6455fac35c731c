"""Two gloo processes equal one process on the same global batch (loss and gradients)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from train.distributed import DistEnv, gather_with_grad, global_batches, local_rows
from train.trainer import OptimConfig, Trainer

from .training_fixtures import ToyRecipe

GLOBAL_BATCH = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_step(env: DistEnv, out_dir: str, ct: bool) -> dict:
    """One optimisation step of the toy recipe; returns the logged loss and the averaged gradients
    (``optimizer.step`` leaves ``.grad`` in place)."""
    torch.manual_seed(0)
    recipe = ToyRecipe(n=16, seed=0, ct=ct, dropout=0.0)
    cfg = OptimConfig(batch_size=GLOBAL_BATCH, lr=1e-3, max_steps=1, grad_clip=None, amp="none",
                      checkpoint_every=10**6, log_every=1, eval_every_epochs=0)
    trainer = Trainer(recipe, cfg, out_dir, env, seed=3, progress=False, stage="toy")
    batch = global_batches(recipe.n_train, GLOBAL_BATCH, epoch=0, seed=3)[0]
    numbers = trainer.train_step(batch)
    grads = {n: p.grad.detach().clone() for n, p in recipe.module.named_parameters() if p.grad is not None}
    return {"loss": numbers["loss"], "grads": grads}


def _worker(rank: int, world: int, port: int, out_dir: str, ct: bool) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    from train.distributed import init_distributed, shutdown

    env = init_distributed("cpu")
    try:
        result = _one_step(env, out_dir, ct)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        shutdown()


@pytest.mark.parametrize("ct", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["ctvit", "linear"])
def test_two_gloo_processes_equal_one(tmp_path, ct):
    torch.set_num_threads(1)
    single = _one_step(DistEnv(), str(tmp_path / "single"), ct)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), ct), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["loss"] == pytest.approx(single["loss"], rel=1e-5, abs=1e-6)
        assert set(got["grads"]) == set(single["grads"])
        for name, g in single["grads"].items():
            torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=1e-6, msg=f"gradient of {name}")
        assert any(float(g.abs().sum()) > 0 for g in got["grads"].values())


def test_global_batches_are_the_same_for_every_world_size():
    a = global_batches(21, 8, epoch=2, seed=5)
    assert a == global_batches(21, 8, epoch=2, seed=5)
    assert len(a) == 2 and all(len(b) == 8 for b in a)
    assert a != global_batches(21, 8, epoch=3, seed=5)
    rows0, off0 = local_rows(a[0], DistEnv(rank=0, world_size=2))
    rows1, off1 = local_rows(a[0], DistEnv(rank=1, world_size=2))
    assert rows0 + rows1 == a[0] and (off0, off1) == (0, 4)
    with pytest.raises(ValueError):
        local_rows(list(range(7)), DistEnv(rank=0, world_size=2))


def test_gather_is_identity_in_one_process():
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x, DistEnv()) is x
    assert not dist.is_initialized()
