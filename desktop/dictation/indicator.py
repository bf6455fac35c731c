"""The recording indicator above the images: where the reader looks while dictating. Idle it says
how to dictate; recording it shows a red dot, the elapsed time and the input level."""

from __future__ import annotations

import numpy as np
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QWidget


class RecordingIndicator(QWidget):
    def __init__(self, widget, parent=None):
        """``widget``: the DictationWidget whose recorder and state this shows."""
        super().__init__(parent)
        self.dictation = widget
        self.dot = QLabel()
        self.text = QLabel()
        self.level = QProgressBar()
        self.level.setRange(0, 100)
        self.level.setTextVisible(False)
        self.level.setFixedSize(160, 10)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(6, 2, 6, 2)
        lay.addWidget(self.dot)
        lay.addWidget(self.text)
        lay.addWidget(self.level)
        lay.addStretch(1)
        self.setFixedHeight(26)
        widget.recordingChanged.connect(self.refresh)
        widget._timer.timeout.connect(self.refresh)  # the panel's 30 Hz meter tick drives this too
        self.refresh()

    @property
    def recording(self) -> bool:
        return self.dictation.kind is not None

    def refresh(self, *_args) -> None:
        w = self.dictation
        if w.kind is None:
            self.dot.setText("○")
            self.dot.setStyleSheet("color: #8a8f96;")
            how = "hold" if w.mode == "hold" else "press"
            self.text.setText(f"Dictation: {how} {w.key_name}")
            self.text.setStyleSheet("color: #8a8f96;")
            self.level.setValue(0)
            self.level.hide()
            return
        self.dot.setText("●")
        self.dot.setStyleSheet("color: #ff4d4f; font-size: 16px;")
        what = "REC dictation" if w.kind == "dictation" else "REC spoken query"
        self.text.setText(f"{what}  {w.recorder.seconds:5.1f} s")
        self.text.setStyleSheet("color: #ff6b6b; font-weight: bold;")
        db = 20 * np.log10(max(w.recorder.level, 1e-4))
        self.level.setValue(int(np.clip((db + 60) / 60 * 100, 0, 100)))
        self.level.show()
