"""Optional acoustic augmentation of synthetic spoken reports.

Clean TTS is far easier than a dictation microphone in a reading room; these effects make
the student hear some noise, room and level variation. Every effect is drawn per report from
an :class:`AugmentSpec` into an :class:`AugmentChoice`, whose :meth:`~AugmentChoice.describe`
string is written to the Speech-RATE manifest, so the manifest says exactly what was applied.

Audio is float32 mono in [-1, 1]; the sample rate is a parameter (16 kHz in Speech-RATE).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve

NOISE_KINDS = ("white", "pink", "babble")
#: Peak level a clip is scaled down to if reverb, noise or gain pushed it towards clipping.
PEAK_LIMIT = 0.95


@dataclass(frozen=True)
class AugmentSpec:
    """Probabilities and ranges of the effects; every range is (low, high), drawn uniformly.

    ``snr_db`` is the speech-to-noise power ratio in dB, ``rt60_s`` the reverberation time
    (seconds for a 60 dB decay), ``gain_db`` a level change in dB.
    """

    p_noise: float = 0.5
    noise_kinds: tuple[str, ...] = NOISE_KINDS
    snr_db: tuple[float, float] = (10.0, 30.0)
    p_reverb: float = 0.3
    rt60_s: tuple[float, float] = (0.15, 0.6)
    p_gain: float = 0.5
    gain_db: tuple[float, float] = (-6.0, 6.0)

    def __post_init__(self) -> None:
        for name in ("p_noise", "p_reverb", "p_gain"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"AugmentSpec.{name} must be a probability, got {getattr(self, name)}")
        unknown = set(self.noise_kinds) - set(NOISE_KINDS)
        if unknown or not self.noise_kinds:
            raise ValueError(f"AugmentSpec.noise_kinds must be a non-empty subset of {NOISE_KINDS}")
        for name in ("snr_db", "rt60_s", "gain_db"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"AugmentSpec.{name} range is reversed: {(lo, hi)}")
        if self.rt60_s[0] <= 0:
            raise ValueError("AugmentSpec.rt60_s must be positive")

    def draw(self, rng: np.random.Generator) -> AugmentChoice:
        """Which effects one clip gets, with their parameters (rounded as the manifest shows them)."""
        # Draw every number whatever the coin flips say, so that one effect's probability
        # never shifts the random stream of another.
        flips = rng.random(3)
        kind = str(self.noise_kinds[int(rng.integers(len(self.noise_kinds)))])
        snr = round(float(rng.uniform(*self.snr_db)), 1)
        rt60 = round(float(rng.uniform(*self.rt60_s)), 2)
        gain = round(float(rng.uniform(*self.gain_db)), 1)
        seed = int(rng.integers(2**31))
        return AugmentChoice(
            noise=kind if flips[0] < self.p_noise else None,
            snr_db=snr if flips[0] < self.p_noise else None,
            rt60_s=rt60 if flips[1] < self.p_reverb else None,
            gain_db=gain if flips[2] < self.p_gain else None,
            seed=seed,
        )


@dataclass(frozen=True)
class AugmentChoice:
    """The effects applied to one clip. ``seed`` drives the noise and impulse-response samples."""

    noise: str | None = None
    snr_db: float | None = None
    rt60_s: float | None = None
    gain_db: float | None = None
    seed: int = 0

    def describe(self) -> str:
        """Manifest text, e.g. ``"reverb:rt60=0.42s;noise:pink@18.3dB;gain:-2.1dB"`` or ``"none"``."""
        parts = []
        if self.rt60_s is not None:
            parts.append(f"reverb:rt60={self.rt60_s:g}s")
        if self.noise is not None:
            parts.append(f"noise:{self.noise}@{self.snr_db:g}dB")
        if self.gain_db is not None:
            parts.append(f"gain:{self.gain_db:+g}dB")
        return ";".join(parts) or "none"

    def apply(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Reverb, then noise, then gain; a peak limiter keeps the result unclipped."""
        rng = np.random.default_rng(self.seed)
        out = np.asarray(audio, dtype=np.float64)
        if self.rt60_s is not None:
            out = add_reverb(out, self.rt60_s, sample_rate, rng)
        if self.noise is not None:
            out = add_noise(out, self.noise, self.snr_db, sample_rate, rng)
        if self.gain_db is not None:
            out = out * 10.0 ** (self.gain_db / 20.0)
        return limit_peak(out).astype(np.float32)


