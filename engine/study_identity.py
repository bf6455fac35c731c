"""Study identity beside :class:`engine.volume.Volume`: the key one series is known by (in the library,
the embedding cache and every JSON output) and a cheap fingerprint of its voxels.

A DICOM series is its SeriesInstanceUID; a NIfTI file, or a series without a UID, is a content hash of
its voxels, so one image gets one key wherever its file lives.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from engine.volume import Volume


def content_uid(volume: Volume) -> str:
    """``"sha256:<hex>"`` of the voxels (dtype, shape, bytes) and spacing: the key of a series without a UID."""
    arr = np.ascontiguousarray(volume.array)
    digest = _geometry_digest(volume)
    digest.update(memoryview(arr).cast("B"))
    return "sha256:" + digest.hexdigest()


def _geometry_digest(volume: Volume) -> Any:
    """sha256 started with the voxels' dtype, shape and spacing (what the pixel bytes alone do not say)."""
    arr = volume.array
    return hashlib.sha256(f"{arr.dtype.str}|{arr.shape}|{tuple(round(s, 6) for s in volume.spacing)}|".encode())


def voxel_fingerprint(volume: Volume, samples: int = 1 << 20) -> str:
    """A cheap content check: sha256 of dtype, shape, spacing and an evenly strided sample of at most
    ``samples`` voxels (a tenth of the time of hashing every voxel, docs/performance.md). It catches a series
    rewritten under its old UID, which a UID-only key would answer from a stale cache."""
    arr = volume.array.reshape(-1)
    digest = _geometry_digest(volume)
    digest.update(np.ascontiguousarray(arr[:: max(1, arr.size // samples)]).tobytes())
    return digest.hexdigest()[:16]


def study_key(volume: Volume, series: str | None = None) -> str:
    """The dedupe key of ``volume``: ``series`` (a SeriesInfo uid) when given, else its SeriesInstanceUID,
    else (NIfTI, or DICOM without a UID) a content hash of its voxels, so one image gets one row wherever
    its file lives."""
    if series and volume.metadata.get("format") != "nifti":
        return series
    uid = volume.metadata.get("series_uid")
    if uid and volume.metadata.get("format") != "nifti":
        return str(uid)
    return content_uid(volume)
