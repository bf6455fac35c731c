"""The study browser's PACS tab: search the department's PACS, open a study from it, send results back.

- **Server**: the servers of the PACS settings file (``$SPEECHCT_PACS_CONFIG`` or the user's
  ``speechct/pacs.json``; README "Department set-up"), shown by name and address only. Credentials
  come from that file or the environment (``SPEECHCT_PACS_*``) and are never shown; the choice is
  kept in the app's settings (``pacs_server``).
- **Search** by date, modality and description (QIDO-RS or C-FIND, by the server's kind).
- **Open**: the study's CT series is retrieved into the engine's PACS cache in a worker, with a
  progress bar and Cancel (what arrived is kept; Open again resumes), then opened like a folder.
- **Send results to PACS**: the current study's findings (optionally with the dictation check) as a
  DICOM SR, stored by STOW-RS or C-STORE.

All PACS work is :mod:`engine.pacs.workstation`'s and :func:`engine.report_sr.send_result`'s; this module
only schedules it and shows what comes back. Every failure is one line under the buttons (and in the status bar).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTabWidget,
    QToolButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..workers import TaskRunner

UID_ROLE = Qt.ItemDataRole.UserRole
MODALITIES = (("CT", "CT"), ("Any modality", None))


def browser_tabs(local: QWidget, pacs: QWidget) -> QTabWidget:
    """The study browser: local studies and the PACS, one tab each."""
    tabs = QTabWidget()
    tabs.setDocumentMode(True)
    tabs.addTab(local, "Local")
    tabs.addTab(pacs, "PACS")
    return tabs


def _date(text: str | None) -> str:
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if text and len(text) == 8 and text.isdigit() else (text or "-")


class _Progress(QObject):
    """Carries a retrieval's progress from the worker thread to the GUI thread (a queued signal)."""

    changed = Signal(int, int)  # done, total


