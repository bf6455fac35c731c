"""``speechct-train student``: the Whisper speech student, then its dictation head.

Loss ``InfoNCE(speech, CT) + λ · (1 − cos(speech, teacher text))`` with the trained teacher
(``<out>/teacher`` or ``--teacher``) frozen; ``--distill-weight 0`` is the naive student. Writes
``<out>/student/`` (λ > 0) or ``<out>/student-naive/`` (λ = 0), then fits the dictation head on
the frozen student into ``<out>/dictation/`` (``dictation-naive/``) unless ``--no-head``.
``--head-only`` refits just the head on an already trained student.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from train.commands._common import add_common, check_fresh, record_timing, stage_config


def add_parser(sub) -> None:
    p = sub.add_parser("student", help="train the speech student and its dictation head", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.add_argument("--distill-weight", type=float, default=None,
                   help="λ of the distillation term (0 = naive student; default: the config's, 1)")
    p.add_argument("--teacher", type=Path, default=None, help="trained teacher folder (default: OUT/teacher)")
    p.add_argument("--no-head", action="store_true", help="skip the dictation head")
    p.add_argument("--head-only", action="store_true", help="only (re)fit the dictation head")
    p.add_argument("--prepare-audio-only", action="store_true",
                   help="only fill the Whisper lower-layer cache (needs no teacher: run it beside the teacher)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from train.distributed import init_distributed, shutdown
    from train.recipes import (
        StudentRecipe,
        load_run_config,
        load_student,
        prepare_student_audio,
        stage_dir,
        train_dictation_head,
    )
    from train.trainer import OptimConfig, Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg = stage_config(load_run_config(args.config), "student", args)
    lam = float(cfg["student"].get("distill_weight", 1.0) if args.distill_weight is None else args.distill_weight)
    folder = stage_dir(args.out, "student", lam)
    head_folder = args.out / ("dictation-naive" if lam == 0 else "dictation")
    if args.prepare_audio_only:
        counts = prepare_student_audio(cfg, args.data, progress=not args.quiet)
        record_timing(args.out, "student_audio_cache", time.perf_counter() - t0, counts)
        print(f"Whisper lower layers cached for {counts}")
        return 0
    if not args.head_only:
        check_fresh(folder, args.resume)
    env = init_distributed(args.device)
    try:
        recipe = StudentRecipe(cfg, args.data, args.teacher or stage_dir(args.out, "teacher"), env=env,
                               distill_weight=lam, progress=not args.quiet)
        if args.head_only:
            load_student(folder, env.device, student=recipe.speech)
        else:
            trainer = Trainer(recipe, OptimConfig.from_dict(cfg["student"]), folder, env,
                              seed=int(cfg.get("seed", 0)) + 1, resume=args.resume, progress=not args.quiet,
                              stage="student")
            summary = trainer.fit()
            if env.is_main:
                recipe.save_final(folder, summary)
                record_timing(args.out, f"student(lambda={lam:g})", time.perf_counter() - t0,
                              {"prep_s": round(recipe.prep_seconds, 1), "train_s": summary["seconds"],
                               "steps": summary["steps"], "valid": summary["valid"]})
                print(f"student (λ={lam:g}): {summary['steps']} steps, valid {summary['valid']}, {folder}")
        if env.is_main and not args.no_head:
            t1 = time.perf_counter()
            head = train_dictation_head(recipe, head_folder, progress=not args.quiet)
            record_timing(args.out, f"dictation_head(lambda={lam:g})", time.perf_counter() - t1,
                          {"valid_macro_f1": head["valid_macro_f1"]})
    finally:
        shutdown()
    return 0
