"""Options every engine-backed command shares (``--bundle``, ``--device``, ``--threads``, ``--no-cache``)
and the one way those commands build an :class:`engine.runtime.Engine` from them.

Heavy imports (torch, the runtime) happen inside :func:`make_engine`, never at import time, so that
``speechct --help`` and ``speechct info`` start fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def add_engine_arguments(parser: argparse.ArgumentParser, *, library: bool = False) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--bundle", metavar="DIR",
                       help="model bundle folder (default: $SPEECHCT_BUNDLE, else assets/models/default)")
    group.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    group.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    group.add_argument("--no-cache", action="store_true", help="do not read or write the on-disk embedding cache")
    group.add_argument("-v", "--verbose", action="store_true", help="log the device and model loading to stderr")
    if library:
        parser.add_argument("--library", metavar="DIR|URL",
                            help="study library: a folder (default: the user data folder's speechct/library) or "
                                 "postgresql://USER@HOST:PORT/DB (password from PGPASSWORD or a PGPASSFILE)")


def make_engine(args: argparse.Namespace):
    """An Engine configured from the parsed shared options."""
    if getattr(args, "verbose", False):
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="speechct: %(message)s")
    from engine.runtime import Engine

    return Engine(
        args.bundle,
        device=args.device,
        library=getattr(args, "library", None),
        threads=args.threads,
        cache_dir=False if args.no_cache else None,
    )


def say(text: str = "") -> None:
    """Print one text-output block with every control character escaped (:func:`engine.errors.printable`):
    study descriptions, bundle names and file names come from files, and must not drive the terminal."""
    from engine.errors import printable

    print(printable(text))


def print_json(obj) -> None:
    """One JSON object on stdout; non-ASCII kept readable unless the stream cannot encode it (a file
    name with undecodable bytes), then escaped."""
    import json

    text = json.dumps(obj, indent=2, ensure_ascii=False)
    try:
        sys.stdout.write(text + "\n")
    except UnicodeEncodeError:
        sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=True) + "\n")


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else (f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms")


def warning_lines(caught) -> list[str]:
    """One line per distinct recorded warning: a SpeechCTWarning's own text; any other (numpy, nibabel,
    torch, ...) prefixed with its category and where it was raised, so the user can tell whose it is."""
    from engine.errors import SpeechCTWarning, one_line

    lines: list[str] = []
    for w in caught:
        text = one_line(w.message, 0)
        if not issubclass(w.category, SpeechCTWarning):
            text = f"{w.category.__name__} from {_warning_source(w.filename, w.lineno)}: {text}"
        if text not in lines:
            lines.append(text)
    return lines


def _warning_source(filename: str, lineno: int) -> str:
    """``numpy`` for a file of an installed package, ``engine/io/x.py:12`` for one of ours."""
    path = Path(str(filename))
    parts = path.parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return Path(parts[parts.index(marker) + 1]).stem
    root = Path(__file__).resolve().parents[2]
    try:
        return f"{path.resolve().relative_to(root)}:{lineno}"
    except (ValueError, OSError):
        return f"{path.name}:{lineno}"


def one_line_warnings(func):
    """Run ``func(args)``, then print every warning it raised once, as one ``speechct: warning: ...``
    line each on stderr (:func:`warning_lines`).

    The lines are printed after the catch has ended: a warning re-emitted while warnings are still
    being recorded is recorded again, which looped forever (a zero ImageOrientationPatient's numpy
    RuntimeWarning kept ``speechct rank`` busy, its memory growing, until it was killed).
    """
    import functools
    import warnings

    @functools.wraps(func)
    def wrapper(args):
        from engine.errors import SpeechCTWarning

        caught: list = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SpeechCTWarning)
                return func(args)
        finally:
            for line in warning_lines(caught):
                print(f"speechct: warning: {line}", file=sys.stderr)

    return wrapper


def open_library(args: argparse.Namespace, engine=None):
    """The library of ``--library`` for the engine's bundle (or, without an engine, for the bundle's
    manifest only: listing and removing need no model)."""
    if engine is not None:
        return engine.library
    from engine.library import Library
    from engine.runtime import default_bundle_path
    from engine.weights.bundle import load_bundle

    bundle = load_bundle(args.bundle or default_bundle_path(), check_hashes=False, check_backbone=False)
    return Library(args.library, bundle_hash=bundle.hash, dim=bundle.manifest.space_dim)
