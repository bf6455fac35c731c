"""A 16-bit PCM WAV that stays playable while it is being written, and after a full disk.

Written by hand because libsndfile (soundfile) rewrites the RIFF/data sizes only on close: a
recording killed mid-way would claim zero samples. Here the header is patched after every flush,
so a crash loses at most the audio since the last flush (``FLUSH_S``).

A write that fails (disk full, I/O error) leaves a valid file: samples go out in whole-frame chunks,
the file is cut back to the last chunk that was written completely and the header patched to it
(both fit on a full disk: truncating frees space, the header is rewritten in place). ``error`` then
holds the OSError, every later write is dropped, and the caller still has the samples in memory.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

FLUSH_S = 0.5
HEADER_BYTES = 44
#: Samples go to disk in chunks of this many bytes (whole frames): what fits of a failing flush stays.
CHUNK_BYTES = 8192


class StreamingWav:
    def __init__(self, path: str | Path, sample_rate: int, channels: int = 1):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sample_rate, self.channels = int(sample_rate), int(channels)
        self._fh = open(self.path, "wb", buffering=0)  # noqa: SIM115 (kept open while recording)
        self._pending = bytearray()
        self.frames = 0
        self.error: OSError | None = None
        try:
            self._write_header()
        except OSError:
            self._fh.close()
            self.path.unlink(missing_ok=True)  # nothing recorded: leave nothing half-written
            raise

    @property
    def _frame_bytes(self) -> int:
        return 2 * self.channels

    def _write_header(self) -> None:
        data_bytes = self.frames * self._frame_bytes
        block = self._frame_bytes
        header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
        header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, self.channels, self.sample_rate,
                                        self.sample_rate * block, block, 16)
        header += b"data" + struct.pack("<I", data_bytes)
        self._fh.seek(0)
        self._write_all(header)

    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = self._fh.write(view)
            if not n:  # a short write that made no progress: the disk is full
                raise OSError(28, os.strerror(28), str(self.path))
            view = view[n:]

    def write(self, block: np.ndarray) -> None:
        """``block``: float samples in [-1, 1], shape (n,) or (n, channels). Raises the OSError of a
        failed flush once; later blocks are dropped (``error`` says why)."""
        if self.error is not None:
            return
        pcm = np.clip(np.asarray(block, dtype=np.float32), -1.0, 1.0)
        pcm = (pcm * 32767.0).astype("<i2").reshape(-1)
        self._pending += pcm.tobytes()
        if len(self._pending) >= FLUSH_S * self.sample_rate * self._frame_bytes:
            self.flush()

    def flush(self) -> None:
        if self.error is not None:
            return
        try:
            self._fh.seek(HEADER_BYTES + self.frames * self._frame_bytes)
            chunk = CHUNK_BYTES - CHUNK_BYTES % self._frame_bytes
            while self._pending:
                piece = bytes(self._pending[:chunk])
                self._write_all(piece)
                self.frames += len(piece) // self._frame_bytes
                del self._pending[:len(piece)]
            self._write_header()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: OSError) -> None:
        """Keep the file valid: cut it to the frames written completely, header to match."""
        self.error = exc
        self._pending.clear()
        try:
            self._fh.truncate(HEADER_BYTES + self.frames * self._frame_bytes)
            self._write_header()
            os.fsync(self._fh.fileno())
        except OSError:
            pass  # the header of the last good flush is still there and still true

    def close(self) -> None:
        if self._fh.closed:
            return
        try:
            self.flush()
        finally:
            self._fh.close()

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate
