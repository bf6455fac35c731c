"""Small studies and a fake CT encoder for the library tests (no model needed)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from engine.volume import Volume

DIM = 32
SHAPE = (6, 12, 12)  # (z, y, x)


def make_volume(seed: int, shape: tuple[int, int, int] = SHAPE) -> Volume:
    """A distinct little 'CT' per seed: smooth random HU around a seed-dependent level."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    hu = -600 + 300 * noise / (noise.std() + 1e-9) + 50 * (seed % 7)
    return Volume(np.round(hu).astype(np.int16), spacing=(2.0, 1.0, 1.0), metadata={"modality": "CT"})


class FakeEncoder:
    """Deterministic projection of a 4×8×8 trilinear downsample of the HU array to ``dim`` (unit norm).

    ``delay`` seconds of sleep per call stand in for a slow model (the kill -9 test needs one).
    """

    def __init__(self, dim: int = DIM, delay: float = 0.0, seed: int = 1234):
        self.dim = dim
        self.delay = delay
        self.proj = np.random.default_rng(seed).normal(size=(4 * 8 * 8, dim))
        self.calls = 0

    def __call__(self, volume: Volume) -> np.ndarray:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        arr = volume.array.astype(np.float64) / 1000.0
        small = ndimage.zoom(arr, [t / s for t, s in zip((4, 8, 8), arr.shape)], order=1)
        small = (small - small.mean()).reshape(-1)
        v = small @ self.proj
        return (v / np.linalg.norm(v)).astype(np.float32)


def write_tree(root: Path, n_nifti: int, n_dicom: int, *, bad: bool = True) -> dict[str, int]:
    """A folder tree of studies: NIfTI files in patient folders, DICOM series folders, junk.

    Returns counts: {"nifti": n, "dicom": n, "bad": n}. Seeds: NIfTI 0.., DICOM 1000...
    """
    from engine.io import write_dicom_series, write_nifti

    for i in range(n_nifti):
        write_nifti(make_volume(i), root / f"patient_{i:03d}" / f"scan_{i}.nii.gz")
    for j in range(n_dicom):
        write_dicom_series(
            make_volume(1000 + j),
            root / f"dicom_{j:03d}" / "series1",
            seed=1000 + j,
            study_date="20240101",
            series_description=f"chest {j}",
        )
    n_bad = 0
    if bad:
        (root / "broken").mkdir(parents=True, exist_ok=True)
        (root / "broken" / "truncated.nii.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
        (root / "broken" / "notes.csv").write_text("a,b\n1,2\n")  # not an image name: ignored
        n_bad = 1
    return {"nifti": n_nifti, "dicom": n_dicom, "bad": n_bad}


def random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
