"""Recording: the WAV on disk is playable while recording and after a SIGKILL (at most ~1 s lost);
no device gives a message, not a crash; retention purges old audio; settings persist."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from desktop.dictation.recorder import Recorder, purge_old_recordings
from desktop.dictation.sources import FileSource, SoundDeviceSource
from desktop.dictation.wavfile import StreamingWav
from desktop.panels.studies import sample_studies
from desktop.settings import Settings
from engine.errors import AudioError

REPO = Path(__file__).resolve().parents[2]
WAV = sample_studies()[0].parent / "dictation.wav"

CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
from desktop.dictation.recorder import Recorder
from desktop.dictation.sources import FileSource
rec = Recorder({folder!r})
rec.start(FileSource({wav!r}, realtime=True), {out!r})
print("recording", flush=True)
time.sleep(60)
"""


def test_streaming_wav_is_readable_before_close(tmp_path):
    w = StreamingWav(tmp_path / "a.wav", 16_000)
    tone = np.sin(np.arange(16_000) / 10).astype(np.float32) * 0.5
    w.write(tone)
    w.flush()
    data, sr = sf.read(tmp_path / "a.wav", dtype="float32")  # still open for writing
    assert sr == 16_000 and len(data) == 16_000 and np.max(np.abs(data - tone)) < 1e-4
    w.close()


def test_killed_recording_leaves_a_playable_wav(tmp_path):
    out = tmp_path / "killed.wav"
    code = CHILD.format(repo=str(REPO), folder=str(tmp_path), wav=str(WAV), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "recording"
        started = time.perf_counter()
        time.sleep(2.5)
        os.kill(proc.pid, signal.SIGKILL)
        elapsed = time.perf_counter() - started
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    data, sr = sf.read(out, dtype="float32")
    source = FileSource(WAV).waveform
    assert sr == 16_000
    assert len(data) >= (elapsed - 1.0) * sr, f"lost more than 1 s: {len(data) / sr:.2f} s of {elapsed:.2f} s"
    assert len(data) <= (elapsed + 0.5) * sr
    assert np.max(np.abs(data - source[: len(data)])) < 1e-3  # what was fed, in order


def test_recorder_from_file_source(tmp_path):
    rec = Recorder(tmp_path)
    src = FileSource(WAV)
    path = rec.start(src)
    assert rec.recording
    src.finished.wait(30)
    path2, wave, sr = rec.stop()
    assert path2 == path and path.is_file() and sr == 16_000
    assert len(wave) == len(src.waveform) and rec.level > 0
    assert sf.info(path).frames == len(wave)


def test_no_microphone_is_a_clear_error(tmp_path):
    with pytest.raises(AudioError, match="cannot open the microphone|no audio system"):
        SoundDeviceSource(device="no such microphone 12345").start(lambda b: None, lambda m: None)
    rec = Recorder(tmp_path)
    with pytest.raises(AudioError):
        rec.start(SoundDeviceSource(device="no such microphone 12345"))
    assert not rec.recording


def test_widget_without_device_says_so(qtbot, tmp_path):
    from desktop.dictation.widget import DictationWidget

    w = DictationWidget(tmp_path, lambda: SoundDeviceSource(device="no such microphone 12345"))
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.message, timeout=5000) as blocker:
        assert not w.begin()
    assert "No recording" in blocker.args[0] and w.kind is None


def test_device_lost_mid_recording_keeps_the_audio(qtbot, tmp_path):
    """A source that reports an error (as a hot-unplugged device does) ends the recording cleanly."""
    from desktop.dictation.widget import DictationWidget

    class Unplugged(FileSource):
        def start(self, callback, on_error):
            super().start(callback, on_error)
            self.finished.wait(30)
            on_error("the microphone stopped (unplugged?); the recording so far is kept")

    w = DictationWidget(tmp_path, lambda: Unplugged(WAV))
    qtbot.addWidget(w)
    messages = []
    w.message.connect(messages.append)
    with qtbot.waitSignal(w.dictationFinished, timeout=10_000) as blocker:
        assert w.begin()
    path, wave, sr = blocker.args
    assert Path(path).is_file() and len(wave) == len(FileSource(WAV).waveform)
    assert any("unplugged" in m for m in messages) and w.kind is None


def test_hold_to_talk_button(qtbot, tmp_path):
    from PySide6.QtCore import Qt

    from desktop.dictation.widget import DictationWidget

    w = DictationWidget(tmp_path, lambda: FileSource(WAV, realtime=True))
    qtbot.addWidget(w)
    qtbot.mousePress(w.record_button, Qt.MouseButton.LeftButton)
    assert w.kind == "dictation" and "Recording" in w.state_label.text()
    qtbot.wait(1500)  # at least half a second of speech: less is dropped as too little
    with qtbot.waitSignal(w.dictationFinished, timeout=5000) as blocker:
        qtbot.mouseRelease(w.record_button, Qt.MouseButton.LeftButton)
    assert w.kind is None and 1.2 * 16_000 < len(blocker.args[1]) < 4 * 16_000
    w.set_mode("toggle")
    qtbot.mouseClick(w.record_button, Qt.MouseButton.LeftButton)
    assert w.kind == "dictation"
    qtbot.wait(1500)
    with qtbot.waitSignal(w.dictationFinished, timeout=5000):
        qtbot.mouseClick(w.record_button, Qt.MouseButton.LeftButton)


def test_retention_and_settings_round_trip(tmp_path, monkeypatch):
    old, new = tmp_path / "old.wav", tmp_path / "new.wav"
    for p in (old, new):
        p.write_bytes(b"RIFF")
    os.utime(old, (time.time() - 40 * 86400,) * 2)
    assert purge_old_recordings(tmp_path, 30) == [old]
    assert new.exists() and not old.exists()
    assert purge_old_recordings(tmp_path, 0) == []  # 0 keeps everything
    monkeypatch.setenv("SPEECHCT_APP_CONFIG", str(tmp_path / "cfg" / "desktop.json"))
    s = Settings.load()
    assert s.push_to_talk_mode == "hold" and s.push_to_talk_key == "F4"
    s.push_to_talk_mode, s.audio_retention_days, s.microphone = "toggle", 7, "USB mic"
    s.save()
    assert Settings.load() == s


def test_settings_dialog_edits(qtbot):
    from PySide6.QtGui import QKeySequence

    from desktop.settings import SettingsDialog

    base = Settings(bundle="/b", audio_retention_days=30)
    dlg = SettingsDialog(base, [(3, "USB mic")])
    qtbot.addWidget(dlg)
    assert dlg.microphone.currentData() == "" and dlg.microphone.count() == 2
    dlg.microphone.setCurrentIndex(1)
    dlg.mode.setCurrentIndex(1)
    dlg.key.setKeySequence(QKeySequence("F9"))
    dlg.retention.setValue(3)
    dlg.library.setText(" /lib ")
    out = dlg.result_settings()
    assert (out.microphone, out.push_to_talk_mode, out.push_to_talk_key, out.audio_retention_days, out.library,
            out.bundle) == ("USB mic", "toggle", "F9", 3, "/lib", "/b")
