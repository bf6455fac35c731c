"""The study library on a real PostgreSQL + pgvector (tests/postgres_server.py): the same Library, its
HNSW candidates, the bundle-hash guard and rebuild, and bad input (server down, wrong password, a
connection dropped mid-import: one line naming the library, nothing half-written, a retry resumes)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from engine.errors import DataError, SpeechCTWarning
from engine.io import write_nifti
from engine.library import Library, LibraryWriteError
from engine.library.ingest import import_tree, rebuild
from tests.engine.library_fakes import DIM, FakeEncoder, make_volume
from tests.postgres_server import PASSWORD, USER, free_port


def _tree(root, n: int, first: int = 0):
    for i in range(first, first + n):
        write_nifti(make_volume(i), root / f"p{i:03d}" / f"scan_{i}.nii.gz")
    return root


def _rng_vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, DIM))
    return (centres[rng.integers(0, 8, n)] + 0.5 * rng.standard_normal((n, DIM))).astype(np.float32)


def test_a_library_on_postgres_adds_searches_and_persists(pg_url):
    enc = FakeEncoder()
    with Library(pg_url, bundle_hash="bundle-a", dim=DIM) as lib:
        assert lib.folder == pg_url and len(lib) == 0
        vol = make_volume(1)
        rec = lib.add_study(vol, enc(vol), dictation_embedding=np.ones(DIM))
        assert rec.has_dictation and lib.add_study(vol, enc(vol), replace=False) is None
        for i in range(2, 6):
            lib.add_study(make_volume(i), enc(make_volume(i)))
    with Library(pg_url, bundle_hash="bundle-a", dim=DIM) as lib:  # another connection: all there
        assert len(lib) == 5 and lib.get(rec.uid).has_dictation
        hits = lib.search(enc(vol), k=3)
        assert hits[0].record.uid == rec.uid and hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert rec.uid not in [h.record.uid for h in lib.search(enc(vol), k=5, exclude_uids=[rec.uid])]
        lib.remove(rec.uid)
        assert len(lib) == 4 and rec.uid not in lib


def test_pgvector_candidates_rank_as_exact_search(pg_url):
    """The HNSW index's candidates, re-scored exactly, give the exact top 10 (300 studies, ef_search 100)."""
    vecs = _rng_vectors(300)
    with Library(pg_url, bundle_hash="bundle-a", dim=DIM, backend="numpy") as exact:
        for i, v in enumerate(vecs):
            exact.add_study(make_volume(i, shape=(4, 8, 8)), v)
        queries = _rng_vectors(20, seed=1)
        truth = [[h.record.uid for h in exact.search(q, k=10)] for q in queries]
        spoken = queries + 0.3 * _rng_vectors(20, seed=2)  # a second query kind, near the first
        combined = [{"ct": q, "speech": s} for q, s in zip(queries[:5], spoken)]
        combined_truth = [[h.record.uid for h in exact.search(c, k=5)] for c in combined]
    with Library(pg_url, bundle_hash="bundle-a", dim=DIM, backend="pgvector") as lib:
        assert lib.backend_in_use == "pgvector"
        got = [[h.record.uid for h in lib.search(q, k=10)] for q in queries]
        assert np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth)]) >= 0.95
        assert [[h.record.uid for h in lib.search(c, k=5)] for c in combined] == combined_truth
        explain = lib._store._q(
            "EXPLAIN SELECT v.study_id FROM speechct.vectors v WHERE v.kind = 'ct' AND vector_dims(v.embedding) = "
            f"{DIM} ORDER BY v.embedding::vector({DIM}) <=> %s::vector({DIM}) LIMIT 10", (queries[0],))
        assert f"vectors_hnsw_ct_{DIM}" in " ".join(r[0] for r in explain)  # the HNSW index answers


