"""The main window: study browser | viewer(s) | findings, dictation and similar studies; status bar.

Every engine call goes through ``EngineService`` (one QThreadPool). Signals ``findingsShown``,
``dictationShown`` and ``similarShown`` fire after the panels are filled (tests and --selftest wait
on them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QEvent, QObject, QPoint, Qt, Signal
from PySide6.QtGui import QAction, QImage, QKeySequence, QPainter, QPixmap
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from engine.volume import Volume

from .dictation.recorder import purge_old_recordings
from .dictation.sources import SoundDeviceSource, input_devices
from .dictation.widget import DictationWidget
from .engine_service import EngineService
from .icons import app_icon
from .panels.findings import FindingsPanel
from .panels.similar import SimilarPanel
from .panels.studies import StudiesPanel, default_thumbnail_dir
from .settings import Settings, SettingsDialog
from .viewer.fourup import StudyViewer
from .viewer.presets import PRESET_KEYS
from .workers import TaskRunner


class PushToTalkFilter(QObject):
    """App-wide: the push-to-talk key starts/stops dictation wherever the focus is (auto-repeat ignored)."""

    def __init__(self, window: MainWindow):
        super().__init__(window)
        self.window = window

    def eventFilter(self, obj, ev):  # noqa: N802
        if ev.type() in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease) and not ev.isAutoRepeat():
            if QKeySequence(ev.keyCombination()).toString() == self.window.settings.push_to_talk_key:
                if not self.window.isActiveWindow() and QApplication.activeWindow() is not None:
                    return False
                if ev.type() == QEvent.Type.KeyPress:
                    self.window.dictation.key_down()
                else:
                    self.window.dictation.key_up()
                return True
        return False


class MainWindow(QMainWindow):
    studyOpened = Signal(object)  # Volume
    findingsShown = Signal(object)  # Analysis
    dictationShown = Signal(object)  # DictationResult
    similarShown = Signal(list)
    libraryIndexed = Signal(int)  # library size after index_studies
    errorShown = Signal(str)

    def __init__(self, settings: Settings | None = None, *, source_factory=None, cache_dir=None,
                 save_settings: bool = True):
        super().__init__()
        self.settings = settings or Settings.load()
        self.save_settings = save_settings
        self.setWindowTitle("SpeechCT")
        self.setWindowIcon(app_icon())
        if QApplication.instance().windowIcon().isNull():  # dialogs and the task bar use the app's icon
            QApplication.instance().setWindowIcon(self.windowIcon())
        self.runner = TaskRunner(self)
        self.service = EngineService(self.runner, bundle=self.settings.bundle or None,
                                     library=self.settings.library or None, cache_dir=cache_dir, parent=self)
        self.volume: Volume | None = None
        self.viewer: StudyViewer | None = None
        self.compare: StudyViewer | None = None
        self.analysis = None
        self.last_error: str | None = None
        self.engine_info: dict | None = None

        # centre: the study (and a comparison study beside it)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.placeholder = QLabel("Open a study (File ▸ Open, or pick one on the left)")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.splitter.addWidget(self.placeholder)
        self.setCentralWidget(self.splitter)

        # left: studies
        # thumbnails persist beside the engine's embedding cache, or not at all when that is off
        thumbs = None if cache_dir is False else (default_thumbnail_dir() if cache_dir in (None, True)
                                                  else Path(cache_dir) / "thumbnails")
        self.studies = StudiesPanel(thumbnail_dir=thumbs)
        left_dock = self._dock("Studies", self.studies, Qt.DockWidgetArea.LeftDockWidgetArea)
        # right: findings, dictation, similar
        self.findings = FindingsPanel()
        self.dictation = DictationWidget(self.settings.recordings(), source_factory or self._microphone,
                                         mode=self.settings.push_to_talk_mode, key_name=self.settings.push_to_talk_key)
        self.similar = SimilarPanel()
        right = QSplitter(Qt.Orientation.Vertical)
        for title, w in (("Findings", self.findings), ("Dictation", self.dictation), ("Similar studies", self.similar)):
            box = QWidget()
            lay = QVBoxLayout(box)
            lay.setContentsMargins(4, 4, 4, 4)
            head = QLabel(f"<b>{title}</b>")
            lay.addWidget(head)
            lay.addWidget(w)
            right.addWidget(box)
        right.setSizes([520, 130, 200])
        right_dock = self._dock("Results", right, Qt.DockWidgetArea.RightDockWidgetArea)
        self.resizeDocks([left_dock, right_dock], [230, 560], Qt.Orientation.Horizontal)

        # status bar
        self.device_label, self.bundle_label, self.library_label = QLabel("device: …"), QLabel("bundle: …"), \
            QLabel("library: …")
        self.activity = QLabel("")
        self.busy_bar = QProgressBar()
        self.busy_bar.setRange(0, 0)
        self.busy_bar.setMaximumWidth(120)
        self.busy_bar.hide()
        sb = self.statusBar()
        sb.addWidget(self.activity, 1)
        sb.addPermanentWidget(self.busy_bar)
        for lab in (self.device_label, self.bundle_label, self.library_label):
            sb.addPermanentWidget(lab)

        self._menus()
        self.studies.openRequested.connect(self.open_study)
        self.similar.openRequested.connect(self.open_beside)
        self.dictation.dictationFinished.connect(self._dictation_done)
        self.dictation.queryFinished.connect(self._query_done)
        self.dictation.message.connect(self._status)
        self.service.busy.connect(self._busy)
        self.service.idle.connect(self._idle)
        self.service.ready.connect(self._engine_ready)
        self.service.failed.connect(self._error)
        self._ptt = PushToTalkFilter(self)
        QApplication.instance().installEventFilter(self._ptt)
        purge_old_recordings(self.settings.recordings(), self.settings.audio_retention_days)
        self.service.start()

    # ---------------------------------------------------------------- construction helpers
    def _dock(self, title: str, widget: QWidget, area) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(title)
        dock.setWidget(widget)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        self.addDockWidget(area, dock)
        return dock

    def _menus(self) -> None:
        def act(menu, text, slot, shortcut=None):
            a = QAction(text, self)
            if shortcut:
                a.setShortcut(QKeySequence(shortcut))
            a.triggered.connect(slot)
            menu.addAction(a)
            return a

        m = self.menuBar().addMenu("&File")
        act(m, "Open &folder…", self.studies._choose_folder, "Ctrl+O")
        act(m, "Open &file…", self.studies._choose_file, "Ctrl+Shift+O")
        act(m, "Add study to &library", self.add_to_library, "Ctrl+L")
        act(m, "&Settings…", self.edit_settings, "Ctrl+,")
        m.addSeparator()
        act(m, "&Quit", self.close, "Ctrl+Q")
        v = self.menuBar().addMenu("&View")
        for key, preset in PRESET_KEYS.items():
            act(v, f"{preset.name} window ({key})", lambda _=False, p=preset: self.viewer and
                self.viewer.state.apply_preset(p))
        act(v, "Reset view (r)", lambda: self.viewer and self.viewer.state.reset())
        act(v, "Close comparison", self.close_compare, "Ctrl+W")
        d = self.menuBar().addMenu("&Dictation")
        act(d, "Start / stop dictation", self._toggle_dictation, "Ctrl+D")
        act(d, "Play last dictation", self.dictation.play_last, "Ctrl+P")

    def _microphone(self):
        return SoundDeviceSource(self.settings.microphone or None)

    # ---------------------------------------------------------------- status
    def _status(self, text: str) -> None:
        self.activity.setText(text)

    def _busy(self, what: str) -> None:
        self.activity.setText(what)
        self.busy_bar.show()

    def _idle(self) -> None:
        if not self.runner.busy or len(self.runner._running) <= 1:
            self.busy_bar.hide()

    def _error(self, msg: str) -> None:
        self.last_error = msg
        self.activity.setText(f"⚠ {msg}")
        if self.analysis is None:
            self.findings.show_pending(f"⚠ {msg}")
        self.errorShown.emit(msg)

    def _engine_ready(self, info: dict) -> None:
        self.engine_info = info
        self.device_label.setText(f"device: {info['device']}")
        self.bundle_label.setText(f"bundle: {info['bundle']}")
        self._library_size(info.get("library_size"))
        self.service.library_records(self.studies.set_library)

    def _library_size(self, n) -> None:
        self.library_label.setText("library: unavailable" if n is None else f"library: {n} studies")

    # ---------------------------------------------------------------- studies
    def open_study(self, path: str, series=None) -> None:
        self._status(f"Opening {path}…")
        self.service.load_study(path, series, on_result=lambda vol: self._study_loaded(path, vol))
        from engine.io import list_series

        self.runner.run_task(list_series, path, on_result=lambda infos: self.studies.set_series(path, infos),
                             on_error=lambda _msg: None, name="list series")

    def _study_loaded(self, path: str, volume: Volume) -> None:
        self.volume, self.analysis = volume, None
        old = self.viewer
        self.viewer = StudyViewer(volume, self.splitter)  # born in place: re-parenting a GL widget crashes
        if old is not None:
            old.close_views()
            old.setParent(None)
            old.deleteLater()
        else:
            self.placeholder.setParent(None)
        self.splitter.insertWidget(0, self.viewer)
        self.viewer.show()
        self.viewer.views["axial"].setFocus()
        self.studies.add_entry(path, Path(path).name if "samples" not in path else Path(path).parent.name, "opened")
        self.studies.set_thumbnail(path, volume)
        self.settings.last_study = path
        for w in volume.warnings:
            self._status(f"⚠ {w}")
        desc = volume.metadata.get("series_description") or Path(path).name
        self.setWindowTitle(f"SpeechCT — {desc}")
        self.findings.show_pending("Encoding CT… (findings appear when ready)")
        self.studyOpened.emit(volume)
        self.service.analyze_study(volume, on_result=lambda a, v=volume: self._findings_ready(v, a))

    def _findings_ready(self, volume: Volume, analysis) -> None:
        if volume is not self.volume:
            return  # another study was opened meanwhile
        self.analysis = analysis
        self.findings.show_results(analysis.findings, unchecked=analysis.unchecked)
        t = analysis.timings.get("encode_ct")
        self._status(f"Findings ready ({'cached' if analysis.cached.get('ct') else f'{t:.0f} ms'})")
        self.findingsShown.emit(analysis)

    def open_beside(self, study: dict) -> None:
        path = study.get("path")
        if not path:
            self._error("this library entry has no path to open")
            return
        self.service.load_study(path, study.get("series"), on_result=self._compare_loaded)

    def _compare_loaded(self, volume: Volume) -> None:
        self.close_compare()
        self.compare = StudyViewer(volume, self.splitter, with_3d=False)
        self.splitter.addWidget(self.compare)
        self.compare.show()
        self._status(f"Comparing with {volume.metadata.get('series_description') or 'a prior study'}")

    def close_compare(self) -> None:
        if self.compare is not None:
            self.compare.close_views()
            self.compare.setParent(None)
            self.compare.deleteLater()
            self.compare = None

    def add_to_library(self) -> None:
        if self.volume is None:
            return
        volume, last = self.volume, self.dictation.last

        def work():
            eng = self.service.engine()
            ct = eng.encode_ct(volume)
            speech = None if last is None else eng.encode_speech(last[1], last[2])
            eng.library.add_study(volume, ct, dictation_path=None if last is None else str(last[0]),
                                  dictation_embedding=speech)
            return len(eng.library)

        self.service._run("Adding to the library…", work, on_result=self._library_size)

    def index_studies(self, paths) -> None:
        """Add studies (and a ``dictation.wav`` beside each DICOM folder, when present) to the library."""
        paths = [str(p) for p in paths]

        def work():
            from engine.io import load_volume

            eng = self.service.engine()
            for p in paths:
                volume = load_volume(p)
                wav = Path(p).parent / "dictation.wav"
                speech = eng.encode_audio_file(wav) if wav.is_file() else None
                eng.library.add_study(volume, eng.encode_ct(volume), dictation_path=str(wav) if speech is not None
                                      else None, dictation_embedding=speech)
            return len(eng.library)

        def done(n):
            self._library_size(n)
            self.service.library_records(self.studies.set_library)
            self.libraryIndexed.emit(n)

        self.service._run(f"Indexing {len(paths)} studies…", work, on_result=done)

    # ---------------------------------------------------------------- dictation
    def _toggle_dictation(self) -> None:
        if self.dictation.kind is None:
            self.dictation.begin()
        else:
            self.dictation.end()

    def _dictation_done(self, path: str, wave: np.ndarray, sr: int) -> None:
        if self.volume is None:
            self.dictation.set_done("Dictation saved; open a study to analyse it")
            return
        self.findings.show_pending("Processing dictation…")
        self.service.analyze_dictation(self.volume, wave, sr, path, on_result=self._dictation_ready)

    def _dictation_ready(self, result) -> None:
        a = result.analysis
        self.analysis = a
        self.findings.show_results(a.findings, a.dictation, a.discrepancies, title="Dictation checked: ",
                                   unchecked=a.unchecked)
        n = len(a.discrepancies or [])
        self._status(f"Dictation analysed in {a.timings.get('total', 0):.0f} ms")
        self.dictation.set_done(f"Dictation analysed: {n} discrepanc{'y' if n == 1 else 'ies'}"
                                if a.dictation is not None else "Dictation encoded (this bundle has no dictation head)")
        if a.similar is not None:
            self.similar.show_hits(a.similar, "From this study and dictation")
            self.similarShown.emit(a.similar)
        self.dictationShown.emit(result)

    def _query_done(self, path: str, wave: np.ndarray, sr: int) -> None:
        self.service.spoken_query(wave, sr, on_result=self._query_ready)

    def _query_ready(self, hits: list) -> None:
        self.similar.show_hits(hits, "Spoken query")
        self.dictation.set_done(f"Spoken query: {len(hits)} studies")
        self.similarShown.emit(hits)

    # ---------------------------------------------------------------- settings
    def edit_settings(self) -> None:
        dlg = SettingsDialog(self.settings, input_devices(), self)
        if dlg.exec():
            new = dlg.result_settings()
            restart = (new.bundle, new.library) != (self.settings.bundle, self.settings.library)
            self.settings = new
            self.dictation.set_mode(new.push_to_talk_mode)
            self.dictation.set_key_name(new.push_to_talk_key)
            if self.save_settings:
                new.save()
            if restart:
                QMessageBox.information(self, "SpeechCT", "The new bundle or library is used after a restart.")

    # ---------------------------------------------------------------- screenshots and shutdown
    def screenshot(self) -> QPixmap:
        """The whole window, with each VTK view's rendering painted in (offscreen Qt cannot grab GL)."""
        pix = self.grab()
        painter = QPainter(pix)
        for viewer in (self.viewer, self.compare):
            if viewer is None:
                continue
            for view in viewer.views.values():
                if not view.isVisible():
                    continue
                rgb = view.snapshot()
                img = QImage(rgb.data, rgb.shape[1], rgb.shape[0], rgb.shape[1] * 3, QImage.Format.Format_RGB888)
                top_left = view.mapTo(self, QPoint(0, 0))
                painter.drawImage(top_left, img.scaled(view.width(), view.height()))
        painter.end()
        return pix

    def closeEvent(self, ev):  # noqa: N802
        if self.dictation.kind is not None:
            self.dictation.end()
        self.runner.wait(30_000)
        self.studies.runner.wait(30_000)  # thumbnail reads: let them land before the panel goes
        for viewer in (self.viewer, self.compare):
            if viewer is not None:
                viewer.close_views()
        if self.save_settings:
            try:
                self.settings.save()
            except OSError:
                pass
        QApplication.instance().removeEventFilter(self._ptt)
        super().closeEvent(ev)
