"""The study library's on-disk half: one SQLite file (WAL) holding study rows and their vectors.

Why vectors live in SQLite BLOBs rather than a ``.npy`` sidecar: a study row and its vectors are
written in *one* transaction, so a kill -9 at any instant leaves either both or neither (WAL +
``ON DELETE CASCADE`` also make removal atomic). A sidecar would need a second store kept in step
with the database (orphans after a crash between the two writes) and would be rewritten whole,
O(n), for every added study. Reading 1e5 vectors back into one matrix takes well under a second
(``bench/library_search.py`` measures it), which happens once per process.

Schema (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`)::

    meta(key TEXT PRIMARY KEY, value TEXT)     -- bundle_hash, dim, dtype, created_at
    studies(id INTEGER PRIMARY KEY,
            uid TEXT UNIQUE NOT NULL,          -- dedupe key: series UID, or "sha256:…" of the voxels
            study_uid, series_uid, path, series, date, description, modality, format TEXT,
            n_slices INTEGER, spacing_z/y/x REAL (mm),
            bundle_hash TEXT NOT NULL,         -- bundle whose encoders made this row's vectors
            dictation_path TEXT, added_at TEXT NOT NULL)  -- ISO 8601 UTC
    vectors(study_id → studies.id ON DELETE CASCADE, kind 'ct'|'dictation',
            dtype 'float32'|'float16', vector BLOB (little-endian, dim values),
            PRIMARY KEY (study_id, kind))

No patient name, ID, birth date or other identifying field is ever stored (only the safe
metadata of :data:`engine.volume.SAFE_METADATA_KEYS`).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from engine.errors import DataError

SCHEMA_VERSION = 1
DB_NAME = "library.sqlite"
VECTOR_KINDS = ("ct", "dictation")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    study_uid TEXT,
    series_uid TEXT,
    path TEXT,
    series TEXT,
    date TEXT,
    description TEXT,
    modality TEXT,
    format TEXT,
    n_slices INTEGER,
    spacing_z REAL,
    spacing_y REAL,
    spacing_x REAL,
    bundle_hash TEXT NOT NULL,
    dictation_path TEXT,
    added_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_series_uid ON studies(series_uid);
CREATE INDEX IF NOT EXISTS studies_study_uid ON studies(study_uid);
CREATE INDEX IF NOT EXISTS studies_path ON studies(path);
CREATE TABLE IF NOT EXISTS vectors (
    study_id INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('ct', 'dictation')),
    dtype TEXT NOT NULL CHECK (dtype IN ('float32', 'float16')),
    vector BLOB NOT NULL,
    PRIMARY KEY (study_id, kind)
);
"""

_STUDY_COLUMNS = (
    "uid, study_uid, series_uid, path, series, date, description, modality, format, n_slices, "
    "spacing_z, spacing_y, spacing_x, bundle_hash, dictation_path, added_at"
)


#: The tables (and the columns) a library file holds; any other table means another program's file.
LIBRARY_TABLES = {
    "meta": {"key", "value"},
    "studies": {c.strip() for c in ("id, " + _STUDY_COLUMNS).split(",")},
    "vectors": {"study_id", "kind", "dtype", "vector"},
}


class ForeignDatabase(Exception):
    """The file is SQLite but not a SpeechCT library (or one of a newer schema); nothing was written."""