def test_another_workstation_sees_adds_at_its_next_search(pg_url):
    vecs = _rng_vectors(4)
    a = Library(pg_url, bundle_hash="bundle-a", dim=DIM, backend="pgvector")
    b = Library(pg_url, bundle_hash="bundle-a", dim=DIM, backend="pgvector")
    try:
        a.add_study(make_volume(1), vecs[0])
        assert [h.record.uid for h in b.search(vecs[0], k=5)] == [a.list()[0].uid]
        version = b._store.data_version()
        b.add_study(make_volume(2), vecs[1])  # our own commit: no reload needed
        assert b._store.data_version() == version
        Library(pg_url, bundle_hash="bundle-a", dim=DIM).close()  # a third opening it changes nothing
        assert b._store.data_version() == version
        a.add_study(make_volume(3), vecs[2])  # theirs: b reloads
        assert b._store.data_version() != version
        assert len(b.search(vecs[2], k=5)) == 3 and b.search(vecs[2], k=1)[0].record.uid == a.list()[-1].uid
    finally:
        a.close()
        b.close()


def test_no_patient_identifier_column(pg_url):
    Library(pg_url, bundle_hash="bundle-a", dim=DIM).close()
    import psycopg

    with psycopg.connect(pg_url) as conn:
        columns = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'speechct'")}
    assert columns and not {c for c in columns if "patient" in c or "birth" in c or "name" in c}


def test_bundle_guard_and_rebuild_as_with_sqlite(pg_url, tmp_path):
    tree = _tree(tmp_path / "tree", 3)
    with Library(pg_url, bundle_hash="bundle-a", dim=DIM) as lib:
        assert len(import_tree(lib, tree, FakeEncoder(), progress=False).added) == 3
    with pytest.warns(SpeechCTWarning, match="built with model bundle bundle-a"):
        lib = Library(pg_url, bundle_hash="bundle-b", dim=DIM)
    try:
        assert lib.needs_rebuild and lib.stale_count == 3
        with pytest.raises(DataError, match="speechct index rebuild"):
            lib.search(np.ones(DIM))
        with pytest.raises(DataError, match="speechct index rebuild"):
            lib.add_study(make_volume(9), np.ones(DIM))
        report = rebuild(lib, FakeEncoder(seed=7), progress=False)
        assert len(report.re_embedded) == 3 and not report.failed
        assert not lib.needs_rebuild and len(lib.search(np.ones(DIM), k=5)) == 3
    finally:
        lib.close()


# ------------------------------------------------------------------------------------------- bad input
def _cli(capsys, *argv):
    from engine.cli import main

    from .tiny_bundle import tiny_bundle_path

    code = main(["index", "list", *map(str, argv), "--bundle", str(tiny_bundle_path())])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_server_that_is_down_is_one_line_naming_the_library(capsys, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "not-shown")
    url = f"postgresql://{USER}@127.0.0.1:{free_port()}/speechct"
    code, out, err = _cli(capsys, "--library", url)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"speechct: error: {url}: cannot open the study library (") and "refused" in err, err
    assert "not-shown" not in out + err


def test_a_wrong_password_is_one_line_without_the_password(pg_url, capsys, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "wrong-password")
    code, out, err = _cli(capsys, "--library", pg_url)
    assert code == 2 and err.count("\n") == 1, err
    assert f"{pg_url}: cannot open the study library (" in err and "password authentication failed" in err, err
    assert "wrong-password" not in out + err


