"""Offline text-to-speech voices for the synthetic Speech-RATE set.

Two synthesis methods, both driven through the ``espeak-ng`` command line:

* espeak-ng's own formant synthesiser with its English accents and voice variants
  (``en-us+f2`` = American English, female variant 2), output at 22.05 kHz;
* MBROLA diphone voices (``mb-us1`` …), a concatenative method, output at 16 kHz.

SpeechCT-CLIP read Speech-RATE with 8 voices (4 female, 4 male); the train set here has the
same, and the validation voices are kept apart (never used in train, two of them MBROLA) so
that validation measures generalisation to unseen speakers and an unseen synthesis method mix.

Audio returned by :func:`speak` is float32 mono in [-1, 1] at :data:`SAMPLE_RATE` (16 kHz).
"""

from __future__ import annotations

import functools
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from engine.errors import AudioError

SAMPLE_RATE = 16_000
ESPEAK = "espeak-ng"
MBROLA_DIRS = (Path("/usr/share/mbrola"), Path("/usr/lib/x86_64-linux-gnu/espeak-ng-data/mbrola"))

#: Natural reading ranges drawn per report: words per minute (espeak ``-s``) and espeak's
#: pitch scale 0–99 (``-p``, 50 = the voice's own pitch).
RATE_RANGE_WPM = (140, 190)
PITCH_RANGE = (35, 65)
DEFAULT_RATE_WPM = 165
DEFAULT_PITCH = 50


class TTSError(AudioError):
    """The speech synthesiser or one of its voices is missing or failed."""


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker.

    ``espeak`` is the exact ``-v`` argument; ``split`` says which Speech-RATE split may use it.
    """

    id: str
    engine: str  # "espeak" (formant) | "mbrola" (diphone, through espeak-ng)
    espeak: str
    gender: str  # "female" | "male"
    split: str  # "train" | "valid"


VOICES: tuple[Voice, ...] = (
    # train: 4 female + 4 male, each side with one MBROLA voice so that the synthesis method
    # alone never tells train from validation.
    Voice("us-f2", "espeak", "en-us+f2", "female", "train"),
    Voice("rp-f4", "espeak", "en-gb-x-rp+f4", "female", "train"),
    Voice("caribbean-f1", "espeak", "en-029+f1", "female", "train"),
    Voice("mb-us1", "mbrola", "mb-us1", "female", "train"),
    Voice("us-m3", "espeak", "en-us+m3", "male", "train"),
    Voice("gb-m1", "espeak", "en-gb+m1", "male", "train"),
    Voice("nyc-m5", "espeak", "en-us-nyc+m5", "male", "train"),
    Voice("mb-us2", "mbrola", "mb-us2", "male", "train"),
    # validation only: an accent, a variant and MBROLA speakers never heard in training. (The
    # West Midlands and Lancaster accents were tried and dropped: Whisper-base made 60–75 % word
    # errors on them, so they would test intelligibility rather than generalisation.)
    Voice("scotland-f5", "espeak", "en-gb-scotland+f5", "female", "valid"),
    Voice("us-f5", "espeak", "en-us+f5", "female", "valid"),
    Voice("mb-us3", "mbrola", "mb-us3", "male", "valid"),
    Voice("mb-en1", "mbrola", "mb-en1", "male", "valid"),
)


def train_voices() -> list[Voice]:
    return [v for v in VOICES if v.split == "train"]


def valid_voices() -> list[Voice]:
    return [v for v in VOICES if v.split == "valid"]


def voices_for_split(split: str) -> list[Voice]:
    """Train voices for ``train``; validation voices for ``valid``/``validation``/``test``."""
    return train_voices() if split == "train" else valid_voices()


def get_voice(voice_id: str) -> Voice:
    for v in VOICES:
        if v.id == voice_id:
            return v
    known = ", ".join(v.id for v in VOICES)
    raise TTSError(f"unknown voice id {voice_id!r}; known: {known}")


def resolve_voices(voices: list[str] | list[Voice] | None, split: str) -> list[Voice]:
    """Voice objects for ids (or Voices) given by a caller, or the split's own voices."""
    if voices is None:
        return voices_for_split(split)
    out = [v if isinstance(v, Voice) else get_voice(v) for v in voices]
    if not out:
        raise TTSError("empty voice list")
    return out


# --------------------------------------------------------------------------- text normalisation

