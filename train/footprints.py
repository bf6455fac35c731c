"""Where each finding lies in a synthetic study: a dense training target for the CT encoder.

The phantom generator knows which voxels each finding changed (:func:`train.synth.phantom.make_phantom`
with ``with_footprints``). Synthesis stores them beside the CT-RATE tree, one file per volume::

    <ct-rate root>/dataset/footprints/<volume stem>.npz

holding ``labels`` (the present findings), ``fraction`` (uint8, covered fraction × 255 of each block of
voxels, one grid per label), ``spacing`` (z, y, x mm) and ``origin`` (LPS x, y, z mm of the first block
centre). The teacher's optional dense loss (``teacher.dense_aux_weight``) turns them into per-token
targets on the encoder's token grid (:func:`token_targets`) through the very resampling the CT goes
through (:func:`engine.preprocess.prepare_ct`), so target and token cover the same tissue.

This is a training aid of the synthetic teacher only: real CT-RATE has no such file, the engine never
reads one, and bundles do not carry the dense head.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np

from engine.atomic import atomic_write
from engine.labels import LABELS
from engine.preprocess import PreprocessSpec, prepare_ct
from engine.volume import Volume

FOOTPRINT_DIR = Path("dataset") / "footprints"
#: A token is a finding's target when the finding covers at least this fraction of some block in it.
TOKEN_MIN_FRACTION = 0.1


def footprint_path(root: str | Path, volume_name: str) -> Path:
    stem = volume_name[: -len(".nii.gz")] if volume_name.endswith(".nii.gz") else Path(volume_name).stem
    return Path(root) / FOOTPRINT_DIR / f"{stem}.npz"


def write_footprints(path: str | Path, footprints: dict[str, Volume]) -> None:
    """One volume's footprints, written atomically (an interrupted write leaves no file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = [lab for lab in LABELS if lab in footprints]
    first = next(iter(footprints.values()), None)
    shape = first.shape if first is not None else (0, 0, 0)
    fraction = np.zeros((len(labels), *shape), np.uint8)
    for i, lab in enumerate(labels):
        fraction[i] = np.rint(np.clip(footprints[lab].array, 0.0, 1.0) * 255)
    buf = io.BytesIO()
    np.savez_compressed(buf, labels=np.array(labels, dtype=str), fraction=fraction,
                        spacing=np.array(first.spacing if first else (1.0, 1.0, 1.0)),
                        origin=np.array(first.origin if first else (0.0, 0.0, 0.0)))
    with atomic_write(path) as fh:
        fh.write(buf.getvalue())


def read_footprints(path: str | Path) -> dict[str, Volume]:
    """label -> Volume of covered fractions (0..1) for the findings present in one study."""
    with np.load(path) as z:
        labels = [str(x) for x in z["labels"]]
        fraction, spacing, origin = z["fraction"], tuple(z["spacing"]), tuple(z["origin"])
    return {lab: Volume(fraction[i].astype(np.float32) / 255.0, spacing=spacing, origin=origin)
            for i, lab in enumerate(labels)}


def token_targets(footprints: dict[str, Volume], spec: PreprocessSpec,
                  tubelet: tuple[int, int, int]) -> np.ndarray:
    """``(18, t, h, w)`` float32 0/1: does finding j cover a token of the encoder's grid.

    Each footprint is resampled onto the encoder's input grid exactly as the CT is (``prepare_ct``
    with the spec's geometry; fractions instead of HU, padding 0), then a token is positive when its
    largest covered fraction reaches :data:`TOKEN_MIN_FRACTION`. ``tubelet`` is the token's size in
    input voxels (slices, rows, columns).
    """
    geometry = dataclasses.replace(spec, hu_window=(0.0, 1.0), scale_divisor=1.0, pad_value=0.0,
                                   clip_before_resample=False)
    grid = tuple(n // p for n, p in zip(spec.shape, tubelet))
    out = np.zeros((len(LABELS), *grid), np.float32)
    for lab, vol in footprints.items():
        frac = prepare_ct(vol, geometry)
        t, h, w = grid
        pz, py, px = tubelet
        blocks = frac[: t * pz, : h * py, : w * px].reshape(t, pz, h, py, w, px)
        out[LABELS.index(lab)] = blocks.max(axis=(1, 3, 5)) >= TOKEN_MIN_FRACTION
    return out
