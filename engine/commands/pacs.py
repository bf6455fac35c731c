"""``speechct pacs find | get | send | cache``: studies from the department's PACS, results back to it.

The PACS is ``--server NAME`` (a server of the PACS settings file, see :mod:`engine.pacs.settings`;
default its ``default``), or ``--url URL`` (DICOMweb) or ``--aet AET@HOST:PORT`` (DIMSE) given
directly. Credentials come from the settings file or the environment only, never from the command line.

- ``pacs find [--date D] [--modality M] [--description TEXT] [--patient-id ID] [--limit N]``: matching
  studies (UID, date, modalities, counts, description; no patient names or IDs are printed);
  ``pacs find --study UID`` lists that study's series.
- ``pacs get STUDY_UID [--series UID] [--refresh]``: its CT series into the local cache
  (:mod:`engine.pacs.cache`), resumable; prints the cached folder, which every command reads
  (``speechct rank --ct FOLDER``; or name it ``pacs://SERVER/STUDY_UID`` directly).
- ``pacs send FILE...``: DICOM files (e.g. ``speechct rank --sr OUT.dcm``) to the PACS (STOW-RS or C-STORE).
- ``pacs cache [--remove UID] [--clear-partial]``: what the cache holds, its size and cap.

``--json`` objects::

    find:  {"server": str, "studies": [{"study_uid": str, "date": str|null, "description": str|null,
                                        "modalities": [str], "n_series": int|null, "n_instances": int|null}],
            "series": null | [{"series_uid": str, "modality": str|null, "description": str|null,
                               "number": int|null, "n_instances": int|null}]}      # with --study
    get:   {"server": str, "study_uid": str, "folder": str, "cached": bool, "fetched": int, "resumed": int,
            "series": [str], "skipped": [{"series_uid": str, "modality": str|null, ...}],
            "cache": {"folder": str, "bytes": int, "max_bytes": int}}
    send:  {"server": str, "sent": [{"path": str, "sop_instance_uid": str, "sop_class_uid": str}]}
    cache: {"folder": str, "bytes": int, "max_bytes": int, "studies": [{...}], "partial": [str],
            "removed": [str]}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.commands.engine_options import one_line_warnings


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("PACS (credentials: the settings file or SPEECHCT_PACS_* only)")
    g.add_argument("--server", metavar="NAME", help="a server of the PACS settings file (default: its 'default')")
    g.add_argument("--url", metavar="URL", help="a DICOMweb base URL, e.g. https://pacs/dicom-web")
    g.add_argument("--aet", metavar="AET@HOST:PORT", help="a DIMSE peer, e.g. ORTHANC@pacs:4242")
    g.add_argument("--calling-aet", metavar="AET", help="our AE title for DIMSE (default SPEECHCT)")
    g.add_argument("--retrieve", choices=("get", "move"), help="DIMSE retrieval: C-GET (default) or C-MOVE")
    g.add_argument("--move-port", type=int, metavar="PORT", help="with --retrieve move: our C-STORE receiver's port")
    g.add_argument("--tls", action="store_true", default=None, help="DIMSE over TLS (CA: the settings' ca_bundle "
                   "or SPEECHCT_PACS_CA_BUNDLE)")
    g.add_argument("--timeout", type=float, metavar="S", help="seconds to wait for the PACS (default 30)")
    g.add_argument("--settings", metavar="FILE", help="the PACS settings file (default: $SPEECHCT_PACS_CONFIG, "
                   "else the user config folder's speechct/pacs.json)")


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cache")
    g.add_argument("--cache", metavar="DIR", help="the study cache (default: $SPEECHCT_PACS_CACHE, the settings "
                   "file's cache.folder, else the user cache folder's speechct/pacs)")
    g.add_argument("--cache-gb", type=float, metavar="GB", help="the cache's size cap (default 20)")


def _server(args):
    from engine.pacs.settings import resolve_server

    if args.server and (args.url or args.aet):
        from engine.pacs.errors import PacsError

        raise PacsError("give --server NAME or an address (--url / --aet), not both")
    return resolve_server(args.server, url=args.url, aet=args.aet, calling_aet=args.calling_aet,
                          timeout=args.timeout, retrieve=args.retrieve, move_port=args.move_port,
                          tls=args.tls, settings=args.settings)


def _cache(args):
    from engine.pacs.cache import StudyCache

    return StudyCache.from_settings(getattr(args, "settings", None), getattr(args, "cache", None),
                                    getattr(args, "cache_gb", None))


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("pacs", help="find and fetch studies from a PACS; send results back",
                                   description="The department's PACS over DICOMweb or DIMSE (module docstring).")
    sub = parser.add_subparsers(dest="pacs_command", required=True, metavar="ACTION")

    find = sub.add_parser("find", help="search studies (or, with --study, list one study's series)")
    find.add_argument("--date", help="YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either end open)")
    find.add_argument("--modality", type=str.upper, help="a modality in the study, e.g. CT")
    find.add_argument("--description", help="text in the study description (* and ? wildcards)")
    find.add_argument("--patient-id", help="match this patient ID (never printed)")
    find.add_argument("--study", metavar="UID", help="one study: list its series")
    find.add_argument("--limit", type=int, metavar="N", help="at most N studies")
    find.add_argument("--json", action="store_true", help="print one JSON object (module docstring)")
    add_server_arguments(find)
    find.set_defaults(func=run_find)

    get = sub.add_parser("get", help="fetch a study's CT series into the local cache (resumable)")
    get.add_argument("study_uid", metavar="STUDY_UID")
    get.add_argument("--series", metavar="UID", help="only this (CT) series")
    get.add_argument("--refresh", action="store_true", help="ask the PACS again even if the study is cached")
    get.add_argument("--json", action="store_true")
    add_server_arguments(get)
    add_cache_arguments(get)
    get.set_defaults(func=run_get)

    send = sub.add_parser("send", help="send DICOM files (e.g. a SpeechCT SR) to the PACS")
    send.add_argument("files", nargs="+", metavar="FILE")
    send.add_argument("--json", action="store_true")
    add_server_arguments(send)
    send.set_defaults(func=run_send)

    cache = sub.add_parser("cache", help="what the local study cache holds")
    cache.add_argument("--remove", metavar="STUDY_UID", action="append", default=[], help="drop a study (repeatable)")
    cache.add_argument("--clear-partial", action="store_true", help="drop interrupted retrievals")
    cache.add_argument("--json", action="store_true")
    cache.add_argument("--settings", metavar="FILE", help="the PACS settings file")
    add_cache_arguments(cache)
    cache.set_defaults(func=run_cache)
    return parser


@one_line_warnings
def run_find(args: argparse.Namespace) -> int:
    from engine.pacs.cache import check_uid
    from engine.pacs.client import connect
    from engine.pacs.query import StudyQuery

    query = StudyQuery(date=args.date, modality=args.modality, description=args.description,
                       patient_id=args.patient_id, limit=args.limit,
                       study_uid=check_uid(args.study, "StudyInstanceUID") if args.study else None)
    server = _server(args)
    client = connect(server)
    try:
        studies = client.find_studies(query)
        series = client.find_series(args.study) if args.study else None
    finally:
        client.close()
    if args.json:
        _print_json({"server": str(server), "studies": [s.to_json() for s in studies],
                     "series": None if series is None else [s.to_json() for s in series]})
        return 0
    if not studies:
        print(f"no matching study on {server}")
        return 0
    print(f"{'study uid':<64} {'date':<8} {'modalities':<10} {'series':>6} {'images':>6}  description")
    for s in studies:
        print(f"{s.study_uid:<64} {s.date or '-':<8} {'/'.join(s.modalities) or '-':<10} "
              f"{'-' if s.n_series is None else s.n_series:>6} {'-' if s.n_instances is None else s.n_instances:>6}  "
              f"{s.description or '-'}")
    if series is not None:
        print()
        print(f"{'series uid':<64} {'mod':<4} {'no.':>4} {'images':>6}  description")
        for s in series:
            print(f"{s.series_uid:<64} {s.modality or '-':<4} {'-' if s.number is None else s.number:>4} "
                  f"{'-' if s.n_instances is None else s.n_instances:>6}  {s.description or '-'}")
    print(f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'} on {server}")
    return 0


def progress_printer(enabled: bool):
    """A ``progress(done, total)`` that redraws one stderr line (None when ``enabled`` is false)."""
    if not enabled:
        return None

    def show(done: int, total: int) -> None:
        sys.stderr.write(f"\rretrieving {done}/{total} instances")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return show


@one_line_warnings
def run_get(args: argparse.Namespace) -> int:
    from engine.pacs.client import connect
    from engine.pacs.retrieve import get_study

    server = _server(args)
    cache = _cache(args)
    client = connect(server)
    try:
        result = get_study(client, args.study_uid, cache, series_uid=args.series, refresh=args.refresh,
                           progress=progress_printer(not args.json and sys.stderr.isatty()))
    finally:
        client.close()
    folder = result.study.folder / args.series if args.series else result.study.folder
    if args.json:
        _print_json({"server": str(server), "study_uid": result.study.study_uid, "folder": str(folder),
                     "cached": result.cached, "fetched": result.fetched, "resumed": result.resumed,
                     "series": sorted(result.study.series), "skipped": [s.to_json() for s in result.skipped],
                     "cache": {"folder": str(cache.root), "bytes": cache.total_bytes(), "max_bytes": cache.max_bytes}})
        return 0
    if result.cached:
        print(f"in the cache already ({len(result.study.series)} series, {result.study.n_instances} instances; "
              "--refresh asks the PACS again)")
    else:
        extra = f", {result.resumed} resumed from an interrupted retrieval" if result.resumed else ""
        print(f"retrieved {result.fetched} instances of {len(result.series)} CT series from {server}{extra}")
        for s in result.skipped:
            print(f"not fetched: series {s.series_uid} ({s.modality or '?'}, {s.description or '-'}): not CT")
    print(f"cache {cache.root}: {_gb(cache.total_bytes())} of {_gb(cache.max_bytes)}")
    print(folder)
    return 0


@one_line_warnings
def run_send(args: argparse.Namespace) -> int:
    import pydicom
    from pydicom.errors import InvalidDicomError

    from engine.errors import StudyError
    from engine.pacs.client import connect

    datasets = []
    for f in args.files:
        path = Path(f)
        if not path.is_file():
            raise StudyError("does not exist (or is not a file)", path)
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError) as exc:
            raise StudyError(f"not a DICOM file ({' '.join(str(exc).split())[:120]})", path) from None
        for key in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"):
            if key not in ds:
                raise StudyError(f"a DICOM file without {key} cannot be stored in a PACS", path)
        datasets.append((path, ds))
    server = _server(args)
    client = connect(server)
    try:
        client.store([ds for _, ds in datasets])
    finally:
        client.close()
    sent = [{"path": str(p), "sop_instance_uid": str(ds.SOPInstanceUID), "sop_class_uid": str(ds.SOPClassUID)}
            for p, ds in datasets]
    if args.json:
        _print_json({"server": str(server), "sent": sent})
    else:
        for s in sent:
            print(f"sent {s['path']} ({s['sop_instance_uid']})")
        print(f"{len(sent)} file(s) stored on {server}")
    return 0


@one_line_warnings
def run_cache(args: argparse.Namespace) -> int:
    cache = _cache(args)
    removed = [uid for uid in args.remove if cache.remove(uid)]
    for uid in args.remove:
        if uid not in removed:
            from engine.pacs.errors import PacsError

            raise PacsError(f"no study {uid} in the cache", cache.root)
    dropped = cache.clear_partial() if args.clear_partial else []
    studies = cache.list()
    total = sum(s.bytes for s in studies)
    if args.json:
        _print_json({"folder": str(cache.root), "bytes": total, "max_bytes": cache.max_bytes,
                     "studies": [s.to_json() for s in studies], "partial": cache.partials(),
                     "removed": removed + dropped})
        return 0
    for uid in removed:
        print(f"removed {uid}")
    for uid in dropped:
        print(f"dropped the interrupted retrieval of {uid}")
    for s in studies:
        print(f"{s.study_uid:<64} {len(s.series):>2} series {s.n_instances:>6} instances {_gb(s.bytes):>9}  "
              f"{s.server}")
    partial = cache.partials()
    print(f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'}, {_gb(total)} of {_gb(cache.max_bytes)} in {cache.root}"
          + (f"; {len(partial)} interrupted retrieval(s) kept for a retry" if partial else ""))
    return 0
