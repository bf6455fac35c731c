"""The app's side of ``engine.Engine``: built lazily in a worker, every call through ``TaskRunner``.

Torch's intra-op threads are set to ``cores - 1`` (at least 1) in every worker before it runs,
so one core stays free for the GUI thread while a CT is encoded (OpenMP keeps that count per
calling thread, so setting it once in the Engine is not enough).
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Signal

from engine.volume import Volume

from .workers import TaskRunner


def worker_threads() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


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
        self._lock = threading.Lock()
        self.last_error: str | None = None

    # ---------------------------------------------------------------- engine (worker side)
    def engine(self):
        """The Engine, built on first use; call only from a worker."""
        with self._lock:
            if self._engine is None:
                from engine.runtime import Engine

                self._engine = Engine(self.bundle or None, library=self.library_path or None,
                                      threads=worker_threads(), cache_dir=self.cache_dir)
            return self._engine

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
    def _run(self, what: str, fn, *args, on_result=None, on_error=None, **kwargs):
        self.busy.emit(what)
        threads = worker_threads()

        def in_worker(*a, **kw):
            # OpenMP's thread count is per calling thread: set it in every pool thread, not once.
            if "torch" in sys.modules:
                # not sys.modules["torch"]: another worker may be half-way through importing it,
                # and the import statement waits for that import to finish
                import torch

                torch.set_num_threads(threads)
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
        return self._run("Loading model bundle…", self.describe, on_result=self.ready.emit)

    def load_study(self, path: str, series: str | None, on_result, on_error=None):
        from engine.io import load_volume

        return self._run(f"Reading {Path(path).name}…", load_volume, path, series, on_result=on_result,
                         on_error=on_error)

    def analyze_study(self, volume: Volume, on_result):
        """Findings of a study (the CT embedding, cached by the engine)."""
        return self._run("Encoding CT…", lambda: self.engine().analyze(volume), on_result=on_result)

    def analyze_dictation(self, volume: Volume, waveform: np.ndarray, sample_rate: int, audio_path: str | None,
                          on_result, similar_k: int = 5):
        def work():
            eng = self.engine()
            try:
                k = similar_k if len(eng.library) > 0 else 0
            except Exception:
                k = 0
            from engine.audio import to_16k

            return DictationResult(eng.analyze(volume, waveform, sample_rate, similar_k=k), audio_path,
                                   to_16k(np.asarray(waveform, np.float32), sample_rate))

        return self._run("Processing dictation…", work, on_result=on_result)

    def spoken_query(self, waveform: np.ndarray, sample_rate: int, on_result, k: int = 5):
        def work():
            eng = self.engine()
            return eng.similar(speech=eng.encode_speech(waveform, sample_rate), k=k)

        return self._run("Searching the library by voice…", work, on_result=on_result)

    def library_records(self, on_result):
        return self._run("Reading the library…", lambda: self.engine().library.list(), on_result=on_result)
