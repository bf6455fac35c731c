"""``speechct``: the engine's command line.

Each subcommand lives in its own module exposing ``add_parser(subparsers)`` (which
registers the subcommand and sets ``func``); this module only wires them and turns
engine errors into one-line messages with exit code 2. Command modules import heavy
dependencies (torch, transformers) inside ``func``, so that every command starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from engine.errors import SpeechCTError, one_line

#: Set to see the traceback of an unexpected error instead of its one line.
ENV_DEBUG = "SPEECHCT_DEBUG"

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


def run_parser(parser: argparse.ArgumentParser, argv: list[str] | None = None, *, interrupted: str = "interrupted",
               catch_all: bool = False) -> int:
    """Parse, run ``func``, and turn engine errors into one line + exit 2 (shared with ``speechct-train``).

    ``catch_all``: OS errors (a full disk, an I/O error) and unexpected exceptions too become one line
    and exit 2 (``$SPEECHCT_DEBUG`` set: the traceback); ``speechct`` sets it, training keeps its tracebacks."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SpeechCTError as exc:
        # One printable line whatever the message holds (library texts carry newlines, file names
        # undecodable bytes, headers escape sequences).
        print(f"{parser.prog}: error: " + one_line(exc, 0), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: {interrupted}", file=sys.stderr)
        return 130
    except OSError as exc:
        if not catch_all:
            raise
        # a full disk, a vanished file, an I/O error no reader turned into its own line
        where = f"{one_line(os.fsdecode(exc.filename), 0)}: " if exc.filename else ""
        print(f"{parser.prog}: error: {where}{one_line(exc.strerror or exc, 0)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the CLI promises one line, never a traceback
        if not catch_all or os.environ.get(ENV_DEBUG):
            raise
        print(f"{parser.prog}: error: unexpected {type(exc).__name__}: {one_line(exc, 0)} "
              f"(a bug: set {ENV_DEBUG}=1 for the traceback)", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return run_parser(build_parser(), argv, catch_all=True)


if __name__ == "__main__":
    sys.exit(main())
