"""The embedded library's approximate index: FAISS IVF saved beside the SQLite file (engine.library.search).

Recall against exact search on clustered rows; the saved index is reused by the next Library and follows
adds, removals and replaced vectors made by this or another Library; a damaged, foreign or other-bundle
file is rebuilt, never trusted; without faiss the search stays exact. The IVF threshold is lowered to
1000 rows so the libraries stay small.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from engine.library import Library
from engine.library.store import StudyRecord, utc_now
from engine.library.vectors import ExactIndex, FaissIndex, IndexFileError, faiss_available
from tests.engine.library_fakes import DIM, make_volume, random_unit

pytestmark = pytest.mark.skipif(not faiss_available(), reason="faiss-cpu not installed")

N = 3000
THRESHOLD = 1000


def clustered(n: int, seed: int, centres: int = 60) -> np.ndarray:
    """Unit rows around ``centres`` fixed centres (cosine to the centre ≈ 0.7), like study embeddings."""
    c = random_unit(centres, DIM, 999)
    rng = np.random.default_rng(seed)
    rows = c[rng.integers(0, centres, n)] + rng.standard_normal((n, DIM)) / np.sqrt(DIM)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(autouse=True)
def small_threshold(monkeypatch):
    monkeypatch.setattr(Library, "ivf_min_rows", THRESHOLD)


def _open(folder, backend="auto", bundle="bundle-a") -> Library:
    return Library(folder, bundle_hash=bundle, dim=DIM, backend=backend, dtype="float16")


def _fill(lib: Library, rows: np.ndarray, first: int = 0) -> None:
    """Studies ``1.2.<i>`` with these CT vectors, in one transaction (add_study commits one at a time)."""
    with lib._transaction():
        now = utc_now()
        for i, row in enumerate(rows, start=first):
            rec = StudyRecord(f"1.2.{i}", "9", f"1.2.{i}", None, None, None, None, "CT", "dicom", 1, None,
                              lib.bundle_hash, None, now)
            lib._store.put_vector(lib._store.insert(rec), "ct", row.astype(np.float16))


def _uids(lib: Library, q: np.ndarray, k: int = 10) -> list[str]:
    return [h.record.uid for h in lib.search(q, k=k)]


def _recall(lib: Library, exact: Library, queries: np.ndarray) -> float:
    return float(np.mean([len(set(_uids(lib, q)) & set(_uids(exact, q))) / 10 for q in queries]))


def _in_step(lib: Library) -> None:
    """The FAISS index holds exactly the library's current ids, once each."""
    assert lib._indexes is not None
    ids, _ = lib._faiss["ct"].contents()
    assert sorted(ids.tolist()) == lib._indexes["ct"].ids.tolist()


def test_ivf_search_recall_against_exact_on_clustered_rows(tmp_path):
    lib = _open(tmp_path / "lib")
    _fill(lib, clustered(N, 0))
    exact = _open(tmp_path / "lib", backend="numpy")
    queries = clustered(40, 1)
    assert lib.backend_in_use == "faiss" and lib._faiss["ct"].kind == "ivf"
    assert exact.backend_in_use == "numpy"
    assert _recall(lib, exact, queries) >= 0.95
    assert (tmp_path / "lib" / "library.ct.faiss").is_file()  # built once, saved beside the database
    hits, truth = lib.search(queries[0], k=5), exact.search(queries[0], k=5)
    # candidates are re-scored exactly: the exact search's scores (to its float16 kernel's precision)
    common = {h.record.uid: h.score for h in truth}
    assert all(h.score == pytest.approx(common[h.record.uid], abs=2e-3) for h in hits if h.record.uid in common)


