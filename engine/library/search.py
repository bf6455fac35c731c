"""The study library: studies already seen, with their embeddings, searchable by similarity.

One folder (default ``platformdirs.user_data_dir("speechct")/library``) holding ``library.sqlite``
(see :mod:`engine.library.store` for the schema and why vectors are SQLite BLOBs), or a department's
PostgreSQL database given as ``postgresql://USER@HOST:PORT/DB`` (:mod:`engine.library.pg_store`;
``Library.folder`` is then that URL), which every workstation shares. The library takes
*embeddings*, never models: callers (``engine.runtime.Engine``, the CLI, the app) encode and pass
vectors, or pass an encoder callable to :func:`engine.library.ingest.import_tree` / :func:`~engine.library.ingest.rebuild`.

Vectors are in the model's shared space, unit-normalised here, and compared by cosine. A query is
one vector or a dict of named vectors; each query kind is compared with these library kinds
(:data:`QUERY_TARGETS`):

======================  =========================  =======================================
query kind              compared with               why
======================  =========================  =======================================
``"ct"``                CT embeddings               image-to-image similarity
``"dictation"``         CT and dictation embeddings  speech→CT is what the model was trained
                                                    for; dictation→dictation adds the report
``"speech"`` (spoken)   CT embeddings               a free-form phrase is not a report: it
``"text"`` (typed)      CT embeddings               is matched to images, as in zero-shot
======================  =========================  =======================================

**Score.** With one query vector against one library kind (the common case) the score is the
cosine. With several (query, library-kind) pairs the cosines live on different scales (CT·CT
cosines sit near 1, speech·CT ones far lower: the modality gap), so each pair's cosines are first
standardised over the library (z = (cos − mean) / std), the pairs of one query kind are averaged
over those the study has (a study without a dictation is not penalised), and the query kinds are
combined by a weighted mean (``weights``: query kind → weight, default equal). Libraries with
fewer than ``MIN_ROWS_FOR_STATS`` vectors of a kind combine raw cosines instead: statistics over a
handful of studies are noise. ``Hit.cosines`` keeps
every raw cosine.

**Never the query itself.** ``exclude_uids`` drops every row whose uid, SeriesInstanceUID,
StudyInstanceUID or path matches, so all series of the query's study are left out; pass
:func:`query_uids` of the query volume.

**Bundle hash.** The library records the bundle its vectors came from. Opened with another bundle
it says so (a :class:`SpeechCTWarning`, ``needs_rebuild``, ``rebuild_message``), refuses to add or
search, and :func:`engine.library.ingest.rebuild` re-embeds every study from its stored path, one transaction per
study (resumable).

**Backends.** ``"numpy"``: exact search over one contiguous matrix (float16 by default, float32 on
request, see :mod:`engine.library.vectors`). A query reads every stored vector, so search time is memory
bandwidth: float16 halves it (docs/performance.md) for top-10 agreement 0.996 with
float32 (the misses are ties below float16's resolution). ``"faiss"``: a FAISS index over the same rows (flat = exact up to
``IVF_MIN_ROWS`` rows per kind, IVF above), whose candidates are re-scored exactly; combined
queries then rank the union of each pair's top candidates. ``"auto"``: FAISS (IVF) when it is
installed and the library holds ≥ :data:`AUTO_FAISS_MIN_ROWS` studies (2e4), exact numpy otherwise
(also whenever faiss-cpu is missing). Both keep the numpy matrix (for exact re-scoring), so FAISS
doubles the memory of the vectors.

**The saved IVF index** (embedded libraries): training an IVF index takes seconds per 1e5 rows, so it
is kept beside the database as ``library.<kind>.faiss`` (:meth:`FaissIndex.save`, written whole or
not at all) and loaded by the next process. The database stays the only truth: a loaded file must
name this bundle hash, dim and dtype and match its CRC-32, and then every id and vector in it is
checked against the rows just read from the database; entries that differ are removed and missing
studies added (:meth:`FaissIndex.sync`). When it is built, the index probes as many lists as it takes
for recall@10 ≥ 0.95 on a sample of the library's own rows (:meth:`FaissIndex.calibrate`; up to all
lists, i.e. exact, on rows too crowded for IVF), and the file keeps that number. A file that fails a check is rebuilt (a log warning says
why), as is an index trained on a quarter or four times today's rows. Studies added or removed in
this process update the index in memory; the file is rewritten when a load had to mend
:data:`SAVE_MIN_CHANGES` rows or more, and at :meth:`Library.close`. ``"pgvector"`` (PostgreSQL
libraries only): the candidates come from the database's HNSW index (cosine) and are re-scored
exactly in the same way; ``"auto"`` takes it on a PostgreSQL library from
:data:`AUTO_PGVECTOR_MIN_ROWS` studies on, exact numpy below.

Thread-safe: one lock serialises calls of one ``Library``; several processes may open the same
folder (SQLite WAL) or database (PostgreSQL); a process sees another's commits at its next search
(which then reloads the vectors).
"""

