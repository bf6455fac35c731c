"""A study from a PACS into the local cache: its CT series, whole, resumable.

:func:`get_study` lists the study's series, keeps the CT ones (or the one asked for), lists each
series' instances, fetches those the cache's ``.partial/`` copy lacks, and commits the study only
when every listed instance is there. What can go wrong, each one line (:class:`PacsError`):

- the study is not on the PACS, or has no CT series (the modalities it has are named), or the
  series asked for is not CT;
- the PACS returns fewer instances than it listed ("half a study"): what arrived stays in
  ``.partial/`` (invisible), and the next ``get`` fetches only the rest;
- down / refused / timed out / cancelled: the same, resumable.

``pacs://SERVER/STUDY_UID[/SERIES_UID]`` (SERVER a name of the PACS settings file) is how other
commands name a PACS study: :func:`fetch_uri` gets it and returns the cached folder, so the normal
reader and library take it from there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from engine.pacs.cache import CachedStudy, StudyCache, check_uid
from engine.pacs.errors import PacsError
from engine.pacs.query import SeriesMatch

CT = "CT"
SCHEME = "pacs://"


@dataclass(frozen=True)
class GetResult:
    study: CachedStudy
    cached: bool  # True: served from the cache, nothing fetched
    fetched: int  # instances fetched this time
    resumed: int  # instances that were already in .partial/ from an interrupted retrieval
    series: list[SeriesMatch]
    skipped: list[SeriesMatch]  # series of the study that are not CT (not fetched)


def _describe(series: list[SeriesMatch]) -> str:
    counts: dict[str, int] = {}
    for s in series:
        counts[s.modality or "?"] = counts.get(s.modality or "?", 0) + 1
    return ", ".join(f"{m} x{n}" for m, n in sorted(counts.items()))


def get_study(client, study_uid: str, cache: StudyCache, *, series_uid: str | None = None, refresh: bool = False,
              progress: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None) -> GetResult:
    """Fetch ``study_uid`` (its CT series, or ``series_uid``) into ``cache`` (module doc)."""
    study_uid = check_uid(study_uid, "StudyInstanceUID")
    if series_uid is not None:
        series_uid = check_uid(series_uid, "SeriesInstanceUID")
    # one process at a time per study: a second one waits, then finds it in the cache
    with cache.holding(study_uid):
        return _get_locked(client, study_uid, cache, series_uid, refresh, progress, cancel)


def _get_locked(client, study_uid, cache, series_uid, refresh, progress, cancel) -> GetResult:
    server = client.server
    cached = cache.get(study_uid)
    if cached is not None and not refresh and (series_uid in cached.series if series_uid else cached.all_ct):
        cache.touch(study_uid)
        return GetResult(cache.get(study_uid) or cached, True, 0, 0, [], [])

    listed = client.find_series(study_uid)
    if not listed:
        raise PacsError(f"study {study_uid} is not on the PACS (no series found)", server.address)
    if series_uid:
        chosen = [s for s in listed if s.series_uid == series_uid]
        if not chosen:
            raise PacsError(f"study {study_uid} has no series {series_uid} (it has {len(listed)}: "
                            f"{_describe(listed)})", server.address)
        if chosen[0].modality != CT:
            raise PacsError(f"series {series_uid} is {chosen[0].modality or 'of no modality'}, not CT: "
                            "SpeechCT reads CT only", server.address)
    else:
        chosen = [s for s in listed if s.modality == CT]
        if not chosen:
            raise PacsError(f"study {study_uid} has no CT series (it has {_describe(listed)}): "
                            "SpeechCT reads CT only", server.address)
    skipped = [s for s in listed if s not in chosen]

    expected: dict[str, set[str]] = {}
    for s in chosen:
        expected[s.series_uid] = {check_uid(u, "SOPInstanceUID") for u in client.find_instances(study_uid, s.series_uid)}
        if not expected[s.series_uid]:
            raise PacsError(f"series {s.series_uid} of study {study_uid} lists no instances", server.address)
    total = sum(len(v) for v in expected.values())

    with cache.retrieving(study_uid, reuse_complete=cached is not None) as partial:
        had = {uid: partial.have(uid) & want for uid, want in expected.items()}
        resumed = sum(len(v) for v in had.values())
        done = resumed
        counter = {"n": 0}

        def sink(ds):
            nonlocal done
            if partial.write(ds):
                counter["n"] += 1
                done += 1
                if progress is not None:
                    progress(min(done, total), total)

        if progress is not None:
            progress(done, total)
        for s in chosen:
            want = expected[s.series_uid]
            missing = want - had[s.series_uid]
            if not missing:
                continue
            client.retrieve(study_uid, s.series_uid, None if missing == want else missing, sink, cancel)
        short = {uid: len(want - partial.have(uid)) for uid, want in expected.items()}
        if any(short.values()):
            n_missing = sum(short.values())
            raise PacsError(f"half a study: {total - n_missing} of {total} instances of study {study_uid} came "
                            f"back ({n_missing} listed but not sent); nothing was added, run it again to fetch "
                            "the rest", server.address)
        # a complete copy that was moved back in may hold more series than asked for this time: keep them
        kept = {p.name for p in partial.folder.iterdir() if p.is_dir()}
        old = cached.series if cached is not None else {}
        series_record = {uid: rec for uid, rec in old.items() if uid in kept}
        for s in chosen:
            series_record[s.series_uid] = {"modality": s.modality, "description": s.description,
                                           "n_instances": len(expected[s.series_uid])}
        all_ct = series_uid is None or bool(cached and cached.all_ct)
        study = partial.commit(server=str(server), series=series_record, all_ct=all_ct)
    return GetResult(study, False, counter["n"], resumed, chosen, skipped)


def is_pacs_uri(text: str | Path) -> bool:
    return isinstance(text, str) and text.lower().startswith(SCHEME)


def parse_pacs_uri(uri: str) -> tuple[str, str, str | None]:
    """``pacs://SERVER/STUDY_UID[/SERIES_UID]`` → (server name, study UID, series UID or None)."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        raise PacsError("credentials do not go in a pacs:// address: put them in the PACS settings file", uri)
    path = [p for p in parts.path.split("/") if p]
    if parts.scheme.lower() != "pacs" or not parts.netloc or len(path) not in (1, 2) or parts.query:
        raise PacsError("expected pacs://SERVER/STUDY_UID[/SERIES_UID] (SERVER: a name in the PACS settings file)",
                        uri)
    study = check_uid(path[0], "StudyInstanceUID")
    series = check_uid(path[1], "SeriesInstanceUID") if len(path) == 2 else None
    return parts.netloc, study, series


def fetch_uri(uri: str, *, settings: Path | None = None, cache: StudyCache | None = None,
              progress: Callable[[int, int], None] | None = None) -> tuple[Path, str | None, GetResult]:
    """Get the study a ``pacs://`` address names into the cache: (cached folder, series UID or None, result)."""
    from engine.pacs.client import connect
    from engine.pacs.settings import resolve_server

    name, study_uid, series_uid = parse_pacs_uri(uri)
    server = resolve_server(name, settings=settings)
    cache = cache or StudyCache.from_settings(settings)
    client = connect(server)
    try:
        result = get_study(client, study_uid, cache, series_uid=series_uid, progress=progress)
    finally:
        client.close()
    folder = result.study.folder / series_uid if series_uid else result.study.folder
    return folder, series_uid, result
