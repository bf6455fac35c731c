"""``speechct info PATH [--series UID] [--json]``: what a CT study holds and which series loads.

Lists every series found under PATH (a DICOM folder or file, or a NIfTI file or folder of
them) with its UID, description, modality, slice count, shape (z, y, x), spacing (z, y, x)
in mm, orientation code (e.g. ``LPS``, see :meth:`engine.volume.Volume.orientation_code`)
and HU range; says which series ``load_volume`` chooses and why; and prints every warning
about the input. Patient names and IDs are never read into, nor printed from, anything here.
Exit code 2 with one line on stderr when the study cannot be used.

``--json`` prints exactly one JSON object::

    {
      "path": str,                        # PATH as given
      "format": str,                      # of the chosen volume: "dicom" | "dicom-enhanced" | "nifti"
      "series": [                         # every series found, in the reader's order
        {
          "uid": str,                     # SeriesInfo.uid (DICOM: SeriesInstanceUID[+split suffix];
                                          #   NIfTI: the file path); pass it to --series
          "description": str,
          "modality": str,                # e.g. "CT", "MR"
          "image_type": str,              # e.g. "ORIGINAL\\PRIMARY\\AXIAL"; "" for NIfTI
          "n_slices": int,
          "shape": [int, int, int],       # (z, y, x) voxels
          "spacing": [float, float, float],  # (z, y, x) mm
          "orientation": str,             # three letters, e.g. "LPS"
          "hu_min": float | null,         # null when the series cannot be loaded, or when more than
                                          #   16 series were found and this one was not loaded
          "hu_max": float | null,
          "chosen": bool,                 # true for exactly one series
          "warnings": [str],              # geometry notes of this series
          "error": str | null             # why this series cannot be loaded, else null
        }
      ],
      "chosen": {
        "uid": str,
        "reason": str,                    # e.g. "requested with --series", "the only series"
        "shape": [int, int, int],         # (z, y, x)
        "spacing": [float, float, float], # (z, y, x) mm
        "origin": [float, float, float],  # LPS mm of voxel (0, 0, 0)
        "orientation": str,
        "oblique": bool,
        "hu_min": float,
        "hu_max": float
      },
      "warnings": [str]                   # every SpeechCTWarning raised while reading, deduplicated
    }
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.commands.engine_options import say
from engine.errors import SpeechCTError, SpeechCTWarning, StudyError
from engine.io import StudySource, open_study
from engine.io.series import SeriesInfo
from engine.io.sniff import one_line
from engine.volume import Volume

#: Besides the chosen one, at most this many series are loaded just for their HU range.
MAX_LOADED_SERIES = 15


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "info",
        help="list the series of a CT study (DICOM or NIfTI) and which one loads",
        description="List every series under PATH, which one is loaded and why, and warnings about the input.",
    )
    parser.add_argument("path", help="DICOM folder or file, or NIfTI file (.nii / .nii.gz) or folder")
    parser.add_argument("--series", metavar="UID", default=None, help="load this series (a uid from the listing)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (schema in the module docstring)")
    parser.set_defaults(func=run)
    return parser


@dataclass
class SeriesReport:
    info: SeriesInfo
    hu: tuple[float, float] | None = None
    error: str | None = None
    chosen: bool = False


@dataclass
class StudyReport:
    path: str
    series: list[SeriesReport]
    chosen: Volume
    chosen_uid: str
    reason: str
    warnings: list[str] = field(default_factory=list)


def _fingerprint(volume: Volume) -> tuple:
    digest = hashlib.blake2b(volume.array.tobytes(), digest_size=16).hexdigest()
    return volume.shape, tuple(round(v, 4) for v in volume.origin), digest


def _matches(info: SeriesInfo, volume: Volume) -> bool:
    """Could ``volume`` (loaded without --series) be this series? Headers only, no pixels."""
    uid = volume.metadata.get("series_uid", "")
    same_uid = info.uid == uid or info.uid.startswith(uid + ".") or info.uid == volume.metadata.get("source")
    return same_uid and tuple(info.shape) == volume.shape


def _is_nifti(info: SeriesInfo) -> bool:
    return info.uid in info.files  # a NIfTI series' uid is its file path; DICOM uids never are


def _reason(infos: list[SeriesInfo], chosen: SeriesInfo, requested: str | None) -> str:
    """Why load_volume chose ``chosen``, in the terms of its readers' documented rules."""
    if requested is not None:
        return "requested with --series"
    if len(infos) == 1:
        return "the only series"
    if _is_nifti(chosen):
        return f"the NIfTI volume with the most voxels among {sum(map(_is_nifti, infos))}"
    dicom = [s for s in infos if not _is_nifti(s)]
    ct = [s for s in dicom if s.modality == "CT"]
    non_localizer = [s for s in ct if "LOCALIZER" not in s.image_type.upper()]
    skipped = []
    if len(ct) < len(dicom):
        skipped.append(f"{len(dicom) - len(ct)} non-CT")
    if len(non_localizer) < len(ct):
        skipped.append(f"{len(ct) - len(non_localizer)} localizer")
    tail = f"; skipped {' and '.join(skipped)}" if skipped else ""
    pool = non_localizer or ct
    return f"the CT series with the most slices ({chosen.n_slices}) of {len(pool)} candidate(s){tail}"


