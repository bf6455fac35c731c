"""RAD-ChestCT-style external sets use 16 labels: no mosaic attenuation, and the two calcifications
merged (by max) into one ``Calcification`` (docs/design.md §3). Evaluation only, so it lives in train."""

from __future__ import annotations

import numpy as np
import torch

from engine.labels import LABELS

RAD_CHESTCT_DROP = ("Mosaic attenuation pattern",)
RAD_CHESTCT_MERGE = {"Calcification": ("Arterial wall calcification", "Coronary artery wall calcification")}


def rad_chestct_labels(labels: tuple[str, ...] | list[str] = LABELS) -> tuple[str, ...]:
    """The 16 RAD-ChestCT-style names: Mosaic dropped, the two calcifications become one
    ``Calcification`` at the place of Arterial wall calcification (CT-CLIP's external order)."""
    merged = RAD_CHESTCT_MERGE["Calcification"]
    out = []
    for name in labels:
        if name in RAD_CHESTCT_DROP or name == merged[1]:
            continue
        out.append("Calcification" if name == merged[0] else name)
    return tuple(out)


def to_rad_chestct(values, labels: tuple[str, ...] | list[str] = LABELS):
    """``[..., 18]`` scores or 0/1 labels → ``[..., 16]`` (drop Mosaic, calcifications merged by max).

    Works on numpy arrays and torch tensors; ``labels`` names the last axis.
    """
    labels = list(labels)
    a, b = (labels.index(n) for n in RAD_CHESTCT_MERGE["Calcification"])
    keep = [i for i, n in enumerate(labels) if n not in RAD_CHESTCT_DROP and i != b]
    if isinstance(values, torch.Tensor):
        out = values[..., keep].clone()
        out[..., keep.index(a)] = torch.maximum(values[..., a], values[..., b])
        return out
    values = np.asarray(values)
    out = values[..., keep].copy()
    out[..., keep.index(a)] = np.maximum(values[..., a], values[..., b])
    return out
