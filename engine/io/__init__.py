"""Reading CT studies: one entry point for DICOM folders/files and NIfTI files.

``open_study(path) -> StudySource`` (:mod:`engine.io.study`) walks a path once and reads each header
once; its ``.series`` and ``.load(series)`` answer from that. ``load_volume(path, series=None)`` and
``list_series(path)`` are one call of it each. What the files *are* is read from their first bytes
(:mod:`engine.io.sniff`), not from their names, and handed over to :func:`read_dicom` or :func:`read_nifti`. Every way a path can be unusable (missing,
empty folder, unreadable, unknown format, series not found) is a
:class:`~engine.errors.StudyError` with one line naming the file and the problem.

The readers and writers are re-exported lazily (PEP 562), so that importing
``engine.io.series`` or ``engine.io.dicom_write`` does not import nibabel and pydicom's
pixel stack, and vice versa.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from engine.io.series import SeriesInfo
from engine.io.study import StudySource, open_study
from engine.volume import Volume

__all__ = [
    "SeriesInfo",
    "StudySource",
    "list_series",
    "load_volume",
    "open_study",
    "read_dicom",
    "read_nifti",
    "write_dicom_series",
    "write_nifti",
]

_LAZY = {
    "read_dicom": "engine.io.dicom",
    "list_dicom_series": "engine.io.dicom",
    "write_dicom_series": "engine.io.dicom_write",
    "read_nifti": "engine.io.nifti",
    "write_nifti": "engine.io.nifti",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engine.io' has no attribute {name!r}")


def load_volume(
    path: str | Path,
    series: str | None = None,
    *,
    slope: float | None = None,
    intercept: float | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> Volume:
    """Read the CT volume at ``path``: a DICOM folder or file, or a NIfTI file (``.nii[.gz]``).

    ``series`` picks one series: a SeriesInstanceUID (with the reader's split suffix, see
    :class:`SeriesInfo`) for DICOM, a file path or name for NIfTI. Without it, a folder's
    reader chooses (DICOM: see :func:`engine.io.dicom.read_dicom`; several NIfTI files: the
    one with most voxels, with a warning). ``slope``/``intercept``/``spacing`` ((sz, sy, sx) mm)
    are CT-RATE's metadata overrides, NIfTI only (see :func:`engine.io.nifti.read_nifti`).

    Every volume passes the validation gate (:func:`engine.io.validate.validate_volume`): geometry
    and intensities that make no physical sense are a StudyError naming the file and the field.
    """
    return open_study(path).load(series, slope=slope, intercept=intercept, spacing=spacing)


def list_series(path: str | Path) -> list[SeriesInfo]:
    """Every series at ``path`` (headers only, no pixel data): DICOM series and NIfTI files."""
    return open_study(path).series
