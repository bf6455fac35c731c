"""ASR round trip on synthetic spoken reports: can Whisper-base understand our TTS voices?

Each report's Findings are read aloud by every voice (train.synth.voices), transcribed offline
by faster-whisper with the PyPI-packaged Whisper-base (CTranslate2, int8, beam 5), and scored
by word error rate against the text that was read; the script also says which finding names
(engine.findings.LABELS) present in the text survive the round trip.

    .venv/bin/python scripts/asr_roundtrip.py                     # built-in reports, 2 per voice
    .venv/bin/python scripts/asr_roundtrip.py --ctrate DATA/ct-rate --split valid --reports 2

WER here is the word-level Levenshtein distance / reference words after a light
normalisation (case, punctuation, hyphens, unit spellings, small number words), written by
hand because jiwer is not a dependency and the metric is ten lines.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from pathlib import Path

import numpy as np

from engine.labels import LABELS
from train.synth.voices import DEFAULT_PITCH, DEFAULT_RATE_WPM, VOICES, get_voice, speak

#: Findings in CT-RATE's style (written for this script), with sizes, negations and several
#: of the 18 finding names, each short enough for one 30 s window.
BUILTIN_REPORTS = (
    "The heart is enlarged, consistent with cardiomegaly. There is a small pericardial effusion. "
    "Coronary artery wall calcification is noted. A 6 mm lung nodule is seen in the right upper lobe. "
    "There is no pleural effusion.",
    "Centrilobular emphysema is present in both upper lobes. Bronchiectasis and peribronchial thickening "
    "are seen in the lower lobes. There is no consolidation. A small hiatal hernia is noted. "
    "Mediastinal lymphadenopathy is not present.",
)

_UNIT_WORDS = {
    "millimetre": "mm",
    "millimetres": "mm",
    "millimeter": "mm",
    "millimeters": "mm",
    "centimetre": "cm",
    "centimetres": "cm",
    "centimeter": "cm",
    "centimeters": "cm",
}
_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}


def normalize(text: str) -> list[str]:
    text = text.lower().replace("-", " ")
    text = re.sub(r"(\d)(mm|cm)\b", r"\1 \2", text)
    words = re.sub(r"[^a-z0-9. ]+", " ", text).replace(". ", " ").split()
    words = [w.strip(".") for w in words if w.strip(".")]
    return [_UNIT_WORDS.get(w, _NUMBER_WORDS.get(w, w)) for w in words]


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Minimum substitutions + deletions + insertions turning reference into hypothesis."""
    prev = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        cur = [i] + [0] * len(hypothesis)
        for j, h in enumerate(hypothesis, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


#: Spellings Whisper picks for a finding word that sounds the same; counted as heard for the
#: finding check only (the WER stays strict): "pleural" and "plural" are both /ˈplʊərəl/.
HOMOPHONES = {"plural": "pleural"}


def findings_in(text: str) -> list[str]:
    joined = " " + " ".join(HOMOPHONES.get(w, w) for w in normalize(text)) + " "
    return [label for label in LABELS if " " + " ".join(normalize(label)) + " " in joined]


def load_reports(ctrate: Path | None, split: str, n: int) -> list[str]:
    if ctrate is None:
        return list(BUILTIN_REPORTS[:n])
    from train.data import REPORTS_CSV, dataset_dir, read_csv_rows

    path = dataset_dir(ctrate) / "radiology_text_reports" / REPORTS_CSV[split]
    rows = read_csv_rows(path, ("VolumeName", "Findings_EN"), "reports")
    return [r["Findings_EN"].strip() for r in rows if r["Findings_EN"].strip()][:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--ctrate", type=Path, help="CT-RATE-layout root to take Findings from (default: built-in)"
    )
    ap.add_argument("--split", default="valid", choices=("train", "valid"))
    ap.add_argument("--reports", type=int, default=2, help="reports per voice")
    ap.add_argument("--voices", nargs="*", help="voice ids (default: all)")
    ap.add_argument("--rate", type=int, default=DEFAULT_RATE_WPM, help="words per minute")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument(
        "--vocab-prompt",
        action="store_true",
        help="give Whisper the 18 finding names as initial_prompt (the ASR cascade's best case)",
    )
    ap.add_argument("--csv", type=Path, help="write one row per transcription here")
    args = ap.parse_args(argv)

    from faster_whisper import WhisperModel

    from engine.weights.whisper import packaged_ct2_folder

    folder = packaged_ct2_folder()
    t0 = time.perf_counter()
    model = WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=2)
    print(f"Whisper-base (CTranslate2, int8) from {folder} loaded in {time.perf_counter() - t0:.1f} s")

    reports = load_reports(args.ctrate, args.split, args.reports)
    prompt = ("Chest CT findings: " + ", ".join(LABELS) + ".") if args.vocab_prompt else None
    voices = [get_voice(v) for v in args.voices] if args.voices else list(VOICES)
    rows = []
    print(
        f"{len(reports)} report(s) x {len(voices)} voices at {args.rate} wpm, beam {args.beam}"
        + (", finding names as initial prompt" if prompt else "")
        + "\n"
    )
    print(
        f"{'voice':<16} {'engine':<7} {'split':<6} {'WER':>6} {'findings heard':>15} {'audio s':>8} {'asr s':>6}"
    )
    for voice in voices:
        errors = words = heard = named = 0
        seconds = asr_seconds = 0.0
        missed: list[str] = []
        for text in reports:
            audio = speak(text, voice, args.rate, DEFAULT_PITCH)
            t0 = time.perf_counter()
            segments, _ = model.transcribe(
                audio.astype(np.float32), language="en", beam_size=args.beam, initial_prompt=prompt
            )
            hypothesis = " ".join(s.text.strip() for s in segments)
            asr_seconds += time.perf_counter() - t0
            seconds += audio.size / 16000
            ref, hyp = normalize(text), normalize(hypothesis)
            e = word_errors(ref, hyp)
            errors, words = errors + e, words + len(ref)
            expected, got = findings_in(text), set(findings_in(hypothesis))
            named += len(expected)
            heard += sum(f in got for f in expected)
            missed += [f for f in expected if f not in got]
            rows.append(
                {
                    "voice": voice.id,
                    "engine": voice.engine,
                    "split": voice.split,
                    "wer": f"{e / max(len(ref), 1):.3f}",
                    "reference": text,
                    "hypothesis": hypothesis,
                }
            )
        wer = errors / max(words, 1)
        print(
            f"{voice.id:<16} {voice.engine:<7} {voice.split:<6} {wer:>6.1%} {f'{heard}/{named}':>15} "
            f"{seconds:>8.1f} {asr_seconds:>6.1f}"
            + (f"   missed: {', '.join(sorted(set(missed)))}" if missed else "")
        )
    total_wer = np.mean([float(r["wer"]) for r in rows])
    print(f"\nmean per-report WER {total_wer:.1%} over {len(rows)} transcriptions")
    worst = max(rows, key=lambda r: float(r["wer"]))
    print(
        f"worst ({worst['voice']}, WER {float(worst['wer']):.1%}):\n  read:  {worst['reference']}\n  heard: {worst['hypothesis']}"
    )
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
