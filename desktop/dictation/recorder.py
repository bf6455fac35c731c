"""Recording without Qt: the source's callback only queues blocks (and notes the level); a writer
thread empties the queue into a ``StreamingWav`` flushed at least twice a second.

When the file cannot be written (disk full, I/O error) the writer says so at once through ``error``
and the ``on_error`` callback (within a flush interval, 0.5 s), keeps the file valid up to the last
sample that reached the disk, and keeps collecting the audio in memory: ``stop()`` still returns all
of it, so nothing the user said is lost.
"""

from __future__ import annotations

import datetime as _dt
import errno
import queue
import threading
import time
from pathlib import Path

import numpy as np

from engine.errors import AudioError

from .sources import AudioSource
from .wavfile import StreamingWav

_STOP = object()


class Recorder:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._queue: queue.Queue = queue.Queue()
        self._writer: threading.Thread | None = None
        self._blocks: list[np.ndarray] = []
        self.source: AudioSource | None = None
        self.path: Path | None = None
        self.level = 0.0  # peak |sample| of the latest block, 0..1 (read by the level meter)
        self.error: str | None = None
        self.started_at: float | None = None
        self.wav: StreamingWav | None = None
        self._on_error = None

    @property
    def recording(self) -> bool:
        return self.source is not None

    @property
    def seconds(self) -> float:
        return 0.0 if self.started_at is None else time.perf_counter() - self.started_at

    def new_path(self, prefix: str = "dictation") -> Path:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        return self.folder / f"{prefix}-{stamp}.wav"

    def start(self, source: AudioSource, path: str | Path | None = None, on_error=None) -> Path:
        """Begin recording ``source`` into ``path`` (default: a new time-stamped file in ``folder``)."""
        if self.recording:
            raise RuntimeError("already recording")
        self.path = Path(path) if path is not None else self.new_path()
        self._blocks, self.error, self.level = [], None, 0.0
        try:
            wav = StreamingWav(self.path, source.sample_rate)
        except OSError as exc:
            raise AudioError(f"cannot write the recording ({exc.strerror or exc})", self.path) from exc
        self.wav = wav

        def failed(msg: str) -> None:
            if self.error is None:
                self.error = msg
            if on_error is not None:
                on_error(msg)

        self._on_error = failed
        self._writer = threading.Thread(target=self._write_loop, args=(wav,), name="wav-writer", daemon=True)
        self._writer.start()

        self.source = source
        self.started_at = time.perf_counter()
        try:
            source.start(self._on_block, failed)
        except Exception:
            self.source = None
            self._queue.put(_STOP)
            self._writer.join()
            raise
        return self.path

    def _on_block(self, block: np.ndarray) -> None:
        # Audio thread: no I/O, no waiting.
        self.level = float(np.max(np.abs(block))) if block.size else 0.0
        self._queue.put(block)

    def _write_loop(self, wav: StreamingWav) -> None:
        last_flush = time.perf_counter()
        while True:
            try:
                item = self._queue.get(timeout=0.25)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            try:
                if item is not None:
                    self._blocks.append(item)  # kept in memory whatever the disk does
                    wav.write(item)
                if time.perf_counter() - last_flush >= 0.5:
                    wav.flush()
                    last_flush = time.perf_counter()
            except OSError as exc:
                self._disk_failed(wav, exc)
        try:
            wav.close()
        except OSError as exc:
            self._disk_failed(wav, exc)

    def _disk_failed(self, wav: StreamingWav, exc: OSError) -> None:
        """Say it once, at once: what failed, and how much of the recording the file still holds."""
        if self.error is not None or self._on_error is None:
            return
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        self._on_error(f"Recording stopped: {reason} ({self.path}); the file keeps the first {wav.seconds:.1f} s, "
                       "the whole dictation is still in memory")

    def stop(self) -> tuple[Path, np.ndarray, int]:
        """Stop and return (wav path, the waveform as float32 mono, sample rate)."""
        source, self.source = self.source, None
        if source is None:
            raise RuntimeError("not recording")
        source.stop()
        self._queue.put(_STOP)
        self._writer.join()
        self.started_at = None
        wave = np.concatenate(self._blocks) if self._blocks else np.zeros(0, np.float32)
        return self.path, wave.astype(np.float32), source.sample_rate


def purge_old_recordings(folder: str | Path, days: float) -> list[Path]:
    """Delete recordings older than ``days`` (the retention setting); returns what was removed."""
    folder = Path(folder)
    if days <= 0 or not folder.is_dir():
        return []
    limit = time.time() - days * 86400.0
    removed = []
    for wav in folder.glob("*.wav"):
        try:
            if wav.stat().st_mtime < limit:
                wav.unlink()
                removed.append(wav)
        except OSError:
            continue
    return removed
