"""Disk full and I/O errors in the library, the embedding cache and bundle export: the user is told in
one line, nothing half-written is left, what was there stays readable.

Each is tested on a real full file system (a small tmpfs, when the tests run as root and may mount;
skipped otherwise) and with an injected failure (always): SQLite's own SQLITE_FULL through
``PRAGMA max_page_count``, ENOSPC from the writers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.errors import BundleError, SpeechCTWarning
from engine.io import write_nifti
from engine.library import Library, LibraryWriteError
from engine.volume import Volume
from tests.engine.library_fakes import DIM, FakeEncoder, make_volume

from .tiny_bundle import tiny_bundle_path


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"speechct-test-{uuid.uuid4().hex[:8]}",
                           str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte; returns the filler (delete it to free space)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while fh.write(b"\0" * size):
                    pass
    return filler


def _library_state(folder: Path) -> tuple[int, str]:
    conn = sqlite3.connect(str(folder / "library.sqlite"))
    try:
        return (conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0],
                conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


# ----------------------------------------------------------------------------- library


def _full_library(lib: Library) -> None:
    """SQLite's own 'database or disk is full': the file may not grow by a page."""
    pages = lib._store._conn.execute("PRAGMA page_count").fetchone()[0]
    lib._store._conn.execute(f"PRAGMA max_page_count = {pages}")


def test_library_full_add_is_one_error_and_rolled_back(tmp_path):
    lib = Library(tmp_path / "lib", bundle_hash="b", dim=DIM)
    enc = FakeEncoder()
    for seed in range(3):
        lib.add_study(make_volume(seed), enc(make_volume(seed)))
    _full_library(lib)
    big = Volume(make_volume(7).array, (2.0, 1.0, 1.0), metadata={"modality": "CT", "series_description": "x" * 20000})
    with pytest.raises(LibraryWriteError, match=r"library.sqlite: cannot write the study library \(database or disk is full\)"):
        lib.add_study(big, enc(big))
    assert len(lib) == 3 and len(lib.search(enc(make_volume(0)), k=5)) == 3  # still readable, nothing half-added
    lib.close()
    assert _library_state(tmp_path / "lib") == (3, "ok")


def test_index_add_stops_at_a_full_library_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPEECHCT_EMBEDDING_CACHE", str(tmp_path / "emb"))
    for i in range(4):  # big enough for the tiny bundle's 20 x 11.2 x 11.2 mm grid
        write_nifti(make_volume(i, (24, 40, 40)), tmp_path / "tree" / f"p{i}" / f"scan_{i}.nii.gz")
    import engine.library.store as library_module

    def full(*args, **kwargs):  # what SQLite says when a page cannot be written
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(library_module, "put_vector", full)
    code = main(["index", "add", str(tmp_path / "tree"), "--library", str(tmp_path / "lib"),
                 "--bundle", str(tiny_bundle_path())])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and "cannot write the study library (database or disk is full)" in err, err
    assert "library.sqlite" in err and "Traceback" not in err and "unexpected" not in err
    assert out == ""  # stopped at the first study: the others would fail the same way
    assert _library_state(tmp_path / "lib")[0] == 0  # the failed transaction left nothing


def test_library_on_a_real_full_disk(tmp_path):
    with _tmpfs(tmp_path / "small", "256k") as disk:
        lib = Library(disk / "lib", bundle_hash="b", dim=DIM)
        enc = FakeEncoder()
        for seed in range(3):
            lib.add_study(make_volume(seed), enc(make_volume(seed)))
        filler = _fill(disk)
        with pytest.raises(LibraryWriteError, match="cannot write the study library"):
            for seed in range(3, 200):  # the WAL has some room left in its pages: add until it is gone
                lib.add_study(make_volume(seed), enc(make_volume(seed)))
        n = len(lib)
        assert 3 <= n < 200 and len(lib.search(enc(make_volume(0)), k=500)) == n
        filler.unlink()
        lib.add_study(make_volume(999), enc(make_volume(999)))  # space again: it goes on
        lib.close()
        assert _library_state(disk / "lib") == (n + 1, "ok")


# ----------------------------------------------------------------------------- embedding cache


def _engine(cache: Path):
    from engine.runtime import Engine

    return Engine(tiny_bundle_path(), cache_dir=cache, device="cpu")


def _phantom(seed: int) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(rng.normal(-300, 300, (20, 40, 40)).astype(np.float32), (16.0, 9.0, 9.0),
                  metadata={"format": "nifti"})


def test_embedding_cache_write_failure_warns_once_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import engine.runtime as rt

    def half_then_full(fh, arr, allow_pickle=False):
        fh.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rt.np, "save", half_then_full)
    eng = _engine(tmp_path / "emb")
    with pytest.warns(SpeechCTWarning, match="embedding cache not written .No space left on device") as caught:
        vec = eng.encode_ct(_phantom(1))
        eng.encode_ct(_phantom(2))
    assert len([w for w in caught if "embedding cache" in str(w.message)]) == 1  # once, not per study
    assert vec.shape == (eng.dim,)
    assert [p for p in (tmp_path / "emb").rglob("*") if p.is_file()] == []


def test_embedding_cache_on_a_real_full_disk(tmp_path):
    with _tmpfs(tmp_path / "small", "64k") as disk:
        eng = _engine(disk / "emb")
        eng.encode_ct(_phantom(1))  # the cache folder exists now
        _fill(disk)
        with pytest.warns(SpeechCTWarning, match="embedding cache not written"):
            eng.encode_ct(_phantom(3))
        assert not [p for p in (disk / "emb").rglob("*.tmp")]


# ----------------------------------------------------------------------------- bundle export


def _tiny_tensors():
    return {"extra": {"w": torch.randn(64, 64)}}


def _manifest():
    import json

    return json.loads((tiny_bundle_path() / "bundle.json").read_text())


def test_bundle_export_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    from engine.weights.bundle import save_bundle

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(BundleError, match=r"out: cannot write the bundle \(No space left on device\); nothing was written"):
        save_bundle(tmp_path / "out", manifest=_manifest(), tensors=_tiny_tensors())
    assert list(tmp_path.iterdir()) == []


def test_bundle_export_on_a_real_full_disk(tmp_path):
    from engine.weights.bundle import save_bundle

    with _tmpfs(tmp_path / "small", "16k") as disk:
        tensors = {"extra": {"w": torch.randn(256, 256)}}  # 256 KiB: cannot fit
        with pytest.raises(BundleError, match="cannot write the bundle"):
            save_bundle(disk / "out", manifest=_manifest(), tensors=tensors)
        assert list(disk.iterdir()) == []
