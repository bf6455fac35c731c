"""The ASR cascade a speech-native model replaces: transcribe, then embed the transcript as text.

Each spoken report (and each spoken prompt) is transcribed offline by :class:`engine.transcribe.Transcriber`
(faster-whisper on the PyPI-packaged Whisper-base, int8 on CPU, beam 5, English, primed with chest CT
vocabulary); the transcript is then embedded by the teacher's text tower
and scored exactly like the teacher's text (``engine.findings`` zero-shot, ``train.metrics``
retrieval). Seconds per report are measured for transcription and text embedding separately.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from engine.transcribe import Transcriber

SAMPLE_RATE = 16_000


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
