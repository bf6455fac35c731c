"""``speechct search (--ct PATH | --audio WAV | --text "...") [-k 10] [--json] [--library DIR]``.

Finds the library studies most similar to a query: a CT study (image to image; the query study
itself and every series of its study are never returned), a spoken free-form query
("right lower lobe consolidation", matched to the library's CT embeddings) or typed text (needs
the bundle's text tower). Several query options together give one combined score
(``engine.library``: z-scores over the library, equal weights).

``--json`` prints::

    {
      "query": {"ct": str | null, "series": str | null, "audio": str | null, "text": str | null},
      "bundle": {"name": str | null, "hash": str, "path": str},
      "device": str,
      "library": str,                       # the library folder
      "k": int,
      "hits": [{"uid": str,                 # library uid (series UID, or sha256 of the voxels)
                "score": float,             # cosine (one query), else combined z-score
                "cosines": {"<query kind>→<library kind>": float},
                "study": {...}}],           # as in `speechct index list --json`
      "timings_ms": {"encode": float,       # all query encodings (model loading included)
                     "search": float}
    }
"""

from __future__ import annotations

import argparse
import time

from engine.commands.engine_options import (
    add_engine_arguments,
    make_engine,
    one_line_warnings,
    print_json,
    say,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "search", help="find similar studies in the library by CT, spoken query or typed text",
        description="Find the library studies most similar to a CT study, a spoken query or typed text.")
    parser.add_argument("--ct", metavar="PATH", help="a CT study (DICOM folder/file or NIfTI file)")
    parser.add_argument("--series", metavar="UID", help="with --ct: which series")
    parser.add_argument("--audio", metavar="WAV", help="a spoken query (any audio file)")
    parser.add_argument("--text", metavar="TEXT", help="a typed query (needs a bundle with a text tower)")
    parser.add_argument("-k", type=int, default=10, help="how many studies (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (schema in the module docstring)")
    add_engine_arguments(parser, library=True)
    parser.set_defaults(func=run)
    return parser


@one_line_warnings
def run(args: argparse.Namespace) -> int:
    from engine.errors import SpeechCTError

    if not (args.ct or args.audio or args.text):
        raise SpeechCTError("search needs a query: --ct PATH, --audio WAV and/or --text \"...\"")
    if args.text is not None and not args.text.strip():
        raise SpeechCTError("--text is empty")
    if args.k < 1:
        raise SpeechCTError(f"-k must be >= 1, got {args.k}")
    waveform = None
    if args.audio:
        from engine.audio import load_audio
        from engine.speech_presence import require_speech

        waveform = load_audio(args.audio)
        require_speech(waveform, 16_000, args.audio)  # silence or noise is not a query
    engine = make_engine(args)
    t = time.perf_counter()
    ct = speech = None
    exclude: set[str] = set()
    if args.ct:
        from engine.library import query_uids

        volume = engine.load_study(args.ct, args.series)
        ct = engine.encode_ct(volume)
        exclude = query_uids(volume, args.series)
    if waveform is not None:
        speech = engine.encode_speech_frames(waveform, 16_000, keep_frames=False, source=args.audio)[0]
    text = engine.encode_text(args.text) if args.text else None
    encode_ms = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    hits = engine.similar(ct=ct, speech=speech, text=text, k=args.k, exclude_uids=exclude)
    search_ms = (time.perf_counter() - t) * 1000
    result = {
        "query": {"ct": args.ct, "series": args.series, "audio": args.audio, "text": args.text},
        "bundle": engine.describe(), "device": str(engine.device), "library": str(engine.library.folder),
        "k": args.k, "hits": hits, "timings_ms": {"encode": round(encode_ms, 2), "search": round(search_ms, 2)},
    }
    if args.json:
        print_json(result)
        return 0
    asked = ", ".join(f"{k} {v!r}" for k, v in result["query"].items() if v)
    say(f"query    {asked}")
    say(f"library  {result['library']} ({len(engine.library)} studies)")
    if not hits:
        say("no similar studies (the library is empty, or holds only the query study)")
    for rank, hit in enumerate(hits, 1):
        s = hit["study"]
        say(f"{rank:>3}. {hit['score']:+.3f}  {s.get('path') or hit['uid']}"
              f"{'  ' + s['description'] if s.get('description') else ''}")
    say(f"timings  encode {encode_ms:.0f} ms, search {search_ms:.1f} ms")
    return 0
