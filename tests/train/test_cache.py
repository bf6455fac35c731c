"""The frozen-work cache: content keys, atomic entries, invalidation when weights or spec change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.preprocess import PreprocessSpec
from train import cache as C
from train.recipes import load_run_config, prepare_ct_cache, read_studies

from .training_fixtures import SMOKE_CONFIG, make_tiny_data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("tiny"), n_train=4, n_valid=2)


def test_state_hash_changes_with_any_weight():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    h = C.state_hash(m)
    assert h == C.state_hash({k: v.clone() for k, v in m.state_dict().items()})
    with torch.no_grad():
        m[1].bias[2] += 1e-6
    assert C.state_hash(m) != h


def test_teacher_embedding_cache_misses_after_a_weight_change(tmp_path):
    """A changed teacher gives new keys: old entries are never served for it."""
    cache = C.FrozenCache(tmp_path)
    torch.manual_seed(0)
    teacher = torch.nn.Linear(5, 3)
    x = np.ones(5, dtype=np.float32)

    def embed(key_in: str):
        key = C.embedding_key(key_in, C.state_hash(teacher), "teacher_ct")
        return cache.get_or_compute("teacher_ct", key,
                                    lambda: teacher(torch.from_numpy(x)).detach().numpy(), dtype=np.float32)

    first = embed("vol-1")
    assert (cache.hits, cache.misses) == (0, 1)
    assert np.array_equal(embed("vol-1"), first) and cache.hits == 1
    with torch.no_grad():
        teacher.weight[0, 0] += 1.0
    second = embed("vol-1")
    assert cache.misses == 2 and not np.array_equal(second, first)
    assert len(list((tmp_path / "teacher_ct").rglob("*.npy"))) == 2


def test_prepared_volumes_are_cached_per_spec_and_file_content(tiny, tmp_path):
    cfg = load_run_config(SMOKE_CONFIG)
    spec = PreprocessSpec.from_dict(cfg["preprocess"])
    studies = read_studies(tiny, "train", audio=False)
    cache = C.FrozenCache(tmp_path / "cache")
    keys = prepare_ct_cache(studies, spec, cache)
    assert cache.misses == len(studies) and cache.hits == 0
    arr = cache.get("ct", keys[0])
    assert arr.dtype == np.float16 and arr.shape == tuple(spec.shape)
    assert prepare_ct_cache(studies, spec, cache) == keys and cache.hits == len(studies) + 1
    other = PreprocessSpec.from_dict({**cfg["preprocess"], "hu_window": [-1000.0, 500.0]})
    assert prepare_ct_cache(studies[:1], other, cache)[0] != keys[0]
    # a rewritten volume file is a different entry
    path = studies[0].volume_path
    path.write_bytes(path.read_bytes())  # same bytes, new mtime: same key
    assert C.ct_key(path, studies[0].overrides, spec.to_json()) == keys[0]


def test_entries_are_written_atomically_and_bad_files_recomputed(tmp_path):
    cache = C.FrozenCache(tmp_path)
    cache.put_many("whisper_lower", "ab" * 32, {"hidden": np.ones((3, 2), np.float16), "frames": np.array([3])})
    assert not list(tmp_path.rglob(".tmp-*"))
    got = cache.get_many("whisper_lower", "ab" * 32)
    assert got["hidden"].dtype == np.float16 and got["frames"].tolist() == [3]
    bad = cache.path("ct", "cd" * 32)
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not numpy")
    assert cache.get("ct", "cd" * 32) is None
    assert cache.get_or_compute("ct", "cd" * 32, lambda: np.zeros(2)).tolist() == [0, 0]


def test_keys_separate_their_parts():
    assert C.sha256_bytes("ab", "c") != C.sha256_bytes("a", "bc")
