"""``speechct index add|list|remove|rebuild``: the study library on the command line.

- ``index add PATH... [--dictation WAV]``: every CT series under each PATH (a DICOM folder or
  file, a NIfTI file, a folder tree of studies, or ``pacs://SERVER/STUDY_UID[/SERIES_UID]``: the
  study is fetched into the PACS cache first, see :mod:`engine.pacs.retrieve`) is encoded with the bundle's CT encoder and
  added (one transaction per series; a rerun skips what is there, so a killed import resumes).
  Unreadable studies are skipped with a one-line reason each. ``--dictation`` (one PATH only,
  read as one series) also stores the embedding of its spoken report.
- ``index list``: the studies, in the order they were added.
- ``index remove UID``: one study (by uid, SeriesInstanceUID or path) and its vectors.
- ``index rebuild``: re-embed the studies made with another bundle (see ``engine.library``).

All take ``--library DIR`` (default: platformdirs' user data folder ``speechct/library``) and
``--bundle DIR``; exit code 2 with a one-line message when nothing could be done.

``--json`` objects::

    add:     {"library": str, "added": [str], "already": [str],       # uids
              "skipped": [[str, str]], "failed": [[str, str]],          # [path or series, reason]
              "warnings": [str]}
    list:    {"library": str, "bundle_hash": str, "needs_rebuild": bool,
              "studies": [{"uid": str, "study_uid": str | null, "series_uid": str | null, "path": str | null,
                           "series": str | null, "date": str | null, "description": str | null,
                           "modality": str | null, "format": str | null, "n_slices": int | null,
                           "spacing": [float, float, float] | null, "bundle_hash": str,
                           "dictation_path": str | null, "added_at": str, "has_dictation": bool}]}
    remove:  {"library": str, "removed": {<one study as in list>}}
    rebuild: {"library": str, "re_embedded": [str], "failed": [[str, str]], "dictations_dropped": [str]}
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.commands.engine_options import (
    add_engine_arguments,
    make_engine,
    one_line_warnings,
    open_library,
    print_json,
    say,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("index", help="add, list, remove or re-embed studies of the study library",
                                   description="Manage the study library that `speechct search` searches.")
    sub = parser.add_subparsers(dest="index_command", required=True, metavar="ACTION")

    add = sub.add_parser("add", help="encode and add CT studies (DICOM folders/files, NIfTI, folder trees)")
    add.add_argument("paths", nargs="+", metavar="PATH", help="DICOM folder/file, NIfTI file, folder tree, or "
                     "pacs://SERVER/STUDY_UID[/SERIES_UID] (a server of the PACS settings file)")
    add.add_argument("--dictation", metavar="WAV", help="the spoken report of the study (one PATH only)")
    add.add_argument("--series", metavar="UID", help="with --dictation: which series of PATH")
    add.add_argument("--json", action="store_true", help="print one JSON object (module docstring)")
    add_engine_arguments(add, library=True)
    add.set_defaults(func=run_add)

    lst = sub.add_parser("list", help="list the studies of the library")
    lst.add_argument("--json", action="store_true")
    lst.add_argument("--bundle", metavar="DIR", help="model bundle folder (its hash tells stale vectors apart)")
    lst.add_argument("--library", metavar="DIR", help="study library folder")
    lst.set_defaults(func=run_list)

    rm = sub.add_parser("remove", help="remove one study (by uid, SeriesInstanceUID or path)")
    rm.add_argument("uid")
    rm.add_argument("--json", action="store_true")
    rm.add_argument("--bundle", metavar="DIR", help="model bundle folder")
    rm.add_argument("--library", metavar="DIR", help="study library folder")
    rm.set_defaults(func=run_remove)

    rb = sub.add_parser("rebuild", help="re-embed studies made with another model bundle")
    rb.add_argument("--json", action="store_true")
    add_engine_arguments(rb, library=True)
    rb.set_defaults(func=run_rebuild)
    return parser


def _print_json(obj) -> None:
    print_json(obj)


@one_line_warnings
def run_add(args: argparse.Namespace) -> int:
    from engine.errors import SpeechCTError, StudyError

    if args.dictation and len(args.paths) != 1:
        raise SpeechCTError("--dictation goes with exactly one study PATH")
    if args.series and not args.dictation:
        raise SpeechCTError("--series goes with --dictation (a folder import adds every series)")
    from engine.pacs.retrieve import is_pacs_uri

    if any(is_pacs_uri(p) for p in args.paths):  # pacs://SERVER/STUDY_UID[/SERIES_UID]: into the cache first
        from engine.commands.pacs import progress_printer
        from engine.pacs.retrieve import fetch_uri

        show = progress_printer(not args.json and sys.stderr.isatty())
        args.paths = [str(fetch_uri(p, progress=show)[0]) if is_pacs_uri(p) else p for p in args.paths]
    for path in args.paths:
        if not Path(path).exists():
            raise StudyError("does not exist", path)
    engine = make_engine(args)
    library = engine.library
    result: dict[str, Any] = {"library": str(library.folder), "added": [], "already": [], "skipped": [], "failed": [],
              "warnings": []}
    if args.dictation:
        # no speech heard: exit 2, nothing added
        volume = engine.load_study(args.paths[0], args.series)
        record = engine.index_study(volume, args.dictation, series=args.series)
        result["added"].append(record.uid)
        result["warnings"] += list(volume.warnings)
    else:
        for path in args.paths:
            from engine.library.ingest import import_tree

            report = import_tree(library, path, engine.encode_ct, progress=not args.json and sys.stderr.isatty())
            result["added"] += report.added
            result["already"] += report.already
            result["skipped"] += [list(s) for s in report.skipped]
            result["failed"] += [list(f) for f in report.failed]
            result["warnings"] += report.warnings
    if args.json:
        _print_json(result)
    else:
        for where, reason in result["skipped"]:
            say(f"skipped      {where}: {reason}")
        for where, reason in result["failed"]:
            say(f"unreadable   {where}: {reason}")
        for uid in result["added"]:
            say(f"added        {uid}")
        say(f"{len(result['added'])} added, {len(result['already'])} already in the library, "
              f"{len(result['skipped'])} skipped, {len(result['failed'])} unreadable "
              f"({len(library)} studies in {library.folder})")
    if not result["added"] and not result["already"] and result["failed"]:
        raise StudyError(f"nothing added: {len(result['failed'])} unreadable, first: "
                         f"{result['failed'][0][0]}: {result['failed'][0][1]}")
    if result["failed"]:  # the rest was added; the exit code still says that not everything was
        total = len(result["added"]) + len(result["already"]) + len(result["failed"])
        raise StudyError(f"{len(result['failed'])} of {total} studies could not be added (the others were)",
                         args.paths[0] if len(args.paths) == 1 else None)
    return 0


@one_line_warnings
def run_list(args: argparse.Namespace) -> int:
    library = open_library(args)
    studies = [r.to_json() for r in library.list()]
    if args.json:
        _print_json({"library": str(library.folder), "bundle_hash": library.bundle_hash,
                     "needs_rebuild": library.needs_rebuild, "studies": studies})
        return 0
    if not studies:
        say(f"the library is empty ({library.folder})")
        return 0
    say(f"{'uid':<66} {'date':<8} {'mod':<3} {'slices':>6} {'dict':<4} description / path")
    for s in studies:
        say(f"{s['uid']:<66} {s['date'] or '-':<8} {s['modality'] or '-':<3} {s['n_slices'] or 0:>6} "
              f"{'yes' if s['has_dictation'] else '-':<4} {s['description'] or s['path'] or '-'}")
    say(f"{len(studies)} studies in {library.folder}")
    return 0


@one_line_warnings
def run_remove(args: argparse.Namespace) -> int:
    library = open_library(args)
    record = library.remove(args.uid)
    if args.json:
        _print_json({"library": str(library.folder), "removed": record.to_json()})
    else:
        say(f"removed {record.uid} ({record.path or '-'}); {len(library)} studies left")
    return 0


@one_line_warnings
def run_rebuild(args: argparse.Namespace) -> int:
    engine = make_engine(args)
    library = engine.library
    from engine.library.ingest import rebuild

    report = rebuild(library, engine.encode_ct, encode_dictation=engine.encode_audio_file,
                     progress=not args.json and sys.stderr.isatty())
    if args.json:
        _print_json({"library": str(library.folder), "re_embedded": report.re_embedded,
                     "failed": [list(f) for f in report.failed], "dictations_dropped": report.dictations_dropped})
    else:
        for uid, reason in report.failed:
            say(f"not re-embedded {uid}: {reason}")
        say(f"{len(report.re_embedded)} re-embedded, {len(report.failed)} failed")
    return 0
