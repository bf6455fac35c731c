"""engine.audio: reading, resampling, Whisper log-mel and 30 s / 2 s windows."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from engine import audio
from engine.errors import AudioError


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_load_audio_resamples_and_mixes_down(tmp_path):
    left = _tone(1.5, 44_100, 440.0)
    right = _tone(1.5, 44_100, 880.0)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 44_100)
    waveform = audio.load_audio(path)
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert waveform.shape[0] == 24_000  # 1.5 s at 16 kHz
    # The mix-down is the channel mean: its spectrum holds both tones at half amplitude.
    spectrum = np.abs(np.fft.rfft(waveform[4000:20000])) / 8000
    freqs = np.fft.rfftfreq(16000, 1 / 16_000)
    for f in (440.0, 880.0):
        assert spectrum[np.argmin(np.abs(freqs - f))] == pytest.approx(0.15, rel=0.05)


def test_load_audio_keeps_16k_mono_untouched(tmp_path):
    tone = _tone(0.5, 16_000)
    path = tmp_path / "mono.flac"
    soundfile.write(path, tone, 16_000, subtype="PCM_24")
    np.testing.assert_allclose(audio.load_audio(path), tone, atol=1e-6)


def test_silence_is_legal(tmp_path):
    path = tmp_path / "silence.wav"
    soundfile.write(path, np.zeros(8000, np.float32), 8000)
    waveform = audio.load_audio(path)
    assert waveform.shape == (16000,) and not waveform.any()
    mel = audio.log_mel(waveform)
    assert mel.shape == (80, 100) and np.isfinite(mel).all()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 4), "cannot decode"),
        (lambda p: soundfile.write(p, np.zeros(0, np.float32), 16_000), "no samples"),
        (lambda p: soundfile.write(p, np.array([0.0, np.nan, 0.1], np.float32), 16_000, subtype="FLOAT"), "NaN"),
    ],
    ids=["missing", "zero-bytes", "corrupt", "zero-length", "nan"],
)
def test_load_audio_errors_name_the_file(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=message) as info:
        audio.load_audio(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_folder_is_not_audio(tmp_path):
    with pytest.raises(AudioError, match="folder"):
        audio.load_audio(tmp_path)


def test_to_16k_rejects_bad_rates():
    with pytest.raises(AudioError):
        audio.to_16k(np.zeros(10, np.float32), 0)
    with pytest.raises(AudioError):
        audio.to_16k(np.zeros((2, 2, 2), np.float32), 16_000)


def test_log_mel_has_real_frames_only_and_matches_padded_extractor():
    waveform = _tone(6.0, 16_000) + 0.01 * np.random.default_rng(0).standard_normal(96_000).astype(np.float32)
    mel = audio.log_mel(waveform)
    assert mel.shape == (80, 600) and mel.dtype == np.float32
    padded = audio._feature_extractor()(waveform, sampling_rate=16_000, return_tensors="np")["input_features"][0]
    assert padded.shape == (80, 3000)
    # Only the boundary frame differs: its STFT sees zeros there and a reflection here.
    np.testing.assert_allclose(mel[:, :599], padded[:, :599], atol=1e-5)
    # Padding the spectrogram with the silence level equals extracting from zero-padded audio.
    np.testing.assert_allclose(audio.pad_frames(mel)[:, 602:], padded[:, 602:], atol=1e-5)


def test_log_mel_matches_faster_whisper():
    FeatureExtractor = pytest.importorskip("faster_whisper.feature_extractor").FeatureExtractor

    waveform = _tone(2.0, 16_000, 300.0) * np.linspace(0, 1, 32_000, dtype=np.float32)
    ours = audio.log_mel(waveform)
    theirs = FeatureExtractor(feature_size=80)(waveform, padding=0)
    assert theirs.shape == ours.shape
    assert np.abs(theirs - ours).max() < 1e-4


def test_log_mel_is_not_truncated_past_30s():
    waveform = np.zeros(16_000 * 31, np.float32)
    assert audio.log_mel(waveform).shape == (80, 3100)


def test_log_mel_rejects_too_short():
    with pytest.raises(AudioError, match="too short"):
        audio.log_mel(np.zeros(100, np.float32))


@pytest.mark.parametrize(
    "frames, expected",
    [
        (1, [(0, 1)]),
        (600, [(0, 600)]),
        (3000, [(0, 3000)]),
        (3001, [(0, 3000), (2800, 201)]),
        (5800, [(0, 3000), (2800, 3000)]),
        (5801, [(0, 3000), (2800, 3000), (5600, 201)]),
        (6000, [(0, 3000), (2800, 3000), (5600, 400)]),
    ],
)
def test_split_windows_boundaries(frames, expected):
    mel = np.tile(np.arange(frames, dtype=np.float32), (80, 1))
    windows = audio.split_windows(mel)
    assert [(int(w[0, 0]), n) for w, n in windows] == expected
    for window, real in windows:
        assert window.shape == (80, real)
        np.testing.assert_array_equal(window[0], np.arange(window[0, 0], window[0, 0] + real))
    # The last window always ends at the last frame: nothing is dropped.
    assert windows[-1][0][0, -1] == frames - 1


def test_split_windows_overlap_is_exact():
    mel = np.random.default_rng(1).standard_normal((80, 9000)).astype(np.float32)
    windows = audio.split_windows(mel)
    for (a, _), (b, _) in zip(windows, windows[1:]):
        np.testing.assert_array_equal(a[:, -200:], b[:, :200])
    covered = sum(n for _, n in windows) - 200 * (len(windows) - 1)
    assert covered == 9000


def test_split_windows_padded():
    mel = np.full((80, 3500), -0.2, np.float32)
    mel[0, 0] = 0.9
    windows = audio.split_windows(mel, pad=True)
    assert [n for _, n in windows] == [3000, 700]
    last = windows[-1][0]
    assert last.shape == (80, 3000)
    assert np.all(last[:, 700:] == pytest.approx(0.9 - 2.0))


def test_split_windows_rejects_bad_arguments():
    with pytest.raises(AudioError):
        audio.split_windows(np.zeros((80, 0), np.float32))
    with pytest.raises(AudioError):
        audio.split_windows(np.zeros((80, 10), np.float32), window_frames=10, overlap_frames=10)
