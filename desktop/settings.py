"""Settings kept between runs: a JSON file under platformdirs' user config dir
(``$SPEECHCT_APP_CONFIG`` overrides the file, for tests and portable installs)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QKeySequenceEdit,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

ENV_CONFIG = "SPEECHCT_APP_CONFIG"
MODES = ("hold", "toggle")


def config_path() -> Path:
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("speechct")) / "desktop.json"


def data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("speechct"))


@dataclass
class Settings:
    bundle: str = ""  # "" = the engine's default bundle
    library: str = ""  # "" = the engine's default library
    microphone: str = ""  # "" = the system default input device; else a PortAudio device name
    push_to_talk_key: str = "F4"
    push_to_talk_mode: str = "hold"  # "hold" or "toggle"
    audio_retention_days: int = 30
    recordings_dir: str = ""  # "" = <user data dir>/recordings
    last_study: str = ""
    pacs_server: str = ""  # a server name of the PACS settings file ("" = its default); the PACS tab sets it

    def recordings(self) -> Path:
        return Path(self.recordings_dir) if self.recordings_dir else data_dir() / "recordings"

    def transcripts(self) -> Path:
        """Saved transcripts: beside the recordings (so a test's or a portable install's stay together)."""
        return self.recordings().parent / "transcripts"

    @classmethod
    def load(cls, path: Path | None = None) -> Settings:
        path = path or config_path()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()  # first run or a damaged file: defaults (the file is rewritten on save)
        known = {f.name for f in fields(cls)}
        s = cls(**{k: v for k, v in raw.items() if k in known})
        if s.push_to_talk_mode not in MODES:
            s.push_to_talk_mode = "hold"
        return s

    def save(self, path: Path | None = None) -> None:
        path = path or config_path()
        from engine.atomic import atomic_write

        with atomic_write(path, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(asdict(self), indent=1))


def _path_row(edit: QLineEdit, folder: bool = True) -> QWidget:
    row = QWidget()
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit)
    browse = QPushButton("…")
    lay.addWidget(browse)
    browse.clicked.connect(lambda: (d := QFileDialog.getExistingDirectory(row, "Choose a folder", edit.text()))
                           and edit.setText(d))
    return row


class SettingsDialog(QDialog):
    def __init__(self, settings: Settings, devices: list[tuple[int, str]], parent=None):
        super().__init__(parent)
        self.setWindowTitle("SpeechCT settings")
        self.bundle = QLineEdit(settings.bundle)
        self.bundle.setPlaceholderText("default bundle")
        self.library = QLineEdit(settings.library)
        self.library.setPlaceholderText("default library (or postgresql://user@host:port/db)")
        self.microphone = QComboBox()
        self.microphone.addItem("System default", "")
        for _, name in devices:
            self.microphone.addItem(name, name)
        idx = self.microphone.findData(settings.microphone)
        self.microphone.setCurrentIndex(max(idx, 0))
        self.key = QKeySequenceEdit(QKeySequence(settings.push_to_talk_key))
        self.mode = QComboBox()
        self.mode.addItem("Hold to talk", "hold")
        self.mode.addItem("Press to start / stop", "toggle")
        self.mode.setCurrentIndex(MODES.index(settings.push_to_talk_mode))
        self.retention = QSpinBox()
        self.retention.setRange(0, 3650)
        self.retention.setSuffix(" days (0 = keep)")
        self.retention.setValue(settings.audio_retention_days)
        form = QFormLayout(self)
        form.addRow("Model bundle", _path_row(self.bundle))
        form.addRow("Study library", _path_row(self.library))
        form.addRow("Microphone", self.microphone)
        form.addRow("Push-to-talk key", self.key)
        form.addRow("Push-to-talk mode", self.mode)
        form.addRow("Keep dictation audio", self.retention)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self._base = settings

    def result_settings(self) -> Settings:
        key = self.key.keySequence().toString() or self._base.push_to_talk_key
        return Settings(**{**asdict(self._base), "bundle": self.bundle.text().strip(),
                           "library": self.library.text().strip(), "microphone": self.microphone.currentData(),
                           "push_to_talk_key": key.split(",")[0].strip(),
                           "push_to_talk_mode": self.mode.currentData(),
                           "audio_retention_days": self.retention.value()})
