"""The study browser: sample studies, recent/open folder or file, library studies, series choice,
each with a thumbnail (the middle axial slice in a mediastinal window). Patient names are never
shown: only descriptions, dates and UIDs the engine keeps.

Thumbnails are read from each entry's path in a worker (``desktop.workers.TaskRunner``): the entry
shows a placeholder until its image arrives, or an error placeholder whose tooltip carries the
reader's one-line message. Images are kept in a process-wide memory cache keyed by (path, series),
so a study is read for its thumbnail at most once per session, and optionally as PNGs on disk.

``hold_thumbnails()`` queues new reads until ``release_thumbnails()``: while a study opens, its
reading and encoding come first (reading DICOM is Python work that competes for the interpreter
with the GUI thread, so fewer readers at once means a smoother viewer)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import shiboken6
from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QIcon, QImage, QPainter, QPixmap
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

from ..workers import TaskRunner

THUMB = 64
SAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "samples"


def sample_studies() -> list[Path]:
    """The committed sample studies' DICOM folders."""
    return sorted(p / "dicom" for p in SAMPLES_DIR.glob("study-*") if (p / "dicom").is_dir())


WINDOW_WIDTH, WINDOW_LEVEL = 350.0, 50.0  # HU: mediastinal window (lungs black, soft tissue grey)
# (path, series) -> the thumbnail QImage; QImage (unlike QPixmap) may be built in a worker thread
_THUMB_CACHE: dict[tuple[str, str | None], QImage] = {}
STATE_ROLE = Qt.ItemDataRole.UserRole + 1  # "pending" | "ready" | "error"


def thumbnail_image(volume, size: int = THUMB) -> QImage:
    """Middle axial slice (array index z = nz // 2 of the (z, y, x) array), mediastinal window,
    scaled to fit ``size`` x ``size`` pixels. Safe to call off the GUI thread."""
    sl = volume.array[volume.shape[0] // 2].astype(np.float32)
    lo = WINDOW_LEVEL - WINDOW_WIDTH / 2
    grey = np.ascontiguousarray(np.clip((sl - lo) / WINDOW_WIDTH * 255.0, 0, 255).astype(np.uint8))
    img = QImage(grey.data, grey.shape[1], grey.shape[0], grey.shape[1], QImage.Format.Format_Grayscale8)
    return img.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)


def thumbnail(volume, size: int = THUMB) -> QPixmap:
    """:func:`thumbnail_image` as a pixmap (GUI thread only)."""
    return QPixmap.fromImage(thumbnail_image(volume, size))


def default_thumbnail_dir() -> Path:
    """``<platformdirs user cache>/speechct/thumbnails``, beside the engine's embedding cache."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("speechct")) / "thumbnails"


def _disk_name(path: str, series: str | None, size: int) -> str | None:
    """A file name that changes when the study does (its path's mtime: a DICOM folder's changes when
    files come or go); None when the path cannot be stat'ed, so nothing stale is ever served."""
    try:
        mtime = Path(path).stat().st_mtime_ns
    except OSError:
        return None
    key = f"{Path(path).resolve()}|{series}|{size}|{mtime}|{WINDOW_WIDTH}/{WINDOW_LEVEL}"
    return hashlib.sha1(key.encode()).hexdigest() + ".png"


def read_thumbnail(path: str, series: str | None = None, size: int = THUMB,
                   disk_dir: Path | None = None) -> QImage:
    """Read the study at ``path`` (engine.io.load_volume) and return its thumbnail image, first
    looking in (and afterwards writing to) ``disk_dir`` when given. Runs in a worker; raises
    engine.errors.StudyError (one line) when the study cannot be read."""
    from engine.io import load_volume

    name = _disk_name(path, series, size) if disk_dir is not None else None
    if name is not None:
        cached = QImage(str(disk_dir / name))
        if not cached.isNull():
            return cached
    image = thumbnail_image(load_volume(path, series), size)
    if name is not None:
        try:
            disk_dir.mkdir(parents=True, exist_ok=True)
            image.save(str(disk_dir / name))  # best effort: a read-only cache only costs a re-read
        except OSError:
            pass
    return image


