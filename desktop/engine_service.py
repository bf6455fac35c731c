"""The app's side of ``engine.Engine``: built lazily in a worker, every call through ``TaskRunner``.

The study on screen is an :class:`engine.session.StudySession` (Qt-free): this service only schedules
its calls on the thread pool and hands back what they return, so the findings of a study are made once
and a dictation extends them.

Torch's intra-op threads are set to ``cores - 1`` (at least 1) in every worker that gets the engine
(and in every worker once it is built), so one core stays free for the GUI thread while a CT is
encoded (OpenMP keeps that count per calling thread, so setting it once in the Engine is not enough).
Nothing on a study's read path waits for the engine's build: not its lock, not torch's import.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Signal

from engine.volume import Volume

from .workers import TaskRunner

#: The bundle parts ``Engine.analyze_study`` uses (it warms them up itself; built here ahead of it).
FINDINGS_MODELS = ("spec", "ct", "prompts", "thresholds")


def worker_threads() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


def set_torch_threads() -> None:
    """Torch's intra-op threads for the calling thread (``worker_threads()``); torch must be imported."""
    import torch

    torch.set_num_threads(worker_threads())


@dataclass
class DictationResult:
    analysis: object  # engine.runtime.Analysis
    audio_path: str | None
    waveform: np.ndarray | None = None  # 16 kHz mono, for the transcript


