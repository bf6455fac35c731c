"""``open_study(path) -> StudySource``: a study path walked once, each file's header read once.

What a path holds is found in one pass: the folder is walked once (hidden entries skipped), every file
sniffed by its first bytes (:mod:`engine.io.sniff`), and the DICOM files' headers parsed once, the first
time the series are asked for (:mod:`engine.io.dicom_scan`). The source then answers ``.series`` (every
series, headers only) and ``.load(series)`` (one series' pixels) from what it read: the app lists a
study's series and loads one without parsing a header twice. ``load_volume`` and ``list_series`` are
this, for one call each.
"""

from __future__ import annotations

import os
import stat
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import SpeechCTWarning, StudyError
from engine.io.series import SeriesInfo
from engine.io.sniff import FolderFormats, describe, one_line, os_study_error, read_head, scan_folder, sniff
from engine.volume import Volume

if TYPE_CHECKING:
    from engine.io.dicom import DicomStudy


def _stat(path: Path) -> os.stat_result:
    """os.stat with every OS error turned into a one-line StudyError."""
    try:
        return os.stat(path)
    except OSError as exc:
        raise os_study_error(exc, path, "access", "accessed") from exc


def _no_files_error(folder: Path, formats: FolderFormats) -> StudyError:
    if formats.n_files == 0:
        return StudyError("folder is empty (no files, hidden ones ignored)", folder)
    if formats.other:
        example = formats.other[0]
        what = describe(read_head(example))
        return StudyError(
            f"no DICOM or NIfTI files in the folder ({formats.n_files} file(s), e.g. {example.name}: {what})", folder
        )
    example, why = formats.unreadable[0]
    return StudyError(f"no file in the folder can be read ({example.name}: {why})", folder)


def _nifti_matches(series: str, path: Path) -> bool:
    from engine.io.nifti import strip_nifti_suffix

    return series in (str(path), path.name, strip_nifti_suffix(path.name), os.path.abspath(path))


def _n_voxels(path: Path) -> int:
    from engine.io.nifti import nifti_series_info

    z, y, x = nifti_series_info(path).shape
    return z * y * x


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


def _check_no_overrides(path: Path, slope: float | None, intercept: float | None,
                        spacing: tuple[float, float, float] | None) -> None:
    if slope is not None or intercept is not None or spacing is not None:
        raise ValueError(
            f"{path}: slope/intercept/spacing overrides apply to NIfTI only; DICOM carries its own"
        )


