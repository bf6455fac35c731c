"""``speechct-train``: synthesis, training and evaluation from the command line.

Subcommands live in modules listed in ``COMMAND_MODULES``; each exposes
``add_parser(subparsers)`` which registers its subcommand and sets ``func`` (same pattern
as :mod:`engine.cli`). Later ``teacher | student | evaluate | export`` are added by listing
their modules here. Errors users can cause (``engine.errors.SpeechCTError``) become one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from engine.errors import SpeechCTError

#: Modules that each define ``add_parser(subparsers)``.
COMMAND_MODULES = (
    "train.commands.synth",
    "train.commands.teacher",
    "train.commands.student",
    "train.commands.export",
    "train.commands.evaluate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speechct-train",
                                     description="SpeechCT training: synthetic data, training, evaluation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SpeechCTError as exc:
        print(f"speechct-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("speechct-train: interrupted (finished volumes are kept; run again to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
