"""Study library: add/search/remove, persistence, self-exclusion, combined queries, bundle hash, backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from engine.errors import DataError, SpeechCTWarning
from engine.library import Library, query_uids, study_key
from engine.library.ingest import import_tree, rebuild
from engine.library.vectors import ExactIndex, FaissIndex, faiss_available, top_k
from tests.engine.library_fakes import DIM, FakeEncoder, make_volume, random_unit, write_tree

REPO = Path(__file__).resolve().parents[2]


def _volume(seed: int, series_uid: str | None = None, study_uid: str | None = None):
    v = make_volume(seed)
    if series_uid:
        v.metadata.update(series_uid=series_uid, format="dicom", study_date="20240102")
    if study_uid:
        v.metadata["study_uid"] = study_uid
    return v


def _lib(tmp_path, name="lib", **kw) -> Library:
    kw.setdefault("bundle_hash", "bundle-a")
    kw.setdefault("dim", DIM)
    kw.setdefault("backend", "numpy")
    kw.setdefault("dtype", "float32")  # these tests compare scores with float32 arithmetic to 1e-4
    return Library(tmp_path / name, **kw)


def test_add_search_remove(tmp_path):
    lib = _lib(tmp_path)
    vecs = random_unit(5, DIM, 0)
    for i in range(5):
        rec = lib.add_study(_volume(i, f"1.2.3.{i}", "9.9.9"), vecs[i] * 3.0)  # normalised on the way in
        assert rec.uid == f"1.2.3.{i}" and rec.date == "20240102" and rec.n_slices == 6
    assert len(lib) == 5 and [r.uid for r in lib.list()] == [f"1.2.3.{i}" for i in range(5)]
    hits = lib.search(vecs[2], k=3)
    assert hits[0].record.uid == "1.2.3.2" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    expected = np.argsort(-(vecs @ vecs[2]))[:3]
    assert [h.record.uid for h in hits] == [f"1.2.3.{i}" for i in expected]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    removed = lib.remove("1.2.3.2")
    assert removed.uid == "1.2.3.2" and lib.get("1.2.3.2") is None and len(lib) == 4
    assert "1.2.3.2" not in [h.record.uid for h in lib.search(vecs[2], k=10)]
    with pytest.raises(DataError, match="no study"):
        lib.remove("1.2.3.2")
    assert lib.search(vecs[0], k=0) == []


def test_dedupe_by_series_uid_and_content_hash(tmp_path):
    lib = _lib(tmp_path)
    v1, v2 = random_unit(2, DIM, 1)
    lib.add_study(_volume(1, "1.2.3.1"), v1)
    rec = lib.add_study(_volume(1, "1.2.3.1"), v2, dictation_path=tmp_path / "d.wav", dictation_embedding=v1)
    assert len(lib) == 1 and rec.has_dictation and rec.dictation_path.endswith("d.wav")
    assert lib.search(v2, k=1)[0].score == pytest.approx(1.0, abs=1e-5)  # the CT vector was replaced
    again = lib.add_study(_volume(1, "1.2.3.1"), v2)  # no dictation given: the old one stays
    assert again.has_dictation and lib.get("1.2.3.1").has_dictation
    # NIfTI (no UIDs): keyed by a content hash, the same voxels from two paths are one study
    a, b = make_volume(7), make_volume(7)
    a.metadata.update(format="nifti", series_uid="/x/a.nii.gz", source=str(tmp_path / "a.nii.gz"))
    b.metadata.update(format="nifti", series_uid="/y/b.nii.gz", source=str(tmp_path / "b.nii.gz"))
    assert study_key(a) == study_key(b) and study_key(a).startswith("sha256:")
    assert study_key(make_volume(8)) != study_key(a)
    lib.add_study(a, v1)
    lib.add_study(b, v1)
    assert len(lib) == 2


def test_self_exclusion_by_series_study_and_path(tmp_path):
    lib = _lib(tmp_path)
    vecs = random_unit(4, DIM, 2)
    lib.add_study(_volume(0, "1.1", "study-A"), vecs[0])
    lib.add_study(_volume(1, "1.2", "study-A"), vecs[0] * 0.9 + vecs[1] * 0.1)  # another series, same study
    lib.add_study(_volume(2, "2.1", "study-B"), vecs[2])
    lib.add_study(_volume(3, "3.1", "study-C"), vecs[3])
    query = _volume(0, "1.1", "study-A")
    uids = [h.record.uid for h in lib.search(vecs[0], k=4, exclude_uids=query_uids(query))]
    assert "1.1" not in uids and "1.2" not in uids and len(uids) == 2
    assert "1.1" not in [h.record.uid for h in lib.search(vecs[0], k=4, exclude_uids=["1.1"])]
    # by stored path (a NIfTI query without UIDs)
    n = make_volume(9)
    n.metadata.update(format="nifti", source=str(tmp_path / "q.nii.gz"))
    lib.add_study(n, vecs[1])
    got = lib.search(vecs[1], k=10, exclude_uids=query_uids(n))
    assert all(h.record.path != str((tmp_path / "q.nii.gz").resolve()) for h in got)


def test_combined_query_scores(tmp_path):
    lib = _lib(tmp_path)
    rng = np.random.default_rng(3)
    ct = random_unit(40, DIM, 4)
    dictated = random_unit(40, DIM, 5)
    for i in range(40):
        has_d = i % 2 == 0
        lib.add_study(_volume(i, f"5.{i}"), ct[i], dictation_embedding=dictated[i] if has_d else None)
    q_ct, q_speech = random_unit(2, DIM, 6)
    hits = lib.search({"ct": q_ct, "speech": q_speech}, k=40)
    assert len(hits) == 40
    by_uid = {h.record.uid: h for h in hits}
    # recompute the documented score: mean of per-pair z-scores over the library
    c1, c2 = ct @ q_ct, ct @ q_speech
    z = ((c1 - c1.mean()) / c1.std() + (c2 - c2.mean()) / c2.std()) / 2
    for i in range(40):
        h = by_uid[f"5.{i}"]
        assert h.score == pytest.approx(z[i], abs=1e-4)
        assert h.cosines["ct→ct"] == pytest.approx(c1[i], abs=1e-5)
    # weights: all weight on speech ranks exactly by the speech→CT cosine
    order = [h.record.uid for h in lib.search({"ct": q_ct, "speech": q_speech}, k=5, weights={"ct": 0.0})]
    assert order == [f"5.{i}" for i in np.argsort(-c2)[:5]]
    # a dictation query uses CT and, where present, dictation vectors
    q_d = random_unit(1, DIM, 7)[0]
    dh = {h.record.uid: h for h in lib.search({"dictation": q_d}, k=40)}
    assert set(dh["5.0"].cosines) == {"dictation→ct", "dictation→dictation"}
    assert set(dh["5.1"].cosines) == {"dictation→ct"}
    cd, dd = ct @ q_d, dictated[::2] @ q_d
    z_ct = (cd - cd.mean()) / cd.std()
    z_d = (dd - dd.mean()) / dd.std()
    assert dh["5.1"].score == pytest.approx(z_ct[1], abs=1e-4)
    assert dh["5.2"].score == pytest.approx((z_ct[2] + z_d[1]) / 2, abs=1e-4)
    with pytest.raises(ValueError, match="query kind"):
        lib.search({"image": q_ct})
    with pytest.raises(ValueError, match="weights"):
        lib.search({"ct": q_ct}, weights={"ct": 0.0})
    del rng


def test_tiny_library_combines_raw_cosines(tmp_path):
    # Two studies: z-scores would be +-1 for every pair and combined scores could tie at 0.
    lib = _lib(tmp_path)
    ct = random_unit(2, DIM, 11)
    dictated = random_unit(2, DIM, 12)
    for i in range(2):
        lib.add_study(_volume(i, f"6.{i}"), ct[i], dictation_embedding=dictated[i])
    q_ct, q_d = random_unit(2, DIM, 13)
    by_uid = {h.record.uid: h for h in lib.search({"ct": q_ct, "dictation": q_d}, k=2)}
    for i in range(2):
        expected = (ct[i] @ q_ct + (ct[i] @ q_d + dictated[i] @ q_d) / 2) / 2
        assert by_uid[f"6.{i}"].score == pytest.approx(float(expected), abs=1e-5)
    assert by_uid["6.0"].score != pytest.approx(by_uid["6.1"].score, abs=1e-3)


def test_persistence_across_processes(tmp_path):
    lib = _lib(tmp_path)
    vecs = random_unit(6, DIM, 8)
    for i in range(6):
        lib.add_study(_volume(i, f"7.{i}"), vecs[i])
    np.save(tmp_path / "q.npy", vecs[4])
    script = textwrap.dedent(
        f"""
        import json, numpy as np
        from engine.library import Library
        from tests.engine.library_fakes import make_volume
        lib = Library({str(tmp_path / "lib")!r}, bundle_hash="bundle-a", dim={DIM}, backend="numpy")
        query = np.load({str(tmp_path / "q.npy")!r})
        hits = lib.search(query, k=2, exclude_uids=["7.0"])
        lib.add_study(make_volume(50), query)
        print(json.dumps({{"uids": [h.record.uid for h in hits], "n": len(lib)}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["uids"][0] == "7.4" and out["n"] == 7
    # this process sees the other's commit at its next search (PRAGMA data_version)
    hits = lib.search(vecs[4], k=2)
    assert {h.record.uid for h in hits} == {"7.4", study_key(make_volume(50))}


def test_bundle_hash_mismatch_and_rebuild(tmp_path):
    tree = tmp_path / "tree"
    write_tree(tree, 3, 1, bad=False)
    lib = _lib(tmp_path)
    report = import_tree(lib, tree, FakeEncoder(), progress=False)
    assert len(report.added) == 4 and not lib.needs_rebuild
    lib.close()
    with pytest.warns(SpeechCTWarning, match="built with model bundle bundle-a"):
        other = _lib(tmp_path, bundle_hash="bundle-b")
    assert other.needs_rebuild and other.built_with == "bundle-a" and other.stale_count == 4
    with pytest.raises(DataError, match="re-embedded"):
        other.search(random_unit(1, DIM, 0)[0])
    with pytest.raises(DataError, match="re-embedded"):
        other.add_study(_volume(1, "8.1"), random_unit(1, DIM, 0)[0])
    # a study whose file went away stays stale and is said; the others are re-embedded by the new encoder
    gone = next(r for r in other.list() if r.format == "nifti")
    Path(gone.path).unlink()
    new_encoder = FakeEncoder(seed=99)
    rebuilt = rebuild(other, new_encoder, progress=False)
    assert len(rebuilt.re_embedded) == 3 and [u for u, _ in rebuilt.failed] == [gone.uid]
    assert other.built_with == "bundle-b" and other.stale_count == 1 and other.needs_rebuild
    assert "left out of searches" in other.rebuild_message
    from engine.io import load_volume

    first = next(r for r in other.list() if r.uid != gone.uid)
    hits = other.search(new_encoder(load_volume(first.path, first.series)), k=10)
    assert hits[0].record.uid == first.uid and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert gone.uid not in [h.record.uid for h in hits] and len(hits) == 3
    other.close()
    with pytest.warns(SpeechCTWarning, match="left out of searches"):
        _lib(tmp_path, bundle_hash="bundle-b")
    # an empty library simply adopts the bundle it is opened with
    empty = _lib(tmp_path, name="empty", bundle_hash="x")
    empty.close()
    assert not _lib(tmp_path, name="empty", bundle_hash="y").needs_rebuild
    with pytest.raises(DataError, match="dim"):
        _lib(tmp_path, name="empty", bundle_hash="y", dim=DIM + 1)


def test_float16_storage(tmp_path):
    vecs = random_unit(50, DIM, 9)
    lib = _lib(tmp_path, dtype="float16")
    for i in range(50):
        lib.add_study(_volume(i, f"9.{i}"), vecs[i])
    blob_bytes = lib._store._conn.execute("SELECT dtype, length(vector) FROM vectors LIMIT 1").fetchone()
    assert blob_bytes == ("float16", 2 * DIM)
    q = random_unit(1, DIM, 10)[0]
    hits = lib.search(q, k=10)
    exact = vecs @ q
    assert [h.record.uid for h in hits[:5]] == [f"9.{i}" for i in np.argsort(-exact)[:5]]
    for h in hits:
        assert h.score == pytest.approx(exact[int(h.record.uid.split(".")[1])], abs=2e-3)
    lib.close()
    # reopened as float32, the float16 rows load and new rows are float32
    again = _lib(tmp_path, dtype="float32")
    again.add_study(_volume(99, "9.99"), vecs[0])
    assert [h.record.uid for h in again.search(q, k=5)] == [h.record.uid for h in hits[:5]]


def test_exact_index_matches_brute_force_and_top_k():
    idx = ExactIndex(DIM)
    rows = random_unit(300, DIM, 11)
    idx.add(np.arange(0, 200), rows[:200])
    idx.add(np.arange(200, 300), rows[200:])
    idx.remove(np.array([5, 17]))
    assert len(idx) == 298 and list(idx.positions(np.array([4, 5, 6]))) == [4, -1, 5]
    q = random_unit(1, DIM, 12)
    s = idx.scores(q)[:, 0]
    np.testing.assert_allclose(s, np.delete(rows, [5, 17], axis=0) @ q[0], atol=1e-5)
    best = top_k(s, 7)
    assert list(best) == list(np.argsort(-s)[:7])
    s[best[0]] = -np.inf
    assert best[0] not in top_k(s, 7) and len(top_k(np.full(3, -np.inf), 2)) == 0


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu not installed")
def test_faiss_and_numpy_backends_agree(tmp_path):
    n = 400
    vecs = random_unit(n, DIM, 13)
    dicts = random_unit(n, DIM, 14)
    libs = {b: _lib(tmp_path, name=b, backend=b) for b in ("numpy", "faiss")}
    for lib in libs.values():
        for i in range(n):
            lib.add_study(_volume(i, f"4.{i}"), vecs[i], dictation_embedding=dicts[i] if i % 3 else None)
    assert libs["faiss"].backend_in_use == "faiss" and libs["numpy"].backend_in_use == "numpy"
    for seed in range(5):
        q = random_unit(1, DIM, 100 + seed)[0]
        a, b = (lib.search(q, k=10, exclude_uids=["4.3"]) for lib in libs.values())
        assert [h.record.uid for h in a] == [h.record.uid for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    # combined query: FAISS ranks the union of candidates; on this data the top 5 agree
    q1, q2 = random_unit(2, DIM, 200)
    a, b = (lib.search({"dictation": q1, "ct": q2}, k=5) for lib in libs.values())
    assert [h.record.uid for h in a] == [h.record.uid for h in b]
    # incremental add/remove keep the FAISS index in step
    libs["faiss"].remove("4.7")
    assert "4.7" not in [h.record.uid for h in libs["faiss"].search(vecs[7], k=3)]
    libs["faiss"].add_study(_volume(7, "4.7"), vecs[7])
    assert libs["faiss"].search(vecs[7], k=1)[0].record.uid == "4.7"


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu not installed")
def test_faiss_index_flat_exact_and_ivf_recall():
    rows = random_unit(3000, DIM, 15)
    ids = np.arange(10, 3010)
    queries = random_unit(20, DIM, 16)
    exact = np.argsort(-(queries @ rows.T), axis=1)[:, :10] + 10
    flat = FaissIndex(DIM)
    flat.build(ids, rows)
    assert flat.kind == "flat"
    _, got = flat.search(queries, 10)
    np.testing.assert_array_equal(got, exact)
    ivf = FaissIndex(DIM, ivf_min_rows=1000, nprobe=64)  # 64 of √3000 ≈ 55 lists: exhaustive
    ivf.build(ids, rows)
    assert ivf.kind == "ivf"
    _, got = ivf.search(queries, 10)
    recall = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact)])
    assert recall == 1.0


def test_import_tree_reports_and_resumes(tmp_path):
    tree = tmp_path / "tree"
    write_tree(tree, 3, 2)
    (tree / "patient_000" / "bogus.dcm").write_text("not dicom")
    lib = _lib(tmp_path)
    enc = FakeEncoder()
    report = import_tree(lib, tree, enc, progress=False)
    assert len(report.added) == 5 and len(lib) == 5 and enc.calls == 5
    failed = dict(report.failed)
    assert set(failed) == {
        str((tree / "broken" / "truncated.nii.gz").resolve()),
        str((tree / "patient_000" / "bogus.dcm").resolve()),
    }
    assert all("\n" not in r and r for r in failed.values())
    assert report.ignored_files == 1
    again = import_tree(lib, tree, enc, progress=False)
    assert again.added == [] and len(again.already) == 5 and enc.calls == 5
    # a copy of a NIfTI file elsewhere is the same study (content hash): not added, not re-encoded
    import shutil

    shutil.copy(tree / "patient_001" / "scan_1.nii.gz", tree / "patient_002" / "copy.nii.gz")
    third = import_tree(lib, tree, enc, progress=False)
    assert third.added == [] and len(third.already) == 6 and enc.calls == 5 and len(lib) == 5
    recs = {r.format for r in lib.list()}
    assert recs == {"nifti", "dicom"}
    # the imported study's own embedding finds it first, and excluding it finds the others
    rec = next(r for r in lib.list() if r.format == "dicom")
    from engine.io import load_volume

    vol = load_volume(rec.path, rec.series)
    assert lib.search(enc(vol), k=1)[0].record.uid == rec.uid
    assert rec.uid not in [
        h.record.uid for h in lib.search(enc(vol), k=5, exclude_uids=query_uids(vol, rec.series))
    ]


def test_import_walks_the_tree_once_and_reads_each_file_once(tmp_path, monkeypatch):
    """One os.walk for the whole import; each file's first bytes read once, each DICOM header parsed once."""
    import os
    from collections import Counter

    import engine.io.dicom_scan as dicom_scan
    import engine.io.sniff as sniff

    tree = tmp_path / "tree"
    write_tree(tree, 2, 2)
    nested = tree / "dicom_000" / "series1" / "more"  # below a DICOM unit's folder: the same unit
    nested.mkdir()
    (tree / "dicom_000" / "series1" / "0001-00002.dcm").rename(nested / "0001-00002.dcm")
    files = sorted(str(p.resolve()) for p in tree.rglob("*") if p.is_file())
    walks, heads, headers = [], Counter(), Counter()
    real_walk, real_head, real_header = os.walk, sniff.read_head, dicom_scan.read_header

    def walk(top, *args, **kwargs):
        walks.append(str(top))
        return real_walk(top, *args, **kwargs)

    def read_head(path, *args, **kwargs):
        heads[str(path)] += 1
        return real_head(path, *args, **kwargs)

    def read_header(path, *args, **kwargs):
        headers[str(path)] += 1
        return real_header(path, *args, **kwargs)

    monkeypatch.setattr(os, "walk", walk)
    monkeypatch.setattr(sniff, "read_head", read_head)
    monkeypatch.setattr(dicom_scan, "read_header", read_header)
    report = import_tree(_lib(tmp_path), tree, FakeEncoder(), progress=False)
    assert len(report.added) == 4 and len(report.failed) == 1  # broken/truncated.nii.gz
    assert walks == [str(tree.resolve())]
    # NIfTI files aside: the NIfTI reader checks its own file's format again when it reads it (engine.io.nifti)
    assert sorted(heads) == files
    assert {f: n for f, n in heads.items() if n != 1 and not f.endswith(".nii.gz")} == {}
    dicom_files = [f for f in files if f.endswith(".dcm")]
    assert sorted(headers) == dicom_files and set(headers.values()) == {1}


def test_import_fails_a_dicom_study_whose_sub_folder_cannot_be_listed(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    write_tree(tree, 1, 1, bad=False)
    locked = tree / "dicom_000" / "series1" / "locked"
    locked.mkdir()
    real_scandir = os.scandir

    def scandir(path="."):  # as a folder without read permission answers (root could list it anyway)
        if os.fspath(path) == str(locked.resolve()):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = import_tree(_lib(tmp_path), tree, FakeEncoder(), progress=False)
    assert len(report.added) == 1  # the NIfTI study
    assert report.failed == [(str((tree / "dicom_000" / "series1").resolve()),
                              "folder cannot be listed (Permission denied)")]


def test_default_location_is_user_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    lib = Library(bundle_hash="h", dim=DIM, backend="numpy")
    assert (
        lib.folder == tmp_path / "xdg" / "speechct" / "library" and (lib.folder / "library.sqlite").exists()
    )
    journal = lib._store._conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"
    assert {r[1] for r in lib._store._conn.execute("PRAGMA table_info(studies)")}.isdisjoint(
        {"patient_name", "patient_id", "birth_date"}
    )


def test_rebuild_interrupted_resumes(tmp_path):
    tree = tmp_path / "tree"
    write_tree(tree, 4, 0, bad=False)
    lib = _lib(tmp_path)
    import_tree(lib, tree, FakeEncoder(), progress=False)
    lib.close()

    class Interrupting(FakeEncoder):
        def __call__(self, volume):
            if self.calls == 2:
                raise KeyboardInterrupt  # as if the user hit Ctrl-C during the third study
            return super().__call__(volume)

    with pytest.warns(SpeechCTWarning):
        lib = _lib(tmp_path, bundle_hash="bundle-b")
    with pytest.raises(KeyboardInterrupt):
        rebuild(lib, Interrupting(seed=5), progress=False)
    assert lib.built_with == "bundle-a" and lib.stale_count == 2  # two done, committed one by one
    with pytest.raises(DataError):
        lib.search(random_unit(1, DIM, 0)[0])
    enc = FakeEncoder(seed=5)
    report = rebuild(lib, enc, progress=False)
    assert len(report.re_embedded) == 2 and enc.calls == 2 and not lib.needs_rebuild
    assert len(lib.search(random_unit(1, DIM, 0)[0], k=10)) == 4
