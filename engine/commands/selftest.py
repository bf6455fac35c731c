"""``speechct selftest [--bundle DIR] [--ct PATH] [--audio WAV] [--json]``: is this installation usable?

Loads the bundle with every sha256 checked, encodes one CT study and one dictation (by default the
bundled sample ``assets/samples/study-001``), checks that each embedding is finite, unit-norm and of
the bundle's dimension, that the 18 findings and the dictation head come out well-formed, and (when
the bundle has a text tower) encodes one typed query. Prints each check with its time and the
device. Exit code 0 when every check passed, 1 otherwise (each failure named on its line).

``--json`` prints::

    {"ok": bool, "device": str, "bundle": {"name": str | null, "hash": str, "path": str},
     "checks": [{"name": str, "ok": bool, "ms": float, "detail": str}]}

Check names: ``bundle`` (load + hashes), ``models`` (building the encoders), ``ct``, ``rank``, ``sr``
(the findings as a DICOM SR built in memory and read back: highdicom and its data files), ``speech``,
``dictation``, ``text`` (these three only when the bundle has them), ``department`` (the PACS and
shared-library libraries import: pynetdicom, dicomweb-client, highdicom, and psycopg with its compiled
libpq plus the pgvector adapter; in an installed app bundle these must be there, in a source install
without the ``postgres`` extra their absence is said, not failed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from engine.commands.engine_options import add_engine_arguments, make_engine, one_line_warnings

SAMPLES = Path(__file__).resolve().parents[2] / "assets" / "samples"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("selftest", help="check the bundle and run one CT and one speech encoding",
                                   description="Check that the model bundle loads and its encoders run.")
    parser.add_argument("--ct", metavar="PATH", help=f"CT study (default {SAMPLES / 'study-001' / 'dicom'})")
    parser.add_argument("--audio", metavar="WAV", help=f"dictation (default {SAMPLES / 'study-001' / 'dictation.wav'})")
    parser.add_argument("--json", action="store_true", help="print one JSON object (module docstring)")
    add_engine_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _unit_ok(vec, dim: int) -> str | None:
    import numpy as np

    if vec.shape != (dim,):
        return f"shape {vec.shape}, expected ({dim},)"
    if not np.isfinite(vec).all():
        return "not finite"
    if abs(float(np.linalg.norm(vec)) - 1.0) > 1e-3:
        return f"norm {float(np.linalg.norm(vec)):.4f}, expected 1"
    return None


def _sr_check(engine, ct_path: Path, volume, found) -> str:
    """The findings as a DICOM SR, in memory (nothing written), read back with pydicom."""
    from dataclasses import asdict
    from io import BytesIO

    import pydicom

    from engine.findings import unchecked
    from engine.report_sr import build_sr, source_headers

    if volume.metadata.get("format") not in ("dicom", "dicom-enhanced"):
        return "skipped: the CT is not DICOM"
    result = {"bundle": engine.describe(), "findings": [asdict(f) for f in found],
              "unchecked": unchecked(found, engine.min_finding_auroc)}
    buffer = BytesIO()
    build_sr(result, source_headers(ct_path, volume.metadata.get("series_uid"))).save_as(buffer,
                                                                                        enforce_file_format=True)
    back = pydicom.dcmread(BytesIO(buffer.getvalue()))
    if back.Modality != "SR" or back.VerificationFlag != "UNVERIFIED":
        raise ValueError(f"the SR reads back as {back.Modality}, {back.get('VerificationFlag')}")
    return f"{len(buffer.getvalue()) / 1024:.0f} KiB, {len(found)} findings, UNVERIFIED"


def _department_check() -> str:
    """The PACS and shared-library libraries import (module docstring)."""
    import importlib

    versions = []
    for name in ("pynetdicom", "dicomweb_client", "highdicom"):
        module = importlib.import_module(name)
        versions.append(f"{name} {getattr(module, '__version__', '?')}")
    try:
        import psycopg
        from pgvector.psycopg import register_vector  # noqa: F401
    except ImportError as exc:
        if getattr(sys, "frozen", False):  # the app bundle must carry them
            raise
        return ", ".join(versions) + f"; no PostgreSQL library support ({exc.name or exc}: "
        "pip install 'speechct[postgres]')"
    if psycopg.pq.__impl__ not in ("binary", "c"):  # the bundle carries psycopg's compiled libpq
        message = f"psycopg has no compiled libpq (implementation {psycopg.pq.__impl__!r})"
        if getattr(sys, "frozen", False):
            raise ImportError(message)
        versions.append(message)
    libpq = psycopg.pq.version()
    versions.append(f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__}, libpq {libpq // 10000}.{libpq % 10000}), "
                    "pgvector adapter")
    return ", ".join(versions)


@one_line_warnings
def run(args: argparse.Namespace) -> int:
    from engine.errors import SpeechCTError

    args.no_cache = True  # a self-test measures the encoders, never a cached embedding
    checks: list[dict] = []
    state: dict = {}

    def check(name: str, fn) -> None:
        t = time.perf_counter()
        try:
            detail = fn() or "ok"
            ok = True
        except (SpeechCTError, ValueError, RuntimeError, OSError, MemoryError, ImportError) as exc:
            ok, detail = False, " ".join(str(exc).split()) or type(exc).__name__
        checks.append({"name": name, "ok": ok, "ms": round((time.perf_counter() - t) * 1000, 1), "detail": detail})

    def bundle():
        state["engine"] = engine = make_engine(args)
        return f"{engine.bundle_name or '-'} {engine.bundle_hash[:12]}, {len(engine.bundle.groups)} tensor files verified"

    check("bundle", bundle)
    engine = state.get("engine")
    if engine is not None:
        def models():
            loaded = engine.warm_up()
            return ", ".join(f"{k} {v:.0f} ms" for k, v in loaded.items() if k != "bundle")

        check("models", models)
        ct_path = Path(args.ct) if args.ct else SAMPLES / "study-001" / "dicom"

        def ct():
            state["volume"] = volume = engine.load_study(ct_path)
            state["ct"] = vec = engine.encode_ct(volume)
            problem = _unit_ok(vec, engine.dim)
            if problem:
                raise ValueError(f"CT embedding {problem}")
            return f"{ct_path}: {volume.shape[0]}x{volume.shape[1]}x{volume.shape[2]} voxels"

        check("ct", ct)
        if "ct" in state:
            def rank():
                state["found"] = found = engine.rank(state["ct"])
                if sorted(f.label for f in found) != sorted(engine.labels):
                    raise ValueError("the ranking does not cover the bundle's labels")
                if not all(0.0 <= f.probability <= 1.0 for f in found):
                    raise ValueError("a probability is outside [0, 1]")
                return f"top: {found[0].label} {found[0].probability:.2f}"

            check("rank", rank)
        if "found" in state:
            check("sr", lambda: _sr_check(engine, ct_path, state["volume"], state["found"]))
        if engine.has_speech:
            wav = Path(args.audio) if args.audio else SAMPLES / "study-001" / "dictation.wav"

            def speech():
                from engine.audio import load_audio

                waveform = load_audio(wav)
                vec, state["speech_frames"] = engine.encode_speech_frames(waveform, 16_000)
                state["speech"] = vec
                problem = _unit_ok(vec, engine.dim)
                if problem:
                    raise ValueError(f"speech embedding {problem}")
                return f"{wav}: {waveform.size / 16000:.1f} s of audio"

            check("speech", speech)
            if engine.has_dictation_head and "speech" in state:
                def dictation():
                    said = engine.dictation(state["speech"], state.get("speech_frames"))
                    if len(said) != len(engine.bundle.manifest.dictation_head.labels):
                        raise ValueError("the dictation head does not cover its labels")
                    present = [d.label for d in said if d.status == "present"]
                    return f"reported present: {', '.join(present) or '-'}"

                check("dictation", dictation)
        if engine.has_text:
            def text():
                vec = engine.encode_text("Pleural effusion is present.")
                problem = _unit_ok(vec, engine.dim)
                if problem:
                    raise ValueError(f"text embedding {problem}")

            check("text", text)
    check("department", _department_check)
    ok = all(c["ok"] for c in checks)
    device = str(engine.device) if engine is not None else "-"
    if args.json:
        json.dump({"ok": ok, "device": device, "bundle": engine.describe() if engine else None, "checks": checks},
                  sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print(f"device   {device}")
        for c in checks:
            print(f"{'ok  ' if c['ok'] else 'FAIL'}  {c['name']:<10} {c['ms']:>9.1f} ms  {c['detail']}")
        print("selftest passed" if ok else "selftest FAILED")
    return 0 if ok else 1
