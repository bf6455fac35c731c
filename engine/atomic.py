"""Write a file so that it is either wholly there or not there: a temporary name in the same folder,
then one ``os.replace``. A crash, a full disk or an exception in the writer leaves the old file (or no
file) and no temporary behind. Every file the engine, training and the app write whole goes through
here; whole folders (model bundles, the Whisper cache, PACS studies) are staged and renamed by their
own code."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that wants a file name (safetensors, pydicom,
    soundfile); on success it replaces ``path`` (after an fsync when asked), on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", *, fsync: bool = False, **open_kwargs: Any) -> Iterator[IO]:
    """``with atomic_write(path, "w", encoding="utf-8") as fh: ...``: ``fh`` writes a temporary file that
    replaces ``path`` when the block ends without an exception (see :func:`atomic_path`)."""
    if "w" not in mode:
        raise ValueError(f"atomic_write writes a whole file: mode must contain 'w', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())


def keep_umask_permissions(path: str | Path) -> None:
    """Give a file made by :mod:`tempfile` (mode 0600) the permissions a plain ``open`` would have."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
