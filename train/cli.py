"""``speechct-train``: synthesis, training and evaluation from the command line.

Subcommands live in modules listed in ``COMMAND_MODULES``; each exposes
``add_parser(subparsers)`` which registers its subcommand and sets ``func`` (same pattern
as :mod:`engine.cli`). Later ``teacher | student | evaluate | export`` are added by listing
their modules here. Errors users can cause (``engine.errors.SpeechCTError``) become one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from engine.cli import build_parser as _build_parser
from engine.cli import run_parser

#: Modules that each define ``add_parser(subparsers)``.
COMMAND_MODULES = (
    "train.commands.synth",
    "train.commands.teacher",
    "train.commands.student",
    "train.commands.export",
    "train.commands.evaluate",
    "train.commands.label_mentions",
    "train.commands.text_reader",
)


def build_parser() -> argparse.ArgumentParser:
    return _build_parser("speechct-train", "SpeechCT training: synthetic data, training, evaluation.", COMMAND_MODULES)


def main(argv: list[str] | None = None) -> int:
    return run_parser(build_parser(), argv,
                      interrupted="interrupted (finished work is kept; run again to resume)")


if __name__ == "__main__":
    sys.exit(main())
