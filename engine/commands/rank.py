"""``speechct rank --ct PATH [--audio WAV] [--json] [--series UID] [--similar K --library DIR] [--sr OUT.dcm]``.

The main job: the 18 findings of one CT study ranked by P(present) (the bundle's zero-shot prompts,
CT-CLIP's pair softmax) against the bundle's thresholds; with ``--audio`` also what the dictation
says about each finding (the bundle's dictation head) and where image and dictation disagree;
with ``--similar K`` the K most similar library studies (the query study never among them).
Timings per stage are printed (model loading is reported apart from the encodings).

``--json`` prints one object, :meth:`engine.runtime.Analysis.to_json` plus the inputs::

    {
      "schema": 1,
      "inputs": {"ct": str, "series": str | null, "audio": str | null},
      "bundle": {"name": str | null, "hash": str, "path": str},
      "device": str,                                   # "cpu" | "cuda:0" ...
      "study": {"uid": str, "path": str | null, "study_uid": str | null, "series_uid": str | null,
                "format": str | null, "shape": [int, int, int], "spacing": [float, float, float],
                "warnings": [str]},                    # shape (z, y, x) voxels, spacing (z, y, x) mm
      "findings": [{"label": str, "probability": float, "threshold": float, "positive": bool,
                    "auroc": float | null}],           # most probable first; positive = probability > threshold;
                                                       # auroc: the bundle's validation AUROC of the finding
      "dictation": null | [{"label": str, "status": "present" | "uncertain" | "absent" | "not mentioned",
                            "confidence": float, "probabilities": {state: float}}],  # label order; states of
                                                       # the bundle's head (bundles before "uncertain" have 3)
      "discrepancies": null | [{"label": str, "kind": "negated" | "omitted" | "unsupported",
                                "probability": float, "threshold": float, "margin": float,
                                "dictation_status": str, "dictation_confidence": float}],  # most serious first
      "unchecked": [str],  # findings the image model is weak on (validation AUROC below the bar): marked
                           # "weak" in the text output and never checked against the dictation
      "similar": null | [{"uid": str, "score": float, "cosines": {str: float}, "study": {...}}],
      "timings_ms": {"load_study": float, "load_models": float, "encode_ct": float, "encode_speech": float | null,
                     "rank": float, "dictation": float | null, "similar": float | null, "total": float},
      "cached": {"ct": bool}
    }

``--ct pacs://SERVER/STUDY_UID[/SERIES_UID]`` fetches the study into the PACS cache first
(:mod:`engine.pacs.retrieve`). ``--sr OUT.dcm`` also writes the findings as a DICOM SR
(:mod:`engine.report_sr`; ``--sr-dictation`` adds the dictation check).

``dictation``/``discrepancies`` are null without ``--audio`` (and when the bundle has no
dictation head); audio without speech (``engine.speech_presence``) is an error, "no speech heard in
WAV" (exit 2), never read as a dictation; ``similar`` is null without ``--similar``. Discrepancy kinds: ``negated`` (image
positive, dictation says absent), ``omitted`` (image positive, not mentioned), ``unsupported``
(dictated present, image below threshold).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.commands.engine_options import (
    add_engine_arguments,
    fmt_ms,
    make_engine,
    one_line_warnings,
    print_json,
    say,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "rank",
        help="rank the 18 findings of a CT study; with --audio check the dictation against the image",
        description="Rank the findings of a CT study; with a dictation, say what it reports and where it "
        "disagrees with the image.",
    )
    parser.add_argument("--ct", required=True, metavar="PATH", help="DICOM folder/file or NIfTI file")
    parser.add_argument("--series", metavar="UID", help="which series (see `speechct info PATH`)")
    parser.add_argument("--audio", metavar="WAV", help="the spoken dictation of this study (any audio file)")
    parser.add_argument("--similar", type=int, default=0, metavar="K",
                        help="also list the K most similar studies of the library")
    parser.add_argument("--json", action="store_true", help="print one JSON object (schema in the module docstring)")
    parser.add_argument("--sr", metavar="OUT.dcm", help="also write the findings as a DICOM SR (TID 1500, "
                        "unverified AI output; a DICOM study only; send it with `speechct pacs send`)")
    parser.add_argument("--sr-dictation", action="store_true",
                        help="with --sr and --audio: put the dictation check in the SR too")
    add_engine_arguments(parser, library=True)
    parser.set_defaults(func=run)
    return parser


def _bar(p: float, width: int = 20) -> str:
    n = int(round(p * width))
    return "#" * n + "." * (width - n)


def format_text(result: dict) -> str:
    study, bundle = result["study"], result["bundle"]
    shape = "x".join(str(s) for s in study["shape"])
    spacing = " x ".join(f"{s:g}" for s in study["spacing"])
    lines = [
        f"study    {study['path'] or result['inputs']['ct']}  ({study['format'] or '?'}, {shape} voxels, {spacing} mm)",
        f"bundle   {bundle['name'] or '-'} ({bundle['hash'][:12]}) on {result['device']}",
    ]
    lines += [f"warning  {w}" for w in study["warnings"]]
    weak = set(result.get("unchecked") or ())
    lines += ["", "Findings (P(present) vs threshold; * = positive"
              + ("; weak = the image model's validation AUROC is too low to trust it)" if weak else ")")]
    width = max(len(f["label"]) for f in result["findings"])
    for f in result["findings"]:
        mark = "*" if f["positive"] else " "
        auroc = "" if f.get("auroc") is None else f"  AUROC {f['auroc']:.2f}"
        lines.append(f"  {mark} {f['label']:<{width}}  {f['probability']:.3f}  {_bar(f['probability'])}  "
                     f"thr {f['threshold']:.2f}{auroc}{'  weak' if f['label'] in weak else ''}")
    if result["dictation"] is not None:
        lines += ["", f"Dictation ({result['inputs']['audio']})"]
        for status in ("present", "absent"):
            said = [d["label"] for d in result["dictation"] if d["status"] == status]
            lines.append(f"  {'reported ' + status + ':':<19} {', '.join(said) if said else '-'}")
        lines += ["", "Discrepancies"]
        if not result["discrepancies"]:
            lines.append("  none: the dictation agrees with the image on every finding")
        for d in result["discrepancies"]:
            lines.append(f"  {d['kind']:<11} {d['label']:<{width}}  image P={d['probability']:.2f} "
                         f"(thr {d['threshold']:.2f}), dictation: {d['dictation_status']} "
                         f"({d['dictation_confidence']:.2f})")
        if weak:
            lines.append(f"  not checked (weak findings): {', '.join(result['unchecked'])}")
    elif result["inputs"]["audio"] is not None:
        lines += ["", "Dictation: the bundle has no dictation head"]
    if result["similar"] is not None:
        lines += ["", "Similar studies"]
        if not result["similar"]:
            lines.append("  none (the library is empty)")
        for hit in result["similar"]:
            s = hit["study"]
            lines.append(f"  {hit['score']:+.3f}  {s.get('path') or hit['uid']}  {s.get('description') or ''}".rstrip())
    t = result["timings_ms"]
    lines += ["", "Timings  " + ", ".join(
        f"{name} {fmt_ms(t[key])}" for name, key in (
            ("reading study", "load_study"), ("loading models", "load_models"), ("CT encoding", "encode_ct"), ("speech encoding", "encode_speech"),
            ("ranking", "rank"), ("dictation", "dictation"), ("search", "similar"), ("total", "total"))
        if t.get(key) is not None) + (" (CT embedding from cache)" if result["cached"]["ct"] else "")]
    return "\n".join(lines)


@one_line_warnings
def run(args: argparse.Namespace) -> int:
    from engine.audio import load_audio
    from engine.errors import SpeechCTError

    if args.similar < 0:
        raise SpeechCTError(f"--similar must be >= 0, got {args.similar}")
    if args.sr_dictation and not (args.sr and args.audio):
        raise SpeechCTError("--sr-dictation goes with --sr and --audio")
    waveform = None
    if args.audio:  # fail on a bad file, or one without speech, before loading models
        from engine.speech_presence import require_speech

        waveform = load_audio(args.audio)
        require_speech(waveform, 16_000, args.audio)
    ct, series = Path(args.ct), args.series
    from engine.pacs.retrieve import is_pacs_uri

    if is_pacs_uri(args.ct):  # pacs://SERVER/STUDY_UID[/SERIES_UID]: into the cache, then read from there
        from engine.commands.pacs import progress_printer
        from engine.pacs.retrieve import fetch_uri

        ct, uri_series, _ = fetch_uri(args.ct, progress=progress_printer(not args.json and sys.stderr.isatty()))
        series = series or uri_series
    engine = make_engine(args)
    analysis = engine.analyze(ct, waveform, 16_000 if waveform is not None else None,
                              series=series, similar_k=args.similar, audio_path=args.audio)
    out = analysis.to_json()
    result = {"schema": out.pop("schema"),
              "inputs": {"ct": str(args.ct), "series": args.series, "audio": args.audio}, **out}
    if args.sr:
        from engine.report_sr import sr_for_result, write_sr

        write_sr(sr_for_result(result, dictation=args.sr_dictation), args.sr)
    if args.json:
        print_json(result)
    else:
        say(format_text(result))
        if args.sr:
            say(f"\nSR       {args.sr} (unverified AI findings; `speechct pacs send {args.sr}` stores it)")
    return 0
