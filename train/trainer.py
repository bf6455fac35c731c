"""The training loop shared by every recipe: sharding, AMP, clipping, schedules, checkpoints, logs.

A recipe (``train.recipes``) provides the model and the loss; this module provides the rest:

- global batches from a ``(seed, epoch)`` permutation, each rank taking its contiguous share
  (``train.distributed``), so 1 and N processes see the same global batches;
- Adam (CT-CLIP's optimiser) with a linear warm-up then a constant or cosine learning rate;
- AMP on CUDA only (bf16, or fp16 with a GradScaler); gradients averaged over ranks, then clipped;
- a full checkpoint (``train.checkpoint``) every ``checkpoint_every`` steps and at the end, with
  optimiser, scheduler, scaler and RNG state and the position in the epoch, so ``resume``
  continues with the very batch that came next (bit-for-bit on CPU);
- a JSONL metrics log (``metrics.jsonl``, one object per logged step and per validation) and a
  tqdm progress bar on rank 0.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from train import checkpoint as ckpt
from train.distributed import (
    DistEnv,
    average_gradients,
    barrier,
    global_batches,
    local_rows,
    mean_over_ranks,
)

AMP_MODES = ("none", "bf16", "fp16")
SCHEDULES = ("constant", "cosine")


@dataclass
class OptimConfig:
    """One stage's optimisation settings (a section of a ``train/configs/*.json``).

    ``epochs`` or ``max_steps`` bound the run (``max_steps`` wins when both are set);
    ``lr`` is the peak learning rate, reached after ``warmup_steps``; ``head_lr_mult`` multiplies
    it for parameters the recipe marks as freshly initialised heads (projections).
    """

    batch_size: int = 8
    lr: float = 1.25e-6
    head_lr_mult: float = 1.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int | None = None
    max_steps: int | None = None
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    amp: str = "bf16"
    checkpoint_every: int = 500
    log_every: int = 10
    eval_every_epochs: int = 1
    #: warm restarts: the run is split into ``cycles`` equal parts, each with its own warm-up and cosine, so
    #: that the first part of a 2-cycle run of 2n epochs is exactly the 1-cycle run of n epochs (which a
    #: finished run can then be resumed from with the longer config)
    cycles: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set epochs or max_steps")
        if self.cycles < 1:
            raise ValueError(f"cycles must be >= 1, got {self.cycles}")
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"bad batch_size/lr: {self.batch_size}, {self.lr}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OptimConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        extra = d.pop("extra")
        return {**d, **extra}


class Recipe(Protocol):
    """What the trainer needs from a recipe."""

    module: nn.Module  # every trainable parameter lives here (frozen parts may too, without grads)

    @property
    def n_train(self) -> int: ...

    def head_parameters(self) -> set[int]:
        """ids of parameters that get ``head_lr_mult``."""
        ...

    def loss(self, rows: list[int], offset: int, env: DistEnv) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of this rank's rows of a global batch (rows index the training set)."""
        ...

    def validate(self, env: DistEnv) -> dict[str, float]:
        """Validation numbers (called on every rank; may return {} on ranks > 0)."""
        ...

    def extra_state(self) -> dict[str, Any]: ...


