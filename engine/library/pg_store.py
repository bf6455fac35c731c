"""The study library on a department's PostgreSQL (+ pgvector): :class:`PostgresStore` implements
:class:`engine.library.store.StudyStore`, so :class:`engine.library.Library` works unchanged on it.

Opened by ``Library("postgresql://USER@HOST:PORT/DB")`` (``--library`` on the CLI, the app's library
setting); psycopg and the pgvector adapter are imported only then, so the embedded SQLite default
needs neither. The URL never holds a password (it would show on the command line, in the app's
settings and in every message naming the library): libpq reads it from ``PGPASSWORD``, a
``PGPASSFILE`` / ``~/.pgpass`` (mode 600) or a ``PGSERVICE`` entry, as every PostgreSQL client does.

Schema ``speechct`` (created on first use; ``meta.schema_version`` = :data:`SCHEMA_VERSION`)::

    meta(key TEXT PRIMARY KEY, value TEXT)         -- bundle_hash, dim, created_at, schema_version
    studies(id BIGSERIAL PRIMARY KEY, uid TEXT UNIQUE NOT NULL, ... as the SQLite store ...)
    vectors(study_id → studies.id ON DELETE CASCADE, kind 'ct'|'dictation', dtype TEXT,
            embedding vector (pgvector, float32), PRIMARY KEY (study_id, kind))
    version(id = 1, n BIGINT)                      -- +1 by every write transaction

Vectors are pgvector ``vector`` values (float32; pgvector 0.6 has no half-precision type), and an
HNSW index with cosine distance per kind and dim (a partial expression index, so a rebuild to a
bundle of another dim can hold both sizes while it runs) answers :meth:`PostgresStore.nearest`,
which :class:`Library` uses for candidates on large libraries (its module doc, "Backends").

**Concurrency.** Every write transaction first locks the one ``version`` row (``FOR UPDATE``): writers
queue on it (as SQLite's ``BEGIN IMMEDIATE`` makes them queue), so a check-then-insert
(``add_study(replace=False)``) is atomic across workstations. Its first write statement increments
the row, so ``data_version()`` (the row's count minus our own commits) changes exactly when another
process has committed a change.

**Failures.** A server that is down, refuses the login or drops the connection raises
:class:`LibraryWriteError` with one line naming the library (``postgresql://user@host:port/db``);
a failed transaction is rolled back whole, and the next call reconnects, so a retried import goes on
where it stopped.

No patient identifier is stored: the same safe columns as the SQLite store.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit, urlunsplit

import numpy as np

from engine.errors import DataError, one_line
from engine.library.store import (
    VECTOR_KINDS,
    LibraryWriteError,
    StudyRecord,
    _raw_values,
    from_db,
    record_from_row,
)

SCHEMA = "speechct"
SCHEMA_VERSION = 1
SCHEMES = ("postgres", "postgresql")
#: HNSW build parameters (pgvector's defaults) and the search-time candidate list: ef_search ≥ the
#: number of rows asked for (``bench/library_search.py`` measures recall and latency at these values).
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH = 100
CONNECT_TIMEOUT_S = 10
_LOCK_KEY = 0x5EEC7C7  # advisory lock taken while the schema is created (several workstations at once)

_STUDY_COLUMNS = [
    "uid", "study_uid", "series_uid", "path", "series", "date", "description", "modality", "format",
    "n_slices", "spacing_z", "spacing_y", "spacing_x", "bundle_hash", "dictation_path", "added_at",
]

_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {SCHEMA}.studies (
    id BIGSERIAL PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    study_uid TEXT, series_uid TEXT, path TEXT, series TEXT, date TEXT, description TEXT,
    modality TEXT, format TEXT, n_slices INTEGER,
    spacing_z DOUBLE PRECISION, spacing_y DOUBLE PRECISION, spacing_x DOUBLE PRECISION,
    bundle_hash TEXT NOT NULL, dictation_path TEXT, added_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_series_uid ON {SCHEMA}.studies (series_uid);
CREATE INDEX IF NOT EXISTS studies_study_uid ON {SCHEMA}.studies (study_uid);
CREATE INDEX IF NOT EXISTS studies_path ON {SCHEMA}.studies (path);
CREATE INDEX IF NOT EXISTS studies_bundle_hash ON {SCHEMA}.studies (bundle_hash);
CREATE TABLE IF NOT EXISTS {SCHEMA}.vectors (
    study_id BIGINT NOT NULL REFERENCES {SCHEMA}.studies (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('ct', 'dictation')),
    dtype TEXT NOT NULL CHECK (dtype IN ('float32', 'float16')),
    embedding vector NOT NULL,
    PRIMARY KEY (study_id, kind)
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.version (id INTEGER PRIMARY KEY CHECK (id = 1), n BIGINT NOT NULL);
INSERT INTO {SCHEMA}.version (id, n) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
"""

