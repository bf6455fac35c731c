"""``speechct-train teacher``: the CT–text CLIP teacher (symmetric InfoNCE on Findings_EN).

Single process or ``torchrun --nproc_per_node N -m train.cli teacher ...`` (NCCL on CUDA, gloo on
CPU). Writes ``<out>/teacher/`` (``last.pt``, ``metrics.jsonl``, ``model.safetensors``, ``model.json``).

``--from-ctclip CHECKPOINT --tokenizer DIR`` trains nothing: it writes ``<out>/teacher/`` from
CT-CLIP's released checkpoint (its CT encoder, its CXR-BERT text tower with ``to_text_latent``, its
temperature) and the CXR-BERT tokenizer in a local folder (``vocab.txt``; never downloaded), for the
paper's frozen teacher (``--config``, default ``paper``, gives the preprocessing and the CTViT's patch
sizes; ``--data`` is not needed). ``speechct-train student`` then uses it like a trained one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from train.commands._common import add_common, check_fresh, record_timing, stage_config


def add_parser(sub) -> None:
    p = sub.add_parser("teacher", help="train the CT-text teacher (or import CT-CLIP's)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, required=False)
    p.add_argument("--from-ctclip", type=Path, default=None, metavar="CHECKPOINT",
                   help="write the teacher from a CT-CLIP checkpoint (.pt/.pth/.safetensors) instead of training")
    p.add_argument("--init-from", type=Path, default=None, metavar="TEACHER_DIR",
                   help="start from a finished teacher's weights (same config) and train a new schedule: "
                        "a longer run in pieces, e.g. from assets/training-stages/teacher/teacher")
    p.add_argument("--tokenizer", type=Path, default=None, metavar="DIR",
                   help="with --from-ctclip: local folder with CXR-BERT's vocab.txt (and config.json)")
    p.set_defaults(func=run)


def _usage(message: str) -> int:
    print(f"speechct-train teacher: {message}", file=sys.stderr)
    return 2


def run(args) -> int:
    if args.from_ctclip is not None:
        return run_from_ctclip(args)
    if args.tokenizer is not None:
        return _usage("--tokenizer goes with --from-ctclip")
    if args.init_from is not None and not (args.init_from / "model.safetensors").is_file():
        return _usage(f"{args.init_from}: no finished teacher there (model.safetensors missing)")
    if args.config is None or args.data is None:
        return _usage("--config and --data are required (or --from-ctclip CHECKPOINT --tokenizer DIR)")
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
        if args.init_from is not None and not args.resume:
            recipe.init_from(args.init_from)
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


def run_from_ctclip(args) -> int:
    if args.tokenizer is None:
        return _usage("--from-ctclip needs --tokenizer DIR (a local folder with CXR-BERT's vocab.txt)")
    if args.resume or args.max_steps is not None or args.epochs is not None:
        return _usage("--from-ctclip trains nothing: --resume, --max-steps and --epochs do not apply")
    import torch

    from train.ctclip_teacher import teacher_from_ctclip
    from train.recipes import CONFIG_DIR, load_run_config

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    name = args.config or "paper"
    cfg = load_run_config(name)
    config_file = Path(name) if Path(name).is_file() else CONFIG_DIR / f"{name}.json"
    folder = teacher_from_ctclip(args.from_ctclip, args.tokenizer, cfg, args.out, config_file=config_file)
    record_timing(args.out, "teacher(from ctclip)", time.perf_counter() - t0, {"checkpoint": str(args.from_ctclip)})
    print(f"teacher: imported from {args.from_ctclip} (config {cfg.get('name', name)}), {folder}")
    return 0