def lr_lambda(cfg: OptimConfig, total_steps: int):
    cycle = max(1, total_steps // cfg.cycles)

    def factor(step: int) -> float:
        k = min(step // cycle, cfg.cycles - 1)  # this step's cycle; a remainder joins the last one
        length = cycle if k < cfg.cycles - 1 else total_steps - k * cycle
        step -= k * cycle
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, length - cfg.warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def autocast_context(env: DistEnv, amp: str):
    """bf16/fp16 autocast on CUDA; a no-op on CPU (CPU autocast is slower than fp32 here)."""
    if env.device.type != "cuda" or amp == "none":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


class Trainer:
    """Runs one recipe to ``cfg.max_steps`` / ``cfg.epochs`` in ``out`` (``last.pt``, ``metrics.jsonl``)."""

    def __init__(self, recipe: Recipe, cfg: OptimConfig, out: str | Path, env: DistEnv, *, seed: int = 0,
                 resume: bool = False, progress: bool = True, stage: str = "train"):
        self.recipe, self.cfg, self.env, self.seed = recipe, cfg, env, seed
        self.out = Path(out)
        self.stage = stage
        self.progress = progress and env.is_main
        self.params = [p for p in recipe.module.parameters() if p.requires_grad]
        heads = recipe.head_parameters()
        # a recipe may give some parameters their own multiplier (e.g. a tuned pretrained text layer)
        own = getattr(recipe, "lr_multipliers", dict)()
        groups = [{"params": [p for p in self.params if id(p) not in heads and id(p) not in own], "lr": cfg.lr},
                  {"params": [p for p in self.params if id(p) in heads and id(p) not in own],
                   "lr": cfg.lr * cfg.head_lr_mult}]
        for mult in sorted(set(own.values())):
            groups.append({"params": [p for p in self.params if own.get(id(p)) == mult], "lr": cfg.lr * mult})
        groups = [g for g in groups if g["params"]]
        # AdamW: weight decay decoupled from the gradient, as CT-CLIP trains. Adam's coupled L2 is divided
        # by each weight's gradient scale, so wherever the loss's gradient is small the decay wins at ~lr a
        # step: the session-11 teacher's weights all shrank below their init (docs/ct-encoder.md).
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.batches_per_epoch = recipe.n_train // cfg.batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(f"{recipe.n_train} training items cannot fill one batch of {cfg.batch_size}")
        if cfg.max_steps is not None:
            self.total_steps = int(cfg.max_steps)
        else:
            self.total_steps = int(cfg.epochs) * self.batches_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, self.total_steps))
        use_scaler = env.device.type == "cuda" and cfg.amp == "fp16"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.metrics_path = self.out / "metrics.jsonl"
        if resume:
            self._resume()

    # ----------------------------------------------------------------- state

    def state(self) -> dict[str, Any]:
        module_state = {k: v for k, v in self.recipe.module.state_dict().items()}
        return {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "model": module_state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": ckpt.rng_state(),
            "extra": {"stage": self.stage, "optim": self.cfg.to_dict(), "seed": self.seed,
                      "world_size": self.env.world_size, **self.recipe.extra_state()},
        }

    def save(self) -> Path | None:
        path = None
        if self.env.is_main:
            path = ckpt.save_checkpoint(self.out, self.state())
        barrier(self.env)
        return path

    def _resume(self) -> None:
        payload = ckpt.load_checkpoint(self.out / ckpt.LAST)
        if payload["extra"].get("stage") != self.stage:
            raise ValueError(f"checkpoint in {self.out} is from stage {payload['extra'].get('stage')!r}, "
                             f"not {self.stage!r}")
        self.recipe.module.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.scaler is not None and payload["scaler"]:
            self.scaler.load_state_dict(payload["scaler"])
        ckpt.set_rng_state(payload["rng"])
        self.step, self.epoch, self.batch_in_epoch = payload["step"], payload["epoch"], payload["batch_in_epoch"]

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    # ----------------------------------------------------------------- loop

    def train_step(self, batch: list[int]) -> dict[str, float]:
        """One optimisation step on a global batch (this rank's share of it)."""
        module = self.recipe.module
        module.train()
        rows, offset = local_rows(batch, self.env)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.env, self.cfg.amp):
            loss, parts = self.recipe.loss(rows, offset, self.env)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        average_gradients(self.params, self.env)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if self.cfg.grad_clip:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        out = {"loss": float(mean_over_ranks(loss.detach().float(), self.env))}
        for k, v in parts.items():
            out[k] = float(mean_over_ranks(torch.as_tensor(v, dtype=torch.float32), self.env))
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        return out

    def fit(self) -> dict[str, Any]:
        """Train to the end (or continue after ``resume``); returns a summary for provenance."""
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc=self.stage, unit="step", dynamic_ncols=True)
        t0 = time.perf_counter()
        last_eval: dict[str, float] = {}
        while self.step < self.total_steps:
            batches = global_batches(self.recipe.n_train, self.cfg.batch_size, self.epoch, self.seed)
            while self.batch_in_epoch < len(batches) and self.step < self.total_steps:
                t = time.perf_counter()
                numbers = self.train_step(batches[self.batch_in_epoch])
                self.batch_in_epoch += 1
                self.step += 1
                if self.step % self.cfg.log_every == 0 or self.step == 1 or self.step == self.total_steps:
                    self.log({"stage": self.stage, "step": self.step, "epoch": self.epoch,
                              "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t, 3),
                              **{k: round(v, 6) for k, v in numbers.items()}})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{numbers['loss']:.4f}", epoch=self.epoch)
                if self.step % self.cfg.checkpoint_every == 0:
                    self.save()
            if self.batch_in_epoch >= len(batches):
                self.epoch += 1
                self.batch_in_epoch = 0
                if self.cfg.eval_every_epochs and self.epoch % self.cfg.eval_every_epochs == 0:
                    last_eval = self.evaluate()
        if bar is not None:
            bar.close()
        if not last_eval or self.history[-1].get("kind") != "valid":
            last_eval = self.evaluate()
        self.save()
        train_losses = [r["loss"] for r in self.history if "loss" in r and r.get("kind") != "valid"]
        return {"steps": self.step, "epochs": self.epoch, "seconds": round(time.perf_counter() - t0, 1),
                "final_train_loss": train_losses[-1] if train_losses else None, "valid": last_eval}

    def evaluate(self) -> dict[str, float]:
        self.recipe.module.eval()
        with torch.no_grad():
            numbers = self.recipe.validate(self.env)
        if numbers:
            self.log({"stage": self.stage, "kind": "valid", "step": self.step, "epoch": self.epoch,
                      **{k: round(float(v), 6) for k, v in numbers.items()}})
        return numbers
