"""The study browser: sample studies, recent/open folder or file, library studies, series choice,
each with a thumbnail (the middle axial slice in a mediastinal window). Patient names are never
shown: only descriptions, dates and UIDs the engine keeps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

THUMB = 64
SAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "samples"


def sample_studies() -> list[Path]:
    """The committed sample studies' DICOM folders."""
    return sorted(p / "dicom" for p in SAMPLES_DIR.glob("study-*") if (p / "dicom").is_dir())


def thumbnail(volume, size: int = THUMB) -> QPixmap:
    """Middle axial slice, window 350/50, as a square pixmap."""
    sl = volume.array[volume.shape[0] // 2].astype(np.float32)
    grey = np.clip((sl - (50 - 175)) / 350.0 * 255.0, 0, 255).astype(np.uint8)
    grey = np.ascontiguousarray(grey)
    img = QImage(grey.data, grey.shape[1], grey.shape[0], grey.shape[1], QImage.Format.Format_Grayscale8).copy()
    return QPixmap.fromImage(img).scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio,
                                         Qt.TransformationMode.SmoothTransformation)


class StudiesPanel(QWidget):
    openRequested = Signal(str, object)  # path, series (None = the reader's default)
    seriesListRequested = Signal(str)  # path: the main window lists its series in a worker

    def __init__(self, parent=None):
        super().__init__(parent)
        self.list = QListWidget()
        self.list.setIconSize(QSize(THUMB, THUMB))
        self.series = QComboBox()
        self.series.setEnabled(False)
        self.open_folder = QPushButton("Open folder…")
        self.open_file = QPushButton("Open file…")
        buttons = QHBoxLayout()
        buttons.addWidget(self.open_folder)
        buttons.addWidget(self.open_file)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(QLabel("Series:"))
        layout.addWidget(self.series)
        layout.addWidget(self.list)
        self.open_folder.clicked.connect(self._choose_folder)
        self.open_file.clicked.connect(self._choose_file)
        self.list.itemActivated.connect(self._activated)
        self.list.itemDoubleClicked.connect(self._activated)
        self.series.activated.connect(self._series_chosen)
        self._series_path: str | None = None
        for path in sample_studies():
            self.add_entry(str(path), f"Sample {path.parent.name}", group="sample")

    def add_entry(self, path: str, title: str, group: str, series: str | None = None) -> QListWidgetItem:
        for i in range(self.list.count()):
            it = self.list.item(i)
            if it.data(Qt.ItemDataRole.UserRole) == (path, series):
                return it
        item = QListWidgetItem(f"[{group}] {title}")
        item.setData(Qt.ItemDataRole.UserRole, (path, series))
        item.setToolTip(path)
        self.list.addItem(item)
        return item

    def set_thumbnail(self, path: str, volume) -> None:
        for i in range(self.list.count()):
            it = self.list.item(i)
            if it.data(Qt.ItemDataRole.UserRole)[0] == path:
                it.setIcon(QIcon(thumbnail(volume)))

    def set_library(self, records) -> None:
        for rec in records:
            if rec.path:
                self.add_entry(rec.path, f"{rec.description or rec.uid[:12]} {rec.date or ''}", "library",
                               rec.series)

    def set_series(self, path: str, series_infos) -> None:
        """``series_infos``: engine.io SeriesInfo list for the opened path (shown when > 1)."""
        self._series_path = path
        self.series.clear()
        for info in series_infos:
            label = getattr(info, "description", None) or getattr(info, "uid", str(info))
            n = getattr(info, "n_slices", None) or getattr(info, "n_files", None)
            self.series.addItem(f"{label} ({n})" if n else str(label), getattr(info, "uid", None))
        self.series.setEnabled(self.series.count() > 1)

    def _series_chosen(self, index: int) -> None:
        if self._series_path is not None:
            self.openRequested.emit(self._series_path, self.series.itemData(index))

    def _activated(self, item: QListWidgetItem) -> None:
        path, series = item.data(Qt.ItemDataRole.UserRole)
        self.openRequested.emit(path, series)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a DICOM folder")
        if folder:
            self.openRequested.emit(folder, None)

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a CT file", "", "CT (*.nii *.nii.gz *.dcm);;All files (*)")
        if path:
            self.openRequested.emit(path, None)