def inspect_study(path: str | Path, series: str | None = None) -> StudyReport:
    """Everything ``speechct info`` prints, as data. Raises StudyError like load_volume."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = open_study(path)  # one walk, one header parse per file, for every series below
        infos = source.series
        chosen_volume = source.load(series)
    notes = _speechct_messages(caught) + list(chosen_volume.warnings)

    reports = [SeriesReport(info) for info in infos]
    candidates = [r for r in reports if series is not None and r.info.uid == series]
    if not candidates:
        candidates = [r for r in reports if _matches(r.info, chosen_volume)]
    loaded: dict[int, Volume | None] = {}
    if len(candidates) > 1:
        # Two stacks share a UID and a shape: tell them apart by their voxels.
        want = _fingerprint(chosen_volume)
        for r in candidates:
            loaded[id(r)] = _load_quietly(source, r)
        candidates = [r for r in candidates if (v := loaded[id(r)]) is not None and _fingerprint(v) == want]
    chosen_report = candidates[0] if candidates else None
    skipped = 0
    for r in reports:
        if r is chosen_report:
            r.chosen, r.hu = True, chosen_volume.hu_range()
            continue
        if id(r) not in loaded and len(loaded) >= MAX_LOADED_SERIES:
            skipped += 1  # a whole dataset tree: listing it must not mean reading all of it
            continue
        volume = loaded[id(r)] if id(r) in loaded else _load_quietly(source, r)
        loaded.setdefault(id(r), None)  # counts the load, drops the voxels
        if volume is not None:
            r.hu = volume.hu_range()
    if skipped:
        notes.append(f"{path}: HU ranges not computed for {skipped} of {len(reports)} series (more than "
                     f"{MAX_LOADED_SERIES + 1} series); load one with --series")
    for r in reports:
        notes.extend(r.info.warnings)

    if chosen_report is not None:
        chosen_uid = chosen_report.info.uid
        reason = _reason(infos, chosen_report.info, series)
    else:  # the reader's uid scheme changed under us: still say what was loaded
        chosen_uid = series or str(chosen_volume.metadata.get("series_uid", ""))
        reason = "requested with --series" if series is not None else "the reader's default choice"
    return StudyReport(str(path), reports, chosen_volume, chosen_uid, reason, list(dict.fromkeys(notes)))


def _load_quietly(source: StudySource, report: SeriesReport) -> Volume | None:
    """Load one series for its HU range; its error (if any) goes into the report, warnings are dropped
    (its geometry notes are already in SeriesInfo.warnings)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return source.load(report.info.uid)
    except SpeechCTError as exc:
        report.error = str(exc)
        return None


