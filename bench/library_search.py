"""Similar-study search speed: exact numpy (float32, float16) at 1e5, FAISS (flat, IVF) and pgvector HNSW.

    .venv/bin/python bench/library_search.py [--n 100000] [--n-large 1000000] [--dim 512]
                                             [--queries 50] [--threads 2] [--skip-large]
                                             [--clustered [--centres 1000] [--spread 1.0]]
                                             [--pgvector N] [--ef 40 100 200]

Random unit vectors at the bundle's dim (512) stand in for CT embeddings. Each row is one top-10
query (one vector): the median wall time over ``--queries`` queries after one warm-up, and the
median process-CPU time (all threads; steadier than wall on a shared machine).

- ``numpy f32`` / ``numpy f16``: :class:`engine.library.vectors.ExactIndex` (matrix @ q, then
  argpartition); float16 rows are scored by torch's float16 kernel on the same memory.
- ``library exact`` / ``library auto``: :meth:`engine.library.Library.search` end to end on a 1e5-study
  SQLite library (scores + exclusion + fetching the 10 records), exact and with the library's saved IVF
  index (built by the first search, then loaded from its file by a second Library), and the one-off
  load of the first search (vectors from SQLite, IVF build or load).
- ``faiss flat``: ``IndexFlatIP`` (exact). ``faiss ivf nprobe=p``: ``IndexIVFFlat`` with √n lists,
  recall@10 against the exact top 10. Random vectors have no cluster structure, the worst case
  for IVF: real embeddings cluster and reach a given recall with fewer probes.
- ``--pgvector N``: N rows (``--clustered`` recommended) into a PostgreSQL 16 + pgvector 0.6 server
  started for the run (the ``pgserver`` wheel, :mod:`tests.postgres_server`, on loopback); the HNSW
  index build time (m 16, ef_construction 64, cosine, as :mod:`engine.library.pg_store` builds it),
  then top-10 through psycopg per ``--ef`` (hnsw.ef_search): median and p95 wall time of the whole
  round trip, recall@10 against exact numpy float32 on the same rows, next to exact numpy, FAISS flat
  and FAISS IVF on the same rows and queries. Then :meth:`Library.search` end to end on the same rows
  in a PostgreSQL library (backend "pgvector": HNSW candidates re-scored exactly).

Clustered rows (``--clustered``): 1000 random unit centres; each row is a centre plus Gaussian noise of
norm ≈ 1 (cosine to its centre ≈ 0.7), normalised: studies of one kind of chest and finding pattern
sit together, as CT embeddings do, and queries are drawn the same way (not copies of rows).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

from engine.library.vectors import ExactIndex, FaissIndex, faiss_available, top_k

K = 10


def unit_rows(n: int, dim: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """``[n, dim]`` float32 unit rows, generated in chunks (1e6 × 512 is 2 GB; no float64 copy)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[s : s + len(block)] = block
    return out


