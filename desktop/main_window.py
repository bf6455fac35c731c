"""The main window: study browser | reading bar (recording indicator, comparison link) over the
viewer(s) | findings, dictation and similar studies; a tool bar for the reading tools; status bar.

Every engine call goes through ``EngineService`` (one QThreadPool). Signals ``findingsShown``,
``dictationShown`` and ``similarShown`` fire after the panels are filled (tests and --selftest wait
on them). The status line names the work still running, and when nothing runs, the last outcome.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import QEvent, QObject, QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QActionGroup, QImage, QKeySequence, QPainter, QPixmap
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QDockWidget,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from engine.volume import Volume

from .dictation.indicator import RecordingIndicator
from .dictation.recorder import purge_old_recordings
from .dictation.sources import SoundDeviceSource, input_devices
from .dictation.widget import DictationWidget
from .engine_service import EngineService
from .icons import app_icon
from .panels.findings import FindingsPanel
from .panels.pacs import PacsPanel, browser_tabs
from .panels.similar import SimilarPanel
from .panels.studies import StudiesPanel, default_thumbnail_dir
from .panels.transcript import TranscriptPanel
from .settings import Settings, SettingsDialog
from .shortcuts import ShortcutsDialog
from .theme import apply_dark
from .viewer.fourup import StudyViewer, placeholder_volume
from .viewer.link import ScrollLink
from .viewer.measure import TOOL_NAMES
from .viewer.presets import PRESET_KEYS
from .workers import TaskRunner

#: A key release followed by a press within this time is key auto-repeat, not the hand letting go.
#: X sends auto-repeat as release + press pairs (660 ms after the press, then 25 a second) that Qt
#: does not always mark as auto-repeat; a dictation microphone's button does not stop for them.
RELEASE_GRACE_MS = 150
SWITCH_INTERVAL_S = 0.001


class PushToTalkFilter(QObject):
    """The push-to-talk key starts/stops dictation wherever the focus is in the main window. Auto-repeat
    is ignored in any form: presses marked as repeats, presses while the key is held, and the release
    + press pairs X delivers unmarked (a release only counts once no press follows it within
    ``RELEASE_GRACE_MS``).

    It filters the window's top-level ``QWindow``, where the platform delivers every key before the
    focus widget gets it, not the whole application: an application-wide Python filter sees each
    event of every object, and the first show's events to Qt's internal objects made PySide6 create
    about 120 Python enum classes (a third of that turn's CPU)."""

    def __init__(self, window: MainWindow):
        super().__init__(window)
        self.window = window
        self.held = False
        self._release = QTimer(self)
        self._release.setSingleShot(True)
        self._release.setInterval(RELEASE_GRACE_MS)
        self._release.timeout.connect(self._released)

    def eventFilter(self, obj, ev):  # noqa: N802
        if ev.type() not in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease):
            return False
        if QKeySequence(ev.keyCombination()).toString() != self.window.settings.push_to_talk_key:
            return False
        if not self.window.isActiveWindow() and QApplication.activeWindow() is not None:
            return False
        if ev.type() == QEvent.Type.KeyPress:
            if self._release.isActive():  # a release + press pair: the key never went up
                self._release.stop()
            elif not self.held and not ev.isAutoRepeat():
                self.held = True
                self.window.dictation.key_down()
        elif not ev.isAutoRepeat() and self.held:
            self._release.start()
        return True

    def _released(self) -> None:
        self.held = False
        self.window.dictation.key_up()


