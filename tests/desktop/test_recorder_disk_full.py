"""The recorder on a full disk: the user is told within 1 s, the file stays a valid WAV holding every
sample that reached the disk, and ``stop()`` still returns the whole dictation from memory.

Two ways to fill the disk: a real 64 KiB tmpfs (mounted when the tests run as root and may mount;
skipped otherwise), and an injected ENOSPC at a fixed file size (always runs).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from desktop.dictation import wavfile
from desktop.dictation.recorder import Recorder
from desktop.dictation.sources import FileSource
from desktop.dictation.wavfile import HEADER_BYTES, StreamingWav
from engine.errors import AudioError

REPO = Path(__file__).resolve().parents[2]
WAV = REPO / "assets" / "samples" / "study-001" / "dictation.wav"


class _LimitedFile:
    """A raw file whose size cannot grow past ``limit`` bytes: writes past it fail with ENOSPC (a short
    write first, as a real file system does when the last blocks run out)."""

    def __init__(self, raw, limit: int):
        self._raw, self._limit = raw, limit

    def write(self, data) -> int:
        room = self._limit - self._raw.tell()
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._raw.write(memoryview(data)[:room])

    def __getattr__(self, name):
        return getattr(self._raw, name)


def _limit_file_size(monkeypatch, limit: int) -> None:
    real_open = open

    def limited_open(path, mode="r", *args, **kwargs):
        return _LimitedFile(real_open(path, mode, *args, **kwargs), limit)

    monkeypatch.setattr(wavfile, "open", limited_open, raising=False)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs, or a skip where mounting is not allowed."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", f"speechct-test-{uuid.uuid4().hex[:8]}",
                           str(mount_point)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def _record_until_full(folder: Path, seconds: float = 4.0):
    source = FileSource(WAV, realtime=True)
    source.waveform = source.waveform[: int(seconds * source.sample_rate)]
    told: list[tuple[float, str]] = []
    rec = Recorder(folder)
    started = time.perf_counter()
    path = rec.start(source, on_error=lambda msg: told.append((time.perf_counter() - started, msg)))
    assert source.finished.wait(seconds + 10)
    path, wave, sr = rec.stop()
    return rec, path, wave, sr, told, source.waveform


def _check(rec, path, wave, sr, told, fed):
    assert len(wave) == len(fed) and np.array_equal(wave, fed)  # nothing the user said is lost
    assert len(told) == 1, told
    when, message = told[0]
    assert message == rec.error and "the disk is full" in message and str(path) in message
    data, rate = sf.read(path, dtype="float32")  # a valid WAV, whatever the disk did
    assert rate == sr and 0 < len(data) < len(fed)
    assert np.max(np.abs(data - fed[: len(data)])) < 1e-3  # the first samples, in order
    on_disk_s = len(data) / sr
    assert when - on_disk_s < 1.0, f"told {when:.2f} s after start, the disk held {on_disk_s:.2f} s"
    assert path.stat().st_size == HEADER_BYTES + 2 * len(data)  # nothing half-written past the header's size


def test_injected_full_disk(tmp_path, monkeypatch):
    limit = HEADER_BYTES + 40_000 + 1234  # ~1.25 s of 16 kHz audio, then a short write, then ENOSPC
    _limit_file_size(monkeypatch, limit)
    rec, path, wave, sr, told, fed = _record_until_full(tmp_path)
    _check(rec, path, wave, sr, told, fed)
    assert path.stat().st_size <= limit


def test_real_full_tmpfs(small_disk):
    rec, path, wave, sr, told, fed = _record_until_full(small_disk)
    _check(rec, path, wave, sr, told, fed)


def test_no_room_for_even_the_header(tmp_path, monkeypatch):
    _limit_file_size(monkeypatch, 10)
    with pytest.raises(AudioError, match="cannot write the recording .No space left on device"):
        Recorder(tmp_path).start(FileSource(WAV), tmp_path / "x.wav")
    assert not (tmp_path / "x.wav").exists()


def test_a_failed_flush_keeps_the_header_true(tmp_path, monkeypatch):
    _limit_file_size(monkeypatch, HEADER_BYTES + 3001)  # an odd size: a torn sample must be cut off
    w = StreamingWav(tmp_path / "a.wav", 16_000)
    tone = (0.5 * np.sin(np.arange(16_000) / 10)).astype(np.float32)
    with pytest.raises(OSError) as err:
        w.write(tone)
    assert err.value.errno == errno.ENOSPC and w.error is err.value
    w.write(tone)  # dropped quietly: the error was said once
    w.close()
    data, _ = sf.read(tmp_path / "a.wav", dtype="float32")
    assert len(data) == w.frames and w.frames * 2 <= 3001