def check_schema(conn: sqlite3.Connection) -> None:
    """Read-only: raise :class:`ForeignDatabase` unless the file is empty or a library of our schema.

    Runs before anything is written, so a foreign file is left exactly as it was (no WAL switch, no
    ``meta`` table)."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
              if not r[0].startswith("sqlite_")}
    if not tables and version == 0:
        return  # a new (or empty) file: ours to create
    if version > SCHEMA_VERSION:
        raise ForeignDatabase(f"made by a newer SpeechCT (library schema {version}, this one reads {SCHEMA_VERSION})")
    other = sorted(tables - set(LIBRARY_TABLES))
    missing = sorted(set(LIBRARY_TABLES) - tables)
    if other or missing:
        found = ", ".join(sorted(tables)) or "none"
        raise ForeignDatabase(f"is an SQLite database but not a SpeechCT library (tables: {found})")
    for table, expected in LIBRARY_TABLES.items():
        columns = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if not expected <= columns:
            raise ForeignDatabase(f"table {table} lacks columns {', '.join(sorted(expected - columns))}: "
                                  "not a SpeechCT library")


def connect(db_path: Path) -> sqlite3.Connection:
    """Open (creating) the library database: WAL, foreign keys on, autocommit (explicit BEGINs).

    A file that is not a library (:func:`check_schema`) raises :class:`ForeignDatabase` untouched."""
    conn = sqlite3.connect(str(db_path), timeout=30.0, isolation_level=None, check_same_thread=False)
    try:
        check_schema(conn)
    except BaseException:
        conn.close()
        raise
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a killed process never loses a committed transaction; only a power cut
    # may drop the last few, and the file stays consistent either way.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.executescript(_SCHEMA)
    if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return conn


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class StudyRecord:
    """One library entry (a CT series). ``uid`` is the key that ``get``/``remove`` accept."""

    uid: str
    study_uid: str | None
    series_uid: str | None
    path: str | None  # what load_volume reads again on rebuild (absolute)
    series: str | None  # the ``series=`` selector for load_volume (None: the reader's default)
    date: str | None  # StudyDate as written in the file (YYYYMMDD), when known
    description: str | None
    modality: str | None
    format: str | None  # "dicom" | "dicom-enhanced" | "nifti"
    n_slices: int | None
    spacing: tuple[float, float, float] | None  # (z, y, x) mm
    bundle_hash: str
    dictation_path: str | None
    added_at: str  # ISO 8601, UTC
    has_dictation: bool = False

    def to_json(self) -> dict:
        d = asdict(self)
        d["spacing"] = list(self.spacing) if self.spacing else None
        return d


def db_text(value: Any) -> Any:
    """``value`` as SQLite can store it: a str that is not valid UTF-8 (a file name with undecodable
    bytes, which Python holds as surrogate escapes) goes in as its raw bytes, so it round-trips exactly
    and still matches itself in ``WHERE path = ?``; everything else unchanged."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return os.fsencode(value)
    return value


def from_db(value: Any) -> Any:
    """The inverse of :func:`db_text`."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def record_from_row(row: tuple, has_dictation: bool) -> StudyRecord:
    """A StudyRecord from the ``_STUDY_COLUMNS`` values (spacing stored as three columns)."""
    values: tuple[Any, ...] = tuple(from_db(v) for v in row)
    sz, sy, sx = values[10:13]
    spacing = (sz, sy, sx) if sz is not None else None
    return StudyRecord(*values[:10], spacing, *values[13:], has_dictation=has_dictation)  # type: ignore[misc,call-arg]


def select_records(
    conn: sqlite3.Connection, where: str = "", params: tuple = ()
) -> list[tuple[int, StudyRecord]]:
    """(row id, record) for the studies matching ``where`` (SQL over ``s``), ordered by row id."""
    rows = conn.execute(
        f"SELECT s.id, {', '.join('s.' + c.strip() for c in _STUDY_COLUMNS.split(','))}, "
        "EXISTS (SELECT 1 FROM vectors v WHERE v.study_id = s.id AND v.kind = 'dictation') "
        f"FROM studies s {where} ORDER BY s.id",
        params,
    ).fetchall()
    return [(r[0], record_from_row(r[1:-1], bool(r[-1]))) for r in rows]


def _study_values(rec: StudyRecord) -> tuple:
    """The record's values in ``_STUDY_COLUMNS`` order, as stored (:func:`db_text`)."""
    return tuple(db_text(v) for v in _raw_values(rec))


def _raw_values(rec: StudyRecord) -> tuple:
    return (
        rec.uid,
        rec.study_uid,
        rec.series_uid,
        rec.path,
        rec.series,
        rec.date,
        rec.description,
        rec.modality,
        rec.format,
        rec.n_slices,
        *(rec.spacing or (None, None, None)),
        rec.bundle_hash,
        rec.dictation_path,
        rec.added_at,
    )


def insert_study(conn: sqlite3.Connection, rec: StudyRecord) -> int:
    values = _study_values(rec)
    cur = conn.execute(
        f"INSERT INTO studies ({_STUDY_COLUMNS}) VALUES ({', '.join('?' * len(values))})", values
    )
    assert cur.lastrowid is not None  # an INSERT always sets it
    return int(cur.lastrowid)


def update_study(
    conn: sqlite3.Connection, study_id: int, rec: StudyRecord, *, keep_dictation_path: bool
) -> None:
    columns = [c.strip() for c in _STUDY_COLUMNS.split(",")]
    values = dict(zip(columns, _study_values(rec)))
    if keep_dictation_path:
        del values["dictation_path"]
    sets = ", ".join(f"{c} = ?" for c in values)
    conn.execute(f"UPDATE studies SET {sets} WHERE id = ?", (*values.values(), study_id))


def put_vector(conn: sqlite3.Connection, study_id: int, kind: str, vector: np.ndarray) -> None:
    vec = np.ascontiguousarray(vector).astype(vector.dtype.newbyteorder("<"), copy=False)
    conn.execute(
        "INSERT OR REPLACE INTO vectors (study_id, kind, dtype, vector) VALUES (?, ?, ?, ?)",
        (study_id, kind, str(vector.dtype), vec.tobytes()),
    )