class EngineService(QObject):
    busy = Signal(str)  # what is running, for the status bar
    idle = Signal(str)  # the same text as its busy(): that work is over
    ready = Signal(dict)  # Engine.describe() + device + library size, once the engine is up
    failed = Signal(str)  # one-line errors of any call

    def __init__(self, runner: TaskRunner, *, bundle: str | None = None, library: str | None = None,
                 cache_dir=None, parent: QObject | None = None):
        super().__init__(parent)
        self.runner = runner
        self.bundle, self.library_path, self.cache_dir = bundle, library, cache_dir
        self._engine = None
        self._session = None  # the StudySession of the study on screen (made in a worker)
        self._sources: dict = {}  # path -> engine.io.StudySource of the study on screen
        self._lock = threading.Lock()  # the engine and the session
        self._sources_lock = threading.Lock()  # _sources: never waits for the engine's build
        self.last_error: str | None = None

    # ---------------------------------------------------------------- engine (worker side)
    def engine(self):
        """The Engine, built on first use; call only from a worker."""
        with self._lock:
            if self._engine is None:
                from engine.runtime import Engine

                self._engine = Engine(self.bundle or None, library=self.library_path or None,
                                      threads=worker_threads(), cache_dir=self.cache_dir)
            eng = self._engine
        set_torch_threads()  # this thread may have waited for another to build it
        return eng

    def session(self, volume: Volume):
        """The :class:`engine.session.StudySession` of ``volume`` (a new one when another study is asked
        for); call only from a worker."""
        eng = self.engine()
        with self._lock:
            if self._session is None or self._session.volume is not volume:
                from engine.session import StudySession

                self._session = StudySession(eng, volume)
            return self._session

    def describe(self) -> dict:
        eng = self.engine()
        info = {"device": str(eng.device), "bundle": eng.bundle_name or eng.bundle_path.name,
                "bundle_path": str(eng.bundle_path)}
        try:
            info["library_size"] = len(eng.library)
        except Exception as exc:  # the library is optional: a broken one must not stop findings
            info["library_size"] = None
            info["library_error"] = str(exc)
        return info

    # ---------------------------------------------------------------- calls (GUI side)
    def run(self, what: str, fn, *args, on_result=None, on_error=None, **kwargs):
        """Run ``fn`` in a worker (torch threads set there), announcing ``what`` as busy until it ends."""
        self.busy.emit(what)

        def in_worker(*a, **kw):
            # OpenMP's thread count is per calling thread: set it in every pool thread, not once. Only
            # once the engine is built: before that another worker may be half-way through importing
            # torch, and `import torch` here would wait for that import (seconds) before a study is
            # read; work that needs torch gets the engine through engine(), which sets it then.
            if self._engine is not None:
                set_torch_threads()
            return fn(*a, **kw)

        def done(value):
            self.idle.emit(what)
            if on_result is not None:
                on_result(value)

        def error(msg):
            self.last_error = msg
            self.idle.emit(what)
            self.failed.emit(msg)
            if on_error is not None:
                on_error(msg)

        return self.runner.run_task(in_worker, *args, on_result=done, on_error=error, name=what, **kwargs)

    def start(self):
        """Build the engine and the models a study's findings need (``FINDINGS_MODELS``), while the
        first study is read: its findings then wait only for the CT encoder's pass."""
        def work():
            info = self.describe()
            self.engine().warm_up(*FINDINGS_MODELS)
            return info

        return self.run("Loading model bundle…", work, on_result=self.ready.emit)

    def load_study(self, path: str, series: str | None, on_result, on_error=None):
        """Read one series of the study at ``path``; the opened study (:func:`engine.io.open_study`) is
        kept, so that :meth:`list_series` answers from the headers already read."""
        def work():
            from engine.io import open_study

            source = open_study(path)
            volume = source.load(series)
            with self._sources_lock:  # not self._lock: that one is held while the engine is built
                self._sources = {path: source}  # the study on screen only
            return volume

        return self.run(f"Reading {Path(path).name}…", work, on_result=on_result, on_error=on_error)

    def list_series(self, path: str, on_result, on_error=None):
        """The series of ``path``, from the opened study when it is the one :meth:`load_study` read."""
        def work():
            from engine.io import open_study

            with self._sources_lock:
                source = self._sources.get(path)
            return (source or open_study(path)).series

        return self.runner.run_task(work, on_result=on_result, on_error=on_error or (lambda _msg: None),
                                    name="list series")

    def analyze_study(self, volume: Volume, on_result):
        """Findings of a study (its session's, made once; the CT embedding is cached by the engine)."""
        return self.run("Encoding CT…", lambda: self.session(volume).findings(), on_result=on_result)

    def analyze_dictation(self, volume: Volume, waveform: np.ndarray, sample_rate: int, audio_path: str | None,
                          on_result, similar_k: int = 5):
        def work():
            eng = self.engine()
            try:
                k = similar_k if len(eng.library) > 0 else 0
            except Exception:
                k = 0
            from engine.audio import to_16k

            analysis = self.session(volume).add_dictation(waveform, sample_rate, audio_path=audio_path, similar_k=k)
            return DictationResult(analysis, audio_path, to_16k(np.asarray(waveform, np.float32), sample_rate))

        return self.run("Processing dictation…", work, on_result=on_result)

    def spoken_query(self, waveform: np.ndarray, sample_rate: int, on_result, k: int = 5):
        def work():
            eng = self.engine()
            return eng.similar(speech=eng.encode_speech(waveform, sample_rate), k=k)

        return self.run("Searching the library by voice…", work, on_result=on_result)

    def add_to_library(self, volume: Volume, last, on_result):
        """Add the study on screen, with ``last`` = (path, waveform, sample rate) of its last dictation
        or None, to the library; ``on_result`` gets the library's size."""
        def work():
            session = self.session(volume)
            if last is None or (session.analysis is not None and session.analysis.speech_embedding is not None
                                and session.dictation_path == str(last[0])):
                session.index()  # the embeddings already made
            else:
                self.engine().index_study(volume, (last[1], last[2]), dictation_path=last[0])
            return len(self.engine().library)

        return self.run("Adding to the library…", work, on_result=on_result)

    def index_studies(self, paths: list[str], on_result):
        """Add studies (with the ``dictation.wav`` beside each, when present) to the library; ``on_result``
        gets the library's size."""
        def work():
            from engine.library.ingest import dictation_beside

            eng = self.engine()
            for p in paths:
                eng.index_study(p, dictation_beside(p))
            return len(eng.library)

        return self.run(f"Indexing {len(paths)} studies…", work, on_result=on_result)

    def library_records(self, on_result):
        return self.run("Reading the library…", lambda: self.engine().library.list(), on_result=on_result)
