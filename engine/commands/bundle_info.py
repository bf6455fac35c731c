"""``speechct bundle-info PATH [--json] [--no-hashes] [--no-backbone]``: what a model bundle holds.

Validates the bundle like the app does (schema, file sizes and sha256, speech backbone), then
prints its configs, the size and parameter count of every tensor file, provenance and the
evaluation summary, and which AUROC per finding the engine's reliability gate reads
(``thresholds.auroc``: the lower bootstrap CI bound, or the point estimate in older bundles;
``engine.weights.manifest.AUROC_STATISTICS``). Exit code 2 with a one-line message when the bundle is unusable.

``--json`` prints one object::

    {
      "path": str,                       # the bundle folder
      "name": str | null,
      "schema": int,
      "hash": str,                       # Bundle.hash (sha256 hex of the canonical manifest)
      "labels": [str],
      "files": {"<group>.safetensors": {"bytes": int, "sha256": str, "tensors": int,
                                        "parameters": int, "dtypes": [str]}},
      "parameters_total": int,
      "bytes_total": int,                # tensor files only
      "configs": {"preprocess": {...}, "ct_encoder": {...}, "speech": {...} | null,
                  "text": {...} | null, "space": {...}},
      "backbone": {"name": str, "status": "ok" | "sha256 differs" | "not checked"} | null,
      "prompts": {"kind": str, "count": int, "group": str} | null,
      "thresholds": {"method": str, "count": int,
                     "auroc": {"statistic": "ci_lower" | "point", "describes": str,
                               "level": float | null, "n_boot": int | null} | null} | null,
      "dictation_head": {...} | null,
      "provenance": {...},
      "evaluation": {...} | null,
      "warnings": [str]
    }
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from engine.commands.engine_options import say
from engine.errors import printable

if TYPE_CHECKING:  # torch is imported only when the command runs: `speechct info` must start fast
    from engine.weights.bundle import Bundle


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bundle-info",
        help="validate a model bundle and show its configs, sizes, provenance and evaluation",
        description="Validate a model bundle and show what it holds.",
    )
    parser.add_argument("path", help="bundle folder (holding bundle.json)")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (schema in the module docstring)"
    )
    parser.add_argument("--no-hashes", action="store_true", help="skip the sha256 check of the tensor files")
    parser.add_argument("--no-backbone", action="store_true", help="do not resolve the speech backbone")
    parser.set_defaults(func=run)
    return parser


def bundle_summary(bundle: Bundle, backbone_checked: bool = True) -> dict[str, Any]:
    """The ``--json`` object for a loaded bundle."""
    m = bundle.manifest
    files = {}
    for name, entry in m.files.items():
        from engine.weights.bundle import tensor_shapes

        shapes = tensor_shapes(bundle.path / name)
        params = 0
        for _, shape in shapes.values():
            n = 1
            for s in shape:
                n *= s
            params += n
        files[name] = {
            "bytes": entry["bytes"],
            "sha256": entry["sha256"],
            "tensors": len(shapes),
            "parameters": params,
            "dtypes": sorted({dtype for dtype, _ in shapes.values()}),
        }
    backbone = None
    if m.speech is not None:
        if not backbone_checked or bundle.speech_backbone is None:
            status = "not checked"
        elif bundle.speech_backbone.sha256 != m.speech.backbone_sha256:
            status = "sha256 differs"
        else:
            status = "ok"
        backbone = {"name": m.speech.backbone, "status": status}
    prompts = m.prompts
    thresholds = m.thresholds
    warnings = list(bundle.warnings)
    gate = None
    if thresholds is not None:
        from engine.weights.manifest import AUROC_STATISTICS

        try:
            statistic = m.auroc_statistic
        except ValueError as exc:
            statistic = None
            warnings.append(f"{exc}; the reliability gate reads thresholds.auroc as it is")
        if statistic is not None:
            ci = thresholds.raw.get("auroc_ci") or {}
            gate = {"statistic": statistic, "describes": AUROC_STATISTICS[statistic],
                    "level": ci.get("level") if statistic == "ci_lower" else None,
                    "n_boot": ci.get("n_boot") if statistic == "ci_lower" else None}
    return {
        "path": str(bundle.path),
        "name": m.name,
        "schema": m.schema,
        "hash": bundle.hash,
        "labels": list(m.labels),
        "files": files,
        "parameters_total": sum(f["parameters"] for f in files.values()),
        "bytes_total": sum(f["bytes"] for f in files.values()),
        "configs": {k: m.raw.get(k) for k in ("preprocess", "ct_encoder", "speech", "text", "space")},
        "backbone": backbone,
        "prompts": None
        if prompts is None
        else {"kind": prompts.kind, "count": len(prompts.texts), "group": prompts.group},
        "thresholds": None
        if thresholds is None
        else {"method": thresholds.method, "count": len(thresholds.values), "auroc": gate},
        "dictation_head": m.raw.get("dictation_head"),
        "provenance": m.provenance,
        "evaluation": m.evaluation,
        "warnings": warnings,
    }


def _human_bytes(size: int) -> str:
    n = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _flat(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable text of :func:`bundle_summary`'s object."""
    lines = [
        f"bundle      {s['path']}",
        f"name        {s['name'] or '-'}",
        f"schema      {s['schema']}",
        f"hash        {s['hash']}",
        f"labels      {len(s['labels'])}: {', '.join(s['labels'])}",
        "",
        "files",
    ]
    for name, f in s["files"].items():
        lines.append(
            f"  {name:<28} {_human_bytes(f['bytes']):>10}  {f['parameters']:>12,} params  "
            f"{f['tensors']:>4} tensors  {'/'.join(f['dtypes']) or '-'}"
        )
    lines.append(f"  {'total':<28} {_human_bytes(s['bytes_total']):>10}  {s['parameters_total']:>12,} params")
    lines += ["", "configs"]
    for key, value in s["configs"].items():
        if value is not None:
            lines.append(f"  {key:<12} {_flat(value)}")
    if s["backbone"] is not None:
        lines.append(f"  {'backbone':<12} {s['backbone']['name']} ({s['backbone']['status']})")
    if s["prompts"] is not None:
        p = s["prompts"]
        lines.append(f"  {'prompts':<12} {p['count']} {p['kind']} prompts in group {p['group']}")
    if s["thresholds"] is not None:
        lines.append(
            f"  {'thresholds':<12} {s['thresholds']['count']} labels, method {s['thresholds']['method']}"
        )
        gate = s["thresholds"].get("auroc")
        if gate is None:
            lines.append(f"  {'gate':<12} no per-finding AUROC: every finding is checked against the dictation")
        elif gate["statistic"] == "ci_lower":
            level = f"{100 * gate['level']:g} % " if gate.get("level") else ""
            draws = f", {gate['n_boot']} draws" if gate.get("n_boot") else ""
            lines.append(f"  {'gate':<12} reads each finding's AUROC as the lower bound of its {level}"
                         f"bootstrap CI{draws} (thresholds.auroc)")
        else:
            lines.append(f"  {'gate':<12} reads each finding's AUROC as the point estimate (thresholds.auroc; "
                         f"a bundle exported before the gate used the lower CI bound)")
    if s["dictation_head"] is not None:
        d = s["dictation_head"]
        lines.append(
            f"  {'dictation':<12} {len(d['labels'])} labels x {len(d['classes'])} classes "
            f"({', '.join(d['classes'])}) in group {d['group']}, reads the "
            f"{'encoder frames' if (d.get('config') or {}).get('kind') == 'frames' else 'speech embedding'}"
        )
    lines += ["", "provenance"]
    lines += [f"  {k:<12} {_flat(v)}" for k, v in s["provenance"].items()] or ["  -"]
    lines += ["", "evaluation"]
    if s["evaluation"]:
        lines += [f"  {k:<12} {_flat(v)}" for k, v in s["evaluation"].items()]
    else:
        lines.append("  -")
    for w in s["warnings"]:
        lines.append(f"warning: {w}")
    # names, provenance and warnings come from the bundle's files: one line each, nothing for the terminal
    return "\n".join(printable(line, newlines=False) for line in lines)


def run(args: argparse.Namespace) -> int:
    from engine.weights.bundle import load_bundle

    bundle = load_bundle(args.path, check_hashes=not args.no_hashes, check_backbone=not args.no_backbone)
    summary = bundle_summary(bundle, backbone_checked=not args.no_backbone)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        say(format_summary(summary))
    return 0
