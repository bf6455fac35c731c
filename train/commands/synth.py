"""``speechct-train synth``: a synthetic CT-RATE tree and its Speech-RATE dictations.

Writes ``OUT/ct-rate/dataset/...`` (:mod:`train.synth.ctrate`) and then, unless
``--no-audio``, ``OUT/speech-rate/dataset/...`` (:mod:`train.synth.speechrate`). Same seed →
same bytes; interrupted runs resume where they stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from engine.errors import DataError


def add_parser(sub) -> None:
    p = sub.add_parser("synth", help="generate synthetic CT-RATE + Speech-RATE data",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="data folder (gets ct-rate/ and speech-rate/)")
    p.add_argument("--n-train", type=int, default=100, help="training patients (default 100)")
    p.add_argument("--n-valid", type=int, default=20, help="validation patients (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=("default", "small"), default="default",
                   help="default: 130x256x256 at 2.5x1.4x1.4 mm; small: 64x128x128 at 5x2.8x2.8 mm")
    p.add_argument("--ctrate-version", type=int, choices=(1, 2), default=1,
                   help="1: raw int16 + slope/intercept in the metadata CSV; 2: HU in *_fixed folders")
    p.add_argument("--voices", nargs="+", default=None, help="voice ids for every split (default: each split its own voices, held-out voices for valid only; naming all voices puts validation voices into train too)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    p.add_argument("--no-audio", action="store_true", help="skip the Speech-RATE dictations")
    p.add_argument("--prompts", action="store_true", help="also speak the zero-shot prompt pairs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.findings import LABELS
    from train.synth.ctrate import write_ctrate

    if args.n_train < 0 or args.n_valid < 0 or args.n_train + args.n_valid == 0:
        raise DataError("--n-train and --n-valid must be >= 0 and not both 0")
    t0 = time.perf_counter()
    out = args.out
    ct_root = out / "ct-rate"
    ct = write_ctrate(ct_root, args.n_train, args.n_valid, seed=args.seed, size=args.size,
                      version=args.ctrate_version, workers=args.workers, progress=not args.quiet)
    speech = None
    if not args.no_audio:
        from train.synth.speechrate import synthesize_prompts, synthesize_speech_rate

        splits = tuple(s for s, n in (("train", args.n_train), ("valid", args.n_valid)) if n > 0)
        speech = synthesize_speech_rate(ct_root, out / "speech-rate", splits=splits, seed=args.seed,
                                        workers=args.workers, voices=args.voices, progress=not args.quiet)
        if args.prompts:
            synthesize_prompts(out / "speech-rate", voices=args.voices, seed=args.seed, workers=args.workers,
                               progress=not args.quiet)
    elapsed = time.perf_counter() - t0
    print(f"CT-RATE layout at {ct_root}: {ct['volumes']['train']} train / {ct['volumes']['valid']} valid volumes "
          f"({ct['patients']['train']} / {ct['patients']['valid']} patients), "
          f"{ct['seconds_per_volume']:.2f} s per volume, Findings {ct['findings_words_mean']:.0f} words on average "
          f"(max {ct['findings_words_max']})")
    width = max(len(lab) for lab in LABELS)
    print(f"{'finding':{width}s}  train  valid")
    for lab in LABELS:
        print(f"{lab:{width}s}  {ct['label_counts']['train'][lab]:5d}  {ct['label_counts']['valid'][lab]:5d}")
    if speech is not None:
        print(str(speech))
    print(f"total time {elapsed:.1f} s")
    summary = {"ct_rate": ct, "audio_hours": getattr(speech, "audio_hours", 0.0), "seconds": round(elapsed, 1)}
    (out / "synth_summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    return 0