class StudySource:
    """A study path, read once: :attr:`series` and :meth:`load` share the walk and the DICOM headers.

    Made by :func:`open_study`, or from a walk that already sorted the files by format (the library
    importer walks a whole tree once: ``formats`` for a folder, ``kind`` for a file); thread-safe (the
    headers are read once even when two threads ask).
    """

    def __init__(self, path: Path, *, is_folder: bool, formats: FolderFormats | None, kind: str | None):
        self.path = path
        self.is_folder = is_folder
        self.formats = formats  # a folder's files by format (None for a single file)
        self.kind = kind  # a single file's format ("dicom" / "nifti"), None for a folder
        self._dicom: DicomStudy | None = None  # read on first use
        self._series: list[SeriesInfo] | None = None
        self._lock = threading.Lock()

    def _folder(self) -> FolderFormats:
        assert self.formats is not None, "a folder source has its files by format"
        return self.formats

    @property
    def has_dicom(self) -> bool:
        return bool(self._folder().dicom) if self.is_folder else self.kind == "dicom"

    @property
    def nifti_files(self) -> list[Path]:
        if self.is_folder:
            return list(self._folder().nifti)
        return [] if self.kind == "dicom" else [self.path]

    def dicom_study(self) -> DicomStudy:
        """The DICOM headers of the source split into series (:class:`engine.io.dicom.DicomStudy`),
        parsed on the first call only."""
        from engine.io.dicom import scan_dicom

        with self._lock:
            if self._dicom is None:
                if self.is_folder:
                    f = self._folder()
                    self._dicom = scan_dicom(self.path, files=f.dicom, n_files=f.n_files,
                                             non_dicom=[*f.nifti, *f.other, *(p for p, _ in f.unreadable)])
                else:
                    self._dicom = scan_dicom(self.path)
            return self._dicom

    @property
    def series(self) -> list[SeriesInfo]:
        """Every series (headers only, no pixel data): DICOM series and NIfTI files."""
        if self._series is None:
            try:
                found = self.dicom_study().infos() if self.has_dicom else []
                if self.nifti_files:  # nibabel only when there is NIfTI to read: its import is costly
                    from engine.io.nifti import nifti_series_info

                    found += [nifti_series_info(f) for f in self.nifti_files]
            except OSError as exc:
                raise StudyError(f"cannot be read ({one_line(exc.strerror or exc)})", exc.filename or self.path) from exc
            self._series = found
        return list(self._series)

    def load(self, series: str | None = None, *, slope: float | None = None, intercept: float | None = None,
             spacing: tuple[float, float, float] | None = None) -> Volume:
        """One series as a validated :class:`Volume` (see :func:`engine.io.load_volume` for ``series`` and
        the NIfTI overrides); only its pixels are read now."""
        from engine.io.validate import validate_volume

        try:
            volume = self._load(series, slope=slope, intercept=intercept, spacing=spacing)
        except OSError as exc:  # a reader let one through: still one line naming the file
            raise StudyError(f"cannot be read ({one_line(exc.strerror or exc)})", exc.filename or self.path) from exc
        return validate_volume(volume)

    def _load(self, series: str | None, *, slope: float | None, intercept: float | None,
              spacing: tuple[float, float, float] | None) -> Volume:
        from engine.io.dicom import read_dicom_series

        path = self.path
        if self.is_folder and self._folder().dicom:
            nifti = next((n for n in self._folder().nifti if _nifti_matches(series, n)), None) if series is not None else None
            if nifti is None:
                _check_no_overrides(path, slope, intercept, spacing)
                return read_dicom_series(self.dicom_study(), series)
            return _read_nifti(nifti, slope=slope, intercept=intercept, spacing=spacing)
        if not self.is_folder:
            if self.kind == "dicom":
                _check_no_overrides(path, slope, intercept, spacing)
                return read_dicom_series(self.dicom_study(), series)
            if series is not None and not _nifti_matches(series, path):
                raise StudyError(f"series {series!r} not found (a NIfTI file holds one volume, uid = its path)", path)
            return _read_nifti(path, slope=slope, intercept=intercept, spacing=spacing)
        chosen, message = _choose_nifti(self._folder().nifti, series, path)
        volume = _read_nifti(chosen, slope=slope, intercept=intercept, spacing=spacing)
        if message:
            warnings.warn(message, SpeechCTWarning, stacklevel=3)
            volume.warnings.append(message)
        return volume


def _read_nifti(path: Path, *, slope: float | None, intercept: float | None,
                spacing: tuple[float, float, float] | None) -> Volume:
    """engine.io.nifti.read_nifti, imported here: nibabel's import is costly and a DICOM load never needs it."""
    from engine.io.nifti import read_nifti

    return read_nifti(path, slope=slope, intercept=intercept, spacing=spacing)


def open_study(path: str | Path) -> StudySource:
    """Open the study at ``path`` (a DICOM folder or file, a NIfTI file, or a folder of them): one walk,
    every file sniffed once; a StudyError (one line) when there is nothing to read."""
    path = Path(path)
    try:
        st = _stat(path)
        if stat.S_ISDIR(st.st_mode):
            formats = scan_folder(path)
            if not formats.dicom and not formats.nifti:
                raise _no_files_error(path, formats)
            return StudySource(path, is_folder=True, formats=formats, kind=None)
        return StudySource(path, is_folder=False, formats=None, kind=sniff(path))
    except OSError as exc:
        raise StudyError(f"cannot be read ({one_line(exc.strerror or exc)})", exc.filename or path) from exc