def decode_vectors(blobs: list[bytes], dtypes: list[str], dim: int, out_dtype: npt.DTypeLike) -> np.ndarray:
    """Stack BLOBs (each ``dim`` little-endian values of its dtype) into one ``[n, dim]`` matrix.

    Raises ValueError when a BLOB does not hold exactly ``dim`` values (a corrupt file).
    """
    if len(set(dtypes)) == 1:  # the usual case: one join, one cast/copy into a writable matrix
        item = np.dtype(dtypes[0]).newbyteorder("<")
        raw = b"".join(blobs)
        if len(raw) != len(blobs) * dim * item.itemsize:
            raise ValueError(f"{dtypes[0]} vectors do not hold {dim} values each")
        return np.frombuffer(raw, item).reshape(-1, dim).astype(out_dtype)
    out = np.empty((len(blobs), dim), out_dtype)
    kinds = np.array(dtypes, dtype=object)
    for dt in sorted(set(dtypes)):
        idx = np.flatnonzero(kinds == dt)
        raw = b"".join(blobs[i] for i in idx)
        item = np.dtype(dt).newbyteorder("<")
        if len(raw) != len(idx) * dim * item.itemsize:
            raise ValueError(f"{dt} vectors do not hold {dim} values each")
        out[idx] = np.frombuffer(raw, item).reshape(-1, dim)
    return out


class LibraryWriteError(DataError):
    """The library file cannot be written (disk full, I/O error, locked): every further add would fail
    too, so batch imports stop at the first one."""


class StudyStore(Protocol):
    """What :class:`engine.library.Library` needs from its storage: every read and write of study rows,
    vectors and library metadata. :class:`SQLiteStore` is the embedded implementation; a department's
    PostgreSQL (+ pgvector) backend implements the same methods (docs/design.md, "Storage interface").

    Row ids are the store's integer keys; vectors go in and come out as ``[dim]`` arrays of the
    library's dtype. Writes happen inside ``with store.transaction():`` (one atomic unit: all or
    nothing, a storage failure raises :class:`LibraryWriteError`); reads may happen anywhere.
    ``data_version()`` changes when another process commits, so in-memory indexes know to reload.
    """

    location: Path

    def transaction(self) -> AbstractContextManager: ...
    def close(self) -> None: ...
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, **values: object) -> None: ...
    def count(self, *, stale_for: str | None = None) -> int: ...
    def records(self) -> list[tuple[int, StudyRecord]]: ...
    def records_by_ids(self, ids: Iterable[int]) -> dict[int, StudyRecord]: ...
    def stale_records(self, bundle_hash: str) -> list[tuple[int, StudyRecord]]: ...
    def find(self, ident: str) -> tuple[int, StudyRecord] | None: ...
    def has_path(self, path: str) -> bool: ...
    def row_of(self, uid: str) -> tuple[int, str] | None: ...
    def insert(self, rec: StudyRecord) -> int: ...
    def update(self, study_id: int, rec: StudyRecord, *, keep_dictation_path: bool) -> None: ...
    def delete(self, study_id: int) -> None: ...
    def set_bundle_hash(self, study_id: int, bundle_hash: str) -> None: ...
    def dictation_path_of(self, study_id: int) -> str | None: ...
    def put_vector(self, study_id: int, kind: str, vector: np.ndarray) -> None: ...
    def drop_vector(self, study_id: int, kind: str) -> None: ...
    def vector_of(self, study_id: int, kind: str, dim: int) -> np.ndarray | None: ...
    def current_vectors(self, bundle_hash: str) -> list[tuple[int, str, str, bytes]]: ...
    def ids_matching(self, idents: list) -> list[int]: ...
    def data_version(self) -> int: ...


class _Txn:
    """One write transaction. A database error (disk full, I/O error, locked too long) rolls it
    back, so nothing half-written stays, and becomes a :class:`LibraryWriteError` naming the file."""

    def __init__(self, conn: sqlite3.Connection, db_path: Path):
        self.conn = conn
        self.db_path = db_path

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlocks
        except sqlite3.Error as exc:
            raise LibraryWriteError(f"cannot write the study library ({exc})", self.db_path) from exc
        return self.conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> Literal[False]:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return False
            except sqlite3.Error as commit_error:
                exc = commit_error
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite already rolled back (it does on SQLITE_FULL)
        if isinstance(exc, sqlite3.Error):
            raise LibraryWriteError(f"cannot write the study library ({exc})", self.db_path) from exc
        return False


