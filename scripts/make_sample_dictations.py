"""Speak the sample studies' dictations: ``assets/samples/study-00N/dictation.wav`` (+ ``dictation.txt``).

    python scripts/make_sample_dictations.py [--samples assets/samples]

Each dictation is what a radiologist would say of the study (``train.synth.reports.write_report``'s
dictation: indication, findings with spoken commands and corrections, sometimes the impression), in the
report grammar's *training* wording, read by one of ``train.synth.voices``' training voices, 16 kHz mono
PCM-16, at most 30 s (one Whisper window). Together the three show what the dictation check must read
right (:data:`DICTATIONS`): a hedge ("... is likely"), a negation list ("No pleural or pericardial
effusion") and a plain omission (study-002 leaves out the consolidation its image shows, so ``speechct
rank --audio`` should flag it as "omitted" when the image model sees it). The first report seed whose
dictation has what the study asks for is used, so the result is deterministic; ``dictation.txt`` names the
seed and the mention state of every finding the dictation speaks of.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.synth.reports import write_report  # noqa: E402
from train.synth.voices import SAMPLE_RATE, speak  # noqa: E402

#: study -> (voice id, words per minute, findings left out, what the dictation must contain)
DICTATIONS = {
    "study-001": ("us-f2", 175, (), ("hedge",)),
    "study-002": ("us-m3", 175, ("Consolidation",), ("negation list",)),
    "study-003": ("rp-f4", 175, (), ("hedge", "negation list")),
}
MAX_SECONDS = 30.0


def has(report, feature: str) -> bool:
    """Whether a report's dictation has ``feature``: a hedge (an uncertain mention) or a negation list
    (one sentence that negates two or more findings)."""
    if feature == "hedge":
        return "uncertain" in report.mentions.values()
    if feature == "negation list":
        return any(sum(st == "absent" for st in states.values()) >= 2 for _, states in report.sentences)
    raise ValueError(feature)


def dictation_for(findings: dict, omit: tuple[str, ...], needs: tuple[str, ...], contrast: bool, max_seed: int = 5000):
    """(report seed, report) of the first seed whose dictation (of ``findings`` minus ``omit``) has ``needs``."""
    said = {lab: d for lab, d in findings.items() if lab not in omit}
    for seed in range(max_seed):
        rep = write_report(said, wording="train", seed=seed, contrast=contrast)
        if all(has(rep, n) for n in needs) and all(rep.mentions[lab] != "absent" for lab in omit):
            return seed, rep
    raise SystemExit(f"no report seed below {max_seed} gives {needs}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default=Path(__file__).resolve().parents[1] / "assets" / "samples", type=Path)
    args = parser.parse_args(argv)
    for study, (voice, wpm, omit, needs) in DICTATIONS.items():
        folder = args.samples / study
        meta = json.loads((folder / "findings.json").read_text())
        seed, rep = dictation_for(meta["findings"], omit, needs, bool(meta["patient"].get("contrast")))
        text = rep.dictation
        rate = wpm
        audio = speak(text, voice, rate_wpm=rate)
        while audio.size / SAMPLE_RATE > MAX_SECONDS:  # keep it one window: read a little faster
            rate += 10
            audio = speak(text, voice, rate_wpm=rate)
        sf.write(folder / "dictation.wav", (audio * 0.9).astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        said = {lab: st for lab, st in rep.mentions.items() if st != "not mentioned"}
        header = (f"voice: {voice}, {rate} wpm; report seed {seed}; shows: {', '.join(needs)}"
                  + (f"; omits: {', '.join(omit)}" if omit else ""))
        states = "; ".join(f"{lab}: {st}" for lab, st in said.items())
        (folder / "dictation.txt").write_text(f"{header}\nsaid: {states}\n\n{text}\n")
        print(f"{folder / 'dictation.wav'}: {audio.size / SAMPLE_RATE:.1f} s, voice {voice} at {rate} wpm, "
              f"seed {seed}" + (f", omits {', '.join(omit)}" if omit else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