#: Marks a stored text that holds the hex of a file name's raw bytes (not valid UTF-8, which
#: PostgreSQL text cannot hold); see :func:`pg_text`.
_BYTES_PREFIX = "speechct-fsbytes:"


def is_postgres_url(location: object) -> bool:
    return re.match(r"^(postgres|postgresql)://", str(location or ""), re.IGNORECASE) is not None


def check_url(url: str) -> str:
    """The URL as it may be shown (it is already safe: a URL holding a password is refused)."""
    parts = urlsplit(str(url))
    if parts.password is not None or re.search(r"(^|[?&])password=", parts.query or "", re.IGNORECASE):
        shown = urlunsplit((parts.scheme, _netloc(parts), parts.path, "", ""))
        raise DataError("the library URL holds a password, which would show on the command line, in settings "
                        "and in messages; remove it and give it in PGPASSWORD or a PGPASSFILE (~/.pgpass, "
                        "mode 600)", shown)
    return urlunsplit((parts.scheme, _netloc(parts), parts.path, parts.query, ""))


def _netloc(parts: SplitResult) -> str:
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{user}{host}{port}"


def pg_text(value: Any) -> Any:
    """``value`` as PostgreSQL text can hold it: a str that is not valid UTF-8 (a file name with
    undecodable bytes) becomes a marked hex of its bytes, so it round-trips and matches itself."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return _BYTES_PREFIX + os.fsencode(value).hex()
    return value


def from_pg(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_BYTES_PREFIX):
        return from_db(bytes.fromhex(value[len(_BYTES_PREFIX):]))
    return value


class _PgTxn:
    """One write transaction: queued on the version row, rolled back whole on any failure; a
    database failure becomes a :class:`LibraryWriteError` naming the library."""

    def __init__(self, store: PostgresStore):
        self.store = store
        self._tx: Any = None

    def __enter__(self) -> Any:
        store = self.store
        store._mutex.acquire()
        try:
            with store._errors("cannot write the study library"):
                conn = store._connection()
                self._tx = conn.transaction()
                self._tx.__enter__()
                store._txn_conn = conn
                store._bumped = False
                conn.execute(f"SELECT n FROM {SCHEMA}.version WHERE id = 1 FOR UPDATE")  # queue behind writers
        except BaseException:
            self._close_failed()
            store._mutex.release()
            raise
        return conn

    def _close_failed(self) -> None:
        self.store._txn_conn = None
        if self._tx is not None:
            try:
                self._tx.__exit__(RuntimeError, RuntimeError("aborted"), None)
            except Exception:  # noqa: BLE001 - the connection is gone: nothing was committed
                pass
            self._tx = None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        store = self.store
        psycopg = store._psycopg
        try:
            if exc_type is None:
                try:
                    store._txn_conn = None
                    self._tx.__exit__(None, None, None)  # COMMIT
                    store._own_commits += store._bumped
                    return False
                except psycopg.Error as commit_error:
                    exc = commit_error
                    self._close_failed()
            else:
                self._close_failed()  # ROLLBACK
            if isinstance(exc, psycopg.Error):
                store._drop_if_broken()
                raise LibraryWriteError(f"cannot write the study library ({_reason(exc)}); "
                                        "nothing of this change was written", store.location) from exc
            return False
        finally:
            self._tx = None
            store._txn_conn = None
            store._mutex.release()


def _array(value: Any) -> np.ndarray:
    """A pgvector value (text mode: numpy already; binary mode: ``pgvector.Vector``) as float32."""
    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    return np.asarray(value, np.float32)


def _reason(exc: BaseException) -> str:
    """psycopg's message on one line, without libpq's "connection failed:" preamble repeated."""
    text = one_line(exc, 300)
    return text or type(exc).__name__


class PostgresStore:
    """:class:`StudyStore` on a PostgreSQL database with the pgvector extension (module doc)."""

    def __init__(self, url: str, *, dim: int):
        try:
            import psycopg
            from pgvector.psycopg import register_vector
        except ImportError as exc:
            raise DataError("a PostgreSQL library needs the psycopg and pgvector packages "
                            "(pip install 'speechct[postgres]')", check_url(url)) from exc
        self._psycopg = psycopg
        self._register_vector = register_vector
        self.location = check_url(url)
        self._url = str(url)
        self.dim = int(dim)
        self._mutex = threading.RLock()
        self._conn: Any = None  # psycopg.Connection (psycopg is imported lazily)
        self._txn_conn: Any = None  # the connection of the open write transaction: never replaced inside it
        self._own_commits = 0
        self._bumped = False  # the open transaction has counted itself in the version row
        self._ef_search: int | None = None  # hnsw.ef_search set on the current connection
        try:
            with self._errors("cannot open the study library"):
                self._connection()
                self._create_schema()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ connection and errors
    def _connect(self) -> Any:
        psycopg = self._psycopg
        kwargs = {"autocommit": True, "application_name": "speechct"}
        if "connect_timeout" not in self._url:
            kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
        conn = psycopg.connect(self._url, **kwargs)
        try:
            has = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
            if has is None:
                available = conn.execute(
                    "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
                if available is None:
                    raise DataError("the PostgreSQL server has no pgvector extension (install pgvector, "
                                    "README: Department set-up)", self.location)
                try:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                except psycopg.Error as exc:
                    raise DataError(f"pgvector is not enabled in this database and cannot be enabled by this "
                                    f"user ({_reason(exc)}); run CREATE EXTENSION vector as the database owner",
                                    self.location) from exc
            self._register_vector(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> Any:
        """The open connection, reconnecting once after the server dropped it (a retry resumes).
        Inside a write transaction it is that transaction's connection, broken or not: a statement on a
        new connection would commit on its own, outside the transaction."""
        if self._txn_conn is not None:
            return self._txn_conn
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            self._ef_search = None
            self._conn = self._connect()
        return self._conn

    def _drop_if_broken(self) -> None:
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self._conn.close()
            self._conn = None

    def _errors(self, doing: str) -> AbstractContextManager[None]:
        store = self

        class _Convert:
            def __enter__(self) -> None:
                return None

            def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                         tb: TracebackType | None) -> Literal[False]:
                if exc is not None and isinstance(exc, store._psycopg.Error):
                    message = f"{doing} ({_reason(exc)})"
                    if store._txn_conn is not None:
                        message += "; nothing of this change was written"
                    store._drop_if_broken()
                    raise LibraryWriteError(message, store.location) from exc
                return False

        return _Convert()

    def _q(self, sql: str, params: Any = (), *, fetch: str = "all", binary: bool = False) -> Any:
        """Run one statement (inside the open transaction when there is one); database errors become
        one-line :class:`LibraryWriteError`\\ s naming the library."""
        doing = "cannot read the study library" if self._txn_conn is None else "cannot write the study library"
        with self._mutex, self._errors(doing):
            if self._txn_conn is not None and not self._bumped and not sql.lstrip().upper().startswith("SELECT"):
                # the transaction's first write: count it, so other processes reload (a read-only
                # transaction, such as opening an up-to-date library, makes nobody reload)
                self._txn_conn.execute(f"UPDATE {SCHEMA}.version SET n = n + 1 WHERE id = 1")
                self._bumped = True
            cur = self._connection().cursor(binary=binary)
            cur.execute(sql, params)
            if fetch == "all":
                return cur.fetchall()
            if fetch == "one":
                return cur.fetchone()
            return None

    def _create_schema(self) -> None:
        conn = self._connection()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            tables = {r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (SCHEMA,))}
            if tables and not {"meta", "studies", "vectors", "version"} <= tables:
                raise DataError(f"schema {SCHEMA} exists but is not a SpeechCT library (tables: "
                                f"{', '.join(sorted(tables))}); nothing was written", self.location)
            if "meta" in tables:
                row = conn.execute(f"SELECT value FROM {SCHEMA}.meta WHERE key = 'schema_version'").fetchone()
                if row is not None and int(row[0]) > SCHEMA_VERSION:
                    raise DataError(f"made by a newer SpeechCT (library schema {row[0]}, this one reads "
                                    f"{SCHEMA_VERSION})", self.location)
            conn.execute(_DDL)
            conn.execute(f"INSERT INTO {SCHEMA}.meta (key, value) VALUES ('schema_version', %s) "
                         "ON CONFLICT (key) DO NOTHING", (str(SCHEMA_VERSION),))
            for kind in VECTOR_KINDS:
                conn.execute(self._index_ddl(kind, self.dim))

    @staticmethod
    def _index_ddl(kind: str, dim: int) -> str:
        return (f"CREATE INDEX IF NOT EXISTS vectors_hnsw_{kind}_{int(dim)} ON {SCHEMA}.vectors "
                f"USING hnsw ((embedding::vector({int(dim)})) vector_cosine_ops) "
                f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) "
                f"WHERE kind = '{kind}' AND vector_dims(embedding) = {int(dim)}")

    # ------------------------------------------------------------------ StudyStore
    def transaction(self) -> _PgTxn:
        return _PgTxn(self)

    def close(self) -> None:
        with self._mutex:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def get_meta(self, key: str) -> str | None:
        row = self._q(f"SELECT value FROM {SCHEMA}.meta WHERE key = %s", (key,), fetch="one")
        return row[0] if row else None

    def set_meta(self, **values: object) -> None:
        for k, v in values.items():
            self._q(f"INSERT INTO {SCHEMA}.meta (key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (k, str(v)), fetch="none")

    def count(self, *, stale_for: str | None = None) -> int:
        if stale_for is None:
            return int(self._q(f"SELECT COUNT(*) FROM {SCHEMA}.studies", fetch="one")[0])
        return int(self._q(f"SELECT COUNT(*) FROM {SCHEMA}.studies WHERE bundle_hash != %s",
                           (stale_for,), fetch="one")[0])

    def _select(self, where: str = "", params: tuple = ()) -> list[tuple[int, StudyRecord]]:
        cols = ", ".join("s." + c for c in _STUDY_COLUMNS)
        rows = self._q(
            f"SELECT s.id, {cols}, EXISTS (SELECT 1 FROM {SCHEMA}.vectors v WHERE v.study_id = s.id "
            f"AND v.kind = 'dictation') FROM {SCHEMA}.studies s {where} ORDER BY s.id", params)
        return [(int(r[0]), record_from_row(tuple(from_pg(v) for v in r[1:-1]), bool(r[-1]))) for r in rows]

    def records(self) -> list[tuple[int, StudyRecord]]:
        return self._select()

    def records_by_ids(self, ids: Iterable[int]) -> dict[int, StudyRecord]:
        ids = [int(s) for s in ids]
        if not ids:
            return {}
        return dict(self._select("WHERE s.id = ANY(%s)", (ids,)))

    def stale_records(self, bundle_hash: str) -> list[tuple[int, StudyRecord]]:
        return self._select("WHERE s.bundle_hash != %s", (bundle_hash,))

    def find(self, ident: str) -> tuple[int, StudyRecord] | None:
        """By uid, else SeriesInstanceUID, else stored path (the first match, in that order)."""
        from pathlib import Path

        key = pg_text(str(ident))
        for where in ("WHERE s.uid = %s", "WHERE s.series_uid = %s", "WHERE s.path = %s"):
            found = self._select(where, (key,))
            if found:
                return found[0]
        if Path(str(ident)).exists():
            found = self._select("WHERE s.path = %s", (pg_text(str(Path(str(ident)).resolve())),))
            if found:
                return found[0]
        return None

    def has_path(self, path: str) -> bool:
        return self._q(f"SELECT 1 FROM {SCHEMA}.studies WHERE path = %s LIMIT 1", (pg_text(str(path)),),
                       fetch="one") is not None

    def row_of(self, uid: str) -> tuple[int, str] | None:
        row = self._q(f"SELECT id, added_at FROM {SCHEMA}.studies WHERE uid = %s", (uid,), fetch="one")
        return None if row is None else (int(row[0]), row[1])

    def _values(self, rec: StudyRecord) -> tuple:
        return tuple(pg_text(v) for v in _raw_values(rec))

    def insert(self, rec: StudyRecord) -> int:
        values = self._values(rec)
        row = self._q(f"INSERT INTO {SCHEMA}.studies ({', '.join(_STUDY_COLUMNS)}) "
                      f"VALUES ({', '.join(['%s'] * len(values))}) RETURNING id", values, fetch="one")
        return int(row[0])

    def update(self, study_id: int, rec: StudyRecord, *, keep_dictation_path: bool) -> None:
        values = dict(zip(_STUDY_COLUMNS, self._values(rec)))
        if keep_dictation_path:
            del values["dictation_path"]
        sets = ", ".join(f"{c} = %s" for c in values)
        self._q(f"UPDATE {SCHEMA}.studies SET {sets} WHERE id = %s", (*values.values(), study_id), fetch="none")

    def delete(self, study_id: int) -> None:
        self._q(f"DELETE FROM {SCHEMA}.studies WHERE id = %s", (study_id,), fetch="none")  # vectors cascade

    def set_bundle_hash(self, study_id: int, bundle_hash: str) -> None:
        self._q(f"UPDATE {SCHEMA}.studies SET bundle_hash = %s WHERE id = %s", (bundle_hash, study_id), fetch="none")

    def dictation_path_of(self, study_id: int) -> str | None:
        row = self._q(f"SELECT dictation_path FROM {SCHEMA}.studies WHERE id = %s", (study_id,), fetch="one")
        return from_pg(row[0]) if row else None

    def put_vector(self, study_id: int, kind: str, vector: np.ndarray) -> None:
        self._q(f"INSERT INTO {SCHEMA}.vectors (study_id, kind, dtype, embedding) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (study_id, kind) DO UPDATE SET dtype = EXCLUDED.dtype, embedding = EXCLUDED.embedding",
                (study_id, kind, str(vector.dtype), np.asarray(vector, np.float32)), fetch="none")

    def drop_vector(self, study_id: int, kind: str) -> None:
        self._q(f"DELETE FROM {SCHEMA}.vectors WHERE study_id = %s AND kind = %s", (study_id, kind), fetch="none")

    def vector_of(self, study_id: int, kind: str, dim: int) -> np.ndarray | None:
        row = self._q(f"SELECT embedding FROM {SCHEMA}.vectors WHERE study_id = %s AND kind = %s",
                      (study_id, kind), fetch="one")
        if row is None:
            return None
        vec = _array(row[0])
        if vec.shape != (dim,):
            raise DataError(f"a stored {kind} vector has {vec.size} values, not {dim}; rebuild the library",
                            self.location)
        return vec

    def current_vectors(self, bundle_hash: str) -> list[tuple[int, str, str, bytes]]:
        """(study id, kind, "float32", little-endian bytes) of every vector made with ``bundle_hash``."""
        rows = self._q(
            f"SELECT v.study_id, v.kind, v.embedding FROM {SCHEMA}.vectors v JOIN {SCHEMA}.studies s "
            "ON s.id = v.study_id WHERE s.bundle_hash = %s ORDER BY v.study_id", (bundle_hash,), binary=True)
        return [(int(r[0]), r[1], "float32", _array(r[2]).astype("<f4").tobytes()) for r in rows]

    def ids_matching(self, idents: list) -> list[int]:
        idents = sorted({pg_text(str(u)) for u in idents if u})
        if not idents:
            return []
        rows = self._q(f"SELECT id FROM {SCHEMA}.studies WHERE uid = ANY(%(i)s) OR series_uid = ANY(%(i)s) "
                       "OR study_uid = ANY(%(i)s) OR path = ANY(%(i)s)", {"i": idents})
        return [int(r[0]) for r in rows]

    def data_version(self) -> int:
        """Commits of other processes so far (the version row counts everybody's; ours are subtracted)."""
        with self._mutex:
            n = self._q(f"SELECT n FROM {SCHEMA}.version WHERE id = 1", fetch="one")[0]
            return int(n) - self._own_commits

    # ------------------------------------------------------------------ beyond StudyStore
    def nearest(self, kind: str, query: np.ndarray, k: int, bundle_hash: str) -> np.ndarray:
        """Ids of the ``k`` rows of ``kind`` nearest to ``query`` by cosine, from the HNSW index
        (approximate), made with ``bundle_hash``; the Library re-scores them exactly."""
        q = np.asarray(query, np.float32).reshape(-1)
        dim = int(q.size)
        ef = max(HNSW_EF_SEARCH, int(k))
        with self._mutex, self._errors("cannot search the study library"):
            conn = self._connection()
            ef = min(ef, 1000)
            if self._ef_search != ef:  # a session setting, set again only when it changes
                conn.execute(f"SET hnsw.ef_search = {ef}")
                self._ef_search = ef
            rows = conn.execute(
                f"SELECT v.study_id FROM {SCHEMA}.vectors v JOIN {SCHEMA}.studies s ON s.id = v.study_id "
                f"WHERE v.kind = %s AND vector_dims(v.embedding) = {dim} AND s.bundle_hash = %s "
                f"ORDER BY v.embedding::vector({dim}) <=> %s::vector({dim}) LIMIT %s",
                (kind, bundle_hash, q, int(k)), prepare=True).fetchall()
        return np.array([r[0] for r in rows], np.int64)

    def check_integrity(self) -> list[str]:
        """Problems the database itself can see (orphan vectors, studies without a CT vector, vectors of
        the wrong dim); empty when consistent. Used by the concurrency tests and ``speechct index``."""
        problems = []
        orphans = self._q(f"SELECT COUNT(*) FROM {SCHEMA}.vectors v LEFT JOIN {SCHEMA}.studies s "
                          "ON s.id = v.study_id WHERE s.id IS NULL", fetch="one")[0]
        if orphans:
            problems.append(f"{orphans} vectors without a study")
        no_ct = self._q(f"SELECT COUNT(*) FROM {SCHEMA}.studies s WHERE NOT EXISTS (SELECT 1 FROM "
                        f"{SCHEMA}.vectors v WHERE v.study_id = s.id AND v.kind = 'ct')", fetch="one")[0]
        if no_ct:
            problems.append(f"{no_ct} studies without a CT vector")
        dupes = self._q(f"SELECT COUNT(*) - COUNT(DISTINCT uid) FROM {SCHEMA}.studies", fetch="one")[0]
        if dupes:
            problems.append(f"{dupes} duplicate uids")
        return problems
