"""DICOM CT reading: folders (recursive) or single files, classic or Enhanced multi-frame.

Public calls: :func:`read_dicom`, :func:`list_dicom_series`, :func:`scan_dicom`.

Reading is two passes: headers of every file (``engine.io.dicom_scan``), split into series with
geometry worked out from headers (``engine.io.dicom_series``), then the pixels of the chosen
series only (``engine.io.dicom_pixels``). The result is a :class:`~engine.volume.Volume` in
LPS with array order (z, y, x) = (slice along the normal, row, column), HU as int16 when the
rescale is exact in int16, else float32. Irregular geometry (non-uniform spacing, missing or
duplicated slices, gantry tilt, several series) is reported with ``SpeechCTWarning`` and in
``Volume.warnings``, never silently corrected.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import SpeechCTWarning, StudyError
from engine.io.dicom_pixels import read_pixels
from engine.io.dicom_scan import DicomHeaders, scan
from engine.io.dicom_series import DicomSeries, split_series
from engine.io.series import SeriesInfo
from engine.io.validate import check_pixel_format, check_rescale
from engine.volume import SAFE_METADATA_KEYS, Volume

log = logging.getLogger(__name__)

#: How many other series a "several series" warning names before "…".
_MAX_NAMED = 5


@dataclass
class DicomStudy:
    """Everything found under one path: loadable series plus what was skipped, and why."""

    path: str
    series: list[DicomSeries] = field(default_factory=list)
    n_files: int = 0
    non_dicom: list[str] = field(default_factory=list)
    non_image: list[tuple[str, str]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def infos(self) -> list[SeriesInfo]:
        return [s.info() for s in self.series]


def scan_dicom(path: str | Path, *, workers: int | None = None, files: list | None = None,
               n_files: int | None = None, non_dicom: list | None = None) -> DicomStudy:
    """Headers of every file under ``path`` split into series; no pixel data is read. ``files``: only
    these (a walk already made, :func:`engine.io.study.open_study`); ``non_dicom`` the walk's other files.

    Raises StudyError when ``path`` does not exist, or when it is a single file that is not a
    readable DICOM image (the message names the problem).
    """
    found: DicomHeaders = scan(path, workers, files=files, n_files=n_files)
    if non_dicom:
        found.non_dicom = sorted([*found.non_dicom, *(str(f) for f in non_dicom)])
    study = DicomStudy(
        path=str(path),
        series=split_series(found.slices),
        n_files=found.n_files,
        non_dicom=found.non_dicom,
        non_image=found.non_image,
        unreadable=found.unreadable,
    )
    if Path(path).is_file() and not study.series:
        raise _nothing_error(study)
    log.debug(
        "%s: %d files, %d series, %d non-DICOM, %d non-image, %d unreadable",
        path,
        study.n_files,
        len(study.series),
        len(study.non_dicom),
        len(study.non_image),
        len(study.unreadable),
    )
    return study


def list_dicom_series(path: str | Path, *, workers: int | None = None) -> list[SeriesInfo]:
    """Every image series under ``path`` (any modality, localizers included), headers only.

    Sorted by SeriesNumber then uid; an empty list when a folder holds no DICOM image.
    """
    return scan_dicom(path, workers=workers).infos()


def read_dicom(path: str | Path, series: str | None = None, *, workers: int | None = None) -> Volume:
    """Load one CT series under ``path`` (a folder, searched recursively, or a single file).

    ``series`` is a :attr:`SeriesInfo.uid` from :func:`list_dicom_series` (a plain
    SeriesInstanceUID also works when it names one stack). By default the CT series with the
    most slices is loaded (localizers only when nothing else exists) and the others are named
    in a warning. ``workers`` sizes the thread pools (default: up to 8, by CPU count).

    Raises StudyError (one line naming the file and the problem) for non-CT series, files
    without pixel data, truncated or undecodable files and folders without any CT image.
    """
    return read_dicom_series(scan_dicom(path, workers=workers), series, workers=workers)


def read_dicom_series(study: DicomStudy, series: str | None = None, *, workers: int | None = None) -> Volume:
    """:func:`read_dicom` on headers already read (:func:`scan_dicom`): only the chosen series' pixels
    are read now."""
    path = study.path
    if not study.series:
        raise _nothing_error(study)
    chosen = _select(study, series)
    if chosen.error is not None:
        raise chosen.error
    if chosen.modality != "CT":
        raise StudyError(
            f"modality {chosen.modality or 'unknown'}, not CT ({_sop_name(chosen)})", _where(study, chosen)
        )
    if chosen.first.samples_per_pixel != 1:
        raise StudyError(f"colour image ({chosen.first.photometric}), not a CT slice", chosen.first.path)

    notes = list(chosen.warnings)
    others = [s for s in study.series if s is not chosen]
    if others:
        named = "; ".join(s.summary() for s in others[:_MAX_NAMED]) + (
            "; …" if len(others) > _MAX_NAMED else ""
        )
        notes.append(f"{path}: {len(study.series)} series found; loaded {chosen.summary()}; others: {named}")
    if study.unreadable:
        bad_path, why = study.unreadable[0]
        notes.append(
            f"{path}: {len(study.unreadable)} DICOM file(s) could not be read, e.g. {bad_path}: {why}"
        )

    for h in chosen.slices:  # the validation gate's header checks, before any pixel is read
        check_pixel_format(h.bits_allocated, h.bits_stored, h.path)
        if not h.has_modality_lut:
            check_rescale(h.slope, h.intercept, h.path)
    array = read_pixels(chosen, workers)
    volume = Volume(
        array=array,
        spacing=chosen.spacing,
        origin=chosen.origin,
        direction=chosen.direction,
        metadata=_metadata(chosen, path),
        warnings=notes,
    )
    for note in notes:
        warnings.warn(note, SpeechCTWarning, stacklevel=2)
    return volume


def _select(study: DicomStudy, wanted: str | None) -> DicomSeries:
    if wanted is not None:
        exact = [s for s in study.series if s.uid == wanted]
        if exact:
            return exact[0]
        stacks = [s for s in study.series if s.uid.startswith(wanted + ".")]
        if len(stacks) == 1:
            return stacks[0]
        available = ", ".join(s.uid for s in study.series[:10])
        if stacks:
            raise StudyError(
                f"series {wanted} has several stacks; choose one of {', '.join(s.uid for s in stacks)}",
                study.path,
            )
        raise StudyError(f"no series {wanted}; available: {available}", study.path)
    ct = [s for s in study.series if s.modality == "CT"]
    candidates = [s for s in ct if not s.is_localizer] or ct
    if not candidates:
        if len(study.series) == 1:
            only = study.series[0]
            raise StudyError(
                f"modality {only.modality or 'unknown'}, not CT ({_sop_name(only)})", _where(study, only)
            )
        found = "; ".join(s.summary() for s in study.series[:_MAX_NAMED])
        raise StudyError(f"no CT series (found {found})", study.path)
    # max() keeps the first of equals, and series are sorted by SeriesNumber, then uid.
    return max(candidates, key=lambda s: len(s.slices))


def _sop_name(series: DicomSeries) -> str:
    from pydicom.uid import UID  # pydicom is imported only where it is needed (engine.io.dicom_plain_header)

    sop = series.first.sop_class
    return UID(sop).name if sop else "no SOP class"


def _where(study: DicomStudy, series: DicomSeries) -> str:
    """The single file when there is only one, else the folder."""
    return series.first.path if study.n_files == 1 or len(series.files()) == 1 else study.path


def _nothing_error(study: DicomStudy) -> StudyError:
    """The one-line error for a path without any image series, naming a file and its problem."""
    if study.unreadable:
        bad_path, why = study.unreadable[0]
        more = f" ({len(study.unreadable)} unreadable DICOM files)" if len(study.unreadable) > 1 else ""
        return StudyError(f"{why}{more}", bad_path)
    if study.non_image:
        bad_path, why = study.non_image[0]
        more = f" ({len(study.non_image)} DICOM files without pixel data)" if len(study.non_image) > 1 else ""
        return StudyError(f"{why}{more}", bad_path)
    if study.non_dicom:
        if study.n_files == 1:
            return StudyError("not a DICOM file", study.non_dicom[0])
        return StudyError(f"no DICOM files ({len(study.non_dicom)} other files skipped)", study.path)
    return StudyError("empty folder, no DICOM files", study.path)


def _metadata(series: DicomSeries, path) -> dict:
    meta = {k: v for k, v in series.first.meta.items() if k in SAFE_METADATA_KEYS}
    meta["modality"] = series.modality
    if series.first.slice_thickness:
        meta["slice_thickness"] = float(series.first.slice_thickness)
    meta["source"] = str(path)
    meta["format"] = "dicom-enhanced" if series.first.frame is not None else "dicom"
    return meta
