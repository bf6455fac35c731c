"""The local study cache: studies retrieved from a PACS, whole or not at all, evicted least recently used first.

Layout under the cache folder (``speechct pacs get`` prints it; default ``<user cache dir>/speechct/pacs``)::

    studies/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   complete studies: the normal reader
    studies/<StudyInstanceUID>/.study.json                               what was retrieved, from where, bytes
    studies/<StudyInstanceUID>/.last-used                                its mtime is the last use
    .partial/<StudyInstanceUID>/...                                      a retrieval under way or interrupted
    .locks/<StudyInstanceUID>.lock, .lock                                one process per study; one evicting

**Atomic.** Instances are written to a hidden temporary name and renamed; a study is retrieved
into ``.partial/`` and appears under ``studies/`` by one rename once every instance the PACS listed
is there. A half-retrieved study is never visible (nor indexable: hidden folders are skipped by the
readers), and a retry resumes from what ``.partial/`` holds (see :mod:`engine.pacs.retrieve`).

**Policy.** A size cap (``max_gb`` in the PACS settings, ``SPEECHCT_PACS_CACHE_GB``, ``--cache-gb``;
default 20 GB). After each new study the least recently used *whole studies* are evicted until the
total fits; use (``get``, ``index add pacs://``, ``rank --ct pacs://``) refreshes a study. The study
just retrieved is never evicted, even if it alone is over the cap, nor is a study another process is
retrieving. Interrupted retrievals in ``.partial/`` count towards nothing and are kept for the retry
(``speechct pacs cache --clear-partial`` drops them). Nothing here is a library: the study library
keeps its own embeddings, and a cached study evicted later can be fetched again.

Identifiers: the cached files are the PACS's own DICOM files (with patient data, like any DICOM
folder a reader opens); the cache's own records (``.study.json``) hold UIDs, dates, modalities,
descriptions and sizes only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.atomic import atomic_path, atomic_write
from engine.pacs.errors import PacsError

try:
    import fcntl
except ImportError:  # Windows: one process per cache (documented)
    fcntl = None

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
STUDY_RECORD = ".study.json"
LAST_USED = ".last-used"


def check_uid(uid: str, what: str = "UID") -> str:
    """A DICOM UID (digits and dots, ≤ 64 characters): the only names the cache makes folders from."""
    uid = str(uid).strip().rstrip("\x00")
    if not _UID.match(uid) or len(uid) > 64:
        raise PacsError(f"not a DICOM {what} (digits and dots, at most 64 characters): {uid[:80]!r}")
    return uid


@dataclass(frozen=True)
class CachedStudy:
    study_uid: str
    folder: Path
    server: str
    retrieved_at: str
    bytes: int
    n_instances: int
    series: dict  # SeriesInstanceUID -> {"modality", "description", "n_instances"}
    all_ct: bool  # every CT series of the study was retrieved (not one chosen with --series)
    last_used: float

    def to_json(self) -> dict:
        return {"study_uid": self.study_uid, "folder": str(self.folder), "server": self.server,
                "retrieved_at": self.retrieved_at, "bytes": self.bytes, "n_instances": self.n_instances,
                "series": self.series, "all_ct": self.all_ct, "last_used": self.last_used}


class _Lock:
    """An exclusive advisory lock on a file (fcntl); a no-op where fcntl is missing."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:
            return True
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return False

    def release(self) -> None:
        if self.fd is not None:
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _folder_bytes(folder: Path) -> tuple[int, int]:
    """(bytes, number of .dcm files) under ``folder``."""
    total = n = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                continue
            n += name.endswith(".dcm")
    return total, n


