"""Offline TTS voices: the voice sets, text normalisation and audio sanity of every voice."""

from __future__ import annotations

import numpy as np
import pytest

from train.synth import voices as V
from train.synth.voices import (
    SAMPLE_RATE,
    VOICES,
    TTSError,
    Voice,
    normalize_for_speech,
    speak,
    train_voices,
    valid_voices,
)

PHRASE = "Cardiomegaly is present. Mild emphysema in both upper lobes."


def test_voice_sets_follow_the_paper_and_keep_validation_apart():
    assert len(VOICES) >= 8
    assert len({v.id for v in VOICES}) == len(VOICES)
    assert len({v.espeak for v in VOICES}) == len(VOICES)
    assert {v.engine for v in VOICES} == {"espeak", "mbrola"}
    train, valid = train_voices(), valid_voices()
    assert len(train) == 8
    assert sum(v.gender == "female" for v in train) == 4
    assert sum(v.gender == "male" for v in train) == 4
    assert {v.engine for v in train} == {"espeak", "mbrola"}  # the method alone never gives away the split
    assert len(valid) >= 2
    assert not {v.espeak for v in valid} & {v.espeak for v in train}
    assert any(v.engine == "mbrola" for v in valid)
    assert {v.split for v in VOICES} == {"train", "valid"}


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("A 12 mm nodule.", "A 12 millimetres nodule."),
        ("Nodule of 1 cm.", "Nodule of 1 centimetre."),
        ("A 35x22 mm mass.", "A 35 by 22 millimetres mass."),
        ("Cyst 3.5 x 2 x 1.2 cm.", "Cyst 3.5 by 2 by 1.2 centimetres."),
        ("Density -700 HU.", "Density minus 700 Hounsfield units."),
        ("Opacities, e.g. ground glass, i.e. mild.", "Opacities, for example ground glass, that is mild."),
        ("T-12 vertebra and 40% stenosis.", "T-12 vertebra and 40 percent stenosis."),
        ("No pericardial effusion.", "No pericardial effusion."),
        ("Mild Emphysema; no pleural effusion.", "Mild [[,EmfI2s'i:m@]]; no [[pl'U@r@L]] effusion."),
        ("Pleurals and emphysemas stay.", "Pleurals and emphysemas stay."),  # whole words only
    ],
)
def test_normalize_for_speech_spells_out_what_espeak_misreads(text, spoken):
    assert normalize_for_speech(text) == spoken


@pytest.mark.parametrize("voice", VOICES, ids=[v.id for v in VOICES])
def test_every_voice_speaks_sane_audio(voice):
    rate = 170
    audio = speak(PHRASE, voice, rate_wpm=rate, pitch=50)
    assert audio.dtype == np.float32 and audio.ndim == 1
    duration = audio.size / SAMPLE_RATE
    expected = len(PHRASE.split()) / rate * 60.0  # 9 words at 170 wpm ≈ 3.2 s
    assert 0.6 * expected < duration < 1.7 * expected, (voice.id, duration, expected)
    rms = float(np.sqrt(np.mean(audio**2)))
    assert rms > 0.02, f"{voice.id} is nearly silent (RMS {rms:.4f})"
    assert np.mean(np.abs(audio) >= 0.999) < 1e-3, f"{voice.id} clips"
    # speech, not a tone: energy comes and goes between words
    frames = audio[: audio.size // 320 * 320].reshape(-1, 320)
    energy = np.sqrt(np.mean(frames**2, axis=1))
    assert np.mean(energy < 0.1 * energy.max()) > 0.05


def test_phoneme_respellings_are_valid_for_every_engine():
    """espeak ignores unknown mnemonics silently, so check that each respelling is read as given."""
    import subprocess

    for word, phonemes in V.PRONUNCIATIONS.items():
        out = subprocess.run(
            ["espeak-ng", "-v", "en-us", "-q", "-x", f"[[{phonemes}]]"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        # allophones American espeak picks itself: "#" (flapped t#), "3r" (r-coloured schwa)
        assert out.replace("#", "").replace("3r", "@r") == phonemes, (word, out)
    for voice in ("mb-us2", "gb-m1"):
        with_phonemes = speak("Cardiomegaly.", voice)
        assert 0.4 < with_phonemes.size / SAMPLE_RATE < 2.0


def test_rate_and_pitch_change_the_reading():
    slow = speak(PHRASE, "us-m3", rate_wpm=140, pitch=50)
    fast = speak(PHRASE, "us-m3", rate_wpm=190, pitch=50)
    assert slow.size > 1.15 * fast.size
    high = speak(PHRASE, "us-m3", rate_wpm=140, pitch=65)
    assert high.size == pytest.approx(slow.size, rel=0.1)
    assert not np.array_equal(high, slow)


def test_speak_is_deterministic():
    a = speak("Lung nodule is present.", "mb-us1", 160, 45)
    b = speak("Lung nodule is present.", "mb-us1", 160, 45)
    assert a.tobytes() == b.tobytes()


def test_text_starting_with_a_dash_is_spoken_not_parsed_as_an_option():
    assert speak("-3 is a number.", "us-f2").size > SAMPLE_RATE // 2


@pytest.mark.parametrize(
    ("voice", "message"),
    [
        (Voice("bad", "espeak", "en-zz", "male", "train"), "espeak-ng has no voice 'en-zz'"),
        (Voice("bad", "espeak", "en-us+f9", "female", "train"), "espeak-ng has no variant 'f9'"),
        (Voice("bad", "mbrola", "mb-de1", "female", "train"), "MBROLA voice data 'de1' is not installed"),
    ],
)
def test_missing_voice_is_a_clear_error(voice, message):
    with pytest.raises(TTSError, match=message):
        speak("Hello.", voice)


def test_unknown_voice_id_and_bad_arguments():
    with pytest.raises(TTSError, match="unknown voice id 'nobody'"):
        speak("Hello.", "nobody")
    with pytest.raises(TTSError, match="outside espeak-ng's 80–450"):
        speak("Hello.", "us-f2", rate_wpm=20)
    with pytest.raises(TTSError, match="outside espeak-ng's 0–99"):
        speak("Hello.", "us-f2", pitch=120)
    with pytest.raises(TTSError, match="text is empty"):
        speak("  ", "us-f2")


def test_missing_espeak_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(V.shutil, "which", lambda name: None)
    V._espeak_path.cache_clear()
    try:
        with pytest.raises(TTSError, match="espeak-ng is not installed"):
            speak("Hello.", "us-f2")
    finally:
        V._espeak_path.cache_clear()
