"""The one validation gate for geometry and intensities: every volume ``engine.io.load_volume``
returns, whatever its format, has passed :func:`validate_volume`; the readers check the header
fields it cannot see (orientation cosines, positions, pixel spacing, rescale) with the ``check_*``
helpers below, before any arithmetic on them.

What cannot be repaired is a :class:`StudyError`: one line naming the file and the field
(``PixelSpacing 0\\0 ...``). What can be repaired is, with a :class:`SpeechCTWarning` saying what was
assumed. What is unusual but real is kept as it is:

=====================  ===========================================  ==========================================
aspect                 refused (exit 2)                             repaired or kept
=====================  ===========================================  ==========================================
shape                  fewer than 2 × 2 voxels in a slice           one slice: kept (the reader says so)
spacing                not finite, ≤ 0, < 0.01 mm or > 100 mm
orientation            cosines not finite, zero, parallel, or not   not unit length: normalised, warned;
                       orthogonal (> 1°); slice axis in the plane   gantry tilt / shear: kept (reader warns)
positions, origin      not finite or beyond 1 km
rescale                slope 0 or not finite; intercept not finite
intensities            no finite voxel; |HU| beyond 10⁶             some NaN/inf: set to -1024 HU, warned;
                                                                    padding (-2048, -3024, ...): kept;
                                                                    extended-HU metal: kept
field of view          —                                            under 100 mm across: noted in warnings
=====================  ===========================================  ==========================================

Padding is kept because ``prepare_ct`` clips to [-1000, 1000] HU: padding reads as air there,
which is what it is. Field names are the format's own (DICOM tags, NIfTI header fields).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from engine.errors import SpeechCTWarning, StudyError
from engine.volume import Volume

#: Voxel sizes outside this range (mm) are not a CT's.
MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 100.0
#: Positions (mm) beyond this are a corrupt header, not a patient.
MAX_POSITION_MM = 1e6
#: |HU| beyond this comes from a broken rescale (metal on an extended scale stays below ~65k).
MAX_ABS_HU = 1e6
#: In-plane cosines further than this from unit length are normalised with a warning.
UNIT_TOL = 1e-3
#: Row and column cosines may be this far from orthogonal (|cos| of their angle, ~1°).
ORTHOGONAL_TOL = 0.0175
#: Below this in-plane extent (mm) the field of view is too small for a chest CT: warned.
SMALL_FOV_MM = 100.0
#: HU given to NaN / infinite voxels of a partly non-finite volume (air).
NONFINITE_FILL_HU = -1024

_FIELDS = {
    "dicom": {"spacing": "PixelSpacing / slice positions (ImagePositionPatient)",
              "direction": "ImageOrientationPatient", "origin": "ImagePositionPatient",
              "intensity": "RescaleSlope/RescaleIntercept"},
    "nifti": {"spacing": "pixdim / affine", "direction": "affine (sform/qform)", "origin": "affine offset",
              "intensity": "scl_slope/scl_inter"},
}
_FIELDS["dicom-enhanced"] = _FIELDS["dicom"]
_GENERIC = {"spacing": "spacing", "direction": "direction", "origin": "origin", "intensity": "voxel values"}


def _fmt(values: Sequence[float]) -> str:
    return "\\".join(f"{float(v):g}" for v in values)


def _warn(volume_warnings: list[str] | None, message: str) -> None:
    warnings.warn(message, SpeechCTWarning, stacklevel=3)
    if volume_warnings is not None:
        volume_warnings.append(message)


# --------------------------------------------------------------------------- header fields


def check_spacing(values: Sequence[float], where, field: str) -> tuple[float, ...]:
    """Voxel sizes (mm) that make physical sense, else a StudyError naming ``field``."""
    out = tuple(float(v) for v in values)
    if not all(np.isfinite(v) and MIN_SPACING_MM <= v <= MAX_SPACING_MM for v in out):
        raise StudyError(f"{field} {_fmt(out)} is not a voxel size in mm (each must be between "
                         f"{MIN_SPACING_MM:g} and {MAX_SPACING_MM:g})", where)
    return out


def check_position(values: Sequence[float], where, field: str = "ImagePositionPatient") -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if not all(np.isfinite(v) and abs(v) <= MAX_POSITION_MM for v in out):
        raise StudyError(f"{field} {_fmt(out)} is not a position in mm", where)
    return out


def check_orientation(cosines: Sequence[float], where, notes: list[str],
                      field: str = "ImageOrientationPatient") -> tuple[np.ndarray, np.ndarray]:
    """(row direction, column direction) as unit vectors from 6 direction cosines.

    Not finite, zero, or not orthogonal: a StudyError naming ``field``. Orthogonal but not unit
    length: normalised, with a note appended to ``notes`` (the reader warns with its other notes)."""
    c = np.asarray([float(v) for v in cosines], dtype=np.float64)
    if c.shape != (6,) or not np.all(np.isfinite(c)):
        raise StudyError(f"{field} {_fmt(c)} is not six finite direction cosines", where)
    x, y = c[:3], c[3:]
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx < 1e-3 or ny < 1e-3:
        raise StudyError(f"{field} {_fmt(c)} holds a zero direction; the slice orientation is unknown", where)
    x, y = x / nx, y / ny
    cos = float(abs(x @ y))
    if cos > ORTHOGONAL_TOL:
        angle = float(np.degrees(np.arccos(min(cos, 1.0))))
        raise StudyError(f"{field} {_fmt(c)}: row and column directions are not orthogonal "
                         f"({angle:.1f}° apart)", where)
    if abs(nx - 1) > UNIT_TOL or abs(ny - 1) > UNIT_TOL:
        notes.append(f"{where}: {field} {_fmt(c)} is not unit length (|row| {nx:g}, |column| {ny:g}); normalised")
    return x, y


def check_pixel_format(bits_allocated: int, bits_stored: int, where) -> None:
    """Stored pixels a CT reader can hold: 8, 16 or 32 bits, BitsStored within BitsAllocated."""
    if bits_allocated not in (8, 16, 32):
        raise StudyError(f"BitsAllocated {bits_allocated} is not 8, 16 or 32: not a CT image's pixels", where)
    if not 1 <= bits_stored <= bits_allocated:
        raise StudyError(f"BitsStored {bits_stored} does not fit BitsAllocated {bits_allocated}", where)


def check_rescale(slope: float, intercept: float, where, field: str = "RescaleSlope/RescaleIntercept") -> None:
    slope, intercept = float(slope), float(intercept)
    if not np.isfinite(slope) or slope == 0.0 or not np.isfinite(intercept) or abs(intercept) > MAX_ABS_HU \
            or abs(slope) > MAX_ABS_HU:
        raise StudyError(f"{field} {slope:g}/{intercept:g} cannot map stored values to HU", where)


# --------------------------------------------------------------------------- the volume


def validate_volume(volume: Volume, path=None) -> Volume:
    """The gate (module doc): the volume, repaired where it can be, or a StudyError naming the file
    and the field. Warnings go to ``volume.warnings`` and are raised as SpeechCTWarning."""
    where = path if path is not None else volume.metadata.get("source")
    fields = _FIELDS.get(str(volume.metadata.get("format")), _GENERIC)
    z, y, x = volume.shape
    if y < 2 or x < 2 or z < 1:
        raise StudyError(f"is {z}x{y}x{x} voxels: too small for a CT image (a slice needs at least 2 x 2)", where)
    check_spacing(volume.spacing, where, fields["spacing"])
    d = np.asarray(volume.direction, dtype=np.float64)
    if not np.all(np.isfinite(d)) or np.any(np.abs(np.linalg.norm(d, axis=0) - 1) > 1e-2):
        raise StudyError(f"{fields['direction']} gives no unit axis directions ({np.round(d, 4).tolist()})", where)
    if abs(float(d[:, 0] @ d[:, 1])) > ORTHOGONAL_TOL:
        raise StudyError(f"{fields['direction']}: row and column directions are not orthogonal", where)
    if abs(float(np.linalg.det(d))) < 0.1:
        raise StudyError(f"{fields['direction']}: the slice axis lies (almost) in the slice plane", where)
    check_position(volume.origin, where, fields["origin"])
    volume = _check_intensities(volume, where, fields["intensity"])
    fov_y, fov_x = y * volume.spacing[1], x * volume.spacing[2]
    if min(fov_y, fov_x) < SMALL_FOV_MM:
        # a fact about the study, not a repair: said wherever the study's warnings are shown (info,
        # rank, the app) but not raised as a SpeechCTWarning (crops and test phantoms are legal input)
        message = (f"{where}: small field of view ({fov_y:.0f} x {fov_x:.0f} mm); the findings are made for "
                   "a whole chest (about 300-500 mm across)")
        if message not in volume.warnings:
            volume.warnings.append(message)
    return volume


def _note(volume: Volume, message: str) -> None:
    if message not in volume.warnings:
        _warn(volume.warnings, message)


def _check_intensities(volume: Volume, where, field: str) -> Volume:
    arr = volume.array
    if arr.dtype.kind not in "biuf":
        raise StudyError(f"voxel type {arr.dtype} is not a number type", where)
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        n_bad = int(arr.size - np.count_nonzero(finite))
        if n_bad == arr.size:
            raise StudyError(f"holds no finite voxel values (all NaN or infinite; {field})", where)
        if n_bad:
            arr = np.where(finite, arr, arr.dtype.type(NONFINITE_FILL_HU))
            volume = volume.replace(array=arr)
            _note(volume, f"{where}: {n_bad} of {arr.size} voxels are NaN or infinite; set to "
                          f"{NONFINITE_FILL_HU} HU (air)")
    if arr.dtype.kind == "f" or arr.dtype.itemsize > 2:
        lo, hi = float(arr.min()), float(arr.max())
        if max(abs(lo), abs(hi)) > MAX_ABS_HU:
            raise StudyError(f"voxel values reach {lo:g}..{hi:g} HU: not a CT ({field} wrong?)", where)
    return volume
