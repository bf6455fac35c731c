"""Reproduce the default model bundle: synthesis, teacher, transcript reader, audio cache, both students,
evaluation, export.

``make bundle`` runs this. Every stage is its own ``speechct-train`` process and is resumable: a
stage whose output exists is skipped, an interrupted teacher or student continues from its
``last.pt``, synthesis and the caches skip finished items. So the pipeline can be run in pieces
(``--stop-after teacher`` today, the rest tomorrow) and killed at any point without losing more
than the last checkpoint interval. The two students train side by side, the threads split between them
(``--one-student-at-a-time`` to not).

Wall time of every attempt goes to ``DATA/pipeline_timings.jsonl`` (also for interrupted ones), and
the per-stage table (summed over attempts) is printed and written to ``DATA/pipeline_timings.md``;
the README's table is that file.

    python scripts/make_bundle.py --data /big/disk/speechct-default            # everything left to do
    python scripts/make_bundle.py --data D --stop-after teacher                 # one session's worth
    python scripts/make_bundle.py --data D --install                            # and copy the bundle to assets/
    python scripts/make_bundle.py --data D --store-stage teacher               # keep the teacher in the repo

A stage kept in the repository (``assets/training-stages/``, :mod:`stage_store`) is restored instead of
run when the data remade here and the config match the ones it was trained on: the pipeline is longer
than one working session, and each session starts from a fresh checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "assets" / "models" / "default"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import stage_store  # noqa: E402  (scripts/stage_store.py)


@dataclass
class Stage:
    name: str
    args: Callable[[], list[str]]  # built lazily: --resume depends on what is on disk when it starts
    done: Callable[[], bool]
    what: str


def stages(a: argparse.Namespace) -> list[Stage]:
    data, run, bundle = a.data, a.data / "run", a.data / "bundle"
    common = ["--config", a.config, "--data", str(data), "--out", str(run), "--threads", str(a.threads), "--quiet"]

    def resume(folder: Path) -> list[str]:
        return ["--resume"] if (folder / "last.pt").exists() else []

    return [
        Stage("synth", lambda: ["synth", "--out", str(data), "--n-train", str(a.n_train), "--n-valid",
                                str(a.n_valid), "--n-test", str(a.n_test), "--seed", str(a.seed), "--size", a.size,
                                "--workers", str(a.threads), "--prompts", "--quiet"],
              lambda: (data / "synth_summary.json").exists(),
              "CT-RATE-layout phantoms + Speech-RATE dictations + spoken prompts; the test root"),
        Stage("teacher", lambda: ["teacher", *common, *resume(run / "teacher")],
              lambda: (run / "teacher" / "model.safetensors").exists(),
              "CT-text CLIP teacher (prepared-volume and text-feature caches first)"),
        Stage("text-reader", lambda: ["text-reader", "--config", a.config, "--data", str(data), "--out", str(run),
                                      "--threads", str(a.threads), "--quiet"],
              lambda: (run / "text_reader" / "head.safetensors").exists(),
              "the cascade's learned transcript reader (text only: train dictations + extra training-wording reports)"),
        Stage("audio-cache", lambda: ["student", *common, "--prepare-audio-only"],
              lambda: (data / "cache" / "pipeline-audio-cache.done").exists()
              or all((run / d / "head.safetensors").exists() for d in ("dictation", "dictation-naive")),
              "frozen lower Whisper layers for every dictation"),
        Stage("student", lambda: ["student", *common, *resume(run / "student")],
              lambda: (run / "dictation" / "head.safetensors").exists(),
              "distilled speech student (lambda = 1) + dictation head"),
        Stage("student-naive", lambda: ["student", *common, "--distill-weight", "0",
                                        *resume(run / "student-naive")],
              lambda: (run / "dictation-naive" / "head.safetensors").exists(),
              "naive speech student (lambda = 0) + its dictation head"),
        Stage("evaluate", lambda: ["evaluate", "--bundle", str(run), "--data", str(data), "--train-voice-copy",
                                   "--cascade-n", str(a.cascade_n), "--out", str(run / "evaluation"),
                                   "--threads", str(a.threads), "--quiet"],
              lambda: (run / "evaluation" / "evaluation.json").exists(),
              "zero-shot / retrieval / dictation, both voice groups, ASR cascade, paired bootstrap"),
        Stage("evaluate-test", lambda: ["evaluate", "--bundle", str(run), "--data", str(data), "--split", "test",
                                        "--train-voice-copy", "--cascade-n", str(a.cascade_n),
                                        "--out", str(run / "evaluation-test"), "--threads", str(a.threads), "--quiet"],
              lambda: (run / "evaluation-test" / "evaluation.json").exists(),
              "the goals: the test root (held-out wording and patients), both voice groups"),
        # float16 storage: with the tuned text layer the weights are ~61 MiB in float32, over the 60 MiB cap
        Stage("export", lambda: ["export", "--data", str(data), "--out", str(run), "--bundle", str(bundle),
                                 "--float16"],
              lambda: (bundle / "bundle.json").exists(),
              "bundle.json + safetensors with thresholds, prompts, evaluation, provenance"),
    ]


def run_stages(a: argparse.Namespace, batch: list[Stage]) -> int:
    """Run ``batch`` (one stage, or the two students side by side: on two cores, one thread each finishes
    both sooner than one after the other at two threads, docs/performance.md), log every attempt, and
    return the first non-zero exit status."""
    procs = []
    for s in batch:
        args = s.args()
        log = a.data / "logs" / f"{s.name}.log"
        print(f"[{s.name}] {s.what} -> {log}", flush=True)
        fh = open(log, "a")  # noqa: SIM115 - closed below, after the process ends
        fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} speechct-train {' '.join(args)}\n")
        fh.flush()
        procs.append((s, log, fh, time.time(), subprocess.Popen([sys.executable, "-m", "train.cli", *args], stdout=fh,
                                                                stderr=subprocess.STDOUT, cwd=ROOT)))
    failed = 0
    for s, log, fh, t0, proc in procs:
        rc = proc.wait()
        fh.close()
        secs = time.time() - t0
        row = {"stage": s.name, "seconds": round(secs, 1), "rc": rc, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        if len(batch) > 1:
            row["note"] = f"side by side with {', '.join(t.name for t in batch if t is not s)}"
        log_attempt(a.data, row)
        if rc == 0 and s.name == "audio-cache":
            (a.data / "cache" / "pipeline-audio-cache.done").touch()
        if rc != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            print(f"make_bundle: stage {s.name} failed (exit {rc}): {tail[0]} (log: {log})", file=sys.stderr)
            failed = failed or rc
        else:
            print(f"[{s.name}] finished in {secs / 60:.1f} min", flush=True)
    return failed


def log_attempt(data: Path, row: dict) -> None:
    with open(data / "pipeline_timings.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")


def _elapsed(rows: dict[str, list[dict]], summed: float) -> float:
    """Wall time with attempts that ran at the same time (the two students) counted once: the union of the
    attempts' [finished - seconds, finished] intervals; the plain sum when a row lacks its finish time."""
    spans = []
    for r in (r for attempts in rows.values() for r in attempts):
        try:
            end = time.mktime(time.strptime(r["finished"], "%Y-%m-%d %H:%M:%S"))
        except (KeyError, ValueError):
            return summed
        spans.append((end - r["seconds"], end))
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def timing_table(data: Path, all_stages: list[Stage]) -> str:
    rows: dict[str, list[dict]] = {}
    path = data / "pipeline_timings.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            rows.setdefault(r["stage"], []).append(r)
    lines = ["| stage | what | wall time | attempts | finished |", "|---|---|---:|---:|---|"]
    total = 0.0
    for s in all_stages:
        attempts = rows.get(s.name, [])
        secs = sum(r["seconds"] for r in attempts)
        total += secs
        ok = any(r["rc"] == 0 for r in attempts)
        lines.append(f"| {s.name} | {s.what} | {secs / 60:.1f} min | {len(attempts)} | "
                     f"{'yes' if ok else ('no' if attempts else '-')} |")
    lines.append(f"| **total** | | **{_elapsed(rows, total) / 3600:.2f} h** | | |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="data + run folder (tens of GB at the default size)")
    p.add_argument("--config", default="cpu-default", help="training config name or JSON path")
    p.add_argument("--n-train", type=int, default=900, help="training patients (~1.4 volumes each)")
    p.add_argument("--n-valid", type=int, default=225, help="validation patients")
    p.add_argument("--n-test", type=int, default=225, help="test patients (a third root, test wording)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="default", choices=["default", "small"])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--cascade-n", type=int, default=100, help="reports per voice group for the ASR cascade")
    p.add_argument("--stop-after", help="stop after this stage (e.g. teacher)")
    p.add_argument("--store-stage", choices=sorted(stage_store.KEPT), action="append",
                   help="keep this finished stage in the repository (assets/training-stages/) and exit (repeatable)")
    p.add_argument("--install", action="store_true", help=f"copy the finished bundle to {DEFAULT_BUNDLE}")
    p.add_argument("--one-student-at-a-time", dest="parallel_students", action="store_false",
                   help="train the naive student after the distilled one (default: side by side, threads split)")
    return p.parse_args(argv)


def load_config(name: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from train.recipes import load_run_config

    return load_run_config(name)


def restore_stage(a: argparse.Namespace, name: str, quiet: bool = False) -> None:
    """Restore a stage kept in the repository when it fits this data, config (and teacher); say why not
    (unless ``quiet``)."""
    restored, why = stage_store.restore(name, a.data, a.data / "run", load_config(a.config))
    if restored or not quiet:
        print(f"[{name}] {why}", flush=True)
    if restored:
        for row in stage_store.stored_timings(name):
            log_attempt(a.data, {**row, "note": f"{row.get('note', '')} restored from the repository".strip()})


def store_stage(a: argparse.Namespace) -> int:
    """``--store-stage NAME``: keep a finished stage (and its timing rows) in the repository."""
    path = a.data / "pipeline_timings.jsonl"
    rows = list(map(json.loads, path.read_text().splitlines())) if path.exists() else []
    for stage in a.store_stage:
        try:
            target = stage_store.store(stage, a.data, a.data / "run", load_config(a.config),
                                       [r for r in rows if r["stage"] == stage])
        except (ValueError, FileNotFoundError) as exc:
            print(f"make_bundle: {exc}", file=sys.stderr)
            return 2
        size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 2**20
        print(f"stored {stage} in {target} ({size:.1f} MiB): commit it")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.data = a.data.resolve()
    a.data.mkdir(parents=True, exist_ok=True)
    (a.data / "logs").mkdir(exist_ok=True)
    all_stages = stages(a)
    names = [s.name for s in all_stages]
    if a.stop_after and a.stop_after not in names:
        print(f"make_bundle: unknown stage {a.stop_after!r} (stages: {', '.join(names)})", file=sys.stderr)
        return 2
    side_by_side = {"student", "student-naive"} if a.parallel_students and a.stop_after != "student" else set()
    halves = {s.name: s for s in stages(argparse.Namespace(**{**vars(a), "threads": max(1, a.threads // 2)}))}
    if a.store_stage:
        return store_stage(a)
    for i, s in enumerate(all_stages):
        # a kept stage is restored as soon as what it needs is there (a student needs its teacher), so a
        # stage only the kept ones need (the audio cache) is skipped
        for t in all_stages[i:]:
            if not t.done() and t.name in stage_store.KEPT:
                restore_stage(a, t.name, quiet=t is not s)
        if s.done():
            print(f"[{s.name}] done already")
        else:
            batch = [s]
            if s.name in side_by_side:
                batch = [halves[t.name] for t in all_stages if t.name in side_by_side and not t.done()]
                batch = batch if len(batch) > 1 else [s]
            rc = run_stages(a, batch)
            if rc != 0:
                return rc
        if s.name == a.stop_after:
            break
    table = timing_table(a.data, all_stages)
    (a.data / "pipeline_timings.md").write_text(table)
    print(table)
    if a.install and all(s.done() for s in all_stages):
        tmp = DEFAULT_BUNDLE.with_name(DEFAULT_BUNDLE.name + ".new")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(a.data / "bundle", tmp)
        old = DEFAULT_BUNDLE.with_name(DEFAULT_BUNDLE.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if DEFAULT_BUNDLE.exists():
            DEFAULT_BUNDLE.rename(old)
        tmp.rename(DEFAULT_BUNDLE)
        shutil.rmtree(old, ignore_errors=True)
        print(f"installed {a.data / 'bundle'} -> {DEFAULT_BUNDLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
