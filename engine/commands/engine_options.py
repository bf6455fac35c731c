"""Options every engine-backed command shares (``--bundle``, ``--device``, ``--threads``, ``--no-cache``)
and the one way those commands build an :class:`engine.runtime.Engine` from them.

Heavy imports (torch, the runtime) happen inside :func:`make_engine`, never at import time, so that
``speechct --help`` and ``speechct info`` start fast.
"""

from __future__ import annotations

import argparse
import logging
import sys


def add_engine_arguments(parser: argparse.ArgumentParser, *, library: bool = False) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--bundle", metavar="DIR",
                       help="model bundle folder (default: $SPEECHCT_BUNDLE, else assets/models/default)")
    group.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    group.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    group.add_argument("--no-cache", action="store_true", help="do not read or write the on-disk embedding cache")
    group.add_argument("-v", "--verbose", action="store_true", help="log the device and model loading to stderr")
    if library:
        parser.add_argument("--library", metavar="DIR",
                            help="study library folder (default: the user data folder's speechct/library)")


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


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else (f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms")


def one_line_warnings(func):
    """Run ``func(args)`` printing each SpeechCTWarning as one ``speechct: warning: ...`` line on stderr."""
    import functools
    import warnings

    @functools.wraps(func)
    def wrapper(args):
        from engine.errors import SpeechCTWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SpeechCTWarning)
            try:
                return func(args)
            finally:
                seen = set()
                for w in caught:
                    text = " ".join(str(w.message).split())
                    if issubclass(w.category, SpeechCTWarning) and text not in seen:
                        seen.add(text)
                        print(f"speechct: warning: {text}", file=sys.stderr)
                    elif not issubclass(w.category, SpeechCTWarning):
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

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
    return Library(args.library, bundle_hash=bundle.hash, dim=int(bundle.manifest["space"]["dim"]))