def _speechct_messages(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, SpeechCTWarning)]


def _number(x: float) -> float | int:
    """Integers without ".0", others to 3 decimals: for humans and for stable JSON."""
    return int(x) if float(x).is_integer() else round(float(x), 3)


def report_json(report: StudyReport) -> dict[str, Any]:
    v = report.chosen
    return {
        "path": report.path,
        "format": v.metadata.get("format", ""),
        "series": [
            {
                "uid": r.info.uid,
                "description": r.info.description,
                "modality": r.info.modality,
                "image_type": r.info.image_type,
                "n_slices": int(r.info.n_slices),
                "shape": [int(n) for n in r.info.shape],
                "spacing": [float(s) for s in r.info.spacing],
                "orientation": r.info.orientation,
                "hu_min": None if r.hu is None else float(r.hu[0]),
                "hu_max": None if r.hu is None else float(r.hu[1]),
                "chosen": r.chosen,
                "warnings": list(r.info.warnings),
                "error": r.error,
            }
            for r in report.series
        ],
        "chosen": {
            "uid": report.chosen_uid,
            "reason": report.reason,
            "shape": [int(n) for n in v.shape],
            "spacing": [float(s) for s in v.spacing],
            "origin": [float(o) for o in v.origin],
            "orientation": v.orientation_code(),
            "oblique": v.is_oblique(),
            "hu_min": float(v.hu_range()[0]),
            "hu_max": float(v.hu_range()[1]),
        },
        "warnings": report.warnings,
    }


def _fmt_triple(values, sep: str = "x") -> str:
    return sep.join(f"{_number(x):g}" for x in values)


def report_text(report: StudyReport) -> str:
    v = report.chosen
    fmt = v.metadata.get("format", "")
    lines = [f"{report.path}: {len(report.series)} series ({fmt})"]
    for r in report.series:
        i = r.info
        mark = "*" if r.chosen else "-"
        desc = f" '{i.description}'" if i.description else ""
        hu = f"HU {_number(r.hu[0])}..{_number(r.hu[1])}" if r.hu is not None else "HU n/a"
        lines.append(
            f"  {mark} {i.uid}{desc}  {i.modality or '?'}  {i.n_slices} slices  shape {_fmt_triple(i.shape)}"
            f"  spacing {_fmt_triple(i.spacing)} mm  {i.orientation}  {hu}"
        )
        if "LOCALIZER" in i.image_type.upper():
            lines.append("      localizer")
        if r.error:
            lines.append(f"      cannot load: {r.error}")
    lo, hi = v.hu_range()
    lines.append(f"chosen: {report.chosen_uid} ({report.reason})")
    lines.append(
        f"  shape {_fmt_triple(v.shape)}  spacing {_fmt_triple(v.spacing)} mm  origin "
        f"{_fmt_triple(v.origin, ', ')} mm (LPS)  {v.orientation_code()}{' oblique' if v.is_oblique() else ''}"
        f"  HU {_number(lo)}..{_number(hi)}"
    )
    if report.warnings:
        lines.append(f"warnings ({len(report.warnings)}):")
        lines.extend(f"  ! {w}" for w in report.warnings)
    else:
        lines.append("warnings: none")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        report = inspect_study(args.path, args.series)
    except SpeechCTError:
        raise
    except Exception as exc:  # noqa: BLE001 — the CLI promises one line, never a traceback
        raise StudyError(f"cannot be read ({type(exc).__name__}: {one_line(exc)})", args.path) from exc
    text = json.dumps(report_json(report), indent=2) if args.json else report_text(report)
    try:
        say(text)
    except BrokenPipeError:  # e.g. `speechct info X | head`: the reader left, not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