# espeak reads "12 mm" as "twelve em em" and "10x8" as "ten eks eight"; radiology reports are
# full of both, so units and dimension separators are spelled out before synthesis. Only the
# pronunciation changes: the text stored in the manifest (the distillation target) is untouched.
_UNITS = {
    "mm": ("millimetre", "millimetres"),
    "cm": ("centimetre", "centimetres"),
    "ml": ("millilitre", "millilitres"),
    "cc": ("cubic centimetre", "cubic centimetres"),
    "HU": ("Hounsfield unit", "Hounsfield units"),
}
_NUM = r"\d+(?:[.,]\d+)?"
_DIMENSION = re.compile(rf"({_NUM})\s*[x×*]\s*(?=\d)")
_UNIT = re.compile(rf"(?<![\w.])({_NUM})\s*({'|'.join(_UNITS)})\b")
_MINUS = re.compile(r"(?<![\w)])[-−](?=\d)")
_ABBREVIATIONS = (
    (re.compile(r"\be\.g\.", re.I), "for example"),
    (re.compile(r"\bi\.e\.", re.I), "that is"),
    (re.compile(r"\bapprox\.", re.I), "approximately"),
    (re.compile(r"\bvs\.?(?=\s)", re.I), "versus"),
    (re.compile(r"\bapprox\b", re.I), "approximately"),
    (re.compile(r"%"), " percent"),
)


#: Medical words espeak's letter-to-sound rules get wrong (measured with ``espeak-ng -x``: e.g.
#: "cardiomegaly" came out as CAR-dio-mgly, "emphysema" as em-FICE-ma, "pleural" as "plerl"),
#: given as espeak phoneme mnemonics, which every English voice here (MBROLA included) accepts
#: inline between ``[[ ]]``.
PRONUNCIATIONS = {
    "cardiomegaly": "k,A@dI2;oUm'Eg@li",
    "emphysema": ",EmfI2s'i:m@",
    "emphysematous": ",EmfI2s'Em@t@s",
    "bronchiectasis": "br,0Nki;'Ekt@sIs",
    "bronchiectatic": "br,0Nki;Ekt'atIk",
    "atelectasis": ",at@l'Ekt@sIs",
    "atelectatic": ",at@lEkt'atIk",
    "mediastinal": "m,i:di;@st'aIn@L",
    "mediastinum": "m,i:di;@st'aIn@m",
    "hiatal": "haI'eIt@L",
    "mosaic": "moUz'eIIk",
    "parenchyma": "p@r'ENkIm@",
    "parenchymal": "p@r'ENkIm@L",
    "fibrotic": "faIbr'0tIk",
    "pleural": "pl'U@r@L",
    "subpleural": "s,Vbpl'U@r@L",
}
_PRONUNCIATION = re.compile(r"\b(" + "|".join(PRONUNCIATIONS) + r")\b", re.I)


def normalize_for_speech(text: str) -> str:
    """Rewrite what espeak mispronounces in reports: units, ``AxB`` sizes, minus signs,
    abbreviations, and the medical words of :data:`PRONUNCIATIONS` (as inline phonemes)."""
    text = _PRONUNCIATION.sub(lambda m: f"[[{PRONUNCIATIONS[m.group(1).lower()]}]]", text)
    for pattern, spoken in _ABBREVIATIONS:
        text = pattern.sub(spoken, text)
    text = _DIMENSION.sub(r"\1 by ", text)

    def unit(m: re.Match) -> str:
        number, name = m.group(1), m.group(2)
        singular, plural = _UNITS[name]
        return f"{number} {singular if number == '1' else plural}"

    text = _UNIT.sub(unit, text)
    text = _MINUS.sub("minus ", text)
    return re.sub(r"\s+", " ", text).strip()


# --------------------------------------------------------------------------- synthesis


@functools.lru_cache(maxsize=1)
def _espeak_path() -> str:
    path = shutil.which(ESPEAK)
    if path is None:
        raise TTSError(
            f"{ESPEAK} is not installed (Debian: apt-get install espeak-ng); speech synthesis needs it"
        )
    return path