class PacsPanel(QWidget):
    openRequested = Signal(str, object)  # the cached study folder, series (None: the reader's default)
    message = Signal(str)  # an outcome or a one-line error, for the status bar
    searched = Signal(list)  # the StudyMatch list now shown
    retrieved = Signal(str)  # the cached folder of a finished retrieval
    sent = Signal(str)  # the SOPInstanceUID of an SR stored on the PACS
    failed = Signal(str)  # a one-line error, as shown

    def __init__(self, settings, current_result: Callable[[], dict | None] = lambda: None, parent=None,
                 runner: TaskRunner | None = None):
        """``settings``: the app's :class:`desktop.settings.Settings` (its ``pacs_server`` is read and
        updated); ``current_result``: the study on screen's latest ``Analysis.to_json()`` or None."""
        super().__init__(parent)
        self.settings = settings
        self.current_result = current_result
        self.runner = runner or TaskRunner(self, max_threads=2)  # a search can run beside a retrieval
        self.choices: list = []
        self._loaded = False
        self._cancel: threading.Event | None = None  # set while a retrieval runs
        self._progress = _Progress(self)
        self._progress.changed.connect(self._show_progress)

        self.server = QComboBox()
        self.server.currentIndexChanged.connect(self._server_chosen)
        self.date = QLineEdit()
        self.date.setPlaceholderText("YYYYMMDD or YYYYMMDD-YYYYMMDD")
        self.modality = QComboBox()
        for text, value in MODALITIES:
            self.modality.addItem(text, value)
        self.description = QLineEdit()
        self.description.setPlaceholderText("e.g. chest")
        self.search_button = QPushButton("Search")
        for edit in (self.date, self.description):
            edit.returnPressed.connect(self.search)
        self.search_button.clicked.connect(self.search)
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        self.reload_button = QToolButton()
        self.reload_button.setText("↻")
        self.reload_button.setToolTip("Read the PACS settings file again")
        self.reload_button.clicked.connect(self.reload_servers)
        server_row = QHBoxLayout()
        server_row.addWidget(self.server, 1)
        server_row.addWidget(self.reload_button)
        form.addRow("Server", server_row)
        form.addRow("Date", self.date)
        form.addRow("Modality", self.modality)
        form.addRow("Description", self.description)

        self.results = QTreeWidget()
        self.results.setHeaderLabels(["Date", "Description", "Modalities", "Images"])
        self.results.setRootIsDecorated(False)
        self.results.setAlternatingRowColors(True)
        self.results.header().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.results.header().setStretchLastSection(False)
        self.results.itemActivated.connect(lambda *_: self.open_selected())
        self.results.itemSelectionChanged.connect(self._update_buttons)

        self.open_button = QPushButton("Open")
        self.open_button.clicked.connect(self.open_selected)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m images")
        self.progress.hide()
        row = QHBoxLayout()
        row.addWidget(self.open_button)
        row.addWidget(self.cancel_button)
        row.addWidget(self.progress, 1)

        self.send_button = QPushButton("Send results to PACS")
        self.send_button.setToolTip("The current study's findings as a DICOM Structured Report (AI output, "
                                    "unverified), stored on the chosen server")
        self.send_button.clicked.connect(self.send_current)
        self.with_dictation = QCheckBox("with the dictation check")
        send_row = QHBoxLayout()
        send_row.addWidget(self.send_button)
        send_row.addWidget(self.with_dictation, 1)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.search_button)
        layout.addWidget(self.results, 1)
        layout.addLayout(row)
        layout.addLayout(send_row)
        layout.addWidget(self.status)
        self._update_buttons()

    # ---------------------------------------------------------------- servers
    def showEvent(self, ev):  # noqa: N802
        if not self._loaded:  # the settings file is read when the tab is first shown, not at start-up
            self.reload_servers()
        super().showEvent(ev)

    def reload_servers(self) -> None:
        """Read the PACS settings file again (small: read on the GUI thread) and list its servers."""
        from engine.pacs.errors import PacsError
        from engine.pacs.settings import settings_path
        from engine.pacs.workstation import server_choices

        self._loaded = True
        self.server.blockSignals(True)
        self.server.clear()
        try:
            self.choices, warns = server_choices()
        except PacsError as exc:
            self.choices, warns = [], []
            self._fail(str(exc))
        for choice in self.choices:
            self.server.addItem(choice.label, choice.name)
        wanted = self.server.findData(self.settings.pacs_server) if self.settings.pacs_server else 0
        self.server.setCurrentIndex(max(wanted, 0))
        self.server.blockSignals(False)
        if self.choices:
            self._server_chosen(self.server.currentIndex())
            if warns:
                self._say(f"⚠ {warns[0]}")
        elif not self.status.text():
            self._say(f"No PACS configured: list the servers in {settings_path()} (README: Department set-up)")
        self._update_buttons()

    def _chosen(self):
        i = self.server.currentIndex()
        return self.choices[i] if 0 <= i < len(self.choices) else None

    def _server_chosen(self, _index: int) -> None:
        choice = self._chosen()
        if choice is None:
            return
        self.settings.pacs_server = choice.name
        if choice.problem:
            self._fail(f"{choice.name}: {choice.problem}")
        else:
            self._say("")
        self._update_buttons()

    # ---------------------------------------------------------------- state and messages
    @property
    def retrieving(self) -> bool:
        return self._cancel is not None

    def _usable(self) -> bool:
        choice = self._chosen()
        return choice is not None and choice.problem is None

    def _update_buttons(self) -> None:
        usable = self._usable()
        self.search_button.setEnabled(usable)
        self.open_button.setEnabled(usable and not self.retrieving and bool(self.results.selectedItems()))
        self.cancel_button.setEnabled(self.retrieving)
        self.send_button.setEnabled(usable)

    def _say(self, text: str) -> None:
        self.status.setText(text)
        if text:
            self.message.emit(text)

    def _fail(self, msg: str) -> None:
        msg = " ".join(str(msg).split())  # one line, whatever came
        self._say(f"⚠ {msg}")
        self.failed.emit(msg)

    # ---------------------------------------------------------------- search
    def search(self) -> None:
        if not self._usable():
            return
        from engine.pacs.errors import PacsError
        from engine.pacs.query import StudyQuery
        from engine.pacs.workstation import search

        name = self._chosen().name
        try:
            query = StudyQuery(date=self.date.text().strip() or None, modality=self.modality.currentData(),
                               description=self.description.text().strip() or None)
        except PacsError as exc:  # its message names the command line's options
            self._fail(exc.message.replace("--date", "the date").replace("--modality", "the modality"))
            return
        self._say(f"Searching {self.server.currentText()}…")
        self.search_button.setEnabled(False)

        def work():
            return search(name, query)

        def done(studies):
            self._update_buttons()
            self.show_studies(studies)

        def failed(msg):
            self._update_buttons()
            self._fail(msg)

        self.runner.run_task(work, on_result=done, on_error=failed, name="PACS search")

    def show_studies(self, studies: list) -> None:
        self.results.clear()
        for s in studies:
            item = QTreeWidgetItem([_date(s.date), s.description or "-", "/".join(s.modalities) or "-",
                                    "-" if s.n_instances is None else str(s.n_instances)])
            item.setData(0, UID_ROLE, s.study_uid)
            item.setTextAlignment(3, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            for col in range(4):
                item.setToolTip(col, f"Study {s.study_uid}")
            self.results.addTopLevelItem(item)
        for col in (0, 2, 3):
            self.results.resizeColumnToContents(col)
        if studies:
            self.results.setCurrentItem(self.results.topLevelItem(0))
        n = len(studies)
        self._say(f"{n} stud{'y' if n == 1 else 'ies'} on {self._chosen().name}" if n else
                  f"No matching study on {self._chosen().name}")
        self._update_buttons()
        self.searched.emit(studies)

    def study_uids(self) -> list[str]:
        return [self.results.topLevelItem(i).data(0, UID_ROLE) for i in range(self.results.topLevelItemCount())]

    # ---------------------------------------------------------------- open (retrieve)
    def open_selected(self) -> None:
        item = self.results.currentItem()
        if item is not None and self._usable():
            self.open_study(item.data(0, UID_ROLE), item.text(1))

    def open_study(self, study_uid: str, title: str = "") -> None:
        """Retrieve ``study_uid`` into the PACS cache in a worker, then ask for it to be opened."""
        if self.retrieving:
            self._say("A retrieval is under way: wait for it or cancel it first")
            return
        from engine.pacs.workstation import retrieve

        name = self._chosen().name
        cancel = self._cancel = threading.Event()
        self.progress.setRange(0, 0)
        self.progress.show()
        self._say(f"Retrieving {title or study_uid} from {name}…")
        self._update_buttons()
        report = self._progress.changed.emit

        def work():
            return retrieve(name, study_uid, progress=report, cancel=cancel)

        def done(result):
            self._retrieval_over()
            folder = str(result.study.folder)
            if cancel.is_set():  # it finished before the cancel was seen: kept in the cache, not opened
                self._say("Cancelled (the study is in the cache: Open shows it at once)")
                return
            how = ("from the cache" if result.cached else
                   f"{result.fetched} images retrieved" + (f", {result.resumed} resumed" if result.resumed else ""))
            self._say(f"Opening {title or study_uid} ({how})")
            self.retrieved.emit(folder)
            self.openRequested.emit(folder, None)

        def failed(msg):
            self._retrieval_over()
            if cancel.is_set():
                self._say("Retrieval cancelled: what arrived is kept, and Open resumes it")
                self.failed.emit("cancelled")
            else:
                self._fail(msg)

        self.runner.run_task(work, on_result=done, on_error=failed, name="PACS retrieval")

    def _show_progress(self, done: int, total: int) -> None:
        if self.retrieving and total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
            self._say("Cancelling…")
            self.cancel_button.setEnabled(False)

    def _retrieval_over(self) -> None:
        self._cancel = None
        self.progress.hide()
        self._update_buttons()

    # ---------------------------------------------------------------- send
    def send_current(self) -> None:
        """The current study's results as an SR to the chosen server (in a worker)."""
        if not self._usable():
            self._fail("no usable PACS server chosen (PACS tab)")
            return
        result = self.current_result()
        if result is None:
            self._fail("no results to send yet: open a study and wait for its findings")
            return
        from engine.report_sr import send_result

        name = self._chosen().name
        dictation = self.with_dictation.isChecked()
        if dictation and result.get("discrepancies") is None:
            self._fail("no dictation check to send: dictate first, or untick 'with the dictation check'")
            return
        self.send_button.setEnabled(False)
        self._say(f"Sending the findings to {name}…")

        def done(sop_uid):
            self._update_buttons()
            self._say(f"Findings sent to {name} as a DICOM SR (unverified AI output)")
            self.sent.emit(sop_uid)

        def failed(msg):
            self._update_buttons()
            self._fail(msg)

        self.runner.run_task(send_result, result, name, dictation=dictation, on_result=done, on_error=failed,
                             name="send to PACS")

    # ---------------------------------------------------------------- shutdown
    def shutdown(self, msecs: int = 30_000) -> None:
        """Cancel a retrieval under way and wait for the workers (the window is closing)."""
        if self._cancel is not None:
            self._cancel.set()
        self.runner.wait(msecs)
