"""Can the teacher's density path learn the labels in the teacher's budget? (issue 17, session 11)

The teacher underfits (0.71 on its own training volumes) while a logistic regression on its own density
features reaches 0.80 and on the summaries 0.84 (``feature_ceiling.py``). This replays only the label
read-out of the teacher on the recorded feature tables: standardised features -> the density path's
rank-r linear map -> latent -> the label head, BCE, AdamW at the teacher's rates, batch 16, 632 steps
(8 epochs of 1,271 volumes), no InfoNCE, and scores validation AUROC of the head. If this already
stalls, the optimisation (a product of three freshly initialised matrices at lr 3e-4) is the limit, not
the features or the contrastive loss. ``--augmented`` trains instead on the features of one jittered copy
of each training volume (``train.recipes.augment_ct`` with cpu-default's shift, noise and gain, as the
teacher sees them) and still scores clean validation volumes.

    python scripts/experiments/ct_encoder/density_optim.py --data build/bundle-data   # after feature_ceiling.py --density-path
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "experiments"))

from cnn_ceiling import _records  # noqa: E402

from train.trainer import OptimConfig, lr_lambda  # noqa: E402

HERE = Path(__file__).resolve().parent


def run(x_tr, y_tr, x_va, y_va, *, lr, mult, rank, steps, seed=0, direct=False, cosine=False, prior=False,
        report_at=()) -> dict:
    """Train the read-out; ``cosine``: the teacher's schedule (else constant lr); ``prior``: the head's bias
    starts at the training prevalence's log-odds; ``report_at``: steps at which to record AUROC and BCE."""
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(seed)
    mean, std = x_tr.mean(0), np.maximum(x_tr.std(0), 0.05)
    a = torch.from_numpy((x_tr - mean) / std).float()
    b = torch.from_numpy((x_va - mean) / std).float()
    yt = torch.from_numpy(y_tr).float()
    n_feat = a.shape[1]
    if direct:
        path = torch.nn.Linear(n_feat, 512, bias=False)
    else:
        path = torch.nn.Sequential(torch.nn.Linear(n_feat, rank, bias=False), torch.nn.Linear(rank, 512, bias=False))
    head = torch.nn.Linear(512, y_tr.shape[1])
    if prior:
        rate = np.clip(y_tr.mean(0), 1e-4, 1 - 1e-4)
        head.bias.data = torch.from_numpy(np.log(rate / (1 - rate))).float()
    opt = torch.optim.AdamW([{"params": path.parameters(), "lr": lr * mult},
                             {"params": head.parameters(), "lr": lr * 3.0}], weight_decay=0.01)
    base = [g["lr"] for g in opt.param_groups]
    # cpu-default's teacher schedule, from the trainer itself: warm-up 40, cosine down to 0.05 x lr
    factor = lr_lambda(OptimConfig(lr=lr, max_steps=steps, warmup_steps=40, schedule="cosine",
                                     min_lr_ratio=0.05), steps)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(a)) for _ in range(steps * 16 // len(a) + 1)])

    def measure() -> dict:
        with torch.no_grad():
            sv, st = head(path(b)).numpy(), head(path(a)).numpy()
            bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(st), yt)
        per = [roc_auc_score(y_va[:, k], sv[:, k]) for k in range(y_va.shape[1])]
        per_tr = [roc_auc_score(y_tr[:, k], st[:, k]) for k in range(y_tr.shape[1])]
        return {"valid": float(np.mean(per)), "train": float(np.mean(per_tr)), "train_bce": float(bce)}

    trajectory = []
    for s in range(steps):
        if cosine:
            for g, base_lr in zip(opt.param_groups, base):
                g["lr"] = base_lr * factor(s)
        rows = order[s * 16:(s + 1) * 16]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(path(a[rows])), yt[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if s + 1 in report_at:
            trajectory.append({"step": s + 1, **measure()})
    out = measure()
    return {**out, "trajectory": trajectory} if trajectory else out


def augmented_tables(data: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(per-block density, summaries) features of one jittered copy of every training volume."""
    cache_file = data / "augmented_tables_train_cpu-128.npz"
    if cache_file.is_file():
        saved = np.load(cache_file)
        return saved["dens"], saved["summ"]
    from cnn_ceiling import _Volumes
    from feature_ceiling import features

    from engine.models.ct_layers import DensityPath
    from engine.preprocess import get_spec
    from train.recipes import augment_ct

    cfg = json.loads((ROOT / "train" / "configs" / "cpu-default.json").read_text())
    ct, aug = cfg["ct_encoder"], cfg["teacher"]["augment"]
    path = DensityPath(tuple(ct["input_size"]), tuple(ct["density_pool"]), tuple(ct["density_thresholds"]), 1, 1)
    vols = _Volumes(_records(data, "train"), get_spec("cpu-128"), data / "cache")
    rng = np.random.default_rng(seed)
    dens, summ = [], []
    for i in range(len(vols)):
        v = augment_ct(vols(i)[None], rng, tuple(aug["shift"]), aug["noise"], aug["scale"])[0]
        with torch.no_grad():
            dens.append(path.features(torch.from_numpy(v)[None, None]).numpy()[0])
        summ.append(features(v))
    dens, summ = np.stack(dens), np.stack(summ)
    np.savez(cache_file, dens=dens, summ=summ)
    return dens, summ


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--steps", type=int, default=632)
    p.add_argument("--augmented", action="store_true", help="train on jittered copies (see above)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    d = a.data
    y_tr = np.stack([r.labels for r in _records(d, "train")]).astype(np.float32)
    y_va = np.stack([r.labels for r in _records(d, "valid")]).astype(int)
    dens = [np.load(d / f"density_table_{s}_cpu-128.npz")["x"] for s in ("train", "valid")]
    summ = [np.load(d / f"feature_table_{s}_cpu-128.npz")["x"] for s in ("train", "valid")]
    if a.augmented:
        dens[0], summ[0] = augmented_tables(d)
    both = [np.concatenate([x, y], axis=1) for x, y in zip(dens, summ)]
    rows = []
    mults = (1.0,) if a.augmented else (1.0, 10.0)
    for feats, name in ((dens, "per-block density (the session-10 teacher)"), (both, "per-block + summaries")):
        for mult in mults:
            r = run(feats[0], y_tr, feats[1], y_va, lr=3e-4, mult=mult, rank=128, steps=a.steps)
            rows.append({"features": name, "path": "rank-128", "lr_mult": mult, **r})
            print(json.dumps(rows[-1]), flush=True)
    for mult in mults:
        r = run(summ[0], y_tr, summ[1], y_va, lr=3e-4, mult=mult, rank=128, steps=a.steps, direct=True)
        rows.append({"features": "summaries only", "path": "full linear", "lr_mult": mult, **r})
        print(json.dumps(rows[-1]), flush=True)
    if not a.augmented:  # the teacher's schedule, with and without the prior bias (teacher.prior_bias_init)
        for prior in (False, True):
            r = run(both[0], y_tr, both[1], y_va, lr=3e-4, mult=1.0, rank=128, steps=a.steps, cosine=True,
                    prior=prior, report_at=(158, 316, 474, 632))
            rows.append({"features": "per-block + summaries", "path": "rank-128", "lr_mult": 1.0,
                         "schedule": "warm-up 40, cosine to 0.05", "prior_bias": prior, **r})
            print(json.dumps(rows[-1]), flush=True)
    name = "density_optim_augmented.json" if a.augmented else "density_optim.json"
    (HERE / name).write_text(json.dumps({"steps": a.steps, "batch": 16, "lr": 3e-4, "augmented": a.augmented,
                                                          "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