def test_saved_index_is_reused_and_follows_adds_removals_and_replacements(tmp_path, monkeypatch):
    folder = tmp_path / "lib"
    lib = _open(folder)
    _fill(lib, clustered(N, 0))
    queries = clustered(10, 1)
    before = [_uids(lib, q) for q in queries]
    lib.close()

    real_build = FaissIndex.build

    def no_build(self, ids, rows):
        assert len(ids) == 0, "the saved index should have been loaded, not built again"
        real_build(self, ids, rows)  # the empty flat index of the dictation vectors

    with monkeypatch.context() as m:
        m.setattr(FaissIndex, "build", no_build)
        again = _open(folder)
        assert [_uids(again, q) for q in queries] == before
        _in_step(again)
        # another Library (another workstation process) adds and removes studies
        other = _open(folder)
        new = clustered(50, 7)
        _fill(other, new, first=N)
        other.remove("1.2.5")
        other.close()
        assert _uids(again, new[3], k=1) == [f"1.2.{N + 3}"]
        assert "1.2.5" not in _uids(again, lib._indexes["ct"].rows[5].astype(np.float32), k=10)
        _in_step(again)
        # this Library replaces one study's vector (same row id, new vector) and removes one
        moved = random_unit(1, DIM, 77)[0]
        vol = make_volume(1)
        vol.metadata.update(series_uid="1.2.9", format="dicom")
        again.add_study(vol, moved)
        again.remove("1.2.10")
        assert _uids(again, moved, k=1) == ["1.2.9"]
        _in_step(again)
        again.close()  # unsaved changes: the file is rewritten
        third = _open(folder)
        fi = FaissIndex.load(folder / "library.ct.faiss", dim=DIM, dtype="float16", bundle_hash="bundle-a",
                             ivf_min_rows=THRESHOLD)
        assert third.backend_in_use == "faiss"
        assert fi.sync(third._indexes["ct"]) == (0, 0)  # the saved file already agrees with the database
        assert _uids(third, moved, k=1) == ["1.2.9"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped", "other-bundle", "other-library"])
def test_a_damaged_or_foreign_index_file_is_rebuilt_not_trusted(tmp_path, damage, caplog):
    folder = tmp_path / "lib"
    lib = _open(folder)
    _fill(lib, clustered(N, 0))
    queries = clustered(20, 1)
    exact = _open(folder, backend="numpy")
    truth = [_uids(exact, q) for q in queries]
    assert lib.backend_in_use == "faiss"
    lib.close()
    path = folder / "library.ct.faiss"
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        path.write_bytes(b"\0" * 100)
    elif damage == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flipped":
        data[-50] ^= 0xFF  # inside the stored vectors
        path.write_bytes(bytes(data))
    elif damage == "other-bundle":
        path.write_bytes(bytes(data).replace(b'"bundle_hash": "bundle-a"', b'"bundle_hash": "bundle-b"'))
    else:  # a valid index of another library with the same bundle: other vectors under the same ids
        other = _open(tmp_path / "other")
        _fill(other, clustered(N, 5, centres=40))
        assert other.backend_in_use == "faiss"
        other.close()
        path.write_bytes((tmp_path / "other" / "library.ct.faiss").read_bytes())
    reopened = _open(folder)
    with caplog.at_level(logging.WARNING, logger="engine.library.search"):
        got = [_uids(reopened, q) for q in queries]
    recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth)])
    assert recall >= 0.95
    _in_step(reopened)
    assert len(caplog.records) == 1 and str(path) in caplog.text and "building the search index" in caplog.text
    if damage == "other-library":  # readable, but every entry checked: most differ, so it was trained again
        assert "entries differ from the library" in caplog.text
    FaissIndex.load(path, dim=DIM, dtype="float16", bundle_hash="bundle-a")  # rewritten, valid again


def test_a_rebuild_with_another_bundle_builds_the_index_again(tmp_path, caplog):
    folder = tmp_path / "lib"
    lib = _open(folder)
    _fill(lib, clustered(1500, 0))
    assert lib.backend_in_use == "faiss"
    lib.close()
    with pytest.warns(Warning, match="re-embedded"):
        new = _open(folder, bundle="bundle-b")
    moved = clustered(1500, 3)
    for (sid, rec), vec in zip(new.stale_studies(), moved):
        new.replace_vectors(sid, rec, vec)
    new.finish_rebuild()
    exact = _open(folder, backend="numpy", bundle="bundle-b")
    queries = clustered(20, 4)
    with caplog.at_level(logging.WARNING, logger="engine.library.search"):
        assert _recall(new, exact, queries) >= 0.95
    assert "made for bundle_hash 'bundle-a'" in caplog.text
    FaissIndex.load(folder / "library.ct.faiss", dim=DIM, dtype="float16", bundle_hash="bundle-b")


def test_an_index_that_cannot_be_saved_still_searches(tmp_path, monkeypatch, caplog):
    def full_disk(self, path, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FaissIndex, "save", full_disk)
    lib = _open(tmp_path / "lib")
    _fill(lib, clustered(1200, 0))
    with caplog.at_level(logging.WARNING, logger="engine.library.search"):
        assert len(_uids(lib, clustered(1, 1)[0])) == 10
    assert lib.backend_in_use == "faiss"
    assert "cannot save the search index (No space left on device)" in caplog.text
    assert not (tmp_path / "lib" / "library.ct.faiss").exists()


