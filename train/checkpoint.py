"""Training checkpoints: full (never sharded) state, written atomically, read without pickles.

A checkpoint is one ``torch.save`` file holding plain containers of tensors, numbers and
strings only, so it loads with ``torch.load(weights_only=True)``::

    {"format": "speechct-train-checkpoint", "version": 1,
     "step": int, "epoch": int, "batch_in_epoch": int,
     "model": {name: tensor},           # the recipe's trainable state (full tensors)
     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
     "scaler": GradScaler state or {}, "rng": {"torch": ByteTensor, "cuda": [ByteTensor]},
     "extra": {...}}                    # recipe-specific JSON-able values (config, data hash)

Written to a temporary file in the same folder, fsynced, then ``os.replace``d over
``last.pt``: a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.atomic import atomic_write
from engine.errors import DataError

FORMAT = "speechct-train-checkpoint"
VERSION = 1
LAST = "last.pt"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: str | Path, payload: dict[str, Any], name: str = LAST) -> Path:
    """Atomically write ``payload`` (see module docstring) as ``folder/name``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    final = folder / name
    with atomic_write(final, fsync=True) as fh:
        torch.save(payload, fh)
    return final


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (DataError if it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no checkpoint to resume from", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file
        raise DataError(f"cannot read checkpoint: {str(exc).splitlines()[0]}", path) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError("not a speechct-train checkpoint", path)
    if payload.get("version") != VERSION:
        raise DataError(f"checkpoint version {payload.get('version')} is not supported (expected {VERSION})", path)
    return payload
