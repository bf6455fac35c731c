"""``StudySession``: one study being read, without Qt: its findings, then its dictation, similar studies
and its place in the library, each computed once and kept.

The app's engine service schedules these calls on its thread pool and shows what they return (napari's
habit: a model without Qt, a thin view); a script uses the same object. ``add_dictation`` extends the
findings already made: the CT is never encoded again, its study key never recomputed.

Thread use: one session is meant to be driven by one caller at a time (the app's calls for one study
run one after another); the engine underneath is thread-safe.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from engine.library import StudyRecord, query_uids
from engine.runtime import Analysis, Engine
from engine.volume import Volume


class StudySession:
    """``source``: a loaded :class:`Volume`, or a path the engine reads (``series`` picks one series)."""

    def __init__(self, engine: Engine, source: Volume | str | Path, *, series: str | None = None):
        self.engine = engine
        self.source = source
        self.series = series
        self._volume: Volume | None = source if isinstance(source, Volume) else None
        self._findings: Analysis | None = None
        self._latest: Analysis | None = None
        self._dictation_path: str | None = None
        self._lock = threading.RLock()

    @property
    def volume(self) -> Volume:
        """The study's volume, read on first use."""
        with self._lock:
            if self._volume is None:
                assert not isinstance(self.source, Volume)  # a Volume source is set in __init__
                self._volume = self.engine.load_study(self.source, self.series)
            return self._volume

    def findings(self) -> Analysis:
        """The study's findings (:meth:`Engine.analyze_study`), computed on the first call only."""
        with self._lock:
            if self._findings is None:
                self._findings = self.engine.analyze_study(self.volume)
                self._latest = self._findings
            return self._findings

    @property
    def analysis(self) -> Analysis | None:
        """The latest result: the findings, extended by the last dictation when one was added."""
        return self._latest

    @property
    def dictation_path(self) -> str | None:
        """The recording of the last dictation added (None without one, or when it had no file)."""
        return self._dictation_path

    def _exclude(self) -> set[str]:
        return query_uids(self.volume, self.series, key=self.findings().study["uid"])

    def add_dictation(self, waveform: np.ndarray, sample_rate: int, *, audio_path: str | Path | None = None,
                      similar_k: int = 0) -> Analysis:
        """The findings extended by this dictation (what it says, the discrepancies, ``similar_k``
        nearest studies): the study's CT embedding and findings are reused, not recomputed. A recording
        without speech raises :class:`engine.speech_presence.NoSpeechError` and changes nothing."""
        base = self.findings()
        exclude = self._exclude() if similar_k > 0 else ()
        result = self.engine.add_dictation(base, waveform, sample_rate, audio_path=audio_path, similar_k=similar_k,
                                           exclude_uids=exclude)
        with self._lock:
            self._latest = result
            self._dictation_path = None if audio_path is None else str(audio_path)
        return result

    def similar(self, k: int = 10) -> list[dict[str, Any]]:
        """The library's nearest studies to this one (with its last dictation when one was added), never
        the study itself."""
        latest = self._latest or self.findings()
        return self.engine.similar(ct=latest.ct_embedding, dictation=latest.speech_embedding, k=k,
                                   exclude_uids=self._exclude())

    def index(self) -> StudyRecord | None:
        """Add the study, with its last dictation, to the library (:meth:`Engine.index_study`), from the
        embeddings already made. Returns the library's record."""
        latest = self._latest or self.findings()
        speech = latest.speech_embedding
        return self.engine.index_study(self.volume, series=self.series, ct_embedding=latest.ct_embedding,
                                       speech_embedding=speech,
                                       dictation_path=self._dictation_path if speech is not None else None)