def clustered_rows(n: int, dim: int, seed: int, n_clusters: int = 1000, spread: float = 1.0) -> np.ndarray:
    """Unit rows drawn around ``n_clusters`` random centres (cosine to the centre ≈ 0.7 at spread 1):
    closer to real embeddings, which cluster by anatomy and findings, than uniform random vectors."""
    centres = unit_rows(n_clusters, dim, seed=10_000)  # the same centres for rows and queries
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        block = centres[rng.integers(0, n_clusters, m)]
        block += rng.standard_normal((m, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[s : s + m] = block
    return out


def timed(fn, queries: np.ndarray) -> tuple[float, float, list]:
    """(median wall ms, median CPU ms, results) of ``fn(q)`` over the queries after a warm-up."""
    fn(queries[0])
    walls, cpus, results = [], [], []
    for q in queries:
        w, c = time.perf_counter(), time.process_time()
        results.append(fn(q))
        walls.append((time.perf_counter() - w) * 1e3)
        cpus.append((time.process_time() - c) * 1e3)
    return statistics.median(walls), statistics.median(cpus), results


def exact_top(index: ExactIndex):
    def run(q):
        return index.ids[top_k(index.scores(q[None])[:, 0], K)]

    return run


def faiss_top(index: FaissIndex):
    def run(q):
        return index.search(q[None], K)[1][0]

    return run


def recall(got: list, truth: list) -> float:
    return float(np.mean([len(set(map(int, g)) & set(map(int, t))) / K for g, t in zip(got, truth)]))


def bench_library(rows: np.ndarray, queries: np.ndarray, truth: list) -> list[tuple[str, int, float, float, str]]:
    """:meth:`Library.search` end to end on an embedded (SQLite) library holding ``rows``: exact (backend
    "numpy") and "auto" (the saved IVF index from AUTO_FAISS_MIN_ROWS studies on, re-scored exactly), with
    the first search's load (vectors from SQLite; for "auto" also the IVF build and save), then "auto"
    again in a new Library that finds the saved index; recall@10 against exact float32 (``truth``)."""
    from engine.library import Library
    from engine.library.store import StudyRecord, utc_now

    out = []
    n, dim = rows.shape
    with tempfile.TemporaryDirectory() as tmp:
        lib = Library(tmp, bundle_hash="bench", dim=dim, backend="numpy")
        with lib._transaction():  # bulk fill in one transaction (add_study commits one study at a time)
            now = utc_now()
            for i, row in enumerate(rows):
                rec = StudyRecord(f"1.2.{i}", "9", f"1.2.{i}", None, None, None, None, "CT", "dicom", 1,
                                  None, "bench", None, now)
                lib._store.put_vector(lib._store.insert(rec), "ct", row.astype(np.float16))
        lib.close()
        runs = [("numpy", "library exact (numpy f16)"), ("auto", "library auto (new IVF index)"),
                ("auto", "library auto (saved IVF index)")]
        for backend, name in runs:
            lib = Library(tmp, bundle_hash="bench", dim=dim, backend=backend)
            t = time.perf_counter()
            lib.search(queries[0], k=K)  # the first search loads every vector (and the IVF index)
            load = time.perf_counter() - t
            wall, cpu, got = timed(
                lambda q, lib=lib: [int(h.record.uid.split(".")[-1])
                                    for h in lib.search(q, k=K, exclude_uids=["1.2.0"])],
                queries,
            )
            used = lib.backend_in_use
            lib.close()
            out.append((name, n, wall, cpu, f"{used}, recall@10 {recall(got, truth):.3f}, first search "
                        f"(load) {load:.2f} s"))
    return out


def _pg_table(conn, name: str, rows: np.ndarray, first_id: int = 0) -> None:
    """COPY ``rows`` (binary) into ``name (id bigint, embedding vector)``."""
    with conn.cursor() as cur, cur.copy(f"COPY {name} (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "vector"])
        for i, row in enumerate(rows):
            copy.write_row((first_id + i, row))


def bench_pgvector(rows: np.ndarray, queries: np.ndarray, truth: list, efs: list[int], threads: int) -> list:
    """pgvector rows of the table: HNSW build, then top-10 per ef_search (module doc)."""
    import psycopg
    from pgvector.psycopg import register_vector

    from engine.library.pg_store import HNSW_EF_CONSTRUCTION, HNSW_M
    password, start_postgres = _postgres_starter()

    n, dim = rows.shape
    out = []
    server = start_postgres()
    try:
        with psycopg.connect(server.url(), password=password, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(conn)
            conn.execute(f"CREATE TABLE items (id bigint PRIMARY KEY, embedding vector({dim}))")
            t = time.perf_counter()
            _pg_table(conn, "items", rows)
            loaded = time.perf_counter() - t
            conn.execute("SET maintenance_work_mem = '4GB'")
            conn.execute(f"SET max_parallel_maintenance_workers = {max(0, threads - 1)}")
            t = time.perf_counter()
            conn.execute(f"CREATE INDEX ON items USING hnsw (embedding vector_cosine_ops) "
                         f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})")
            built = time.perf_counter() - t
            for ef in efs:
                conn.execute(f"SET hnsw.ef_search = {ef}")

                def run(q):
                    return [r[0] for r in conn.execute(
                        "SELECT id FROM items ORDER BY embedding <=> %s LIMIT 10", (q,), prepare=True)]

                wall, cpu, got = timed(run, queries)
                walls = []
                for q in queries:
                    w = time.perf_counter()
                    run(q)
                    walls.append((time.perf_counter() - w) * 1e3)
                p95 = float(np.percentile(walls, 95))
                out.append((f"pgvector hnsw ef_search={ef}", n, wall, cpu,
                            f"recall@10 {recall(got, truth):.3f}, p95 {p95:.2f} ms, build {built:.1f} s "
                            f"(COPY {loaded:.1f} s)"))
        out.append(bench_pg_library(server, rows, queries, truth))
    finally:
        server.stop()
    return out


def bench_pg_library(server, rows: np.ndarray, queries: np.ndarray, truth: list) -> tuple:
    """Library.search (backend "pgvector") end to end on a PostgreSQL library holding ``rows``."""
    import os

    import psycopg
    from pgvector.psycopg import register_vector

    from engine.library import Library
    from engine.library.pg_store import PostgresStore
    from engine.library.store import utc_now
    password, _ = _postgres_starter()

    n, dim = rows.shape
    os.environ["PGPASSWORD"] = password
    url = server.url(server.create_database())
    Library(url, bundle_hash="bench", dim=dim, backend="pgvector").close()  # the schema and its indexes
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(f"DROP INDEX speechct.vectors_hnsw_ct_{dim}")  # bulk build after the COPY: faster
        now = utc_now()
        with conn.cursor() as cur, cur.copy("COPY speechct.studies (id, uid, modality, format, n_slices, "
                                            "bundle_hash, added_at) FROM STDIN") as copy:
            for i in range(n):
                copy.write_row((i + 1, f"1.2.{i}", "CT", "dicom", 1, "bench", now))
        with conn.cursor() as cur, cur.copy("COPY speechct.vectors (study_id, kind, dtype, embedding) "
                                            "FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "text", "text", "vector"])
            for i, row in enumerate(rows):
                copy.write_row((i + 1, "ct", "float32", row))
        conn.execute("SET maintenance_work_mem = '4GB'")
        conn.execute(PostgresStore._index_ddl("ct", dim))
        conn.execute("ANALYZE speechct.vectors; ANALYZE speechct.studies")
    lib = Library(url, bundle_hash="bench", dim=dim, backend="pgvector")
    t = time.perf_counter()
    lib.search(queries[0], k=K)  # the first search loads every vector
    load = time.perf_counter() - t
    wall, cpu, got = timed(lambda q: [int(h.record.uid.split(".")[-1]) for h in lib.search(q, k=K)], queries)
    lib.close()
    return ("library pgvector (search)", n, wall, cpu, f"recall@10 {recall(got, truth):.3f}, load {load:.1f} s")


def _postgres_starter():
    """(password, start_postgres) of the loopback PostgreSQL the library tests use (tests/postgres_server.py).

    With ``bench/pacs_retrieve.py`` (Orthanc), the benches that reach into tests/: the repository root goes
    on ``sys.path`` only here, so the other modes import installed packages only."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.postgres_server import PASSWORD, start_postgres

    return PASSWORD, start_postgres


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--n-large", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--skip-large", action="store_true", help="only the 1e5 rows")
    ap.add_argument("--skip-small", action="store_true", help="only the 1e6 rows")
    ap.add_argument(
        "--clustered", action="store_true", help="rows and queries around 1000 centres instead of uniform"
    )
    ap.add_argument("--centres", type=int, default=1000, help="--clustered: how many centres")
    ap.add_argument("--spread", type=float, default=1.0,
                    help="--clustered: noise norm around a centre (1: cosine to it ≈ 0.7; 1.5: ≈ 0.55)")
    ap.add_argument("--pgvector", type=int, metavar="N", default=0,
                    help="also pgvector HNSW on N rows, beside exact numpy and FAISS on the same rows")
    ap.add_argument("--ef", type=int, nargs="+", default=[40, 100, 200], help="hnsw.ef_search values")
    args = ap.parse_args(argv)

    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    if faiss_available():
        import faiss

        faiss.omp_set_num_threads(args.threads)

    table: list[tuple[str, int, float, float, str]] = []
    if args.clustered:
        def make(n, dim, seed):
            return clustered_rows(n, dim, seed, n_clusters=args.centres, spread=args.spread)
    else:
        make = unit_rows
    queries = make(args.queries, args.dim, seed=1)
    rows = make(args.n, args.dim, seed=0) if not args.skip_small else np.empty((0, args.dim), np.float32)
    truth: list = []
    for dtype in ("float32", "float16") if not args.skip_small else ():
        index = ExactIndex(args.dim, dtype)
        index.reset(np.arange(args.n), rows)
        wall, cpu, got = timed(exact_top(index), queries)
        note = ""
        if dtype == "float16":
            note = f"recall@10 vs f32 {recall(got, truth):.3f}"
        else:
            truth = got
        table.append((f"numpy f{dtype[5:]}", args.n, wall, cpu, note))
        del index
    if not args.skip_small:
        table.extend(bench_library(rows, queries, truth))
    if faiss_available() and not args.skip_small:
        flat = FaissIndex(args.dim, ivf_min_rows=args.n + 1)  # force the exact flat index
        flat.build(np.arange(args.n), rows)
        wall, cpu, got = timed(faiss_top(flat), queries)
        table.append(("faiss flat", args.n, wall, cpu, f"recall@10 {recall(got, truth):.3f}"))
        del flat
        for dtype in ("float32", "float16"):  # the library's kinds: IVFFlat, IVF + fp16 codes
            ivf = FaissIndex(args.dim, dtype, ivf_min_rows=1)
            t = time.perf_counter()
            ivf.build(np.arange(args.n), rows)
            built = time.perf_counter() - t
            for p in args.nprobe:
                ivf._index.nprobe = p
                wall, cpu, got = timed(faiss_top(ivf), queries)
                table.append((f"faiss ivf f{dtype[5:]} nlist={ivf._index.nlist} nprobe={p}", args.n, wall, cpu,
                              f"recall@10 {recall(got, truth):.3f}, build {built:.1f} s"))
            del ivf
    del rows

    if not args.skip_large and faiss_available():
        n = args.n_large
        rows = make(n, args.dim, seed=2)
        index = ExactIndex(args.dim)
        index.reset(np.arange(n), rows)
        wall, cpu, truth = timed(exact_top(index), queries)
        table.append(("numpy f32", n, wall, cpu, "exact"))
        del index
        flat = FaissIndex(args.dim, ivf_min_rows=n + 1)  # force the exact flat index
        t = time.perf_counter()
        flat.build(np.arange(n), rows)
        built = time.perf_counter() - t
        wall, cpu, got = timed(faiss_top(flat), queries)
        table.append(("faiss flat", n, wall, cpu, f"recall@10 {recall(got, truth):.3f}, build {built:.1f} s"))
        del flat
        ivf = FaissIndex(args.dim, ivf_min_rows=1, nprobe=max(args.nprobe))
        t = time.perf_counter()
        ivf.build(np.arange(n), rows)
        built = time.perf_counter() - t
        nlist = ivf._index.nlist
        for p in args.nprobe:
            ivf._index.nprobe = p
            wall, cpu, got = timed(faiss_top(ivf), queries)
            table.append(
                (
                    f"faiss ivf nlist={nlist} nprobe={p}",
                    n,
                    wall,
                    cpu,
                    f"recall@10 {recall(got, truth):.3f}, build {built:.1f} s",
                )
            )

    if args.pgvector:
        n = args.pgvector
        rows = make(n, args.dim, seed=3)
        index = ExactIndex(args.dim)
        index.reset(np.arange(n), rows)
        wall, cpu, truth = timed(exact_top(index), queries)
        table.append(("numpy f32", n, wall, cpu, "exact (truth for the rows below)"))
        del index
        if faiss_available():
            flat = FaissIndex(args.dim, ivf_min_rows=n + 1)
            flat.build(np.arange(n), rows)
            wall, cpu, got = timed(faiss_top(flat), queries)
            table.append(("faiss flat", n, wall, cpu, f"recall@10 {recall(got, truth):.3f}"))
            del flat
            ivf = FaissIndex(args.dim, ivf_min_rows=1, nprobe=32)
            t = time.perf_counter()
            ivf.build(np.arange(n), rows)
            built = time.perf_counter() - t
            wall, cpu, got = timed(faiss_top(ivf), queries)
            table.append((f"faiss ivf nlist={ivf._index.nlist} nprobe=32", n, wall, cpu,
                          f"recall@10 {recall(got, truth):.3f}, build {built:.1f} s"))
            del ivf
        table.extend(bench_pgvector(rows, queries, [[int(i) for i in t] for t in truth], args.ef, args.threads))

    data = f"clustered ({args.centres} centres, spread {args.spread})" if args.clustered else "uniform random"
    print(
        f"\n{data} unit vectors; top-{K} query, dim {args.dim}, {args.queries} queries, {args.threads} threads "
        "(wall times depend on what else runs on the machine)"
    )
    print(f"{'index':34s} {'rows':>9s} {'wall ms':>9s} {'cpu ms':>9s}  note  (pgvector cpu ms: the client's only)")
    for name, n, wall, cpu, note in table:
        print(f"{name:34s} {n:9d} {wall:9.2f} {cpu:9.2f}  {note}")


if __name__ == "__main__":
    main()
