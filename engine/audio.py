"""Audio in, Whisper features out: the one front end shared by training and inference.

Conventions (all functions):
- waveforms are 1-D ``float32`` numpy arrays of samples in [-1, 1], mono, at 16 kHz unless a
  ``sample_rate`` says otherwise;
- log-mel spectrograms are ``float32`` arrays shaped ``[n_mels=80, frames]``, one frame per
  10 ms (hop 160 samples at 16 kHz), scaled exactly as Whisper expects (``(log10 + 4) / 4``
  after clipping 8 decades below the maximum);
- a window is a slice of at most 3000 frames (30 s), consecutive windows overlap by 200
  frames (2 s), as in SpeechCT-CLIP.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly

from engine.errors import AudioError

SAMPLE_RATE = 16_000
N_MELS = 80
HOP_LENGTH = 160
N_FFT = 400
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
WINDOW_FRAMES = 3000  # 30 s: what Whisper's encoder was trained on
OVERLAP_FRAMES = 200  # 2 s
#: Sample rates outside this range (Hz) are not audio (a corrupt header).
MIN_RATE, MAX_RATE = 1000, 768_000
#: The smallest waveform log_mel accepts: one STFT window (25 ms).
MIN_SAMPLES = N_FFT


def load_audio(path: str | Path) -> np.ndarray:
    """Read an audio file as mono float32 at 16 kHz.

    Any format libsndfile reads (WAV, FLAC, OGG, ...), any sample rate, any channel count
    (channels are averaged). Silence is legal; a file without samples is not.
    Raises ``AudioError`` naming the file for a missing, unreadable, empty or non-finite file.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError("audio file not found", path)
    if path.is_dir():
        raise AudioError("is a folder, not an audio file", path)
    if path.stat().st_size == 0:
        raise AudioError("audio file is empty (0 bytes)", path)
    try:
        samples, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AudioError(f"cannot decode audio ({reason})", path) from exc
    if samples.shape[0] == 0:
        raise AudioError("audio file holds no samples (zero length)", path)
    if not MIN_RATE <= sample_rate <= MAX_RATE:
        raise AudioError(f"sample rate {sample_rate} Hz is not an audio rate ({MIN_RATE}-{MAX_RATE} Hz)", path)
    if not np.isfinite(samples).all():
        raise AudioError("audio file holds NaN or infinite samples", path)
    return to_16k(samples, sample_rate)


def to_16k(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mix down to mono and resample to 16 kHz (polyphase filter, scipy's resample_poly).

    ``waveform``: ``[samples]`` or ``[samples, channels]``. Returns a contiguous float32 ``[samples']``.
    """
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim == 2:
        waveform = waveform.mean(axis=1, dtype=np.float32)
    elif waveform.ndim != 1:
        raise AudioError(f"waveform must be [samples] or [samples, channels], got shape {waveform.shape}")
    if int(sample_rate) != sample_rate or not MIN_RATE <= sample_rate <= MAX_RATE:
        # a 1 Hz "rate" would be resampled 16000-fold: minutes and gigabytes for nothing
        raise AudioError(f"sample rate must be an integer audio rate ({MIN_RATE}-{MAX_RATE} Hz), got {sample_rate}")
    sample_rate = int(sample_rate)
    if sample_rate != SAMPLE_RATE and waveform.size:
        divisor = math.gcd(sample_rate, SAMPLE_RATE)
        waveform = resample_poly(waveform, SAMPLE_RATE // divisor, sample_rate // divisor).astype(np.float32)
    return np.ascontiguousarray(waveform, dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _feature_extractor():
    # Imported lazily: transformers is slow to import (docs/performance.md) and not every caller needs features.
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=N_MELS, sampling_rate=SAMPLE_RATE, hop_length=HOP_LENGTH, n_fft=N_FFT)


def log_mel(waveform_16k: np.ndarray) -> np.ndarray:
    """Whisper log-mel features of a 16 kHz mono waveform, NOT padded to 30 s.

    Returns float32 ``[80, samples // 160]``: only real frames, so a 6 s dictation costs 600
    frames, not 3000. Values match Whisper's (and faster-whisper's) extractor on the same
    samples; only the last frame or two differ from the 30 s-padded computation, because the
    STFT there sees zeros past the end instead of a reflection.
    """
    waveform = np.asarray(waveform_16k, dtype=np.float32)
    if waveform.ndim != 1:
        raise AudioError(f"log_mel needs a 1-D 16 kHz waveform, got shape {waveform.shape}")
    if waveform.size < MIN_SAMPLES:
        raise AudioError(f"audio too short for features: {waveform.size} samples, need at least {MIN_SAMPLES}")
    features = _feature_extractor()(
        waveform,
        sampling_rate=SAMPLE_RATE,
        padding="longest",
        truncation=False,
        return_tensors="np",
    )["input_features"][0]
    return np.ascontiguousarray(features, dtype=np.float32)


def silence_level(mel: np.ndarray) -> float:
    """The value Whisper's extractor gives digital silence in this spectrogram.

    Silence (zero samples) has log10 = -10, which the extractor clips to ``max - 8``; after the
    ``(x + 4) / 4`` scaling that is ``max(mel.max() - 2, -1.5)``. Padding a spectrogram with this
    value equals extracting features from a zero-padded waveform (away from the boundary frame).
    """
    return float(max(float(np.max(mel)) - 2.0, -1.5))


def pad_frames(mel: np.ndarray, frames: int = WINDOW_FRAMES, value: float | None = None) -> np.ndarray:
    """Pad ``[80, T]`` on the right to ``[80, frames]`` with ``value`` (default: ``silence_level(mel)``)."""
    if mel.shape[-1] > frames:
        raise AudioError(f"cannot pad {mel.shape[-1]} frames down to {frames}")
    fill = silence_level(mel) if value is None else value
    out = np.full((mel.shape[0], frames), fill, dtype=np.float32)
    out[:, : mel.shape[-1]] = mel
    return out


def split_windows(
    mel: np.ndarray,
    window_frames: int = WINDOW_FRAMES,
    overlap_frames: int = OVERLAP_FRAMES,
    pad: bool = False,
) -> list[tuple[np.ndarray, int]]:
    """Cut ``[80, T]`` into windows of ``window_frames`` that overlap by ``overlap_frames``.

    Window i starts at frame ``i * (window_frames - overlap_frames)``; the last window ends at
    ``T`` and is usually shorter. A spectrogram of at most ``window_frames`` is one window.
    Returns ``[(window, real_frames), ...]``; each window is ``[80, real_frames]`` (a view), or
    with ``pad=True`` ``[80, window_frames]`` padded with the utterance's silence level.
    """
    if mel.ndim != 2:
        raise AudioError(f"split_windows needs [n_mels, frames], got shape {mel.shape}")
    if not 0 <= overlap_frames < window_frames:
        raise AudioError(f"overlap ({overlap_frames}) must be in [0, window ({window_frames}))")
    total = mel.shape[1]
    if total == 0:
        raise AudioError("cannot window a spectrogram with no frames")
    stride = window_frames - overlap_frames
    count = 1 if total <= window_frames else 1 + math.ceil((total - window_frames) / stride)
    fill = silence_level(mel) if pad else None
    windows = []
    for index in range(count):
        start = index * stride
        window = mel[:, start : start + window_frames]
        real = window.shape[1]
        if pad and real < window_frames:
            window = pad_frames(window, window_frames, fill)
        windows.append((window, real))
    return windows
