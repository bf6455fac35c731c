"""The one way the GUI runs work off its thread: ``run_task`` puts a ``Task`` (a QRunnable) on a
QThreadPool; its ``TaskSignals`` deliver progress, the result or a one-line error back on the GUI
thread (queued connections). Tasks record the thread they ran on, so tests can prove it."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from engine.errors import SpeechCTError


class TaskSignals(QObject):
    started = Signal()
    progress = Signal(str)  # a short human sentence ("Encoding CT…")
    result = Signal(object)
    error = Signal(str)  # one line
    finished = Signal()


class Task(QRunnable):
    """``fn(*args, report=callable)`` runs in a pool thread; ``report(text)`` emits progress."""

    def __init__(self, fn: Callable, *args, name: str = "", pass_report: bool = False, **kwargs):
        super().__init__()
        self.setAutoDelete(False)  # we keep a reference until finished; Qt must not delete it under us
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.name = name or getattr(fn, "__name__", "task")
        self.pass_report = pass_report
        self.signals = TaskSignals()
        self.thread_id: int | None = None
        self.done = threading.Event()

    def run(self) -> None:
        self.thread_id = threading.get_ident()
        self.signals.started.emit()
        try:
            kwargs = dict(self.kwargs)
            if self.pass_report:
                kwargs["report"] = self.signals.progress.emit
            out = self.fn(*self.args, **kwargs)
        except SpeechCTError as exc:
            self.signals.error.emit(str(exc))
        except Exception as exc:  # a bug: say what and where, keep the app alive
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            self.signals.error.emit(f"{self.name} failed: {type(exc).__name__}: {exc} ({tb.filename}:{tb.lineno})")
        else:
            self.signals.result.emit(out)
        finally:
            self.done.set()
            self.signals.finished.emit()


class TaskRunner(QObject):
    """Owns the pool and keeps running tasks alive. Engine calls serialise inside the Engine's lock,
    so two threads suffice: one can read a study while the other encodes."""

    def __init__(self, parent: QObject | None = None, max_threads: int = 2):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max_threads)
        self._running: set[Task] = set()

    def run_task(self, fn: Callable, *args, on_result=None, on_error=None, on_progress=None, name: str = "",
                 pass_report: bool = False, **kwargs) -> Task:
        task = Task(fn, *args, name=name, pass_report=pass_report, **kwargs)
        if on_result is not None:
            task.signals.result.connect(on_result)
        if on_error is not None:
            task.signals.error.connect(on_error)
        if on_progress is not None:
            task.signals.progress.connect(on_progress)
        self._running.add(task)
        task.signals.finished.connect(lambda: self._running.discard(task))
        self.pool.start(task)
        return task

    @property
    def busy(self) -> bool:
        return bool(self._running)

    def wait(self, msecs: int = -1) -> bool:
        return self.pool.waitForDone(msecs)
