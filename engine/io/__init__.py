"""Reading CT studies: one entry point for DICOM folders/files and NIfTI files.

``load_volume(path, series=None)`` and ``list_series(path)`` look at what the files *are*
(their first bytes, see :mod:`engine.io.sniff`), not at their names, and hand over to
:func:`read_dicom` or :func:`read_nifti`. Every way a path can be unusable (missing,
empty folder, unreadable, unknown format, series not found) is a
:class:`~engine.errors.StudyError` with one line naming the file and the problem.

The readers and writers are re-exported lazily (PEP 562), so that importing
``engine.io.series`` or ``engine.io.dicom_write`` does not import nibabel and pydicom's
pixel stack, and vice versa.
"""

from __future__ import annotations

import importlib
import os
import stat
import warnings
from pathlib import Path

from engine.errors import SpeechCTWarning, StudyError
from engine.io.series import SeriesInfo
from engine.io.sniff import FolderScan, describe, one_line, read_head, scan_folder, sniff
from engine.volume import Volume

__all__ = [
    "SeriesInfo",
    "list_series",
    "load_volume",
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


def _stat(path: Path) -> os.stat_result:
    """os.stat with every OS error turned into a one-line StudyError."""
    try:
        return os.stat(path)
    except FileNotFoundError as exc:
        raise StudyError("does not exist", path) from exc
    except PermissionError as exc:
        raise StudyError("permission denied", path) from exc
    except OSError as exc:
        raise StudyError(f"cannot be accessed ({one_line(exc.strerror or exc)})", path) from exc


def _no_files_error(folder: Path, scan: FolderScan) -> StudyError:
    if scan.n_files == 0:
        return StudyError("folder is empty (no files, hidden ones ignored)", folder)
    if scan.other:
        example = scan.other[0]
        what = describe(read_head(example))
        return StudyError(
            f"no DICOM or NIfTI files in the folder ({scan.n_files} file(s), e.g. {example.name}: {what})", folder
        )
    example, why = scan.unreadable[0]
    return StudyError(f"no file in the folder can be read ({example.name}: {why})", folder)


def _nifti_matches(series: str, path: Path) -> bool:
    from engine.io.nifti import strip_nifti_suffix

    return series in (str(path), path.name, strip_nifti_suffix(path.name), os.path.abspath(path))


def _choose_nifti(files: list[Path], series: str | None, folder: Path) -> tuple[Path, str | None]:
    """(file, warning or None) among several NIfTI files of one folder."""
    if series is not None:
        for f in files:
            if _nifti_matches(series, f):
                return f, None
        names = ", ".join(f.name for f in files[:5])
        raise StudyError(f"series {series!r} not found; NIfTI files here: {names}", folder)
    if len(files) == 1:
        return files[0], None
    # Largest first, then by path, so the choice never depends on directory listing order.
    chosen = min(files, key=lambda f: (-_n_voxels(f), str(f)))
    message = (
        f"{folder}: folder holds {len(files)} NIfTI volumes; chose {chosen.name} (most voxels); "
        "pick another with series=<file name>"
    )
    return chosen, message


def _n_voxels(path: Path) -> int:
    from engine.io.nifti import nifti_series_info

    z, y, x = nifti_series_info(path).shape
    return z * y * x


def _check_no_overrides(path: Path, slope, intercept, spacing) -> None:
    if slope is not None or intercept is not None or spacing is not None:
        raise ValueError(
            f"{path}: slope/intercept/spacing overrides apply to NIfTI only; DICOM carries its own"
        )


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
    from engine.io.validate import validate_volume

    volume = _load_volume(path, series, slope=slope, intercept=intercept, spacing=spacing)
    return validate_volume(volume)


def _load_volume(path, series, *, slope, intercept, spacing) -> Volume:
    from engine.io.nifti import read_nifti

    path = Path(path)
    try:
        st = _stat(path)
        if stat.S_ISDIR(st.st_mode):
            scan = scan_folder(path)
            if scan.dicom:
                if series is not None:
                    for f in scan.nifti:
                        if _nifti_matches(series, f):
                            return read_nifti(f, slope=slope, intercept=intercept, spacing=spacing)
                _check_no_overrides(path, slope, intercept, spacing)
                return _read_dicom(path, series)
            if scan.nifti:
                chosen, message = _choose_nifti(scan.nifti, series, path)
                volume = read_nifti(chosen, slope=slope, intercept=intercept, spacing=spacing)
                if message:
                    warnings.warn(message, SpeechCTWarning, stacklevel=2)
                    volume.warnings.append(message)
                return volume
            raise _no_files_error(path, scan)
        kind = sniff(path)
        if kind == "dicom":
            _check_no_overrides(path, slope, intercept, spacing)
            return _read_dicom(path, series)
        if series is not None and not _nifti_matches(series, path):
            raise StudyError(f"series {series!r} not found (a NIfTI file holds one volume, uid = its path)", path)
        return read_nifti(path, slope=slope, intercept=intercept, spacing=spacing)
    except OSError as exc:  # a reader let one through: still one line naming the file
        raise StudyError(f"cannot be read ({one_line(exc.strerror or exc)})", exc.filename or path) from exc


def list_series(path: str | Path) -> list[SeriesInfo]:
    """Every series at ``path`` (headers only, no pixel data): DICOM series and NIfTI files."""
    from engine.io.nifti import nifti_series_info

    path = Path(path)
    try:
        st = _stat(path)
        if stat.S_ISDIR(st.st_mode):
            scan = scan_folder(path)
            if not scan.dicom and not scan.nifti:
                raise _no_files_error(path, scan)
            found = _list_dicom(path) if scan.dicom else []
            found += [nifti_series_info(f) for f in scan.nifti]
            return found
        if sniff(path) == "dicom":
            return _list_dicom(path)
        return [nifti_series_info(path)]
    except OSError as exc:
        raise StudyError(f"cannot be read ({one_line(exc.strerror or exc)})", exc.filename or path) from exc


def _read_dicom(path: Path, series: str | None) -> Volume:
    from engine.io.dicom import read_dicom

    return read_dicom(path, series)


def _list_dicom(path: Path) -> list[SeriesInfo]:
    from engine.io.dicom import list_dicom_series

    return list_dicom_series(path)
