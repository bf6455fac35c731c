"""kill -9 during an import leaves a consistent library, and the import resumes to completion."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.library import Library
from engine.library.ingest import import_tree
from tests.engine.library_fakes import DIM, FakeEncoder, write_tree

REPO = Path(__file__).resolve().parents[2]
N_NIFTI, N_DICOM = 6, 3
TOTAL = N_NIFTI + N_DICOM


def _importer(tree: Path, lib_dir: Path, delay: float) -> subprocess.Popen:
    script = textwrap.dedent(
        f"""
        from engine.library import Library
        from engine.library.ingest import import_tree
        from tests.engine.library_fakes import DIM, FakeEncoder
        lib = Library({str(lib_dir)!r}, bundle_hash="bundle-a", dim=DIM, backend="numpy")
        import_tree(lib, {str(tree)!r}, FakeEncoder(delay={delay}), progress=False)
        print("done", flush=True)
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(str(db), timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0
    finally:
        conn.close()


def _kill_when(proc: subprocess.Popen, db: Path, at_least: int, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while _count(db) < at_least:
        if proc.poll() is not None:
            raise AssertionError(f"importer ended before the kill: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("importer too slow")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return _count(db)


def assert_consistent(db: Path) -> int:
    """Raw-SQL checks: integrity, every study has its CT vector, no orphan vectors. Returns the study count."""
    conn = sqlite3.connect(str(db))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.execute("PRAGMA foreign_keys=ON")
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        n = conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
        missing = conn.execute(
            "SELECT COUNT(*) FROM studies s WHERE NOT EXISTS "
            "(SELECT 1 FROM vectors v WHERE v.study_id = s.id AND v.kind = 'ct')"
        ).fetchone()[0]
        orphans = conn.execute(
            "SELECT COUNT(*) FROM vectors WHERE study_id NOT IN (SELECT id FROM studies)"
        ).fetchone()[0]
        n_ct = conn.execute("SELECT COUNT(*) FROM vectors WHERE kind = 'ct'").fetchone()[0]
        bad_len = conn.execute(
            "SELECT COUNT(*) FROM vectors WHERE length(vector) != ? * (CASE dtype WHEN 'float16' THEN 2 ELSE 4 END)",
            (DIM,),
        ).fetchone()[0]
        assert (missing, orphans, bad_len, n_ct) == (0, 0, 0, n)
        return n
    finally:
        conn.close()


def _resume_and_check(tree: Path, lib_dir: Path, before: int) -> None:
    lib = Library(lib_dir, bundle_hash="bundle-a", dim=DIM, backend="numpy")
    assert len(lib) == before and len(lib.search(FakeEncoder()(_any_volume(tree)), k=TOTAL)) == before
    enc = FakeEncoder()
    report = import_tree(lib, tree, enc, progress=False)
    assert len(report.already) == before and len(report.added) == TOTAL - before == enc.calls
    assert len(report.failed) == 1  # the broken file, every run
    assert len(lib) == TOTAL and assert_consistent(lib_dir / "library.sqlite") == TOTAL
    assert len({r.uid for r in lib.list()}) == TOTAL
    assert len(lib.search(enc(_any_volume(tree)), k=100)) == TOTAL


def _any_volume(tree: Path):
    from engine.io import load_volume

    return load_volume(tree / "patient_000" / "scan_0.nii.gz")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("studies")
    write_tree(root, N_NIFTI, N_DICOM)
    return root


def test_kill9_mid_import_is_consistent_and_resumes(tree, tmp_path):
    lib_dir = tmp_path / "lib"
    proc = _importer(tree, lib_dir, delay=0.3)
    before = _kill_when(proc, lib_dir / "library.sqlite", at_least=3)
    assert 3 <= before < TOTAL, "the kill should land mid-import"
    assert assert_consistent(lib_dir / "library.sqlite") == before
    _resume_and_check(tree, lib_dir, before)


@pytest.mark.slow
@pytest.mark.parametrize("at_least", [1, 2, 4, 6, 8])
def test_kill9_at_many_points_without_delay(tree, tmp_path, at_least):
    """No encoder delay: the kill lands anywhere, commits included."""
    lib_dir = tmp_path / "lib"
    proc = _importer(tree, lib_dir, delay=0.0)
    try:
        before = _kill_when(proc, lib_dir / "library.sqlite", at_least=at_least)
    except AssertionError:
        if proc.returncode == 0:
            pytest.skip("importer finished before the kill")
        raise
    assert_consistent(lib_dir / "library.sqlite")
    _resume_and_check(tree, lib_dir, before)