def test_without_faiss_the_search_is_exact(tmp_path, monkeypatch):
    monkeypatch.setattr("engine.library.search.faiss_available", lambda: False)
    lib = _open(tmp_path / "lib")
    _fill(lib, clustered(1200, 0))
    assert lib.backend_in_use == "numpy"
    q = clustered(1, 1)[0]
    scores = lib._indexes["ct"].scores(q[None])[:, 0]
    assert _uids(lib, q, k=3) == [f"1.2.{i}" for i in np.argsort(-scores, kind="stable")[:3]]
    assert not (tmp_path / "lib" / "library.ct.faiss").exists()


def test_auto_searches_exactly_below_the_threshold_and_switches_at_it(tmp_path):
    lib = _open(tmp_path / "lib")
    _fill(lib, clustered(THRESHOLD - 2, 0))
    assert lib.backend_in_use == "numpy"
    _fill(_open(tmp_path / "lib"), clustered(1, 9), first=THRESHOLD - 2)  # another process adds one
    assert lib.backend_in_use == "numpy" and len(lib._indexes["ct"]) == THRESHOLD - 1
    vol = make_volume(3)
    vol.metadata.update(series_uid="9.9", format="dicom")
    lib.add_study(vol, random_unit(1, DIM, 5)[0])  # this Library adds the one that reaches it
    assert lib.backend_in_use == "faiss" and lib._faiss["ct"].kind == "ivf"
    lib.remove("9.9")
    assert lib.backend_in_use == "numpy"
    assert _uids(lib, random_unit(1, DIM, 5)[0], k=1) != ["9.9"]


def test_faiss_index_sync_and_load_errors(tmp_path):
    rows = clustered(1200, 0)
    exact = ExactIndex(DIM, "float32")
    exact.reset(np.arange(1200) + 5, rows)
    fi = FaissIndex(DIM, "float32", ivf_min_rows=THRESHOLD)
    fi.build(exact.ids, exact.rows)
    assert fi.kind == "ivf" and fi.sync(exact) == (0, 0)
    fi.add(np.array([5, 9999]), rows[:2])  # a duplicate of id 5 and an id the library lacks
    fi.remove(np.array([6]))  # an id the library has
    changed = exact.rows.copy()
    changed[2] = rows[3]  # id 7 now has another vector
    exact.reset(exact.ids, changed)
    assert fi.sync(exact) == (4, 3)  # both 5s, 9999 and the old 7 out; 5, 6 and the new 7 in
    ids, stored = fi.contents()
    assert sorted(ids.tolist()) == exact.ids.tolist()
    np.testing.assert_array_equal(stored[np.argsort(ids)], exact.rows)
    path = tmp_path / "x.faiss"
    fi.save(path, bundle_hash="b")
    with pytest.raises(IndexFileError, match="dim"):
        FaissIndex.load(path, dim=DIM * 2, dtype="float32", bundle_hash="b")
    with pytest.raises(IndexFileError, match="dtype"):
        FaissIndex.load(path, dim=DIM, dtype="float16", bundle_hash="b")
    with pytest.raises(IndexFileError, match="cannot read"):
        FaissIndex.load(tmp_path / "missing.faiss", dim=DIM, dtype="float32", bundle_hash="b")


def test_calibration_probes_more_lists_on_crowded_rows(tmp_path):
    """Uniform random rows (no clusters: every neighbour barely nearer than the rest) need most lists;
    the library still reaches recall@10 ≥ 0.95, and the saved file keeps the number of lists."""
    folder = tmp_path / "lib"
    lib = _open(folder)
    _fill(lib, random_unit(N, DIM, 3))
    exact = _open(folder, backend="numpy")
    queries = random_unit(30, DIM, 4)
    assert lib.backend_in_use == "faiss"
    fi = lib._faiss["ct"]
    assert fi.nprobe > 16 and fi.recall is not None and fi.recall >= 0.95
    assert _recall(lib, exact, queries) >= 0.9  # new queries, not the library's own rows
    lib.close()
    loaded = FaissIndex.load(folder / "library.ct.faiss", dim=DIM, dtype="float16", bundle_hash="bundle-a",
                             ivf_min_rows=THRESHOLD)
    assert loaded.nprobe == fi.nprobe and loaded._index.nprobe == fi.nprobe and loaded.recall == fi.recall
    clustered_fi = FaissIndex(DIM, "float16", ivf_min_rows=THRESHOLD)
    index = ExactIndex(DIM, "float16")
    index.reset(np.arange(N), clustered(N, 0))
    clustered_fi.build(index.ids, index.rows)
    assert clustered_fi.calibrate(index) >= 0.95 and clustered_fi.nprobe == 16  # clusters: the default suffices
