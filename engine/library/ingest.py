"""Importing a folder tree of studies into the library: find them, encode them, add them one by one.

A *study unit* is either a folder that directly holds DICOM files (everything below it belongs to
it, one unit may hold several series) or a NIfTI file in a folder without DICOM files. The tree is
walked once and each file's first bytes read once (:func:`find_study_units`); a unit opens from what
that walk found, and its DICOM headers are parsed once for all its series. Each CT series of a unit is loaded, encoded by the
caller's ``encode_ct`` and added in its own transaction, so a kill -9 at any point leaves every
study either fully in the library (row + vectors) or absent; the next run skips what is there
(DICOM by series uid, NIfTI by path, both before any pixel is read) and goes on.
"""

from __future__ import annotations

import os
import sqlite3
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import DataError, SpeechCTError, SpeechCTWarning, StudyError
from engine.io.sniff import FolderFormats, classify, one_line
from engine.io.study import StudySource, open_study
from engine.library.store import LibraryWriteError
from engine.study_identity import study_key
from engine.volume import Volume

#: Names that claim to be images: failing to read one is reported; other files (CSV, JSON, ...) are ignored.
_IMAGE_SUFFIXES = (".dcm", ".dicom", ".ima", ".nii", ".nii.gz", ".img")


def _looks_like_image(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(_IMAGE_SUFFIXES) or "." not in lower  # DICOM files often have no suffix


@dataclass
class StudyUnit:
    """One study found by the walk: a DICOM folder with its files (everything below it, by format), or a
    NIfTI file; opened without walking or sniffing again."""

    path: Path
    formats: FolderFormats | None = None  # a DICOM folder's files; None for a file
    kind: str | None = None  # a file's format as the walk sniffed it; None: not sniffed yet (the root itself)
    error: StudyError | None = None  # a folder below it that could not be listed

    def open(self) -> StudySource:
        if self.error is not None:
            raise self.error
        if self.formats is not None:
            return StudySource(self.path, is_folder=True, formats=self.formats, kind=None)
        if self.kind is not None:
            return StudySource(self.path, is_folder=False, formats=None, kind=self.kind)
        return open_study(self.path)


def find_study_units(root: str | Path) -> tuple[list[StudyUnit], list[tuple[str, str]], int]:
    """(units, unreadable (path, reason), ignored file count) under ``root``, in sorted walk order.

    One walk, each file's first bytes read once (:func:`engine.io.sniff.classify`); hidden files and
    folders are skipped, as :func:`engine.io.sniff.scan_folder` does.
    """
    root = Path(root).resolve()
    if not root.exists():
        raise StudyError("does not exist", root)
    if not root.is_dir():  # a file, or a FIFO / socket / device that load_volume refuses by name
        return [StudyUnit(root)], [], 0
    units: list[StudyUnit] = []
    unreadable: list[tuple[str, str]] = []
    ignored = 0
    owner: dict[str, StudyUnit] = {}  # folders below a DICOM unit's folder -> that unit

    def walk_error(exc: OSError) -> None:
        unit = owner.get(str(exc.filename))
        why = f"cannot be listed ({one_line(exc.strerror or exc)})"
        if unit is None:
            unreadable.append((str(exc.filename), why))
        elif unit.error is None:  # as open_study says it: the whole study fails, naming the folder
            unit.error = StudyError(f"folder {why}", exc.filename)

    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        files = [(here / name, *classify(here / name)) for name in sorted(filenames) if not name.startswith(".")]
        unit = owner.get(dirpath)
        if unit is None and any(kind == "dicom" for _, kind, _ in files):
            unit = StudyUnit(here, FolderFormats())  # the folder is a DICOM unit, with everything below it
            units.append(unit)
        if unit is not None:
            assert unit.formats is not None
            for path, kind, why in files:
                unit.formats.add(path, kind, why)
            owner.update((os.path.join(dirpath, d), unit) for d in dirnames)
            continue
        for path, kind, why in files:
            if kind == "nifti":
                units.append(StudyUnit(path, kind=kind))
            elif kind == "nifti-pair":  # NIfTI pairs (.hdr/.img) are not read by engine.io
                unreadable.append((str(path), f"{kind} files are not supported"))
            elif _looks_like_image(path.name):
                unreadable.append((str(path), why or f"{kind} file"))
            else:
                ignored += 1
    return units, unreadable, ignored


@dataclass
class ImportReport:
    added: list[str] = field(default_factory=list)  # uids added by this run
    already: list[str] = field(default_factory=list)  # uids (or NIfTI paths) found in the library and skipped
    skipped: list[tuple[str, str]] = field(
        default_factory=list
    )  # (path, reason): readable but not a CT to add
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason): unreadable
    warnings: list[str] = field(default_factory=list)  # reader warnings about studies that were added
    ignored_files: int = 0  # files whose names and bytes say they are not images (CSV, JSON, ...)

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.already)} already in the library, "
            f"{len(self.skipped)} skipped, {len(self.failed)} unreadable"
        )


#: The recording beside a study that the app's "index studies" takes as that study's dictation.
DICTATION_NAME = "dictation.wav"


def dictation_beside(study: str | Path) -> Path | None:
    """The dictation paired with a study path: ``dictation.wav`` in the folder that holds the study
    (the samples' layout, ``study-00N/dicom`` + ``study-00N/dictation.wav``), None when there is none."""
    wav = Path(study).parent / DICTATION_NAME
    return wav if wav.is_file() else None