def placeholder_icon(kind: str, size: int = THUMB) -> QIcon:
    """A flat square: "pending" (grey, an ellipsis) or "error" (dark red, an exclamation mark)."""
    pix = QPixmap(size, size)
    pix.fill(Qt.GlobalColor.transparent)
    p = QPainter(pix)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QColor("#5a1e1e") if kind == "error" else QColor("#3a3f44"))
    p.drawRoundedRect(QRectF(2, 2, size - 4, size - 4), 6, 6)
    p.setPen(QColor("#ff8a80") if kind == "error" else QColor("#9aa3ab"))
    font = QFont()
    font.setPixelSize(size // 2)
    font.setBold(True)
    p.setFont(font)
    p.drawText(QRectF(0, 0, size, size), Qt.AlignmentFlag.AlignCenter, "!" if kind == "error" else "…")
    p.end()
    return QIcon(pix)


class StudiesPanel(QWidget):
    openRequested = Signal(str, object)  # path, series (None = the reader's default)
    seriesListRequested = Signal(str)  # path: the main window lists its series in a worker

    thumbnailReady = Signal(str)  # path: an entry's thumbnail (or its error placeholder) is shown

    def __init__(self, parent=None, runner: TaskRunner | None = None, thumbnail_dir: Path | None = None,
                 held: bool = False):
        """``thumbnail_dir``: where thumbnails persist between sessions (None: memory only). ``held``:
        start held (:meth:`hold_thumbnails`), so not even the sample entries' reads start yet."""
        super().__init__(parent)
        self.thumbnail_dir = Path(thumbnail_dir) if thumbnail_dir is not None else None
        # one reader at a time: thumbnails must not starve the engine's own study loads
        self.runner = runner or TaskRunner(self, max_threads=1)
        self.thumbnail_threads: list[int] = []  # the thread each thumbnail read ran on (tests check it)
        self._pending: dict[tuple[str, str | None], object] = {}
        self._held: list[tuple[str, str | None]] | None = [] if held else None  # queued reads while held
        self._errors: dict[tuple[str, str | None], str] = {}
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
        self.open_folder.clicked.connect(self.choose_folder)
        self.open_file.clicked.connect(self._choose_file)
        self.list.itemActivated.connect(self._activated)  # double-click or Enter (once: not also itemDoubleClicked)
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
        self._request_thumbnail(path, series)
        return item

    def _items(self, key: tuple[str, str | None]):
        for i in range(self.list.count()):
            it = self.list.item(i)
            if it.data(Qt.ItemDataRole.UserRole) == key:
                yield it

    def _show(self, key: tuple[str, str | None]) -> None:
        """Give every entry for ``key`` its thumbnail, error placeholder or pending placeholder."""
        if key in _THUMB_CACHE:
            icon, state, tip = QIcon(QPixmap.fromImage(_THUMB_CACHE[key])), "ready", key[0]
        elif key in self._errors:
            icon, state = placeholder_icon("error"), "error"
            tip = f"{key[0]}\n⚠ cannot read: {self._errors[key]}"
        else:
            icon, state, tip = placeholder_icon("pending"), "pending", f"{key[0]}\n(reading thumbnail…)"
        for it in self._items(key):
            it.setIcon(icon)
            it.setData(STATE_ROLE, state)
            it.setToolTip(tip)

    def hold_thumbnails(self) -> None:
        if self._held is None:
            self._held = []

    def release_thumbnails(self) -> None:
        held, self._held = self._held, None
        for path, series in held or []:
            self._request_thumbnail(path, series)

    def _request_thumbnail(self, path: str, series: str | None) -> None:
        key = (path, series)
        self._show(key)
        if key in _THUMB_CACHE or key in self._errors or key in self._pending:
            return
        if self._held is not None:
            if key not in self._held:
                self._held.append(key)
            return

        def done(image: QImage) -> None:
            _THUMB_CACHE[key] = image
            self._finish(key)

        def failed(msg: str) -> None:
            self._errors[key] = msg.splitlines()[0] if msg else "unknown error"
            self._finish(key)

        self._pending[key] = self.runner.run_task(read_thumbnail, path, series, THUMB, self.thumbnail_dir,
                                                  on_result=done, on_error=failed, name="thumbnail")

    def _finish(self, key: tuple[str, str | None]) -> None:
        if not shiboken6.isValid(self.list):
            return  # the panel closed while the read ran (its result stays in the cache)
        task = self._pending.pop(key, None)
        if task is not None and task.thread_id is not None:
            self.thumbnail_threads.append(task.thread_id)
        self._show(key)
        self.thumbnailReady.emit(key[0])

    @property
    def thumbnails_pending(self) -> int:
        return len(self._pending)

    def set_thumbnail(self, path: str, volume) -> None:
        """An opened study's thumbnail from its already loaded volume (a slice: cheap on any thread)."""
        image = thumbnail_image(volume)
        for i in range(self.list.count()):
            key = self.list.item(i).data(Qt.ItemDataRole.UserRole)
            if key[0] == path:
                _THUMB_CACHE.setdefault(key, image)
                self._errors.pop(key, None)
                self._show(key)

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

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a DICOM folder")
        if folder:
            self.openRequested.emit(folder, None)

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a CT file", "", "CT (*.nii *.nii.gz *.dcm);;All files (*)")
        if path:
            self.openRequested.emit(path, None)
