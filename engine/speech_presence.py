"""Is there speech in this audio? A check made before any dictation or spoken query is read.

Without it the speech student embeds whatever it is given: digital silence, a 50 ms click or ten
minutes of fan noise all came out as confident dictation findings. :func:`check_speech` answers
with a :class:`SpeechPresence` (how much audio, how much of it sounds like speech, a verdict);
:func:`require_speech` raises :class:`NoSpeechError` unless the verdict is ``"speech"``.

How (energy + spectral flatness, written here because no offline-installable VAD is both small
and dependency-free; numpy only): 25 ms frames every 10 ms at 16 kHz; per frame the power between
250 and 4000 Hz (where voices carry their energy), averaged over three neighbouring frames. A frame
is *voiced* when its band energy is

* above an absolute floor (:data:`ABSOLUTE_FLOOR_DB` dBFS: quieter is not a voice at a microphone),
* at least :data:`MARGIN_DB` above the recording's own noise floor (a low percentile of the frame
  energies): steady hum, fan or hiss never rises above itself, speech rises and falls by syllable,
* spectrally structured: flatness (geometric / arithmetic mean of the band power) below
  :data:`MAX_FLATNESS` (white and pink noise are flat, vowels have formants and harmonics),
* not a single tone (a beep or a hum harmonic: :data:`MAX_PEAK_SHARE` of the band in 3 bins).

Voiced frames count only in runs of at least :data:`MIN_RUN_FRAMES` (50 ms, a syllable nucleus is
longer). ``speech_s`` is their total. Work is done in 30 s chunks: memory stays bounded (a few MB)
whatever the length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import AudioError

SAMPLE_RATE = 16_000
FRAME = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 512
BAND_HZ = (250.0, 4000.0)
#: Quieter than this (band power, dB relative to a full-scale sine) is not a voice at a microphone.
ABSOLUTE_FLOOR_DB = -60.0
#: A voiced frame stands this far above the recording's noise floor.
MARGIN_DB = 9.0
#: The noise floor: this percentile of the frame energies (digital silence left out).
FLOOR_PERCENTILE = 10.0
#: Above this spectral flatness a frame is noise-like.
MAX_FLATNESS = 0.35
#: A frame whose 3 strongest neighbouring bins hold more than this share of the band is a tone.
MAX_PEAK_SHARE = 0.8
#: Voiced frames count only in runs at least this long (frames of 10 ms).
MIN_RUN_FRAMES = 5
#: At least this much voiced audio (s) makes a dictation or query worth reading.
MIN_SPEECH_S = 0.5
#: Below this much voiced audio (s) nothing was heard at all.
NONE_BELOW_S = 0.1
#: Frames per chunk (30 s): bounds memory on long recordings.
CHUNK_FRAMES = 3000

VERDICTS = ("speech", "none", "too_little")


@dataclass(frozen=True)
class SpeechPresence:
    """What :func:`check_speech` found: ``total_s`` of audio, ``speech_s`` of it voiced, and a verdict
    (``"speech"``, ``"none"`` or ``"too_little"``)."""

    total_s: float
    speech_s: float
    verdict: str

    @property
    def ok(self) -> bool:
        return self.verdict == "speech"

    def message(self, path: str | None = None) -> str:
        """One line for the user, naming ``path`` (or "the recording")."""
        where = str(path) if path is not None else "the recording"
        if self.verdict == "speech":
            return f"speech heard in {where} ({self.speech_s:.1f} s of {self.total_s:.1f} s)"
        if self.verdict == "too_little":
            return (f"too little speech in {where} ({self.speech_s:.1f} s; at least {MIN_SPEECH_S:g} s "
                    "is needed)")
        if self.total_s < MIN_SPEECH_S:
            return f"no speech heard in {where} (only {self.total_s:.2f} s of audio)"
        return f"no speech heard in {where}"


class NoSpeechError(AudioError):
    """A dictation or spoken query without (enough) speech; ``presence`` says what was heard."""

    def __init__(self, presence: SpeechPresence, path: str | None = None):
        self.presence = presence
        super().__init__(presence.message(path))


def _mono_16k(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    from engine.audio import to_16k

    wav = to_16k(np.asarray(waveform), sample_rate)
    if not np.isfinite(wav).all():
        wav = np.nan_to_num(wav, nan=0.0, posinf=0.0, neginf=0.0)
    return wav


def _band_bins() -> slice:
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    lo = int(np.searchsorted(freqs, BAND_HZ[0]))
    hi = int(np.searchsorted(freqs, BAND_HZ[1], side="right"))
    return slice(lo, hi)


def _tilt_design() -> tuple[np.ndarray, np.ndarray]:
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)[_band_bins()]
    design = np.stack([np.ones_like(freqs), np.log(freqs)], axis=1)  # [bins, 2]
    return design.astype(np.float32), np.linalg.pinv(design).astype(np.float32)  # pinv: [2, bins]


_TILT_DESIGN, _TILT_PROJ = _tilt_design()


def _frame_features(wav: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: band energy (dB re a full-scale sine), flatness, peak share; chunked."""
    n_frames = 0 if wav.size < FRAME else 1 + (wav.size - FRAME) // HOP
    energy = np.empty(n_frames, np.float32)
    flatness = np.empty(n_frames, np.float32)
    peak = np.empty(n_frames, np.float32)
    if n_frames == 0:
        return energy, flatness, peak
    window = np.hanning(FRAME).astype(np.float32)
    band = _band_bins()
    # a full-scale sine's peak bin power with this window and FFT size: the 0 dB reference
    ref = float((np.abs(np.fft.rfft(window * np.sin(2 * np.pi * 1000 * np.arange(FRAME) / SAMPLE_RATE),
                                    N_FFT)) ** 2).max())
    tiny = np.float32(1e-20)
    for start in range(0, n_frames, CHUNK_FRAMES):
        stop = min(n_frames, start + CHUNK_FRAMES)
        lo, hi = max(0, start - 1), min(n_frames, stop + 1)  # one frame either side for the smoothing
        frames = np.lib.stride_tricks.sliding_window_view(wav[lo * HOP: (hi - 1) * HOP + FRAME], FRAME)[::HOP]
        power = np.abs(np.fft.rfft(frames * window, N_FFT, axis=1)[:, band]) ** 2
        power = power.astype(np.float32)
        smooth = power.copy()
        smooth[1:] += power[:-1]
        smooth[:-1] += power[1:]
        counts = np.full(len(power), 3.0, np.float32)
        counts[0] -= 1
        counts[-1] -= 1
        smooth /= counts[:, None]
        keep = slice(start - lo, start - lo + (stop - start))
        s = smooth[keep] + tiny
        energy[start:stop] = 10.0 * np.log10(s.sum(axis=1) / ref)
        # flatness around the frame's spectral tilt: log power minus its straight-line fit over
        # log frequency, so coloured noise (pink, brown, rumble) is as flat as white noise
        log_s = np.log(s)
        coef = log_s @ _TILT_PROJ.T  # [frames, 2]: intercept and slope of the fit
        resid = log_s - coef @ _TILT_DESIGN.T
        flatness[start:stop] = 1.0 / np.exp(resid).mean(axis=1)
        # share of the band in the strongest bin and its two neighbours
        top = np.argmax(s, axis=1)
        rows = np.arange(len(s))
        around = s[rows, top].copy()
        around += np.where(top > 0, s[rows, np.maximum(top - 1, 0)], 0)
        around += np.where(top < s.shape[1] - 1, s[rows, np.minimum(top + 1, s.shape[1] - 1)], 0)
        peak[start:stop] = around / s.sum(axis=1)
    return energy, flatness, peak


