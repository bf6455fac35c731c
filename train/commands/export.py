"""``speechct-train export``: a run folder (teacher/, student/, dictation/) as a model bundle.

Writes ``--bundle`` (default ``OUT/bundle``): ``bundle.json`` + safetensors per docs/design.md §2,
at most 60 MiB (``--max-mib``; a larger bundle is refused before anything is written; ``--float16`` halves it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a trained run as a model bundle", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="accepted for symmetry; the run's own config is used")
    p.add_argument("--data", default=None, help="data folder named in the provenance")
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder to write (default OUT/bundle)")
    p.add_argument("--student", type=Path, default=None, help="student folder (default OUT/student)")
    p.add_argument("--dictation", type=Path, default=None, help="dictation head folder (default OUT/dictation)")
    p.add_argument("--name", default="default")
    p.add_argument("--max-mib", type=float, default=60.0, help="refuse a bundle over this size (default 60)")
    p.add_argument("--float16", action="store_true", help="store the weights in half precision")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.weights.bundle import load_bundle
    from train.commands._common import record_timing
    from train.export import export_bundle

    t0 = time.perf_counter()
    target = args.bundle or args.out / "bundle"
    path = export_bundle(args.out, target, student_dir=args.student, dictation_dir=args.dictation,
                         name=args.name, data=str(args.data) if args.data else None,
                         max_bytes=int(args.max_mib * 2**20), float16=args.float16)
    bundle = load_bundle(path)
    size = sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())
    record_timing(args.out, "export", time.perf_counter() - t0, {"bundle": str(path), "bytes": size})
    print(f"bundle {path}: {size / 2**20:.1f} MiB, groups {', '.join(bundle.groups)}, hash {bundle.hash[:12]}")
    return 0