class SQLiteStore:
    """:class:`StudyStore` on one SQLite file (WAL): every SQL statement of the library is here."""

    def __init__(self, db_path: Path):
        self.location = Path(db_path)
        self._conn = connect(self.location)

    def transaction(self) -> _Txn:
        return _Txn(self._conn, self.location)

    def close(self) -> None:
        self._conn.close()

    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, **values: object) -> None:
        self._conn.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [(k, str(v)) for k, v in values.items()]
        )

    def count(self, *, stale_for: str | None = None) -> int:
        """Studies; with ``stale_for``, those whose vectors come from another bundle than it."""
        if stale_for is None:
            return int(self._conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0])
        q = "SELECT COUNT(*) FROM studies WHERE bundle_hash != ?"
        return int(self._conn.execute(q, (stale_for,)).fetchone()[0])

    def records(self) -> list[tuple[int, StudyRecord]]:
        return select_records(self._conn)

    def records_by_ids(self, ids: Iterable[int]) -> dict[int, StudyRecord]:
        ids = [int(s) for s in ids]
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        return dict(select_records(self._conn, f"WHERE s.id IN ({marks})", tuple(ids)))

    def stale_records(self, bundle_hash: str) -> list[tuple[int, StudyRecord]]:
        return select_records(self._conn, "WHERE s.bundle_hash != ?", (bundle_hash,))

    def find(self, ident: str) -> tuple[int, StudyRecord] | None:
        """By uid, else SeriesInstanceUID, else stored path (the first match, in that order)."""
        ident = db_text(str(ident))
        for where in ("WHERE s.uid = ?", "WHERE s.series_uid = ?", "WHERE s.path = ?"):
            found = select_records(self._conn, where, (ident,))
            if found:
                return found[0]
        if Path(from_db(ident)).exists():
            found = select_records(self._conn, "WHERE s.path = ?", (db_text(str(Path(from_db(ident)).resolve())),))
            if found:
                return found[0]
        return None

    def has_path(self, path: str) -> bool:
        q = "SELECT 1 FROM studies WHERE path = ? LIMIT 1"
        return self._conn.execute(q, (db_text(str(path)),)).fetchone() is not None

    def row_of(self, uid: str) -> tuple[int, str] | None:
        """(row id, added_at) of the study with this uid."""
        row = self._conn.execute("SELECT id, added_at FROM studies WHERE uid = ?", (uid,)).fetchone()
        return None if row is None else (int(row[0]), row[1])

    def insert(self, rec: StudyRecord) -> int:
        return insert_study(self._conn, rec)

    def update(self, study_id: int, rec: StudyRecord, *, keep_dictation_path: bool) -> None:
        update_study(self._conn, study_id, rec, keep_dictation_path=keep_dictation_path)

    def delete(self, study_id: int) -> None:
        self._conn.execute("DELETE FROM studies WHERE id = ?", (study_id,))  # vectors cascade

    def set_bundle_hash(self, study_id: int, bundle_hash: str) -> None:
        self._conn.execute("UPDATE studies SET bundle_hash = ? WHERE id = ?", (bundle_hash, study_id))

    def dictation_path_of(self, study_id: int) -> str | None:
        return self._conn.execute("SELECT dictation_path FROM studies WHERE id = ?", (study_id,)).fetchone()[0]

    def put_vector(self, study_id: int, kind: str, vector: np.ndarray) -> None:
        put_vector(self._conn, study_id, kind, vector)

    def drop_vector(self, study_id: int, kind: str) -> None:
        self._conn.execute("DELETE FROM vectors WHERE study_id = ? AND kind = ?", (study_id, kind))

    def vector_of(self, study_id: int, kind: str, dim: int) -> np.ndarray | None:
        row = self._conn.execute(
            "SELECT dtype, vector FROM vectors WHERE study_id = ? AND kind = ?", (study_id, kind)
        ).fetchone()
        return None if row is None else decode_vectors([row[1]], [row[0]], dim, np.float32)[0]

    def current_vectors(self, bundle_hash: str) -> list[tuple[int, str, str, bytes]]:
        """(study id, kind, dtype, blob) of every vector made with ``bundle_hash``, by study id."""
        return self._conn.execute(
            "SELECT v.study_id, v.kind, v.dtype, v.vector FROM vectors v JOIN studies s ON s.id = v.study_id "
            "WHERE s.bundle_hash = ? ORDER BY v.study_id",
            (bundle_hash,),
        ).fetchall()

    def ids_matching(self, idents: list) -> list[int]:
        """Ids of the studies whose uid, SeriesInstanceUID, StudyInstanceUID or path is one of ``idents``."""
        idents = sorted({db_text(str(u)) for u in idents if u}, key=repr)
        if not idents:
            return []
        marks = ", ".join("?" * len(idents))
        rows = self._conn.execute(
            f"SELECT id FROM studies WHERE uid IN ({marks}) OR series_uid IN ({marks}) "
            f"OR study_uid IN ({marks}) OR path IN ({marks})",
            idents * 4,
        ).fetchall()
        return [int(r[0]) for r in rows]

    def data_version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])
