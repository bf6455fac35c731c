"""``speechct-train text-reader``: the cascade's learned transcript reader (:mod:`train.text_reader`).

Trains a frame dictation head over the frozen text backbone's token states on the train split's
dictations (``--data``: ct-rate/ and speech-rate/, whose ``Dictation_EN`` is what was said) plus
``--extra-reports`` text-only reports of the training wording, chooses the epoch on the valid split's
dictations, and writes ``OUT/text_reader/``. Text only: no audio, no CT, a few minutes on a CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("text-reader", help="train the learned transcript reader of the ASR cascade",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cpu-default", help="training config (its text tower and dictation head)")
    p.add_argument("--data", required=True, type=Path, help="data folder with ct-rate/ and speech-rate/")
    p.add_argument("--out", required=True, type=Path, help="run folder (text_reader/ inside)")
    p.add_argument("--extra-reports", type=int, default=3000, help="text-only reports of the training wording")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from engine.errors import DataError
    from train.recipes import load_run_config
    from train.text_reader import train_text_reader

    if args.extra_reports < 0 or args.epochs < 1:
        raise DataError("--extra-reports must be >= 0 and --epochs >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = train_text_reader(load_run_config(args.config), args.data, args.out / "text_reader",
                                extra_reports=args.extra_reports, epochs=args.epochs, progress=not args.quiet)
    print(f"transcript reader: valid macro F1 {summary['valid_macro_f1']:.3f} (exact text of the valid "
          f"dictations, epoch {summary['best_epoch']}), {summary['n_train']} training texts, "
          f"{summary['seconds']:.0f} s -> {args.out / 'text_reader'}")
    return 0