from __future__ import annotations

import builtins
import logging
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import DataError, SpeechCTError, SpeechCTWarning
from engine.library.pg_store import check_url, is_postgres_url
from engine.library.store import (
    DB_NAME,
    VECTOR_KINDS,
    ForeignDatabase,
    SQLiteStore,
    StudyRecord,
    StudyStore,
    decode_vectors,
    utc_now,
)
from engine.library.vectors import (
    IVF_MIN_ROWS,
    ExactIndex,
    FaissIndex,
    IndexFileError,
    check_dtype,
    faiss_available,
    top_k,
)
from engine.study_identity import study_key
from engine.volume import Volume

__all__ = [
    "AUTO_FAISS_MIN_ROWS",
    "QUERY_KINDS",
    "QUERY_TARGETS",
    "Hit",
    "Library",
    "StudyRecord",
    "default_library_dir",
    "query_uids",
    "study_key",
]

#: Below this many vectors of a kind, combined scores use raw cosines (module doc).
MIN_ROWS_FOR_STATS = 10

QUERY_TARGETS: dict[str, tuple[str, ...]] = {
    "ct": ("ct",),
    "dictation": ("ct", "dictation"),
    "speech": ("ct",),
    "text": ("ct",),
}
QUERY_KINDS = tuple(QUERY_TARGETS)
log = logging.getLogger(__name__)

#: "auto" uses FAISS from this many studies on, where FAISS switches to IVF: below it an exact search is
#: about as fast (bench/library_search.py; FAISS's own flat index is slower than numpy's product here).
AUTO_FAISS_MIN_ROWS = IVF_MIN_ROWS
#: A saved IVF index is rewritten after a load that had to add or remove at least this many rows.
SAVE_MIN_CHANGES = 1000
#: An index whose entries differ from the library's rows in more than this fraction is trained again: its
#: lists were trained on other vectors (a foreign or very old file), so its recall is not to be trusted.
MAX_REMOVED_FRACTION = 0.25
#: "auto" on a PostgreSQL library takes candidates from its HNSW index from this many studies on (below it
#: exact numpy is fast and exact; bench/library_search.py).
AUTO_PGVECTOR_MIN_ROWS = 100_000
BACKENDS = ("numpy", "faiss", "pgvector", "auto")


def default_library_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("speechct")) / "library"


def check_library_location(path) -> None:
    """A library is a local folder or a PostgreSQL URL (``postgresql://USER@HOST:PORT/DB``, no password
    in it: :mod:`engine.library.pg_store`). Any other URL would otherwise become a folder named after
    its scheme in the working directory: refuse it at once, before anything slow."""
    text = "" if path is None else str(path)
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme is None:
        return
    if scheme.group(1).lower() in ("postgres", "postgresql"):
        from engine.library.pg_store import check_url

        check_url(text)
        return
    if scheme.group(1).lower() in ("postgresql+psycopg", "postgresql+psycopg2"):
        raise DataError("give the library as postgresql://USER@HOST:PORT/DB (no driver suffix)", text)
    raise DataError(f"a library must be a local folder or a postgresql:// URL, not a {scheme.group(1)}:// URL",
                    text)


