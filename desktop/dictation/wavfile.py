"""A 16-bit PCM WAV that stays playable while it is being written.

Written by hand because libsndfile (soundfile) rewrites the RIFF/data sizes only on close: a
recording killed mid-way would claim zero samples. Here the header is patched after every flush,
so a crash loses at most the audio since the last flush (``FLUSH_S``).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

FLUSH_S = 0.5


class StreamingWav:
    def __init__(self, path: str | Path, sample_rate: int, channels: int = 1):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sample_rate, self.channels = int(sample_rate), int(channels)
        self._fh = open(self.path, "wb")  # noqa: SIM115 (kept open while recording)
        self._pending = bytearray()
        self.frames = 0
        self._write_header()

    def _write_header(self) -> None:
        data_bytes = self.frames * 2 * self.channels
        block = 2 * self.channels
        header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
        header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, self.channels, self.sample_rate,
                                        self.sample_rate * block, block, 16)
        header += b"data" + struct.pack("<I", data_bytes)
        self._fh.seek(0)
        self._fh.write(header)
        self._fh.seek(0, os.SEEK_END)

    def write(self, block: np.ndarray) -> None:
        """``block``: float samples in [-1, 1], shape (n,) or (n, channels)."""
        pcm = np.clip(np.asarray(block, dtype=np.float32), -1.0, 1.0)
        pcm = (pcm * 32767.0).astype("<i2").reshape(-1)
        self._pending += pcm.tobytes()
        if len(self._pending) >= FLUSH_S * self.sample_rate * 2 * self.channels:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._fh.seek(0, os.SEEK_END)
            self._fh.write(self._pending)
            self.frames += len(self._pending) // (2 * self.channels)
            self._pending.clear()
        self._write_header()
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self.flush()
            self._fh.close()

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate
