"""The PACS study cache: whole studies only, atomic, evicted least recently used first (no server needed)."""

from __future__ import annotations

import os
import time

import pydicom
import pytest

from engine.io import list_series
from engine.pacs.cache import StudyCache, check_uid
from engine.pacs.errors import PacsError

from .studies import write_study


def _fill(cache: StudyCache, study: dict, n: int | None = None, *, commit: bool = True):
    with cache.retrieving(study["study_uid"]) as partial:
        for f in study["files"][:n]:
            assert partial.write(pydicom.dcmread(f))
        if commit:
            return partial.commit(server="test", series={s: {"modality": "CT"} for s in study["series"]}, all_ct=True)
    return None


def test_a_study_appears_whole_or_not_at_all(tmp_path):
    study = write_study(tmp_path / "src", 1)
    cache = StudyCache(tmp_path / "cache", 10**9)
    _fill(cache, study, 3, commit=False)  # interrupted after 3 of 6 instances
    assert cache.get(study["study_uid"]) is None and cache.list() == []
    assert cache.partials() == [study["study_uid"]]
    assert not (cache.root / "studies" / study["study_uid"]).exists()
    # a kill in the middle of a file leaves a hidden temporary: it never counts and goes at the next attempt
    leftover = cache.root / ".partial" / study["study_uid"] / study["series"][0] / ".1.2.3.abc.tmp"
    leftover.write_bytes(b"half a file")
    with cache.retrieving(study["study_uid"]) as partial:
        assert len(partial.have(study["series"][0])) == 3 and not leftover.exists()
        for f in study["files"][3:]:
            partial.write(pydicom.dcmread(f))
        done = partial.commit(server="test", series={study["series"][0]: {}}, all_ct=True)
    assert done.n_instances == len(study["files"]) and done.bytes > 0 and cache.partials() == []
    assert [s.study_uid for s in cache.list()] == [study["study_uid"]]
    # the normal reader reads it; the cache's own record is hidden from it
    assert len(list_series(done.folder)) == 1
    assert all(not p.name.startswith(".") for p in done.folder.rglob("*.dcm"))


def test_instances_of_another_study_are_not_written(tmp_path):
    a, b = write_study(tmp_path / "a", 1), write_study(tmp_path / "b", 2)
    cache = StudyCache(tmp_path / "cache", 10**9)
    with cache.retrieving(a["study_uid"]) as partial:
        assert not partial.write(pydicom.dcmread(b["files"][0]))
        assert partial.have(b["series"][0]) == set()


def test_lru_eviction_by_whole_study(tmp_path):
    studies = [write_study(tmp_path / f"s{i}", 10 + i) for i in range(4)]
    one = sum(os.path.getsize(f) for f in studies[0]["files"])
    cache = StudyCache(tmp_path / "cache", int(2.5 * one))  # room for two studies
    _fill(cache, studies[0])
    time.sleep(0.02)
    _fill(cache, studies[1])
    time.sleep(0.02)
    cache.touch(studies[0]["study_uid"])  # used again: now study 1 is the least recently used
    time.sleep(0.02)
    _fill(cache, studies[2])
    kept = {s.study_uid for s in cache.list()}
    assert kept == {studies[0]["study_uid"], studies[2]["study_uid"]}
    assert cache.total_bytes() <= cache.max_bytes
    # a study alone over the cap is kept (it was just asked for), everything else goes
    small = StudyCache(tmp_path / "small", one // 2)
    _fill(small, studies[0])
    _fill(small, studies[3])
    assert [s.study_uid for s in small.list()] == [studies[3]["study_uid"]]
    assert not any((small.root / ".trash").iterdir())


def test_a_study_being_retrieved_elsewhere_is_not_evicted(tmp_path):
    a, b = write_study(tmp_path / "a", 1), write_study(tmp_path / "b", 2)
    one = sum(os.path.getsize(f) for f in a["files"])
    cache = StudyCache(tmp_path / "cache", int(1.5 * one))
    _fill(cache, a)
    other = StudyCache(tmp_path / "cache", int(1.5 * one))  # "another process": its own lock file handles
    lock = other._study_lock(a["study_uid"])
    assert lock.acquire(blocking=False)
    try:
        _fill(cache, b)
        assert {s.study_uid for s in cache.list()} == {a["study_uid"], b["study_uid"]}
    finally:
        lock.release()
    assert cache.evict() == [a["study_uid"]]


def test_remove_and_clear_partial(tmp_path):
    a, b = write_study(tmp_path / "a", 1), write_study(tmp_path / "b", 2)
    cache = StudyCache(tmp_path / "cache", 10**9)
    _fill(cache, a)
    _fill(cache, b, 2, commit=False)
    assert cache.remove(a["study_uid"]) and not cache.remove(a["study_uid"])
    assert cache.clear_partial() == [b["study_uid"]] and cache.partials() == []


@pytest.mark.parametrize("uid", ["../etc", "1.2.3/4", "", "1..2", "1.2." + "3" * 70, "a.b"])
def test_only_dicom_uids_name_folders(uid):
    with pytest.raises(PacsError, match="not a DICOM"):
        check_uid(uid)


def test_a_failed_refresh_leaves_the_complete_study_as_it_was(tmp_path):
    study = write_study(tmp_path / "s", 3, n_series=2)
    cache = StudyCache(tmp_path / "cache", 10**9)
    with cache.retrieving(study["study_uid"]) as partial:  # first series only
        for f in study["files"][:24]:
            partial.write(pydicom.dcmread(f))
        partial.commit(server="test", series={study["series"][0]: {}}, all_ct=False)
    before = sorted(p.relative_to(cache.root) for p in cache.root.joinpath("studies").rglob("*.dcm"))
    with pytest.raises(RuntimeError), cache.retrieving(study["study_uid"], reuse_complete=True) as partial:
        assert len(partial.have(study["series"][0])) == 24  # resumed from the complete copy
        partial.write(pydicom.dcmread(study["files"][30]))
        raise RuntimeError("the PACS went away")
    after = sorted(p.relative_to(cache.root) for p in cache.root.joinpath("studies").rglob("*.dcm"))
    assert after == before and cache.get(study["study_uid"]) is not None
    with cache.retrieving(study["study_uid"], reuse_complete=True) as partial:
        for f in study["files"][24:]:
            partial.write(pydicom.dcmread(f))
        done = partial.commit(server="test", series={s: {} for s in study["series"]}, all_ct=True)
    assert done.n_instances == 48 and cache.partials() == []
