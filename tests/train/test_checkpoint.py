"""Checkpoints: atomic, pickle-free, and resuming gives the very next step an uninterrupted run takes."""

from __future__ import annotations

import shutil

import pytest
import torch

from engine.errors import DataError
from train import checkpoint as ckpt
from train.distributed import DistEnv
from train.trainer import OptimConfig, Trainer

from .training_fixtures import ToyRecipe


def _cfg(**kw) -> OptimConfig:
    base = dict(batch_size=4, lr=3e-3, max_steps=7, warmup_steps=2, schedule="cosine", grad_clip=0.5,
                amp="none", checkpoint_every=3, log_every=1, eval_every_epochs=0)
    return OptimConfig(**{**base, **kw})


def _losses(trainer: Trainer) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in trainer.history if "loss" in r}


def test_resume_continues_bit_for_bit(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    # Uninterrupted run; keep a copy of the checkpoint written at step 3 (mid-epoch: 16 rows / 4 = 4 batches).
    saved = Trainer.save

    def save_and_keep(self):
        path = saved(self)
        if self.step == 3:
            shutil.copytree(self.out, tmp_path / "at3")
        return path

    monkeypatch.setattr(Trainer, "save", save_and_keep)
    full = Trainer(ToyRecipe(seed=0), _cfg(), tmp_path / "full", DistEnv(), seed=1, progress=False, stage="toy")
    full.fit()
    monkeypatch.setattr(Trainer, "save", saved)

    # A fresh process-like start: a differently initialised recipe and a scrambled RNG, then resume.
    torch.manual_seed(999)
    resumed = Trainer(ToyRecipe(seed=7), _cfg(), tmp_path / "at3", DistEnv(), seed=1, resume=True,
                      progress=False, stage="toy")
    assert resumed.step == 3 and resumed.batch_in_epoch == 3
    resumed.fit()
    a, b = _losses(full), _losses(resumed)
    assert set(b) == {4, 5, 6, 7}
    for step in b:
        assert b[step] == a[step], f"step {step}: {b[step]} != {a[step]}"
    for (n, p), (_, q) in zip(full.recipe.module.state_dict().items(), resumed.recipe.module.state_dict().items()):
        assert torch.equal(p, q), n


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, {"step": 1, "model": {"w": torch.ones(2)}, "extra": {"a": [1, "x"]}})
    assert path.name == ckpt.LAST and not list(tmp_path.glob(".*.tmp"))
    got = ckpt.load_checkpoint(path)
    assert got["step"] == 1 and torch.equal(got["model"]["w"], torch.ones(2))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match="cannot read checkpoint"):
        ckpt.load_checkpoint(path)
    with pytest.raises(DataError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path / "absent.pt")


def test_resume_refuses_another_stage(tmp_path):
    t = Trainer(ToyRecipe(ct=False), _cfg(max_steps=1), tmp_path, DistEnv(), progress=False, stage="toy")
    t.fit()
    with pytest.raises(ValueError, match="stage"):
        Trainer(ToyRecipe(ct=False), _cfg(max_steps=2), tmp_path, DistEnv(), resume=True, progress=False,
                stage="other")
