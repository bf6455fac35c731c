"""``speechct-train teacher``: the CT–text CLIP teacher (symmetric InfoNCE on Findings_EN).

Single process or ``torchrun --nproc_per_node N -m train.cli teacher ...`` (NCCL on CUDA, gloo on
CPU). Writes ``<out>/teacher/`` (``last.pt``, ``metrics.jsonl``, ``model.safetensors``, ``model.json``).
"""

from __future__ import annotations

import argparse
import time

from train.commands._common import add_common, check_fresh, record_timing, stage_config


def add_parser(sub) -> None:
    p = sub.add_parser("teacher", help="train the CT-text teacher", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from train.distributed import init_distributed, shutdown
    from train.recipes import TeacherRecipe, load_run_config, stage_dir
    from train.trainer import OptimConfig, Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg = stage_config(load_run_config(args.config), "teacher", args)
    folder = stage_dir(args.out, "teacher")
    check_fresh(folder, args.resume)
    env = init_distributed(args.device)
    try:
        recipe = TeacherRecipe(cfg, args.data, env=env, progress=not args.quiet)
        trainer = Trainer(recipe, OptimConfig.from_dict(cfg["teacher"]), folder, env, seed=int(cfg.get("seed", 0)),
                          resume=args.resume, progress=not args.quiet, stage="teacher")
        summary = trainer.fit()
        if env.is_main:
            recipe.save_final(folder, summary)
            record_timing(args.out, "teacher", time.perf_counter() - t0,
                          {"prep_s": round(recipe.prep_seconds, 1), "train_s": summary["seconds"],
                           "steps": summary["steps"], "valid": summary["valid"]})
            print(f"teacher: {summary['steps']} steps, valid {summary['valid']}, {folder}")
    finally:
        shutdown()
    return 0