@functools.lru_cache(maxsize=1)
def _installed_names() -> tuple[frozenset[str], frozenset[str]]:
    """(voice names, variant names) espeak-ng knows, from its ``--voices`` listings."""

    def listing(arg: str) -> list[list[str]]:
        out = subprocess.run([_espeak_path(), arg], capture_output=True, text=True, check=False).stdout
        return [line.split() for line in out.splitlines()[1:] if line.split()]

    voices: set[str] = set()
    for cols in listing("--voices"):
        # columns: Pty Language Age/Gender VoiceName File [Other languages]
        if len(cols) >= 5:
            voices.add(cols[1].lower())
            voices.add(cols[4].rsplit("/", 1)[-1].lower())
    for cols in listing("--voices=mb"):
        if len(cols) >= 5:
            voices.add(cols[4].rsplit("/", 1)[-1].lower())
    variants = {cols[4].rsplit("/", 1)[-1].lower() for cols in listing("--voices=variant") if len(cols) >= 5}
    return frozenset(voices), frozenset(variants)


def check_voice(voice: Voice) -> None:
    """Raise :class:`TTSError` unless espeak-ng (and MBROLA data) can speak with ``voice``.

    espeak-ng silently falls back to a default voice for unknown names, so this checks its
    listings rather than trusting the exit status.
    """
    voices, variants = _installed_names()
    base, _, variant = voice.espeak.partition("+")
    if base.lower() not in voices:
        raise TTSError(f"voice {voice.id!r}: espeak-ng has no voice {base!r} (see `espeak-ng --voices`)")
    if variant and variant.lower() not in variants:
        raise TTSError(
            f"voice {voice.id!r}: espeak-ng has no variant {variant!r} (see `espeak-ng --voices=variant`)"
        )
    if voice.engine == "mbrola":
        name = base.removeprefix("mb-")
        if not any((d / name).exists() or (d / name / name).exists() for d in MBROLA_DIRS):
            raise TTSError(
                f"voice {voice.id!r}: MBROLA voice data {name!r} is not installed "
                f"(Debian contrib/non-free: apt-get install mbrola mbrola-{name})"
            )


def _parse_espeak_wav(data: bytes, voice: Voice) -> tuple[np.ndarray, int]:
    """Samples (int16) and rate of espeak's streamed WAV.

    Written by hand because espeak streams to a pipe and leaves the RIFF/data sizes at
    0x7ffff000 placeholders, which the stdlib ``wave`` module and libsndfile both misread.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise TTSError(f"voice {voice.id!r}: espeak-ng did not return a WAV stream")
    pos, rate, channels, bits = 12, None, None, None
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if chunk == b"fmt ":
            _fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[pos + 8 : pos + 24])
        elif chunk == b"data":
            if rate is None or channels != 1 or bits != 16:
                raise TTSError(f"voice {voice.id!r}: unexpected espeak-ng format ({channels} ch, {bits} bit)")
            payload = data[pos + 8 :]
            payload = payload[: len(payload) // 2 * 2]
            return np.frombuffer(payload, dtype="<i2"), int(rate)
        pos += 8 + size + (size & 1)
    raise TTSError(f"voice {voice.id!r}: espeak-ng WAV stream has no data chunk")


def speak(
    text: str, voice: Voice | str, rate_wpm: int = DEFAULT_RATE_WPM, pitch: int = DEFAULT_PITCH
) -> np.ndarray:
    """Read ``text`` aloud: float32 mono samples in [-1, 1] at 16 kHz.

    ``rate_wpm`` is espeak's speed in words per minute (80–450), ``pitch`` its 0–99 pitch scale.
    Deterministic: the same arguments give the same samples.
    """
    voice = get_voice(voice) if isinstance(voice, str) else voice
    check_voice(voice)
    if not 80 <= int(rate_wpm) <= 450:
        raise TTSError(f"speaking rate {rate_wpm} wpm is outside espeak-ng's 80–450")
    if not 0 <= int(pitch) <= 99:
        raise TTSError(f"pitch {pitch} is outside espeak-ng's 0–99")
    spoken = normalize_for_speech(text)
    if not spoken:
        raise TTSError("nothing to say: the text is empty")
    # "--" ends the options, so a text that starts with "-" is never taken for one.
    cmd = [
        _espeak_path(),
        "-v",
        voice.espeak,
        "-s",
        str(int(rate_wpm)),
        "-p",
        str(int(pitch)),
        "--stdout",
        "--",
        spoken,
    ]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise TTSError(
            f"voice {voice.id!r}: espeak-ng failed ({err[-1] if err else f'exit {proc.returncode}'})"
        )
    pcm, rate = _parse_espeak_wav(proc.stdout, voice)
    audio = pcm.astype(np.float32) / 32768.0
    if rate != SAMPLE_RATE:
        g = gcd(SAMPLE_RATE, rate)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)
    return np.clip(audio, -1.0, 1.0)
