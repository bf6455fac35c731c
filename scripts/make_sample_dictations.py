"""Speak the sample studies' reports: ``assets/samples/study-00N/dictation.wav`` (+ ``dictation.txt``).

    python scripts/make_sample_dictations.py [--samples assets/samples]

Each dictation reads the FINDINGS of the study's ``report.txt`` (written by make_samples.py) with
one of ``train.synth.voices``' training voices, 16 kHz mono PCM-16, at most 30 s (one Whisper
window). study-002's dictation *omits* one finding the image shows (its consolidation sentence
is left out), so ``speechct rank --audio`` on it should flag an "omitted" discrepancy when the
model sees the consolidation. Deterministic: same inputs, same bytes.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.synth.voices import SAMPLE_RATE, speak  # noqa: E402

#: study -> (voice id, words per minute, sentences to leave out: the finding the dictation omits)
DICTATIONS = {
    "study-001": ("us-f2", 175, ()),
    "study-002": ("us-m3", 175, ("Consolidation",)),
    "study-003": ("rp-f4", 175, ()),
}
MAX_SECONDS = 30.0


def findings_text(report: str, omit: tuple[str, ...]) -> str:
    """The FINDINGS paragraph, without the sentences that mention any of ``omit``."""
    match = re.search(r"FINDINGS:\s*(.*?)(?:\n\s*\n|IMPRESSION:|$)", report, re.S)
    if match is None:
        raise SystemExit("report.txt has no FINDINGS section")
    sentences = re.split(r"(?<=\.)\s+", " ".join(match.group(1).split()))
    kept = [s for s in sentences if not any(word.lower() in s.lower() for word in omit)]
    if omit and len(kept) == len(sentences):
        raise SystemExit(f"no sentence mentions {omit}: nothing would be omitted")
    return " ".join(kept)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default=Path(__file__).resolve().parents[1] / "assets" / "samples", type=Path)
    args = parser.parse_args(argv)
    for study, (voice, wpm, omit) in DICTATIONS.items():
        folder = args.samples / study
        text = findings_text((folder / "report.txt").read_text(), omit)
        rate = wpm
        audio = speak(text, voice, rate_wpm=rate)
        while audio.size / SAMPLE_RATE > MAX_SECONDS:  # keep it one window: read a little faster
            rate += 10
            audio = speak(text, voice, rate_wpm=rate)
        sf.write(folder / "dictation.wav", (audio * 0.9).astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        (folder / "dictation.txt").write_text(
            f"voice: {voice}, {rate} wpm" + (f"; omits: {', '.join(omit)}" if omit else "") + "\n\n" + text + "\n")
        print(f"{folder / 'dictation.wav'}: {audio.size / SAMPLE_RATE:.1f} s, voice {voice} at {rate} wpm"
              + (f", omits {', '.join(omit)}" if omit else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