class MainWindow(QMainWindow):
    studyOpened = Signal(object)  # Volume
    findingsShown = Signal(object)  # Analysis
    dictationShown = Signal(object)  # DictationResult
    similarShown = Signal(list)
    transcriptShown = Signal(str)
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
        apply_dark(QApplication.instance())
        # Workers run Python too (DICOM parsing, imports): hand the interpreter back to the GUI thread
        # within 1 ms instead of the default 5 ms each time it wakes, so it keeps its 10 ms pace.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.volume: Volume | None = None
        self.viewer: StudyViewer | None = None
        self.compare: StudyViewer | None = None
        self.link: ScrollLink | None = None
        self.analysis = None
        self.last_error: str | None = None
        self.engine_info: dict | None = None
        self._opened_at: dict[str, float] = {}  # path -> when its opening was asked for
        self._loading: str | None = None  # the study being read, after the one on screen
        self._running: list[str] = []  # what the workers are doing, oldest first (the status line)
        self._outcome = ""  # the last thing that finished, shown when nothing runs
        self.window_levels: dict[str, tuple[float, float, str | None]] = {}  # W/L kept per series

        # centre: the reading bar over the study (and a comparison study beside it)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.placeholder = QLabel("Open a study (File ▸ Open, or pick one on the left)")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.splitter.addWidget(self.placeholder)
        centre = QWidget()
        col = QVBoxLayout(centre)
        col.setContentsMargins(0, 0, 0, 0)
        col.setSpacing(0)
        self.reading_bar = QWidget()
        bar = QHBoxLayout(self.reading_bar)
        bar.setContentsMargins(0, 0, 0, 0)
        col.addWidget(self.reading_bar)
        col.addWidget(self.splitter, 1)
        self.setCentralWidget(centre)

        # left: studies
        # thumbnails persist beside the engine's embedding cache, or not at all when that is off
        thumbs = None if cache_dir is False else (default_thumbnail_dir() if cache_dir in (None, True)
                                                  else Path(cache_dir) / "thumbnails")
        # held from the start, released once the first study is on screen, or none is asked for: the
        # samples' reads would compete with the first study's read and the engine's build
        self.studies = StudiesPanel(thumbnail_dir=thumbs, held=True)
        self.pacs = PacsPanel(self.settings, current_result=lambda: self.analysis and self.analysis.to_json())
        self.browser = browser_tabs(self.studies, self.pacs)
        left_dock = self._dock("Studies", self.browser, Qt.DockWidgetArea.LeftDockWidgetArea)
        # right: findings, dictation, similar
        self.findings = FindingsPanel()
        self.dictation = DictationWidget(self.settings.recordings(), source_factory or self._microphone,
                                         mode=self.settings.push_to_talk_mode, key_name=self.settings.push_to_talk_key)
        self.similar = SimilarPanel()
        self.transcript = TranscriptPanel(self.settings.transcripts())
        self.transcript_runner = TaskRunner(self, max_threads=1)  # one thread: the transcript never waits
        self._transcriber = None  # engine.transcribe.Transcriber, built in that thread on first use
        self.indicator = RecordingIndicator(self.dictation)
        self.link_box = QCheckBox("Link scrolling")
        self.link_box.setChecked(True)
        self.link_box.setToolTip("The prior follows the current study; scroll the prior to set the offset")
        self.link_label = QLabel("")
        self.link_reset = QPushButton("Reset offset")
        bar.addWidget(self.indicator, 1)
        for w in (self.link_box, self.link_label, self.link_reset):
            bar.addWidget(w)
            w.hide()
        self.link_box.toggled.connect(lambda on: self.link is not None and self.link.set_enabled(on))
        self.link_reset.clicked.connect(lambda: self.link is not None and self.link.reset_offset())
        right = QSplitter(Qt.Orientation.Vertical)
        for title, w in (("Findings", self.findings), ("Dictation", self.dictation), ("Transcript", self.transcript),
                         ("Similar studies", self.similar)):
            box = QWidget()
            lay = QVBoxLayout(box)
            lay.setContentsMargins(4, 4, 4, 4)
            head = QLabel(f"<b>{title}</b>")
            lay.addWidget(head)
            lay.addWidget(w)
            right.addWidget(box)
        right.setSizes([500, 100, 170, 130])
        right_dock = self._dock("Results", right, Qt.DockWidgetArea.RightDockWidgetArea)
        self.resizeDocks([left_dock, right_dock], [260, 560], Qt.Orientation.Horizontal)

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
        self._tool_bar()
        self.studies.openRequested.connect(self.open_study)
        self.pacs.openRequested.connect(self.open_study)
        self.pacs.message.connect(self._status)
        self.similar.openRequested.connect(self.open_beside)
        self.dictation.dictationFinished.connect(self._dictation_done)
        self.dictation.queryFinished.connect(self._query_done)
        self.dictation.message.connect(self._status)
        self.dictation.ignored.connect(self._dictation_ignored)
        self.service.busy.connect(self._busy)
        self.service.idle.connect(self._idle)
        self.service.ready.connect(self._engine_ready)
        self.service.failed.connect(self._error)
        self._ptt = PushToTalkFilter(self)  # installed on the window's QWindow when it exists (showEvent)
        self._ptt_window = None
        purge_old_recordings(self.settings.recordings(), self.settings.audio_retention_days)
        self.service.start()
        self._viewer_ready = False  # self.viewer exists but shows no study yet (readied while hidden)
        # a timer, not QTimer.singleShot(0, ...): that one is a posted event, run in the same event-loop
        # turn as the window's first show and layout; a timer waits for the next turn
        self._viewer_timer = QTimer(self)
        self._viewer_timer.setSingleShot(True)
        self._viewer_timer.setInterval(0)
        self._viewer_timer.timeout.connect(self._ready_viewer)
        self._viewer_timer.start()

    def _ready_viewer(self) -> None:
        """Build the four-up viewer hidden, one view and then its GL window per event-loop turn, while
        the first study is read: a GL context costs several renders on software OpenGL, a view's
        widgets about one."""
        if self.viewer is not None:
            return
        self.viewer = StudyViewer(placeholder_volume(), self.splitter, role="Current",  # born in place
                                  build_later=True)
        self.viewer.hide()
        self.splitter.insertWidget(0, self.viewer)
        self.viewer.prepare()

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
        act(m, "Open &folder…", self.studies.choose_folder, "Ctrl+O")
        act(m, "Open &file…", self.studies._choose_file, "Ctrl+Shift+O")
        act(m, "Add study to &library", self.add_to_library, "Ctrl+L")
        act(m, "Send results to &PACS", self.pacs.send_current)
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
        h = self.menuBar().addMenu("&Help")
        act(h, "&Shortcuts", self.show_shortcuts, "F1")

    def _tool_bar(self) -> None:
        """What a left-drag does on a slice view: window/level, ruler or ellipse ROI."""
        tb = QToolBar("Reading tools")
        tb.setObjectName("Reading tools")
        group = QActionGroup(self)
        self.tool_actions: dict[str, QAction] = {}
        for tool, key in (("wl", "w"), ("ruler", "m"), ("ellipse", "e")):
            a = QAction(f"{TOOL_NAMES[tool]} ({key})", self)
            a.setCheckable(True)
            a.setChecked(tool == "wl")
            a.triggered.connect(lambda _=False, t=tool: self.set_tool(t))
            group.addAction(a)
            tb.addAction(a)
            self.tool_actions[tool] = a
        tb.addSeparator()
        tb.addAction("Help (F1)", self.show_shortcuts)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, tb)

    def set_tool(self, tool: str) -> None:
        for viewer in (self.viewer, self.compare):
            if viewer is not None:
                viewer.state.set_tool(tool)
        self.tool_actions[tool].setChecked(True)

    def show_shortcuts(self) -> None:
        self._shortcuts = ShortcutsDialog(self.settings.push_to_talk_key, self)
        self._shortcuts.show()

    def _microphone(self):
        return SoundDeviceSource(self.settings.microphone or None)

    # ---------------------------------------------------------------- status
    def _status(self, text: str) -> None:
        """An outcome or a message: shown now, and again whenever no work is left running."""
        self._outcome = text
        self._show_activity()

    def _show_activity(self) -> None:
        if self._running:
            extra = f" (+{len(self._running) - 1} more)" if len(self._running) > 1 else ""
            self.activity.setText(self._running[-1] + extra)
            self.busy_bar.show()
        else:
            self.activity.setText(self._outcome)
            self.busy_bar.hide()

    def _busy(self, what: str) -> None:
        self._running.append(what)
        self._show_activity()

    def _idle(self, what: str = "") -> None:
        if what in self._running:
            self._running.remove(what)
        elif self._running:
            self._running.pop(0)
        self._show_activity()

    def _error(self, msg: str) -> None:
        self.last_error = msg
        self.studies.release_thumbnails()
        self._status(f"⚠ {msg}")
        if self.analysis is None:
            self.findings.show_pending(f"⚠ {msg}")
        self.errorShown.emit(msg)

    def _engine_ready(self, info: dict) -> None:
        self.engine_info = info
        if self._loading is None and self.volume is None:
            self.studies.release_thumbnails()
        self.device_label.setText(f"device: {info['device']}")
        self.bundle_label.setText(f"bundle: {info['bundle']}")
        self._library_size(info.get("library_size"))
        self.service.library_records(self.studies.set_library)

    def _library_size(self, n) -> None:
        self.library_label.setText("library: unavailable" if n is None else f"library: {n} studies")

    # ---------------------------------------------------------------- studies
    def open_study(self, path: str, series=None) -> None:
        if path == self._loading:
            return  # already on its way
        self._opened_at[path] = time.perf_counter()
        self._loading = path
        # the study on screen is about to change: its findings must not stand for the next one
        self.analysis = None
        self.findings.clear(f"Reading {Path(path).name}…")
        self.similar.clear()  # they answered the previous study's dictation
        self.transcript.clear()
        if self.dictation.kind is None:
            self.dictation.set_done("Ready")
        self.studies.hold_thumbnails()
        self.service.load_study(path, series, on_result=lambda vol: self._study_loaded(path, vol),
                                on_error=lambda msg: self._load_failed(path, msg))

    def _list_series(self, path: str) -> None:
        """The series choice of the opened path, read after the study is on screen (not beside it)."""
        self.service.list_series(path, on_result=lambda infos: self.studies.set_series(path, infos))

    def _load_failed(self, path: str, msg: str) -> None:
        if self._loading == path:
            self._loading = None
            self.studies.release_thumbnails()
            if self.volume is not None and self.analysis is None:
                self.findings.clear(f"⚠ {msg}")

    def _study_loaded(self, path: str, volume: Volume) -> None:
        if self._loading not in (None, path):
            return  # another study was asked for meanwhile: that one goes on screen
        self._loading = None
        self.volume, self.analysis = volume, None
        self.close_compare()
        if self.viewer is not None:
            # the same views show the new study: no new GL windows (each costs more than a render),
            # nothing of the previous study left in any of them
            self.viewer.set_volume(volume)
        else:
            self.viewer = StudyViewer(volume, self.splitter, role="Current")  # born in place: re-parenting GL crashes
            self.splitter.insertWidget(0, self.viewer)
        if not self._viewer_ready:
            self._viewer_ready = True
            self.placeholder.setParent(None)
            self.viewer.show()
        self._keep_window_level(self.viewer)
        self.viewer.views["axial"].setFocus()
        self.viewer.state.set_tool(self._current_tool())
        self.studies.add_entry(path, Path(path).name if "samples" not in path else Path(path).parent.name, "opened")
        self.studies.set_thumbnail(path, volume)
        self.settings.last_study = path
        for w in volume.warnings:
            self._status(f"⚠ {w}")
        desc = volume.metadata.get("series_description") or Path(path).name
        self.setWindowTitle(f"SpeechCT — {desc}")
        self.findings.clear("Encoding CT… (findings appear when ready)")
        self.studyOpened.emit(volume)
        self.service.analyze_study(volume, on_result=lambda a, v=volume, p=path: self._findings_ready(v, a, p))

    def _current_tool(self) -> str:
        return next((t for t, a in self.tool_actions.items() if a.isChecked()), "wl")

    def _keep_window_level(self, viewer: StudyViewer) -> None:
        """W/L is kept per series: a series opened again comes back in the window it was read in."""
        key = viewer.volume.metadata.get("series_uid") or viewer.volume.metadata.get("source") or ""
        if key in self.window_levels:
            viewer.state.set_window_level(*self.window_levels[key])

        def remember(*_args):
            st = viewer.state
            self.window_levels[key] = (st.window, st.level, st.preset_name)

        viewer.state.windowLevelChanged.connect(remember)

    def _findings_ready(self, volume: Volume, analysis, path: str | None = None) -> None:
        if volume is not self.volume:
            return  # another study was opened meanwhile
        self.analysis = analysis
        self.findings.show_results(analysis.findings, unchecked=analysis.unchecked)
        t = analysis.timings.get("encode_ct")
        asked = self._opened_at.pop(path, None) if path else None
        since = "" if asked is None else f" {time.perf_counter() - asked:.1f} s after opening"
        how = "CT embedding cached" if analysis.cached.get("ct") else f"CT encoded in {t / 1000:.1f} s"
        self._status(f"Findings ready{since} ({how})")
        self.studies.release_thumbnails()
        if path:
            self._list_series(path)
        self.findingsShown.emit(analysis)

    def open_beside(self, study: dict) -> None:
        path = study.get("path")
        if not path:
            self._error("this library entry has no path to open")
            return
        self.service.load_study(path, study.get("series"), on_result=self._compare_loaded)

    def _compare_loaded(self, volume: Volume) -> None:
        self.close_compare()
        if not self._viewer_ready:
            return
        self.compare = StudyViewer(volume, self.splitter, with_3d=False, role="Prior")
        self._keep_window_level(self.compare)
        self.compare.state.set_tool(self._current_tool())
        self.splitter.addWidget(self.compare)
        self.compare.show()
        self.link = ScrollLink(self.viewer.state, self.compare.state, self.compare)
        self.link.set_enabled(self.link_box.isChecked())
        self.link.offsetChanged.connect(lambda: self.link_label.setText(self.link.describe()))
        self.link_label.setText(self.link.describe())
        for w in (self.link_box, self.link_label, self.link_reset):
            w.show()
        self._status(f"Comparing with {volume.metadata.get('series_description') or 'a prior study'}")

    def close_compare(self) -> None:
        if self.compare is not None:
            self.link = None
            for w in (self.link_box, self.link_label, self.link_reset):
                w.hide()
            self.compare.close_views()
            self.compare.hide()
            self.compare.deleteLater()
            self.compare = None

    def add_to_library(self) -> None:
        if self.volume is None:
            return
        volume, last = self.volume, self.dictation.last

        def done(n):
            self._library_size(n)
            self._status(f"Added to the library ({n} studies)")
            self.service.library_records(self.studies.set_library)  # its entry shows at once
            self.libraryIndexed.emit(n)

        self.service.add_to_library(volume, last, on_result=done)

    def index_studies(self, paths) -> None:
        """Add studies (and a ``dictation.wav`` beside each DICOM folder, when present) to the library."""
        paths = [str(p) for p in paths]

        def done(n):
            self._library_size(n)
            self._status(f"Indexed {len(paths)} studies ({n} in the library)")
            self.service.library_records(self.studies.set_library)
            self.libraryIndexed.emit(n)

        self.service.index_studies(paths, on_result=done)

    # ---------------------------------------------------------------- dictation
    def _toggle_dictation(self) -> None:
        if self.dictation.kind is None:
            self.dictation.begin()
        else:
            self.dictation.end()

    def _dictation_ignored(self, why: str) -> None:
        self._status(why)

    def _dictation_done(self, path: str, wave: np.ndarray, sr: int) -> None:
        if self.volume is None:
            self.dictation.set_done("Dictation saved; open a study to analyse it")
            return
        volume = self.volume
        self.service.analyze_dictation(volume, wave, sr, path,
                                       on_result=lambda r, v=volume: self._dictation_ready(r, v))

    def _dictation_ready(self, result, volume: Volume | None = None) -> None:
        if volume is not None and volume is not self.volume:
            self.dictation.set_done("Dictation analysed for a study no longer on screen; not shown")
            return
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
        if getattr(result, "waveform", None) is not None:
            self.transcribe(result.waveform, result.audio_path, a.dictation, a.transcript)

    def transcribe(self, waveform: np.ndarray, audio_path: str | None, dictation=None,
                   transcript: str | None = None) -> None:
        """The transcript, after the results are on screen, in the transcript's own worker thread; with
        the reader that decided the check and, when the bundle carries a rule lexicon, where this
        transcript read by it disagrees with the check. ``transcript``: the engine's, when its cascade
        reader already made one (never transcribed twice)."""
        self.transcript.pending(audio_path)

        def work():
            from engine.transcribe import Transcriber

            t = time.perf_counter()
            if transcript is not None:
                text = transcript
            else:
                if self._transcriber is None:
                    self._transcriber = Transcriber(cpu_threads=1)  # a core stays with the GUI thread
                text = self._transcriber.transcribe(waveform)
            seconds = time.perf_counter() - t
            eng = self.service.engine()
            lexicon = eng.rule_lexicon
            disagreements = []
            if lexicon is not None and dictation:
                from engine.mention_rules import read_mentions

                states = read_mentions(text, lexicon)
                disagreements = [(d.label, states.get(d.label, "not mentioned"), d.status) for d in dictation
                                 if states.get(d.label, "not mentioned") != d.status]
            return text, seconds, eng.dictation_reader, disagreements

        def done(out):
            if self.transcript.source == audio_path:  # not a transcript of an older dictation
                self.transcript.show_text(*out)
                self.transcriptShown.emit(out[0])

        self.transcript_runner.run_task(work, on_result=done, on_error=self.transcript.failed, name="transcribe")

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

    def showEvent(self, ev):  # noqa: N802
        super().showEvent(ev)
        handle = self.windowHandle()
        if handle is not None and handle is not self._ptt_window:
            if self._ptt_window is not None:
                self._ptt_window.removeEventFilter(self._ptt)
            handle.installEventFilter(self._ptt)
            self._ptt_window = handle

    def closeEvent(self, ev):  # noqa: N802
        if self.dictation.kind is not None:
            self.dictation.end()
        self.runner.wait(30_000)
        self.transcript_runner.wait(60_000)
        self.studies.runner.wait(30_000)  # thumbnail reads: let them land before the panel goes
        self.pacs.shutdown()  # a retrieval under way is cancelled (Open resumes it next time)
        for viewer in (self.viewer, self.compare):
            if viewer is not None:
                viewer.close_views()
        if self.save_settings:
            try:
                self.settings.save()
            except OSError:
                pass
        if self._ptt_window is not None:
            self._ptt_window.removeEventFilter(self._ptt)
            self._ptt_window = None
        super().closeEvent(ev)