def _runs_at_least(mask: np.ndarray, length: int) -> np.ndarray:
    """``mask`` with runs of True shorter than ``length`` cleared."""
    if length <= 1 or not mask.any():
        return mask
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.diff(padded)
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    out = np.zeros_like(mask)
    for a, b in zip(starts, stops):
        if b - a >= length:
            out[a:b] = True
    return out


def voiced_frames(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Boolean per 10 ms frame of the 16 kHz waveform: does it sound like speech (module doc)."""
    wav = _mono_16k(waveform, sample_rate)
    energy, flatness, peak = _frame_features(wav)
    if energy.size == 0:
        return np.zeros(0, bool)
    audible = energy > -120.0  # digital silence is not part of the noise floor
    if not audible.any():
        return np.zeros(energy.size, bool)
    floor = float(np.percentile(energy[audible], FLOOR_PERCENTILE))
    # a recording that is all sound and no pause has its floor inside the sound: the floor then
    # cannot sit above the level that a room at rest reaches
    voiced = ((energy > ABSOLUTE_FLOOR_DB) & (energy > floor + MARGIN_DB)
              & (flatness < MAX_FLATNESS) & (peak < MAX_PEAK_SHARE))
    return _runs_at_least(voiced, MIN_RUN_FRAMES)


def check_speech(waveform: np.ndarray, sample_rate: int) -> SpeechPresence:
    """How much of ``waveform`` (mono or ``[samples, channels]``, any rate) is speech; see the module doc."""
    wav = np.asarray(waveform)
    if wav.ndim not in (1, 2):
        raise AudioError(f"waveform must be [samples] or [samples, channels], got shape {wav.shape}")
    total_s = float(wav.shape[0]) / float(sample_rate) if sample_rate > 0 else 0.0
    voiced = voiced_frames(wav, sample_rate)
    speech_s = round(float(voiced.sum()) * HOP / SAMPLE_RATE, 3)
    if speech_s >= MIN_SPEECH_S:
        verdict = "speech"
    elif speech_s >= NONE_BELOW_S:
        verdict = "too_little"
    else:
        verdict = "none"
    return SpeechPresence(total_s=round(total_s, 3), speech_s=speech_s, verdict=verdict)


def require_speech(waveform: np.ndarray, sample_rate: int, path: str | Path | None = None) -> SpeechPresence:
    """:func:`check_speech`, raising :class:`NoSpeechError` (one line naming ``path``) unless it is speech."""
    presence = check_speech(waveform, sample_rate)
    if not presence.ok:
        raise NoSpeechError(presence, None if path is None else str(path))
    return presence
