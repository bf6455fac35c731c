"""Shared options and set-up of the training subcommands (teacher, student)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from engine.errors import DataError


def add_common(p, *, required: bool = True) -> None:
    """``required=False``: ``--config`` and ``--data`` may be left out (the command checks what it needs)."""
    p.add_argument("--config", required=required, help="training config: paper, cpu-default, smoke, or a JSON path")
    p.add_argument("--data", required=required, type=Path,
                   help="data folder with ct-rate/ and speech-rate/ (cache goes here)")
    p.add_argument("--out", required=True, type=Path, help="run folder (teacher/, student/, dictation/ inside)")
    p.add_argument("--resume", action="store_true", help="continue from the stage's last.pt")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: CUDA when present")
    p.add_argument("--max-steps", type=int, default=None, help="override the config's step budget")
    p.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def stage_config(cfg: dict, section: str, args) -> dict:
    """The config with command-line overrides applied to ``cfg[section]``."""
    sec = dict(cfg[section])
    if args.max_steps is not None:
        sec["max_steps"] = args.max_steps
    if args.epochs is not None:
        sec["epochs"] = args.epochs
        sec["max_steps"] = None if args.max_steps is None else args.max_steps
    return {**cfg, section: sec}


def check_fresh(folder: Path, resume: bool) -> None:
    if not resume and (folder / "last.pt").exists():
        raise DataError("a checkpoint is already here: pass --resume to continue or choose another --out", folder)


def record_timing(out: Path, stage: str, seconds: float, extra: dict | None = None) -> None:
    """Append one line to ``<out>/timings.jsonl`` (the README's time per stage comes from it)."""
    out.mkdir(parents=True, exist_ok=True)
    row = {"stage": stage, "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
           "pid": os.getpid(), **(extra or {})}
    with open(out / "timings.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
