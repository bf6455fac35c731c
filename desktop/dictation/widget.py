"""The dictation panel: record button (hold-to-talk, or toggle), spoken-query button, level
meter, recording state, playback of the last dictation, and one-line device messages.

A recording is checked for speech (``engine.speech_presence``) before it is handed on: silence,
a slip of the finger or a fragment says "no speech heard" / "too little speech" and is dropped,
so the check on screen stays the last one made from a real dictation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from engine.errors import AudioError
from engine.speech_presence import check_speech

from .recorder import Recorder
from .sources import AudioSource

DICTATION, QUERY = "dictation", "query"
MIN_SECONDS = 0.3  # shorter presses are slips of the finger, not dictations


class DictationWidget(QWidget):
    dictationFinished = Signal(str, object, int)  # wav path, float32 waveform, sample rate
    queryFinished = Signal(str, object, int)
    message = Signal(str)
    recordingChanged = Signal(bool)
    ignored = Signal(str)  # a recording dropped before analysis (no speech, too little, too short): why

    def __init__(self, recordings_dir: str | Path, source_factory: Callable[[], AudioSource], *,
                 mode: str = "hold", key_name: str = "F4", parent=None):
        super().__init__(parent)
        self.recorder = Recorder(recordings_dir)
        self.source_factory = source_factory
        self.mode = mode
        self.kind: str | None = None
        self.last: tuple[Path, np.ndarray, int] | None = None
        self.record_button = QPushButton()
        self.query_button = QPushButton("Spoken query")
        self.query_button.setToolTip("Hold (or click, in toggle mode) and say what to look for in the library")
        self.play_button = QPushButton("Play last")
        self.play_button.setEnabled(False)
        self.meter = QProgressBar()
        self.meter.setRange(0, 100)
        self.meter.setTextVisible(False)
        self.meter.setFixedHeight(10)
        self.state_label = QLabel("Ready")
        self.set_key_name(key_name)
        row = QHBoxLayout()
        row.addWidget(self.record_button, 2)
        row.addWidget(self.query_button, 1)
        row.addWidget(self.play_button, 1)
        col = QVBoxLayout(self)
        col.addLayout(row)
        col.addWidget(self.meter)
        col.addWidget(self.state_label)
        for button, kind in ((self.record_button, DICTATION), (self.query_button, QUERY)):
            button.pressed.connect(lambda k=kind: self._pressed(k))
            button.released.connect(lambda k=kind: self._released(k))
        self.play_button.clicked.connect(self.play_last)
        self._timer = QTimer(self)
        self._timer.setInterval(33)
        self._timer.timeout.connect(self._tick)

    def set_key_name(self, key_name: str) -> None:
        self.key_name = key_name
        how = "hold" if self.mode == "hold" else "press"
        self.record_button.setText(f"● Dictate ({how} {key_name})")

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self.set_key_name(self.key_name)

    # ---------------------------------------------------------------- buttons and key
    def _pressed(self, kind: str) -> None:
        if self.mode == "hold":
            self.begin(kind)
        elif self.kind is None:
            self.begin(kind)
        else:
            self.end()

    def _released(self, kind: str) -> None:
        if self.mode == "hold" and self.kind == kind:
            self.end()

    def key_down(self) -> None:
        self._pressed(DICTATION)

    def key_up(self) -> None:
        self._released(DICTATION)

    # ---------------------------------------------------------------- recording
    def begin(self, kind: str = DICTATION) -> bool:
        if self.kind is not None:
            return False
        try:
            source = self.source_factory()
            self.recorder.start(source, self.recorder.new_path(kind))
        except AudioError as exc:
            self._say(f"No recording: {exc}")
            return False
        except Exception as exc:  # e.g. PortAudio missing entirely
            self._say(f"No recording: the audio input could not be opened ({exc})")
            return False
        self.kind = kind
        self.state_label.setText("● Recording…" if kind == DICTATION else "● Listening for a query…")
        self.state_label.setStyleSheet("color: #e0393e; font-weight: bold;")
        self._timer.start()
        self.recordingChanged.emit(True)
        return True

    def end(self) -> None:
        kind, self.kind = self.kind, None
        if kind is None:
            return
        self._timer.stop()
        self.meter.setValue(0)
        path, wave, sr = self.recorder.stop()
        self.state_label.setStyleSheet("")
        self.recordingChanged.emit(False)
        if self.recorder.error:
            self._say(self.recorder.error)
        seconds = len(wave) / sr
        if seconds < MIN_SECONDS:
            self._drop(f"Too short ({seconds:.1f} s), ignored; the previous result stays")
            return
        presence = check_speech(wave, sr)
        if not presence.ok:
            what = "No speech heard" if presence.verdict == "none" else "Too little speech"
            self._drop(f"{what} in {seconds:.1f} s of audio ({presence.speech_s:.1f} s voiced); "
                       "the previous result stays")
            return
        self.state_label.setText(f"{'Dictation' if kind == DICTATION else 'Query'}: {seconds:.1f} s — processing…")
        if kind == DICTATION:
            self.last = (path, wave, sr)
            self.play_button.setEnabled(True)
            self.dictationFinished.emit(str(path), wave, sr)
        else:
            self.queryFinished.emit(str(path), wave, sr)

    def _drop(self, text: str) -> None:
        self._say(text)
        self.ignored.emit(text)

    def _tick(self) -> None:
        level = self.recorder.level
        db = 20 * np.log10(max(level, 1e-4))  # -80..0 dBFS shown as 0..100 from -60 dB up
        self.meter.setValue(int(np.clip((db + 60) / 60 * 100, 0, 100)))
        self.state_label.setText(f"● Recording {self.recorder.seconds:4.1f} s" if self.kind == DICTATION
                                 else f"● Query {self.recorder.seconds:4.1f} s")
        if self.recorder.error:  # the device went away mid-recording: keep what we have
            self.end()

    def _say(self, text: str) -> None:
        self.state_label.setText(text)
        self.message.emit(text)

    def play_last(self) -> None:
        if self.last is None:
            return
        try:
            import sounddevice as sd

            sd.play(self.last[1], self.last[2])
        except Exception as exc:  # no output device: say so
            self._say(f"Cannot play the last dictation: {exc}")

    def set_done(self, text: str) -> None:
        self.state_label.setText(text)