def query_uids(volume: Volume, series: str | None = None, *, key: str | None = None) -> set[str]:
    """Every identifier under which ``volume`` (a query study) may sit in a library: pass as ``exclude_uids``.
    ``key``: the volume's :func:`study_key` when already known (it is not computed again)."""
    ids = {study_key(volume, series)} if key is None else {key, *([series] if series else [])}
    for key in ("series_uid", "study_uid", "source"):
        if volume.metadata.get(key):
            ids.add(str(volume.metadata[key]))
    if volume.metadata.get("source"):
        ids.add(str(Path(volume.metadata["source"]).resolve()))
    return ids


@dataclass(frozen=True)
class Hit:
    record: StudyRecord
    score: float  # cosine for a single (query, kind) pair, else a weighted mean of z-scores (module doc)
    cosines: dict[str, float]  # "<query kind>→<library kind>" → cosine, for the pairs this study has

    def to_json(self) -> dict:
        return {"score": self.score, "cosines": dict(self.cosines), "study": self.record.to_json()}


class Library:
    """A folder of studies and their embeddings; see the module docstring for the rules."""

    #: FAISS's IVF index from this many rows of a kind ("auto" uses FAISS from there; tests lower it)
    ivf_min_rows: int = AUTO_FAISS_MIN_ROWS

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        bundle_hash: str,
        dim: int,
        backend: str = "auto",
        dtype: str = "float16",
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "faiss" and not faiss_available():
            raise DataError("the FAISS backend needs the faiss-cpu package (pip install faiss-cpu)")
        if not bundle_hash:
            raise ValueError("bundle_hash must be a non-empty string")
        check_library_location(path)
        self.bundle_hash = str(bundle_hash)
        self.dim = int(dim)
        self.dtype = check_dtype(dtype)
        self.backend = backend
        self._lock = threading.RLock()
        if is_postgres_url(path):
            from engine.library.pg_store import PostgresStore

            #: the library folder, or the database's URL (without password): what messages name
            self.folder: Path | str = check_url(str(path))
            pg = PostgresStore(str(path), dim=self.dim)  # its errors name the URL
            self._store: StudyStore = pg
            self._nearest: Callable[[str, np.ndarray, int, str], np.ndarray] | None = pg.nearest
        else:
            if backend == "pgvector":
                raise DataError("the pgvector backend needs a postgresql:// library")
            folder = self.folder = Path(path) if path is not None else default_library_dir()
            self._nearest = None
            try:
                folder.mkdir(parents=True, exist_ok=True)
                self._store = SQLiteStore(folder / DB_NAME)
            except ForeignDatabase as exc:
                raise DataError(f"{exc}; refusing to use it as the study library (nothing was written)",
                                folder / DB_NAME) from exc
            except (OSError, SpeechCTError) as exc:
                raise DataError(f"cannot open the study library ({exc})", folder) from exc
            except Exception as exc:  # sqlite3.DatabaseError: not a database, locked, ...
                raise DataError(f"cannot open the study library ({exc})", folder / DB_NAME) from exc
        self._indexes: dict[str, ExactIndex] | None = None
        self._faiss: dict[str, FaissIndex] = {}
        self._pgvector = False  # candidates from the PostgreSQL store's HNSW index (backend "pgvector")
        self._data_version: int | None = None
        self._init_meta()
        if self.needs_rebuild:
            warnings.warn(self.rebuild_message, SpeechCTWarning, stacklevel=2)

    # ------------------------------------------------------------------ metadata and bundle hash
    def _meta(self, key: str) -> str | None:
        return self._store.get_meta(key)

    def _set_meta(self, **values) -> None:
        self._store.set_meta(**values)

    def _init_meta(self) -> None:
        with self._lock, self._transaction():
            built_with = self._meta("bundle_hash")
            n = self._store.count()
            if built_with is None or (built_with != self.bundle_hash and n == 0):
                self._set_meta(bundle_hash=self.bundle_hash, dim=self.dim)
                if self._meta("created_at") is None:
                    self._set_meta(created_at=utc_now())
            elif built_with == self.bundle_hash and int(self._meta("dim") or self.dim) != self.dim:
                raise DataError(
                    f"library vectors have dim {self._meta('dim')} but the bundle's space has dim {self.dim}",
                    self.folder,
                )

    @property
    def built_with(self) -> str:
        """Bundle hash the library's vectors were made with (the last completed rebuild's)."""
        with self._lock:
            return self._meta("bundle_hash") or self.bundle_hash

    @property
    def stale_count(self) -> int:
        """Studies whose vectors come from another bundle (not searched until re-embedded)."""
        with self._lock:
            return self._store.count(stale_for=self.bundle_hash)

    @property
    def needs_rebuild(self) -> bool:
        return self.built_with != self.bundle_hash or self.stale_count > 0

    @property
    def rebuild_message(self) -> str:
        stale = self.stale_count
        if not self.needs_rebuild:
            return f"{self.folder}: library is up to date with bundle {self.bundle_hash[:12]}"
        if self.built_with != self.bundle_hash:
            return (
                f"{self.folder}: library was built with model bundle {self.built_with[:12]}, this engine uses "
                f"{self.bundle_hash[:12]}; {stale} studies must be re-embedded (speechct index rebuild)"
            )
        return (
            f"{self.folder}: {stale} studies still hold vectors from another model bundle and are left out of "
            "searches (their files could not be re-read; speechct index rebuild retries them)"
        )

    def _require_current(self) -> None:
        if self.built_with != self.bundle_hash:
            raise DataError(self.rebuild_message)

    # ------------------------------------------------------------------ transactions
    def _transaction(self):
        """One write transaction of the store (all or nothing; a storage failure is a LibraryWriteError)."""
        return self._store.transaction()

    def close(self) -> None:
        """Close the store; first save the IVF indexes if studies were added or removed since their file."""
        with self._lock:
            for kind, fi in self._faiss.items():
                if fi.unsaved:
                    self._save_faiss(kind, fi)
            self._store.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ records
    def __len__(self) -> int:
        with self._lock:
            return self._store.count()

    def list(self) -> list[StudyRecord]:
        """Every study, in the order they were added."""
        with self._lock:
            return [rec for _, rec in self._store.records()]

    def _find(self, ident: str) -> tuple[int, StudyRecord] | None:
        """By uid, else SeriesInstanceUID, else stored path (the first match, in that order)."""
        return self._store.find(ident)

    def get(self, uid: str) -> StudyRecord | None:
        """The study with this uid (or SeriesInstanceUID, or path), None when absent."""
        with self._lock:
            found = self._find(uid)
            return found[1] if found else None

    def __contains__(self, uid: str) -> bool:
        return self.get(uid) is not None

    def has_path(self, path: str | Path) -> bool:
        with self._lock:
            return self._store.has_path(str(Path(path).resolve()))

    def remove(self, uid: str) -> StudyRecord:
        """Remove one study and its vectors (one transaction); DataError when it is not there."""
        with self._lock:
            found = self._find(uid)
            if found is None:
                raise DataError(f"no study {uid!r} in the library", self.folder)
            sid, rec = found
            with self._transaction():
                self._store.delete(sid)  # vectors go with it
            self._forget([sid])
            return rec

    # ------------------------------------------------------------------ adding
    def _unit(self, vector, what: str) -> np.ndarray:
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        if v.shape != (self.dim,):
            raise ValueError(f"{what} has {v.size} values; the library's space has dim {self.dim}")
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError(f"{what} is zero or not finite")
        return v / norm

    def add_study(
        self,
        volume: Volume,
        embedding,
        *,
        dictation_path: str | Path | None = None,
        dictation_embedding=None,
        series: str | None = None,
        replace: bool = True,
    ) -> StudyRecord | None:
        """Add (or update) one CT series with its CT embedding and optional dictation; one transaction.

        ``replace=False``: a study already present is left as it is and None is returned; the check
        and the insert are one write transaction, so of several processes adding the same study
        exactly one adds it (a batch import counts the others as "already in the library").

        ``volume``: the loaded study (``series``: its series uid when the reader split it). The key is :func:`study_key`: adding a series already present replaces its CT
        vector and metadata (a dictation given now replaces the old one; none keeps the old one).
        ``embedding``/``dictation_embedding``: ``[dim]`` vectors in the bundle's space (normalised here).
        """
        ct = self._unit(embedding, "CT embedding")
        dictation = (
            None if dictation_embedding is None else self._unit(dictation_embedding, "dictation embedding")
        )
        rec = self._record_for(volume, series, dictation_path)
        with self._lock:
            self._require_current()
            with self._transaction():
                old = self._store.row_of(rec.uid)
                if old is not None and not replace:
                    return None
                if old is None:
                    sid = self._store.insert(rec)
                else:  # same series again: new vectors and metadata, same row id and added_at
                    sid = old[0]
                    keep_dictation = dictation is None
                    rec = _replace(rec, added_at=old[1])
                    self._store.update(sid, rec, keep_dictation_path=keep_dictation)
                    if keep_dictation:
                        dictation = self._store.vector_of(sid, "dictation", self.dim)
                        rec = _replace(rec, dictation_path=self._store.dictation_path_of(sid))
                self._store.put_vector(sid, "ct", ct.astype(self.dtype))
                if dictation is not None:
                    self._store.put_vector(sid, "dictation", np.asarray(dictation).astype(self.dtype))
            if old is not None:
                self._forget([sid])
            self._remember(sid, ct, dictation)
            return _replace(rec, has_dictation=dictation is not None)

    def _record_for(self, volume: Volume, series: str | None, dictation_path) -> StudyRecord:
        meta = volume.metadata
        source = meta.get("source")
        fmt = meta.get("format")
        if series is None and fmt != "nifti" and meta.get("series_uid"):
            series = str(meta["series_uid"])
        return StudyRecord(
            uid=study_key(volume, series),
            study_uid=meta.get("study_uid") or None,
            series_uid=meta.get("series_uid") if fmt != "nifti" else None,
            path=str(Path(source).resolve()) if source else None,
            series=series if fmt != "nifti" else None,
            date=meta.get("study_date") or None,
            description=meta.get("series_description") or meta.get("study_description") or None,
            modality=meta.get("modality") or None,
            format=fmt,
            n_slices=int(volume.shape[0]),
            spacing=(float(volume.spacing[0]), float(volume.spacing[1]), float(volume.spacing[2])),
            bundle_hash=self.bundle_hash,
            dictation_path=str(Path(dictation_path).resolve()) if dictation_path else None,
            added_at=utc_now(),
            has_dictation=False,
        )

    # ------------------------------------------------------------------ in-memory indexes
    def _rows_version(self) -> int:
        return self._store.data_version()

    def _ensure_loaded(self) -> dict[str, ExactIndex]:
        """Load (or reload after another process committed) every current vector into memory."""
        version = self._rows_version()
        if self._indexes is not None and version == self._data_version:
            return self._indexes
        rows = self._store.current_vectors(self.bundle_hash)
        indexes = {}
        for kind in VECTOR_KINDS:
            mine = [r for r in rows if r[1] == kind]
            index = ExactIndex(self.dim, str(self.dtype))
            try:
                mat = decode_vectors([r[3] for r in mine], [r[2] for r in mine], self.dim, self.dtype)
            except ValueError as exc:
                raise DataError(
                    f"library vectors are corrupt ({exc}); rebuild the library", self.folder
                ) from exc
            index.reset(np.array([r[0] for r in mine], np.int64), mat)
            indexes[kind] = index
        self._indexes = indexes
        self._data_version = version
        self._pgvector = self._use_pgvector(len(indexes["ct"]))
        if not self._pgvector and self._use_faiss(len(indexes["ct"])):
            self._faiss = {kind: self._faiss_index(kind, index) for kind, index in indexes.items()}
        else:
            self._faiss = {}
        return indexes

    def _faiss_path(self, kind: str) -> Path | None:
        """Where the IVF index of ``kind`` is saved: beside an embedded library's database, None for PostgreSQL."""
        return None if self._nearest is not None or not isinstance(self.folder, Path) else (
            self.folder / f"library.{kind}.faiss")

    def _faiss_index(self, kind: str, exact: ExactIndex) -> FaissIndex:
        """The FAISS index of ``kind`` holding exactly ``exact``'s rows: the one in memory (after another
        process committed) or the saved one, checked and mended (:meth:`FaissIndex.sync`); else a new one."""
        path = self._faiss_path(kind)
        fi = self._faiss.get(kind)
        if fi is None and path is not None and len(exact) >= self.ivf_min_rows and path.exists():
            try:
                fi = FaissIndex.load(path, dim=self.dim, dtype=str(self.dtype), bundle_hash=self.bundle_hash,
                                     ivf_min_rows=self.ivf_min_rows)
            except IndexFileError as exc:
                log.warning("%s: %s; building the search index again", path, exc)
        if fi is not None and not fi.fits(len(exact)):
            fi = None
        if fi is not None:
            held = len(fi)
            removed, _ = fi.sync(exact)
            if removed > MAX_REMOVED_FRACTION * held:  # not this library's index (or a copy from long ago)
                log.warning("%s: %d of its %d entries differ from the library; building the search index again",
                            path or self.folder, removed, held)
                fi = None
        if fi is None:
            fi = FaissIndex(self.dim, str(self.dtype), ivf_min_rows=self.ivf_min_rows)
            fi.build(exact.ids, exact.rows)
            if fi.kind == "ivf":
                recall = fi.calibrate(exact)
                log.info("%s: %s IVF index of %d rows, %d of %d lists probed (recall@10 %.3f on its own rows)",
                         self.folder, kind, len(fi), fi.nprobe, fi._index.nlist, recall)
        if fi.unsaved >= SAVE_MIN_CHANGES:
            self._save_faiss(kind, fi)
        return fi

    def _save_faiss(self, kind: str, fi: FaissIndex) -> None:
        path = self._faiss_path(kind)
        if path is None or fi.kind != "ivf":
            return
        try:
            fi.save(path, bundle_hash=self.bundle_hash)
        except OSError as exc:  # a read-only or full disk: searches go on, the next process builds it again
            log.warning("%s: cannot save the search index (%s)", path, exc.strerror or exc)

    def _use_pgvector(self, n: int) -> bool:
        if self._nearest is None:
            return False
        return self.backend == "pgvector" or (self.backend == "auto" and n >= AUTO_PGVECTOR_MIN_ROWS)

    def _use_faiss(self, n: int) -> bool:
        if self.backend == "faiss":
            return True
        return self.backend == "auto" and n >= self.ivf_min_rows and faiss_available()

    @property
    def backend_in_use(self) -> str:
        with self._lock:
            self._ensure_loaded()
            return "pgvector" if self._pgvector else "faiss" if self._faiss else "numpy"

    def _remember(self, sid: int, ct: np.ndarray, dictation: np.ndarray | None) -> None:
        """Apply our own add to the loaded indexes (our commits do not change PRAGMA data_version)."""
        if self._indexes is None:
            return
        for kind, vec in (("ct", ct), ("dictation", dictation)):
            if vec is None:
                continue
            self._indexes[kind].add(np.array([sid]), vec[None])
            if kind in self._faiss:
                self._faiss[kind].add(np.array([sid]), vec[None])
        self._recheck_index_choice()

    def _forget(self, sids: builtins.list[int]) -> None:
        if self._indexes is None:
            return
        for kind, index in self._indexes.items():
            index.remove(np.asarray(sids))
            if kind in self._faiss:
                self._faiss[kind].remove(np.asarray(sids))
        self._recheck_index_choice()

    def _recheck_index_choice(self) -> None:
        """After our own adds or removals: when the library crossed the IVF threshold (or outgrew its IVF
        index), reload at the next search, which chooses and builds the index again."""
        assert self._indexes is not None
        if self._pgvector:
            return
        counts = {kind: len(index) for kind, index in self._indexes.items()}
        if bool(self._faiss) != self._use_faiss(counts["ct"]) or any(
            not fi.fits(counts[kind]) for kind, fi in self._faiss.items()
        ):
            self._indexes = None

    # ------------------------------------------------------------------ search
    def _query_vectors(self, query) -> dict[str, np.ndarray]:
        if not isinstance(query, Mapping):
            query = {"ct": query}
        out = {}
        for kind, vec in query.items():
            if kind not in QUERY_TARGETS:
                raise ValueError(f"query kind {kind!r} is not one of {QUERY_KINDS}")
            if vec is not None:
                out[kind] = self._unit(vec, f"{kind} query")
        if not out:
            raise ValueError("empty query: give at least one vector")
        return out

    def _excluded_ids(self, exclude_uids: Iterable[str]) -> np.ndarray:
        return np.array(self._store.ids_matching(list(exclude_uids)), np.int64)

    def search(
        self,
        query,
        k: int = 10,
        *,
        exclude_uids: Iterable[str] = (),
        weights: Mapping[str, float] | None = None,
    ) -> builtins.list[Hit]:
        """The ``k`` most similar studies, best first; see the module docstring for the score.

        ``query``: a ``[dim]`` vector (taken as a CT query) or ``{kind: vector}`` with kinds from
        :data:`QUERY_KINDS`. ``exclude_uids``: uids / series or study UIDs / paths never returned
        (use :func:`query_uids` for the query study). ``weights``: query kind → weight (≥ 0).
        """
        queries = self._query_vectors(query)
        weights = {kind: float((weights or {}).get(kind, 1.0)) for kind in queries}
        if any(w < 0 or not np.isfinite(w) for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"weights must be finite, ≥ 0 and not all 0, got {weights}")
        pairs = [(q, t) for q in queries for t in QUERY_TARGETS[q]]
        with self._lock:
            self._require_current()
            indexes = self._ensure_loaded()
            universe = indexes["ct"]  # every current study has a CT vector
            if len(universe) == 0 or k <= 0:
                return []
            excluded = self._excluded_ids(exclude_uids)
            approximate = bool(self._faiss) or self._pgvector
            if approximate:
                cand = self._candidates(queries, pairs, k, len(excluded))
            else:
                cand = np.arange(len(universe))
            cosines, zs = self._pair_scores(indexes, queries, pairs, cand, exact_stats=not approximate)
            score = self._combine(queries, pairs, cosines, zs, weights)
            if len(excluded) and approximate:
                score[np.isin(universe.ids[cand], excluded)] = -np.inf
            elif len(excluded):  # cand is every row: positions are binary searches
                drop = universe.positions(excluded)
                score[drop[drop >= 0]] = -np.inf
            best = top_k(score, k)
            sids = universe.ids[cand[best]]
            records = self._records_by_id(sids)
            return [
                Hit(
                    record=records[int(sid)],
                    score=float(score[b]),
                    cosines={
                        f"{q}→{t}": float(cosines[(q, t)][b])
                        for q, t in pairs
                        if np.isfinite(cosines[(q, t)][b])
                    },
                )
                for b, sid in zip(best, sids)
            ]

    def _candidates(self, queries, pairs, k: int, n_excluded: int) -> np.ndarray:
        """Positions (in the CT index) of the union of each pair's approximate top candidates (FAISS, or
        the PostgreSQL store's HNSW index); they are re-scored exactly."""
        depth = k + n_excluded if len(pairs) == 1 else max(4 * k, k + 64) + n_excluded
        found = []
        for q, t in pairs:
            if self._pgvector and self._nearest is not None:
                ids = self._nearest(t, queries[q], depth, self.bundle_hash)[None]
            else:
                _, ids = self._faiss[t].search(queries[q][None], depth)
            found.append(ids[0][ids[0] >= 0])
        assert self._indexes is not None  # loaded before any approximate search
        pos = self._indexes["ct"].positions(np.unique(np.concatenate(found)))
        return pos[pos >= 0]

    def _pair_scores(self, indexes, queries, pairs, cand: np.ndarray, *, exact_stats: bool):
        """Per pair: cosines over ``cand`` (NaN where the study lacks that kind) and their z-scores."""
        universe = indexes["ct"]
        cand_ids = universe.ids[cand]
        cosines: dict = {}
        zs: dict = {}
        for q, t in pairs:
            index = indexes[t]
            qv = queries[q][None]
            cos: np.ndarray = np.full(len(cand), np.nan, np.float32)
            pos = np.arange(len(cand)) if t == "ct" and exact_stats else index.positions(cand_ids)
            have = pos >= 0
            if exact_stats:  # every row of this kind is scored: exact mean and std over the library
                full = index.scores(qv)[:, 0]
                if t == "ct":
                    cos = full
                else:
                    cos[have] = full[pos[have]]
                if len(pairs) == 1 or len(full) < MIN_ROWS_FOR_STATS:
                    # A lone cosine is the score itself; and over a handful of studies a mean and
                    # std are noise (two studies always get z = ±1, so combined scores tie at 0).
                    mean, std = 0.0, 1.0
                else:
                    mean, std = (float(full.mean()), float(full.std())) if len(full) else (0.0, 0.0)
            else:
                if have.any():
                    cos[have] = index.score_rows(pos[have], qv)[:, 0]
                if len(pairs) == 1:  # a lone cosine is the score: no statistics needed
                    mean, std = 0.0, 1.0
                else:
                    mu, second = index.moments()
                    qd = queries[q].astype(np.float64)
                    mean = float(qd @ mu)
                    std = float(np.sqrt(max(qd @ second @ qd - mean**2, 0.0)))
            cosines[(q, t)] = cos
            zs[(q, t)] = (cos - mean) / max(std, 1e-6)
        return cosines, zs

    @staticmethod
    def _combine(queries, pairs, cosines, zs, weights) -> np.ndarray:
        if len(pairs) == 1:
            only = cosines[pairs[0]]
            only[~np.isfinite(only)] = -np.inf
            return only
        total = np.zeros(len(next(iter(cosines.values()))))
        weight_sum = np.zeros_like(total)
        for q in queries:
            mine = np.stack([zs[(q, t)] for t in QUERY_TARGETS[q]])
            have = np.isfinite(mine)
            n = have.sum(axis=0)
            s_q = np.where(have, mine, 0.0).sum(axis=0) / np.maximum(n, 1)
            total += np.where(n > 0, weights[q] * s_q, 0.0)
            weight_sum += np.where(n > 0, weights[q], 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            score = total / weight_sum
        return np.where(weight_sum > 0, score, -np.inf)

    def _records_by_id(self, sids: np.ndarray) -> dict[int, StudyRecord]:
        return self._store.records_by_ids(sids)

    # ------------------------------------------------------------------ rebuild (engine.library.ingest.rebuild)
    def stale_studies(self) -> builtins.list[tuple[int, StudyRecord]]:
        """(row id, record) of every study whose vectors another bundle made."""
        with self._lock:
            return self._store.stale_records(self.bundle_hash)

    def replace_vectors(self, sid: int, rec: StudyRecord, ct, dictation=None) -> bool:
        """One stale study re-embedded with this bundle, in one transaction: its CT vector, and its
        dictation's (or, without one, its old dictation vector removed). Returns whether one was removed."""
        ct = self._unit(ct, "CT embedding")
        dictation = None if dictation is None else self._unit(dictation, "dictation embedding")
        dropped = False
        with self._lock, self._transaction():
            self._store.set_bundle_hash(sid, self.bundle_hash)
            self._store.put_vector(sid, "ct", ct.astype(self.dtype))
            if dictation is not None:
                self._store.put_vector(sid, "dictation", dictation.astype(self.dtype))
            elif rec.has_dictation:
                self._store.drop_vector(sid, "dictation")
                dropped = True
        return dropped

    def finish_rebuild(self) -> None:
        """Record this bundle as the one the library's vectors come from (after a rebuild)."""
        with self._lock:
            with self._transaction():
                self._set_meta(bundle_hash=self.bundle_hash, dim=self.dim)
            self._indexes = None  # vectors changed wholesale: reload at the next search
            self._faiss = {}  # and build the FAISS indexes again (a saved file names the old bundle)


def _replace(rec: StudyRecord, **changes) -> StudyRecord:
    import dataclasses

    return dataclasses.replace(rec, **changes)