def test_the_password_comes_from_a_pgpassfile(pg_url, tmp_path, capsys, monkeypatch, postgres):
    monkeypatch.delenv("PGPASSWORD")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{postgres.port}:*:{USER}:{PASSWORD}\n")
    os.chmod(passfile, 0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    code, out, err = _cli(capsys, "--library", pg_url)
    assert code == 0 and "the library is empty" in out + err, err


def _terminate(lib: Library, postgres) -> None:
    """Cut the library's connection from the server side (as a restart or a network cut would)."""
    pid = lib._store._connection().info.backend_pid
    postgres.admin(f"SELECT pg_terminate_backend({pid})")


def test_a_connection_dropped_mid_add_leaves_nothing_half_written(pg_url, postgres, monkeypatch):
    lib = Library(pg_url, bundle_hash="bundle-a", dim=DIM)
    store = lib._store
    real_put = store.put_vector

    def cut_then_put(*args):
        _terminate(lib, postgres)  # the study row is inserted, its vector not yet
        return real_put(*args)

    monkeypatch.setattr(store, "put_vector", cut_then_put)
    with pytest.raises(LibraryWriteError) as caught:
        lib.add_study(make_volume(1), np.ones(DIM))
    message = str(caught.value)
    assert message.startswith(f"{pg_url}: cannot write the study library (") and "\n" not in message
    assert "nothing of this change was written" in message
    monkeypatch.setattr(store, "put_vector", real_put)
    assert len(lib) == 0 and store.check_integrity() == []  # reconnected; the row went with the transaction
    lib.add_study(make_volume(1), np.ones(DIM))  # the retry works on the same Library
    assert len(lib) == 1
    lib.close()


def test_an_import_cut_off_mid_way_resumes(pg_url, postgres, tmp_path):
    tree = _tree(tmp_path / "tree", 6)

    class Cutting(FakeEncoder):
        def __call__(self, volume):
            if self.calls == 3:
                _terminate(lib, postgres)
            return super().__call__(volume)

    lib = Library(pg_url, bundle_hash="bundle-a", dim=DIM)
    with pytest.raises(LibraryWriteError, match="cannot (read|write) the study library"):
        import_tree(lib, tree, Cutting(), progress=False)
    assert len(lib) == 3
    report = import_tree(lib, tree, FakeEncoder(), progress=False)
    assert len(report.already) == 3 and len(report.added) == 3 and not report.failed
    assert len(lib) == 6 and lib._store.check_integrity() == []
    lib.close()


def test_searches_while_another_workstation_adds(pg_url):
    """One Library adds 60 studies while another searches all along: no error, counts only grow, and the
    last search sees every study (each Library has its own connection, as two workstations do)."""
    import threading

    vecs = _rng_vectors(60, seed=5)
    writer = Library(pg_url, bundle_hash="bundle-a", dim=DIM)
    reader = Library(pg_url, bundle_hash="bundle-a", dim=DIM, backend="pgvector")
    seen, errors = [], []
    done = threading.Event()

    def search_all_along():
        try:
            while not done.is_set():
                seen.append(len(reader.search(vecs[0], k=100)))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=search_all_along)
    thread.start()
    try:
        for i, v in enumerate(vecs):
            writer.add_study(make_volume(100 + i, shape=(4, 8, 8)), v)
    finally:
        done.set()
        thread.join(60)
    assert not errors and len(seen) > 1 and seen == sorted(seen), (errors, seen)
    assert len(reader.search(vecs[0], k=100)) == 60
    writer.close()
    reader.close()


def test_a_foreign_or_newer_schema_is_refused_untouched(pg_url, postgres):
    database = pg_url.rsplit("/", 1)[1]
    postgres.admin("CREATE SCHEMA speechct; CREATE TABLE speechct.invoices (id int)", database)
    with pytest.raises(DataError, match="schema speechct exists but is not a SpeechCT library .tables: invoices"):
        Library(pg_url, bundle_hash="bundle-a", dim=DIM)
    tables = postgres.admin("SELECT table_name FROM information_schema.tables WHERE table_schema = 'speechct'",
                            database)
    assert tables == [("invoices",)]
    postgres.admin("DROP SCHEMA speechct CASCADE", database)
    Library(pg_url, bundle_hash="bundle-a", dim=DIM).close()
    postgres.admin("UPDATE speechct.meta SET value = '99' WHERE key = 'schema_version'", database)
    with pytest.raises(DataError, match="newer SpeechCT .library schema 99"):
        Library(pg_url, bundle_hash="bundle-a", dim=DIM)
