"""``speechct``: the engine's command line.

Each subcommand lives in its own module exposing ``add_parser(subparsers)`` (which
registers the subcommand and sets ``func``); this module only wires them and turns
engine errors into one-line messages with exit code 2. Command modules import heavy
dependencies (torch, transformers) inside ``func``, so that every command starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from engine.errors import SpeechCTError

#: Modules that each define ``add_parser(subparsers)``.
COMMAND_MODULES = (
    "engine.commands.info",
    "engine.commands.bundle_info",
    "engine.commands.rank",
    "engine.commands.index",
    "engine.commands.search",
    "engine.commands.selftest",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speechct", description="SpeechCT engine: CT studies, dictations, findings.")
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
        # One line whatever the message holds (library texts can carry newlines).
        print("speechct: error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("speechct: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
