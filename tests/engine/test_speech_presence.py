"""engine.speech_presence: speech passes, silence / noise / hum / clicks do not; the CLI and
Engine.analyze refuse audio without speech before reading it as a dictation."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from engine.audio import load_audio
from engine.cli import main
from engine.speech_presence import (
    MIN_SPEECH_S,
    NoSpeechError,
    SpeechPresence,
    check_speech,
    require_speech,
    voiced_frames,
)

from .tiny_bundle import tiny_bundle_path

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "assets" / "samples").glob("*/dictation.wav"))
STUDY = ROOT / "assets" / "samples" / "study-001" / "dicom"
SR = 16_000
RNG = np.random.default_rng(1234)


def _t(seconds: float, sr: int = SR) -> np.ndarray:
    return np.arange(int(seconds * sr)) / sr


def _pink(n: int) -> np.ndarray:
    spec = np.fft.rfft(RNG.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    y = np.fft.irfft(spec / np.sqrt(f), n)
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


def _brown(n: int) -> np.ndarray:
    y = np.cumsum(RNG.standard_normal(n))
    y -= np.convolve(y, np.ones(801) / 801, "same")
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


def _speech(index: int = 1) -> np.ndarray:
    return load_audio(SAMPLES[index])


NOT_SPEECH = {
    "60 s of digital silence": lambda: np.zeros(60 * SR, np.float32),
    "dither (±1 LSB)": lambda: (RNG.integers(-1, 2, 10 * SR) / 32768).astype(np.float32),
    "white noise": lambda: (0.1 * RNG.standard_normal(10 * SR)).astype(np.float32),
    "loud white noise": lambda: np.clip(0.8 * RNG.standard_normal(10 * SR), -1, 1).astype(np.float32),
    "pink noise": lambda: _pink(10 * SR),
    "brown noise": lambda: _brown(10 * SR),
    "50 Hz hum": lambda: (0.3 * np.sin(2 * np.pi * 50 * _t(10))).astype(np.float32),
    "hum with 20 harmonics": lambda: sum(0.3 / k * np.sin(2 * np.pi * 50 * k * _t(10)) for k in range(1, 21)).astype(np.float32),
    "60 Hz hum": lambda: (0.3 * np.sin(2 * np.pi * 60 * _t(10))).astype(np.float32),
    "1 kHz beeps": lambda: (0.3 * np.sin(2 * np.pi * 1000 * _t(10)) * (np.sin(2 * np.pi * _t(10)) > 0)).astype(np.float32),
    "white noise bursts": lambda: (0.3 * RNG.standard_normal(10 * SR) * (np.sin(2 * np.pi * 1.5 * _t(10)) > 0)).astype(np.float32),
    "pink noise bursts": lambda: _pink(10 * SR) * (np.sin(2 * np.pi * 2 * _t(10)) > 0).astype(np.float32),
    "brown noise bursts": lambda: _brown(10 * SR) * (np.sin(2 * np.pi * 2 * _t(10)) > 0).astype(np.float32),
    "a 50 ms click": lambda: (0.5 * RNG.standard_normal(800)).astype(np.float32),
    "a 10 ms clip": lambda: (0.5 * RNG.standard_normal(160)).astype(np.float32),
    "one sample": lambda: np.array([0.5], np.float32),
    "DC offset": lambda: np.full(5 * SR, 0.4, np.float32),
    "full-scale square wave": lambda: np.sign(np.sin(2 * np.pi * 440 * _t(5))).astype(np.float32),
    "clicks every 100 ms": lambda: np.where(np.arange(5 * SR) % 1600 == 0, 0.9, 0.0).astype(np.float32),
    "a 50 ms slice of speech": lambda: _speech()[SR * 2: SR * 2 + 800],
}


@pytest.mark.parametrize("name", list(NOT_SPEECH))
def test_what_is_not_speech(name):
    wave = NOT_SPEECH[name]()
    presence = check_speech(wave, SR)
    assert presence.verdict == "none", presence
    assert presence.speech_s < 0.1
    assert presence.total_s == pytest.approx(len(wave) / SR, abs=1e-3)


@pytest.mark.parametrize("wav", SAMPLES, ids=lambda p: p.parent.name)
def test_the_sample_dictations_are_speech(wav):
    presence = check_speech(load_audio(wav), SR)
    assert presence.verdict == "speech", presence
    assert presence.speech_s > 0.4 * presence.total_s  # espeak-ng reads without long pauses


@pytest.mark.parametrize("snr_db", [20, 10, 5])
def test_speech_in_noise_and_hum_is_still_speech(snr_db):
    speech = _speech(2)
    noise = RNG.standard_normal(len(speech)).astype(np.float32)
    noise *= np.sqrt(np.mean(speech**2) / np.mean(noise**2)) / 10 ** (snr_db / 20)
    assert check_speech(speech + noise, SR).verdict == "speech"
    hum = (0.3 * np.sin(2 * np.pi * 50 * _t(len(speech) / SR))).astype(np.float32)
    assert check_speech(speech + hum, SR).verdict == "speech"


def test_quiet_speech_other_rates_and_stereo():
    speech = _speech(0)
    assert check_speech(0.02 * speech, SR).verdict == "speech"  # -34 dB: a soft voice far from the mic
    assert check_speech(np.stack([speech, speech], axis=1), SR).verdict == "speech"
    from scipy.signal import resample_poly

    at_44k = resample_poly(speech, 441, 160).astype(np.float32)
    p44 = check_speech(at_44k, 44_100)
    assert p44.verdict == "speech" and p44.total_s == pytest.approx(len(speech) / SR, abs=0.01)


def test_too_little_speech_says_so():
    speech = _speech(1)
    voiced = np.flatnonzero(voiced_frames(speech, SR))
    start = voiced[0] * 160
    short = check_speech(speech[start: start + int(0.3 * SR)], SR)
    assert short.verdict == "too_little" and 0.1 <= short.speech_s < MIN_SPEECH_S
    assert short.message("q.wav").startswith("too little speech in q.wav (")
    assert check_speech(speech[start: start + int(1.5 * SR)], SR).verdict == "speech"


def test_messages():
    assert SpeechPresence(60.0, 0.0, "none").message("a/b.wav") == "no speech heard in a/b.wav"
    assert SpeechPresence(0.05, 0.0, "none").message("c.wav") == "no speech heard in c.wav (only 0.05 s of audio)"
    assert SpeechPresence(0.3, 0.2, "too_little").message() == \
        f"too little speech in the recording (0.2 s; at least {MIN_SPEECH_S:g} s is needed)"
    with pytest.raises(NoSpeechError, match="no speech heard in x.wav") as err:
        require_speech(np.zeros(SR, np.float32), SR, "x.wav")
    assert err.value.presence.verdict == "none" and str(err.value) == "no speech heard in x.wav"
    assert require_speech(_speech(0), SR).ok


def test_ten_minutes_of_noise_is_fast_and_small():
    wave = (0.1 * RNG.standard_normal(600 * SR)).astype(np.float32)  # 38 MB of samples
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    presence = check_speech(wave, SR)
    elapsed = time.perf_counter() - started
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert presence.verdict == "none"
    assert elapsed < 10.0, elapsed  # ~0.6 s here
    assert grown_mb < 200, grown_mb  # 30 s chunks: tens of MB beyond the samples, not GB


# ------------------------------------------------------------------------- the engine and the CLI


@pytest.fixture
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHCT_EMBEDDING_CACHE", str(tmp_path / "emb"))
    monkeypatch.setenv("SPEECHCT_BUNDLE", str(tiny_bundle_path()))


def _write(path: Path, wave: np.ndarray) -> Path:
    soundfile.write(str(path), wave, SR, subtype="PCM_16")
    return path


@pytest.mark.usefixtures("_isolated")
@pytest.mark.parametrize(("what", "wave", "expected"), [
    ("silence", np.zeros(60 * SR, np.float32), "no speech heard in {}"),
    ("click", (0.5 * np.random.default_rng(0).standard_normal(800)).astype(np.float32),
     "no speech heard in {} (only 0.05 s of audio)"),
    ("noise", (0.1 * np.random.default_rng(0).standard_normal(20 * SR)).astype(np.float32), "no speech heard in {}"),
])
def test_rank_and_search_refuse_audio_without_speech(capsys, tmp_path, what, wave, expected):
    wav = _write(tmp_path / f"{what}.wav", wave)
    for argv in (["rank", "--ct", STUDY, "--audio", wav, "--json"],
                 ["search", "--audio", wav, "--library", tmp_path / "lib"],
                 ["index", "add", STUDY, "--dictation", wav, "--library", tmp_path / "lib"]):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert code == 2, (argv, out, err)
        assert out == "" or argv[0] == "index"
        assert err == f"speechct: error: {expected.format(wav)}\n", err
    assert "dictation" not in capsys.readouterr().out


def test_analyze_refuses_silence_before_any_work(tmp_path):
    from engine.runtime import Engine

    engine = Engine(tiny_bundle_path(), cache_dir=False, device="cpu")

    def no_work(*args, **kwargs):
        raise AssertionError("analyze() read or encoded something before the speech check")

    engine.load_study = engine.encode_speech_frames = engine.warm_up = no_work
    with pytest.raises(NoSpeechError, match="no speech heard in rec.wav"):
        engine.analyze("/no/such/study", np.zeros(SR * 5, np.float32), SR, audio_path="rec.wav")
