"""The transcript: what was heard, as an editable draft the reader can copy or save.

Made by ``engine.transcribe`` (faster-whisper on the packaged Whisper-base, primed with chest CT
vocabulary) in one worker thread of its own, started only after the speech-native results are on
screen, so it never delays them. The panel says which reader decided the dictation check: the
bundle's ``dictation_reader`` (the speech reader on the audio, or the transcript read by the
bundle's rules or its learned transcript reader); when the bundle carries a rule lexicon, it also lists the findings on which this
transcript, read by those rules, says something else than the check."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

READERS = {"speech": "the speech reader (the audio itself)",
           "cascade": "the transcript reader (a transcript read by the bundle's rules)",
           "transcript": "the transcript reader (a transcript read by the bundle's learned reader)"}


def decided_by(reader: str) -> str:
    return f"The dictation check above was decided by {READERS.get(reader, reader)}; this text is a draft."


DECIDED_BY = decided_by("speech")


class TranscriptPanel(QWidget):
    def __init__(self, folder: Path, parent=None):
        """``folder``: where Save writes transcripts (under the user data folder)."""
        super().__init__(parent)
        self.folder = Path(folder)
        self.header = QLabel("The transcript appears after a dictation")
        self.header.setWordWrap(True)
        self.text = QPlainTextEdit()
        self.text.setPlaceholderText("What was heard, as an editable draft")
        self.copy_button = QPushButton("Copy")
        self.save_button = QPushButton("Save")
        for b in (self.copy_button, self.save_button):
            b.setEnabled(False)
        self.note = QLabel(DECIDED_BY)
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: #9aa0a6;")
        row = QHBoxLayout()
        row.addWidget(self.note, 1)
        row.addWidget(self.copy_button)
        row.addWidget(self.save_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.header)
        lay.addWidget(self.text, 1)
        lay.addLayout(row)
        self.copy_button.clicked.connect(self.copy)
        self.save_button.clicked.connect(self.save)
        self.source: str | None = None  # the recording it was made from
        self.saved: Path | None = None

    def pending(self, audio_path: str | None) -> None:
        self.source = audio_path
        self.header.setText("Transcribing… (the results above are final; this is a draft for reading)")
        self.text.setPlainText("")
        for b in (self.copy_button, self.save_button):
            b.setEnabled(False)

    def show_text(self, text: str, seconds: float, reader: str = "speech",
                  disagreements: list[tuple[str, str, str]] | None = None) -> None:
        """``disagreements``: (finding, what the transcript says, what the check used)."""
        self.header.setText(f"Transcript (Whisper-base, {seconds:.1f} s) — an editable draft")
        self.text.setPlainText(text or "(nothing recognised)")
        note = decided_by(reader)
        if disagreements:
            note += " Where they differ: " + "; ".join(
                f"{label}: transcript {said}, check {used}" for label, said, used in disagreements) + "."
        self.note.setText(note)
        for b in (self.copy_button, self.save_button):
            b.setEnabled(True)

    def failed(self, message: str) -> None:
        self.header.setText(f"No transcript: {message}")

    def clear(self) -> None:
        self.source = None
        self.header.setText("The transcript appears after a dictation")
        self.text.setPlainText("")
        for b in (self.copy_button, self.save_button):
            b.setEnabled(False)

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.text.toPlainText())
        self.header.setText("Transcript copied to the clipboard")

    def save(self) -> Path:
        """Write the (edited) draft as UTF-8 text, named after its recording when there is one."""
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = Path(self.source).stem if self.source else _dt.datetime.now().strftime("transcript-%Y%m%d-%H%M%S")
        path = self.folder / f"{stem}.txt"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.text.toPlainText() + "\n", encoding="utf-8")
        tmp.replace(path)
        self.saved = path
        self.header.setText(f"Transcript saved: {path}")
        return path