class Partial:
    """A study being retrieved into ``.partial/<uid>``: instances written atomically, then committed."""

    def __init__(self, cache: StudyCache, study_uid: str):
        self.cache = cache
        self.study_uid = study_uid
        self.folder = cache.root / ".partial" / study_uid
        self.folder.mkdir(parents=True, exist_ok=True)
        for tmp in self.folder.rglob(".*.tmp"):  # a kill mid-file leaves one: it never counted
            tmp.unlink(missing_ok=True)

    def have(self, series_uid: str) -> set[str]:
        """SOPInstanceUIDs of ``series_uid`` already here."""
        folder = self.folder / series_uid
        if not folder.is_dir():
            return set()
        return {p.name[:-4] for p in folder.iterdir() if p.name.endswith(".dcm") and not p.name.startswith(".")}

    def write(self, ds) -> bool:
        """Store one received instance (a pydicom Dataset with file meta) if it belongs to this study.

        Returns False (and writes nothing) for an instance of another study (a C-MOVE receiver may get strays).
        """
        if str(getattr(ds, "StudyInstanceUID", "")) != self.study_uid:
            return False
        series = check_uid(ds.SeriesInstanceUID, "SeriesInstanceUID")
        sop = check_uid(ds.SOPInstanceUID, "SOPInstanceUID")
        folder = self.folder / series
        folder.mkdir(exist_ok=True)
        with atomic_path(folder / f"{sop}.dcm") as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        return True

    def commit(self, *, server: str, series: dict, all_ct: bool) -> CachedStudy:
        """Make the study visible under ``studies/`` (one rename), record it, then evict to the cap."""
        size, n = _folder_bytes(self.folder)
        record = {"study_uid": self.study_uid, "server": server,
                  "retrieved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "bytes": size, "n_instances": n, "series": series, "all_ct": all_ct}
        with atomic_write(self.folder / STUDY_RECORD, "w") as fh:
            fh.write(json.dumps(record, indent=1))
        (self.folder / LAST_USED).touch()
        final = self.cache.root / "studies" / self.study_uid
        final.parent.mkdir(parents=True, exist_ok=True)
        with self.cache._cache_lock():
            if final.exists():  # an older copy (a refresh of a study also in use): replaced whole
                self.cache._discard(final)
            os.rename(self.folder, final)
        self.cache.evict(keep={self.study_uid})
        study = self.cache.get(self.study_uid)
        assert study is not None
        return study


class StudyCache:
    """See the module docstring."""

    def __init__(self, folder: str | Path, max_bytes: int):
        self.root = Path(folder)
        self.max_bytes = int(max_bytes)
        self._held: dict[str, int] = {}
        try:
            (self.root / "studies").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PacsError(f"cannot create the PACS cache ({exc.strerror or exc})", self.root) from exc

    @classmethod
    def from_settings(cls, settings=None, folder=None, max_gb=None) -> StudyCache:
        from engine.pacs.settings import cache_settings

        cs = cache_settings(settings, folder, max_gb)
        return cls(cs.folder, cs.max_bytes)

    # --- locks -----------------------------------------------------------------------------------
    def _cache_lock(self) -> _Lock:
        return _Lock(self.root / ".lock")

    def _study_lock(self, study_uid: str) -> _Lock:
        return _Lock(self.root / ".locks" / f"{study_uid}.lock")

    @contextlib.contextmanager
    def holding(self, study_uid: str) -> Iterator[None]:
        """Hold the study's lock (re-entrant within this object): one process at a time fetches a study."""
        study_uid = check_uid(study_uid, "StudyInstanceUID")
        if study_uid in self._held:
            self._held[study_uid] += 1
            try:
                yield
            finally:
                self._held[study_uid] -= 1
            return
        with self._study_lock(study_uid):
            self._held[study_uid] = 1
            try:
                yield
            finally:
                del self._held[study_uid]

    # --- reading ---------------------------------------------------------------------------------
    def get(self, study_uid: str) -> CachedStudy | None:
        folder = self.root / "studies" / check_uid(study_uid, "StudyInstanceUID")
        try:
            record = json.loads((folder / STUDY_RECORD).read_text())
            last_used = (folder / LAST_USED).stat().st_mtime
        except (OSError, ValueError):
            return None
        return CachedStudy(study_uid, folder, record.get("server", ""), record.get("retrieved_at", ""),
                           int(record.get("bytes", 0)), int(record.get("n_instances", 0)),
                           dict(record.get("series", {})), bool(record.get("all_ct", False)), last_used)

    def list(self) -> list[CachedStudy]:
        """Complete studies, most recently used first."""
        out = []
        for folder in (self.root / "studies").iterdir():
            if folder.is_dir() and _UID.match(folder.name):
                study = self.get(folder.name)
                if study is not None:
                    out.append(study)
        return sorted(out, key=lambda s: -s.last_used)

    def partials(self) -> list[str]:
        folder = self.root / ".partial"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.list())

    def touch(self, study_uid: str) -> None:
        path = self.root / "studies" / check_uid(study_uid) / LAST_USED
        with contextlib.suppress(OSError):
            path.touch()

    # --- writing ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def retrieving(self, study_uid: str, *, reuse_complete: bool = False) -> Iterator[Partial]:
        """Hold the study's lock and yield its :class:`Partial` (resuming what is there).

        ``reuse_complete``: the instances of a complete copy of the study are linked into ``.partial/``
        first (hard links; copies where the file system has none), so that only what it lacks is fetched
        (a refresh, or more series than were cached). The complete copy stays visible until the commit
        replaces it, and stays as it was when the retrieval fails.
        """
        study_uid = check_uid(study_uid, "StudyInstanceUID")
        with self.holding(study_uid):
            complete = self.root / "studies" / study_uid
            partial = Partial(self, study_uid)
            if reuse_complete and complete.is_dir():
                for source in complete.rglob("*.dcm"):
                    target = partial.folder / source.relative_to(complete)
                    if not target.exists():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        try:
                            os.link(source, target)
                        except OSError:
                            shutil.copy2(source, target)
            yield partial

    def _discard(self, folder: Path) -> None:
        """Remove a study folder: first out of sight by one rename, then deleted."""
        trash = self.root / ".trash" / f"{folder.name}-{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def remove(self, study_uid: str) -> bool:
        folder = self.root / "studies" / check_uid(study_uid, "StudyInstanceUID")
        with self.holding(study_uid), self._cache_lock():
            if not folder.exists():
                return False
            self._discard(folder)
            return True

    def clear_partial(self) -> list[str]:
        """Drop interrupted retrievals that no process is working on."""
        dropped = []
        for uid in self.partials():
            lock = self._study_lock(uid)
            if lock.acquire(blocking=False):
                try:
                    shutil.rmtree(self.root / ".partial" / uid, ignore_errors=True)
                    dropped.append(uid)
                finally:
                    lock.release()
        return dropped

    def evict(self, keep: set[str] = frozenset()) -> list[str]:
        """Evict least recently used whole studies until the total fits the cap; returns their UIDs."""
        evicted = []
        with self._cache_lock():
            studies = self.list()
            total = sum(s.bytes for s in studies)
            for study in sorted(studies, key=lambda s: s.last_used):
                if total <= self.max_bytes:
                    break
                if study.study_uid in keep:
                    continue
                lock = self._study_lock(study.study_uid)
                if not lock.acquire(blocking=False):  # another process is retrieving it
                    continue
                try:
                    self._discard(study.folder)
                finally:
                    lock.release()
                total -= study.bytes
                evicted.append(study.study_uid)
        return evicted
