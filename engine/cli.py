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
    "engine.commands.pacs",
)


def build_parser(
    prog: str = "speechct",
    description: str = "SpeechCT engine: CT studies, dictations, findings.",
    modules: tuple[str, ...] | None = None,
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES if modules is None else modules:
        importlib.import_module(name).add_parser(sub)
    return parser


def run_parser(parser: argparse.ArgumentParser, argv: list[str] | None = None, *, interrupted: str = "interrupted") -> int:
    """Parse, run ``func``, and turn engine errors into one line + exit 2 (shared with ``speechct-train``)."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SpeechCTError as exc:
        # One line whatever the message holds (library texts can carry newlines).
        print(f"{parser.prog}: error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: {interrupted}", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return run_parser(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
