"""The PACS as a reading workstation uses it (the app's PACS tab; Qt-free, one call per action).

- :func:`server_choices`: the servers of the PACS settings file, by name and address (never a
  credential), the default first, each with the one-line problem that makes it unusable, if any;
- :func:`search`: studies matching a :class:`StudyQuery`;
- :func:`retrieve`: a study's CT series into the local cache (:func:`engine.pacs.retrieve.get_study`:
  whole or not at all, resumable), with progress and a cancel event; the cached folder is then read
  like any DICOM folder;

and results go back with :func:`engine.report_sr.send_result` (the SR layer sits above this one).

Each call opens its own connection and closes it; every failure is one :class:`PacsError` line.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.pacs.errors import PacsError
from engine.pacs.query import StudyMatch, StudyQuery
from engine.pacs.settings import PacsServer, load_settings, resolve_server, settings_path


@dataclass(frozen=True)
class ServerChoice:
    name: str
    address: str | None  # None when the entry is unusable
    problem: str | None = None  # the one-line reason it is unusable

    @property
    def label(self) -> str:
        return f"{self.name} ({self.address})" if self.address else f"{self.name} (unusable)"


def server_choices(settings: Path | None = None) -> tuple[list[ServerChoice], list[str]]:
    """(the servers of the settings file, default first; the warnings reading it gave, one line each).

    A settings file that cannot be read raises :class:`PacsError`; a server entry that is wrong (or
    lacks its credentials in the file and the environment) is listed with its problem.
    """
    path = Path(settings) if settings else settings_path()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raw = load_settings(path)
    names = list(raw.get("servers", {}))
    default = raw.get("default")
    if default in names:
        names.remove(default)
        names.insert(0, default)
    out = []
    for name in names:
        try:
            out.append(ServerChoice(name, resolve_server(name, settings=path).address))
        except PacsError as exc:
            out.append(ServerChoice(name, None, exc.message))
    return out, [str(w.message) for w in caught]


def _server(name: str | None, settings: Path | None) -> PacsServer:
    return resolve_server(name or None, settings=settings)


def search(name: str | None, query: StudyQuery, *, settings: Path | None = None) -> list[StudyMatch]:
    """Studies on server ``name`` (None: the settings' default) matching ``query``, newest first."""
    from engine.pacs.client import connect

    client = connect(_server(name, settings))
    try:
        found = client.find_studies(query)
    finally:
        client.close()
    return sorted(found, key=lambda s: (s.date or "", s.study_uid), reverse=True)


def retrieve(name: str | None, study_uid: str, *, progress: Callable[[int, int], None] | None = None,
             cancel: threading.Event | None = None, settings: Path | None = None, cache=None):
    """The study's CT series from server ``name`` into the PACS cache: an
    :class:`engine.pacs.retrieve.GetResult` (``.study.folder`` is the folder to open). A set ``cancel``
    stops it with a PacsError; what arrived stays in the cache's ``.partial/`` and the next call resumes."""
    from engine.pacs.cache import StudyCache
    from engine.pacs.client import connect
    from engine.pacs.retrieve import get_study

    server = _server(name, settings)
    cache = cache or StudyCache.from_settings(settings)
    if cancel is not None and cancel.is_set():
        raise PacsError("retrieval cancelled; run it again to resume", server.address)
    client = connect(server)
    try:
        return get_study(client, study_uid, cache, progress=progress, cancel=cancel)
    finally:
        client.close()
