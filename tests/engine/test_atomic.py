"""engine.atomic: a file is written whole or not at all, and no temporary stays behind."""

from __future__ import annotations

import pytest

from engine.atomic import atomic_path, atomic_write


def test_written_whole_and_replacing(tmp_path):
    target = tmp_path / "sub" / "a.json"
    with atomic_write(target, "w", encoding="utf-8") as fh:
        fh.write("one")
    with atomic_write(target, "w", encoding="utf-8", fsync=True) as fh:
        fh.write("two")
    assert target.read_text() == "two" and sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_an_error_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as fh:
        fh.write(b"half")
        raise RuntimeError("writer failed")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(target, "ab"):
            pass