def import_tree(
    library, root: str | Path, encode_ct: Callable[[Volume], np.ndarray], *, progress: bool = True
):
    """Add every CT series under ``root`` to ``library``; returns an :class:`engine.library.ImportReport`.

    Unreadable studies are skipped with a one-line reason each (printed above the progress bar
    when ``progress``); non-CT series and localizers are skipped and named. Whatever one study raises
    (a :class:`SpeechCTError`, or an unexpected error of a reader or ``encode_ct``) fails that study
    only: the import goes on with the next. Only the library itself stops it: a database error (disk
    full, locked, corrupt) or a library that refuses every add (made with another bundle); studies
    already added stay added.
    """
    report = ImportReport()
    units, unreadable, report.ignored_files = find_study_units(root)
    for path, reason in unreadable:
        _fail(report, progress, path, reason)
    bar = _bar(units, progress)
    for unit in bar:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SpeechCTWarning)  # said again by load_volume, and recorded
                source = unit.open()  # the walk's files: each header is parsed once, for every series
                infos = source.series
        except SpeechCTError as exc:
            _fail(report, progress, str(unit.path), exc.message)
            continue
        for info in infos:
            is_nifti = info.files == [info.uid]  # NIfTI: uid = the file's path; DICOM uids are never paths
            where = info.uid if is_nifti else f"{unit.path} (series {info.uid})"
            if info.modality != "CT":
                report.skipped.append((where, f"modality {info.modality or 'unknown'}, not CT"))
                continue
            if "LOCALIZER" in info.image_type.upper():
                report.skipped.append((where, "localizer (scout) image"))
                continue
            if library.has_path(info.uid) if is_nifti else (info.uid in library):
                report.already.append(info.uid)
                continue
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", SpeechCTWarning)
                    volume = source.load(info.uid)
                    if is_nifti and study_key(volume) in library:  # the same voxels under another path
                        report.already.append(info.uid)
                        continue
                    embedding = encode_ct(volume)
                # check-then-add in one transaction: a concurrent import of the same tree adds it once
                record = library.add_study(volume, embedding, series=None if is_nifti else info.uid, replace=False)
            except SpeechCTError as exc:
                if isinstance(exc, LibraryWriteError) or (
                        isinstance(exc, DataError) and library.built_with != library.bundle_hash):
                    raise  # the library refuses every add (disk full, another bundle): stop now, with its message
                # the reason names the file when it is not the study itself (one slice of a folder)
                inside = exc.path is not None and exc.path not in (str(unit.path), info.uid)
                _fail(report, progress, where, str(exc) if inside or not exc.path else exc.message)
                continue
            except sqlite3.Error:
                raise  # the library cannot be written (full disk, locked, corrupt): no point going on
            except Exception as exc:  # noqa: BLE001 - one study's surprise must not stop the batch
                _fail(report, progress, where, f"unexpected {type(exc).__name__}: {one_line(exc)}")
                continue
            if record is None:
                report.already.append(info.uid)
                continue
            report.added.append(record.uid)
            report.warnings.extend(str(w.message) for w in caught if issubclass(w.category, SpeechCTWarning))
        if progress:
            bar.set_postfix(added=len(report.added), skipped=len(report.skipped) + len(report.failed))
    return report


@dataclass
class RebuildReport:
    re_embedded: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (uid, reason): still stale, not searched
    dictations_dropped: list[str] = field(default_factory=list)  # uids whose dictation vector was removed


def rebuild(
    library,
    encode_ct: Callable[[Volume], np.ndarray],
    *,
    encode_dictation: Callable[[Path], np.ndarray] | None = None,
    progress: bool = True,
) -> RebuildReport:
    """Re-embed every study of ``library`` made with another bundle, from its stored path (one transaction
    each).

    Killed half-way, the next call continues with the studies still stale. Dictation vectors
    are re-embedded with ``encode_dictation(dictation_path)`` when given, else removed (they
    would be from the old model). Studies whose files cannot be read stay stale, are left out
    of searches and are listed in the report; the library then records the new bundle hash.
    """
    from engine.io import load_volume

    report = RebuildReport()
    stale = library.stale_studies()
    for sid, rec in (_bar(stale, progress, "re-embedding") if progress else stale):
        try:
            if not rec.path:
                raise DataError("no stored path to read the study from")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SpeechCTWarning)  # already said when first added
                volume = load_volume(rec.path, rec.series)
            ct = encode_ct(volume)
            dictation = None
            if rec.has_dictation and rec.dictation_path and encode_dictation is not None:
                dictation = encode_dictation(Path(rec.dictation_path))
        except SpeechCTError as exc:
            report.failed.append((rec.uid, str(exc)))
            if progress:
                from tqdm import tqdm

                tqdm.write(f"not re-embedded {rec.uid}: {exc}")
            continue
        if library.replace_vectors(sid, rec, ct, dictation):
            report.dictations_dropped.append(rec.uid)
        report.re_embedded.append(rec.uid)
    library.finish_rebuild()
    return report


def _fail(report, progress: bool, path: str, reason: str) -> None:
    report.failed.append((path, reason))
    if progress:
        from tqdm import tqdm

        tqdm.write(f"skipped {path}: {reason}")


def _bar(units, progress: bool, desc: str = "importing"):
    if not progress:
        return units
    from tqdm import tqdm

    return tqdm(units, desc=desc, unit="study")
