"""``speechct-train evaluate``: the paper's protocol (done right) on a CT-RATE-layout split.

Rows: text teacher, ASR cascade (faster-whisper + the teacher's text tower), naive student,
distilled student; per voice group (training voices, held-out voices, recordings): zero-shot
AUROC / F1 / Acc / Prec with 95 % bootstrap CIs, speech→CT Recall@k beside the random baseline,
dictation-head macro F1, paired bootstrap distilled − naive; per finding for the image model:
zero-shot AUROC with CI, centred AUROC, AUPRC, ECE, the linear probe on the CT embedding (the
encoder's ceiling) and a recorded 3D CNN's AUROC (the data's ceiling, ``--ceiling``). Writes
``evaluation.json`` and ``evaluation.md`` into ``--out``.

``--bundle`` is a bundle folder (its speech student is the distilled row) or a training run
folder (``teacher/``, ``student/``, ``student-naive/``, ``dictation/``). ``--data`` holds
``ct-rate/`` and ``speech-rate/`` (``speechct-train synth``'s layout); ``--speech`` adds more
Speech-RATE-layout roots (other voices, your own recordings).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.errors import DataError


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a bundle or run: zero-shot, retrieval, dictation, ASR cascade",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, type=Path, help="bundle folder or training run folder")
    p.add_argument("--data", required=True, type=Path, help="data folder with ct-rate/ (and speech-rate/)")
    p.add_argument("--split", default="valid", choices=("train", "valid", "test"),
                   help="test: the held-out test root (DATA/ct-rate-test and DATA/speech-rate-test, test wording)")
    p.add_argument("--out", type=Path, default=None, help="where evaluation.json/.md go (default: BUNDLE/evaluation)")
    p.add_argument("--speech", type=Path, action="append", default=None,
                   help="a Speech-RATE-layout root (repeatable; default DATA/speech-rate)")
    p.add_argument("--train-voice-copy", action="store_true",
                   help="also read the split with the training voices (synthesised into OUT), so training "
                        "and held-out voices are scored on the same studies")
    p.add_argument("--training-data", type=Path, default=None,
                   help="the data folder the models were trained on: its speech-rate train manifest names the "
                        "training voices (default: --data; set it when --data is a separate test set)")
    p.add_argument("--naive", type=Path, default=None,
                   help="naive student: a student-naive run folder or a bundle (a run folder finds its own)")
    p.add_argument("--prompts", type=Path, default=None, help="spoken prompt folder (manifest.csv)")
    p.add_argument("--no-prompt-synthesis", action="store_true",
                   help="do not synthesise missing spoken prompts (students then use the text prompts)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws over studies (0: no CIs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold-on", choices=("eval", "calibration"), default="eval",
                   help="choose thresholds on the evaluated studies (CT-CLIP) or on a held-apart calibration subset")
    p.add_argument("--calibration-fraction", type=float, default=0.3)
    p.add_argument("--labels", type=int, choices=(18, 16), default=18, help="16: RAD-ChestCT style")
    p.add_argument("--cascade-n", type=int, default=100, help="reports per voice group for the ASR cascade (0: skip)")
    p.add_argument("--cache", type=Path, default=None,
                   help="prepared-volume cache of the trainer (default DATA/cache when it exists)")
    p.add_argument("--probe-folds", type=int, default=5,
                   help="folds of the linear probe on the CT embeddings, the encoder's ceiling (0: no probe)")
    p.add_argument("--ceiling", type=Path, default=None,
                   help="the data's ceiling: scripts/experiments/cnn_ceiling.py's JSON of per-study scores "
                        "(default DATA/cnn_ceiling_SPLIT.json when it exists)")
    p.add_argument("--text-reader", type=Path, default=None,
                   help="a transcript reader folder (speechct-train text-reader) scored on the cascade's transcripts "
                        "(default BUNDLE/text_reader when the bundle is a run folder that has one)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N studies (by volume name)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from train.evaluate import EvalConfig, evaluate_bundle, to_markdown

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    test = args.split == "test"
    ct_root = args.data / ("ct-rate-test" if test else "ct-rate")
    if not ct_root.is_dir():
        raise DataError(f"no {ct_root.name}/ folder in the data folder"
                        + (" (speechct-train synth --n-test N writes it)" if test else ""), args.data)
    split = "valid" if test else args.split  # the test root is a CT-RATE layout whose valid split is the test set
    training_data = args.training_data or (args.data if test else None)
    speech = args.speech
    if speech is None:
        default = args.data / ("speech-rate-test" if test else "speech-rate")
        speech = [default] if default.is_dir() else None
    out = args.out or (args.bundle / "evaluation")
    cfg = EvalConfig(n_boot=args.bootstrap, seed=args.seed, threshold_on=args.threshold_on,
                     calibration_fraction=args.calibration_fraction, labels_mode=args.labels,
                     cascade_n=args.cascade_n, limit=args.limit, probe_folds=args.probe_folds)
    ceiling = args.ceiling
    if ceiling is None and (args.data / f"cnn_ceiling_{args.split}.json").is_file():
        ceiling = args.data / f"cnn_ceiling_{args.split}.json"
    elif ceiling is not None and not ceiling.is_file():
        raise DataError("no such recorded ceiling (scripts/experiments/cnn_ceiling.py writes it)", ceiling)
    text_reader = args.text_reader
    if text_reader is None and (args.bundle / "text_reader" / "head.safetensors").is_file():
        text_reader = args.bundle / "text_reader"
    elif text_reader is not None and not (text_reader / "head.safetensors").is_file():
        raise DataError("no trained transcript reader here (speechct-train text-reader writes one)", text_reader)
    result = evaluate_bundle(args.bundle, ct_root, speech, split, config=cfg, prompts=args.prompts,
                             synthesize_missing_prompts=not args.no_prompt_synthesis, out_dir=out,
                             naive=args.naive, progress=not args.quiet, train_voice_copy=args.train_voice_copy,
                             ceiling=ceiling, text_reader=text_reader,
                             training_speech=None if training_data is None else training_data / "speech-rate",
                             ct_cache=args.cache or ((args.data / "cache") if (args.data / "cache").is_dir() else None))
    print(to_markdown(result))
    print(f"wrote {out / 'evaluation.json'} and {out / 'evaluation.md'}")
    return 0