def limit_peak(audio: np.ndarray, peak: float = PEAK_LIMIT) -> np.ndarray:
    """Scale the whole clip down (never up) so that its peak is at most ``peak``."""
    top = float(np.max(np.abs(audio))) if audio.size else 0.0
    return audio * (peak / top) if top > peak else audio


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x))) if x.size else 0.0


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance 1/f noise: white noise shaped by 1/sqrt(f) in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spectrum.size, dtype=np.float64)
    f[0] = 1.0  # keep DC finite; its weight is then that of the first bin
    noise = np.fft.irfft(spectrum / np.sqrt(f), n)
    return noise / (np.std(noise) + 1e-12)


def babble_noise(
    speech: np.ndarray, sample_rate: int, rng: np.random.Generator, talkers: int = 6
) -> np.ndarray:
    """Speech-like babble made from the clip itself: several reversed, circularly shifted copies.

    Reversal keeps the long-term spectrum and syllabic modulation of speech while making the
    words unintelligible, so the noise is speech-shaped without leaking a second report.
    """
    n = speech.size
    if n == 0:
        return speech.copy()
    out = np.zeros(n)
    reversed_speech = speech[::-1]
    min_shift = min(n - 1, sample_rate // 4)
    for _ in range(talkers):
        shift = int(rng.integers(min_shift, n)) if n > 1 else 0
        out += np.roll(reversed_speech, shift) * rng.uniform(0.6, 1.0)
    return out / (np.std(out) + 1e-12)


def add_noise(
    audio: np.ndarray, kind: str, snr_db: float, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """``audio`` plus ``kind`` noise scaled to the given speech-to-noise power ratio (dB)."""
    if kind == "white":
        noise = rng.standard_normal(audio.size)
    elif kind == "pink":
        noise = pink_noise(audio.size, rng)
    elif kind == "babble":
        noise = babble_noise(audio, sample_rate, rng)
    else:
        raise ValueError(f"unknown noise kind {kind!r}; known: {NOISE_KINDS}")
    p_signal, p_noise = _power(audio), _power(noise)
    if p_signal == 0.0 or p_noise == 0.0:
        return audio
    scale = np.sqrt(p_signal / (p_noise * 10.0 ** (snr_db / 10.0)))
    return audio + noise * scale


def room_impulse_response(rt60_s: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic room response: a direct-path impulse followed by exponentially decaying noise.

    The envelope falls by 60 dB over ``rt60_s`` seconds; the tail starts 2.5 ms after the direct
    sound (a first reflection) and is normalised to unit energy with the direct path.
    """
    n = max(int(rt60_s * sample_rate), 2)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s)  # ln(1000) = 60 dB in amplitude
    tail[: max(1, int(0.0025 * sample_rate))] = 0.0
    ir = 0.5 * tail / (np.sqrt(np.sum(tail**2)) + 1e-12)
    ir[0] = 1.0
    return ir / np.sqrt(np.sum(ir**2))


def add_reverb(audio: np.ndarray, rt60_s: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Convolve with :func:`room_impulse_response`; the clip keeps its length (the tail is cut)."""
    if audio.size == 0:
        return audio
    ir = room_impulse_response(rt60_s, sample_rate, rng)
    wet = fftconvolve(audio, ir)[: audio.size]
    # keep the clip's power, so reverb changes the room and not the level
    p_wet = _power(wet)
    return wet * np.sqrt(_power(audio) / p_wet) if p_wet > 0 else wet
