"""``speechct-train synth``: a synthetic CT-RATE tree and its Speech-RATE dictations.

Writes ``OUT/ct-rate/dataset/...`` (:mod:`train.synth.ctrate`) and then, unless
``--no-audio``, ``OUT/speech-rate/dataset/...`` (:mod:`train.synth.speechrate`). With ``--n-test``
also the held-out test set, a third CT-RATE-layout root ``OUT/ct-rate-test`` (its ``valid`` split, in the
test wording of the report grammar, other patients) and its Speech-RATE twin ``OUT/speech-rate-test``,
read by the held-out voices. Same seed → same bytes; interrupted runs resume where they stopped.
``--stats`` prints how much wording each split has (``train.synth.wording_stats``) and writes nothing.
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
    p.add_argument("--out", type=Path, help="data folder (gets ct-rate/ and speech-rate/)")
    p.add_argument("--n-train", type=int, default=100, help="training patients (default 100)")
    p.add_argument("--n-valid", type=int, default=20, help="validation patients (default 20)")
    p.add_argument("--n-test", type=int, default=0,
                   help="test patients, in OUT/ct-rate-test and OUT/speech-rate-test (default 0: none)")
    p.add_argument("--stats", action="store_true",
                   help="print distinct present / negated sentence forms per finding and split, then stop")
    p.add_argument("--stats-reports", type=int, default=3000, help="reports sampled per split for --stats")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=("default", "small"), default="default",
                   help="default: 130x256x256 at 2.5x1.4x1.4 mm; small: 64x128x128 at 5x2.8x2.8 mm")
    p.add_argument("--ctrate-version", type=int, choices=(1, 2), default=1,
                   help="1: raw int16 + slope/intercept in the metadata CSV; 2: HU in *_fixed folders")
    p.add_argument("--voices", nargs="+", default=None, help="voice ids for every split (default: each split its own voices, held-out voices for valid only; naming all voices puts validation voices into train too)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    p.add_argument("--plant-rate", type=float, default=0.3,
                   help="share of test-root studies with findings whose dictation leaves one out (a slip the "
                        "dictation check should catch; listed in valid_planted.csv); default 0.3")
    p.add_argument("--no-audio", action="store_true", help="skip the Speech-RATE dictations")
    p.add_argument("--prompts", action="store_true", help="also speak the zero-shot prompt pairs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.labels import LABELS
    from train.synth.ctrate import write_ctrate

    if args.stats:
        return print_stats(args.stats_reports, args.seed)
    if args.out is None:
        raise DataError("--out is required (the data folder)")
    if args.n_train < 0 or args.n_valid < 0 or args.n_test < 0 or args.n_train + args.n_valid == 0:
        raise DataError("--n-train, --n-valid and --n-test must be >= 0, and train and valid not both 0")
    if not 0.0 <= args.plant_rate <= 1.0:
        raise DataError(f"--plant-rate must be between 0 and 1, got {args.plant_rate}")
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
    test = None
    if args.n_test:
        test = write_test_set(args, progress=not args.quiet)
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
    if test is not None:
        print(f"test set at {out / 'ct-rate-test'}: {test['volumes']['valid']} volumes "
              f"({test['patients']['valid']} patients), test wording, held-out voices")
    print(f"total time {elapsed:.1f} s")
    summary = {"ct_rate": ct, "audio_hours": getattr(speech, "audio_hours", 0.0), "seconds": round(elapsed, 1),
               "test": test}
    (out / "synth_summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    return 0


#: The test root's patients come from another seed than the main root's (no patient in both).
TEST_SEED_OFFSET = 7919


def write_test_set(args, progress: bool) -> dict:
    """The held-out test root (CT-RATE layout, its ``valid`` split in the test wording) and its audio."""
    from train.synth.ctrate import TEST_WORDING, write_ctrate

    root = args.out / "ct-rate-test"
    ct = write_ctrate(root, 0, args.n_test, seed=args.seed + TEST_SEED_OFFSET, size=args.size,
                      version=args.ctrate_version, workers=args.workers, progress=progress, wording=TEST_WORDING,
                      plant_rate=args.plant_rate)
    if not args.no_audio:
        from train.synth.speechrate import synthesize_speech_rate

        synthesize_speech_rate(root, args.out / "speech-rate-test", splits=("valid",),
                               seed=args.seed + TEST_SEED_OFFSET, workers=args.workers, voices=args.voices,
                               progress=progress)
    return ct


def print_stats(n_reports: int, seed: int) -> int:
    from train.synth.wording_stats import MIN_NEW_TEST, MIN_TRAIN, collect_forms, format_table, wording_table

    rows, failures = wording_table(collect_forms(n_reports, seed))
    print(f"Distinct sentence forms (slots masked) per finding, present / negated, over {n_reports} sampled "
          f"reports per split; (new) = forms training never has")
    print(format_table(rows))
    print(f"goals: train >= {MIN_TRAIN['present']} present and >= {MIN_TRAIN['absent']} negated; test >= "
          f"{MIN_NEW_TEST['present']} present and >= {MIN_NEW_TEST['absent']} negated that training never has: "
          + ("met for all 18 findings" if not failures else "NOT met: " + "; ".join(failures)))
    return 0 if not failures else 1
