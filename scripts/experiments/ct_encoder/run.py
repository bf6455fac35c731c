"""Compare CT-encoder / teacher variants at one training budget (issue 17, item 1 and 2).

Each variant is a training config in this folder (``enc-*.json``). For each it trains a teacher with
``speechct-train teacher`` (resumable) on the first ``--train`` training volumes of ``--data`` for
``--epochs`` epochs, then scores it: zero-shot macro AUROC of CT-CLIP's prompt pairs on the validation
split and on the first 300 *training* volumes (can the encoder fit its own data?), the centred AUROC
(each study's 18 logits minus their mean: finding-specific skill), how many findings reach 0.85, and the
mean cosine of the present - absent prompt directions. Results go to ``--out/results.jsonl`` and a
table to stdout (paste it into docs/ct-encoder-experiments.md).

    python scripts/experiments/ct_encoder/run.py --data build/bundle-data --out build/enc-exp \\
        --train 600 --epochs 4 enc-base enc-conv-dense-text
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from train import cache as C  # noqa: E402
from train.metrics import centre_logits, pair_logits  # noqa: E402
from train.recipes import (  # noqa: E402
    _ct_batch,
    load_teacher,
    prepare_ct_cache,
    prompt_direction_cosine,
    prompt_texts,
    read_studies,
)

HERE = Path(__file__).resolve().parent


def train_variant(name: str, a: argparse.Namespace) -> Path:
    cfg = json.loads((HERE / f"{name}.json").read_text())
    cfg["limit"] = {"train": a.train}
    run = a.out / name
    run.mkdir(parents=True, exist_ok=True)
    cfg_path = run / "config.json"
    cfg_path.write_text(json.dumps(cfg, indent=1))
    if not (run / "teacher" / "model.safetensors").exists():
        args = [sys.executable, "-m", "train.cli", "teacher", "--config", str(cfg_path), "--data", str(a.data),
                "--out", str(run), "--epochs", str(a.epochs), "--threads", str(a.threads), "--quiet"]
        if (run / "teacher" / "last.pt").exists():
            args.append("--resume")
        t0 = time.time()
        with open(run / "teacher.log", "a") as log:
            subprocess.run(args, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        (run / "train_seconds.txt").write_text(f"{time.time() - t0:.0f}\n")
    return run / "teacher"


def macro_auroc(logits: np.ndarray, labels: np.ndarray) -> tuple[float, list[float]]:
    per = [roc_auc_score(labels[:, j], logits[:, j]) if 0 < labels[:, j].sum() < len(labels) else float("nan")
           for j in range(labels.shape[1])]
    return float(np.nanmean(per)), per


def score(teacher_dir: Path, a: argparse.Namespace) -> dict:
    teacher = load_teacher(teacher_dir)
    cache = C.FrozenCache(a.data / "cache")
    model = teacher.model.eval()
    with torch.no_grad():
        feats = teacher.text.tokenize(prompt_texts())
        prompts = model.text_projection(teacher.text.pooled_features(**feats).float()).numpy()
    out = {"prompt_direction_cos": prompt_direction_cosine(torch.from_numpy(prompts))}
    for split, limit in (("valid", None), ("train", 300)):
        studies = read_studies(a.data, split, audio=False, limit=limit)
        keys = prepare_ct_cache(studies, teacher.spec, cache)
        embs = []
        with torch.no_grad():
            for i in range(0, len(keys), 8):
                embs.append(model.ct(_ct_batch(keys[i : i + 8], cache, "cpu")).float().numpy())
        emb = np.concatenate(embs)
        labels = np.stack([s.labels for s in studies]).astype(int)
        logits = pair_logits(emb, prompts[0::2], prompts[1::2], teacher.logit_scale)
        macro, per = macro_auroc(logits, labels)
        out[f"{split}_auroc"] = macro
        out[f"{split}_centred_auroc"] = macro_auroc(centre_logits(logits), labels)[0]
        if model.label_head is not None:  # the supervised read-out the teacher trained: what zero-shot could reach
            with torch.no_grad():
                head = model.label_head(torch.from_numpy(emb)).numpy()
            out[f"{split}_label_head_auroc"] = macro_auroc(head, labels)[0]
        out[f"{split}_n"] = len(studies)
        if split == "valid":
            out["valid_per_finding"] = [round(v, 3) for v in per]
            out["valid_findings_ge_085"] = int(sum(v >= 0.85 for v in per))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="*")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--train", type=int, default=600, help="first N training volumes")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--score-only", type=Path, default=None, metavar="TEACHER_DIR",
                   help="score a finished teacher folder (e.g. a bundle run's teacher/) and print the JSON row")
    a = p.parse_args()
    if a.score_only:
        torch.set_num_threads(a.threads)
        print(json.dumps(score(a.score_only, a)))
        return 0
    torch.set_num_threads(a.threads)
    for name in a.variants:
        teacher_dir = train_variant(name, a)
        row = {"variant": name, "train_volumes": a.train, "epochs": a.epochs, **score(teacher_dir, a)}
        secs = a.out / name / "train_seconds.txt"
        row["train_minutes"] = round(int(secs.read_text()) / 60, 1) if secs.exists() else None
        with open(a.out / "results.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"| {name} | {row['valid_auroc']:.3f} | {row['valid_centred_auroc']:.3f} | {row['train_auroc']:.3f} | "
              f"{row['valid_findings_ge_085']} | {row['prompt_direction_cos']:.2f} | {row['train_minutes']} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
