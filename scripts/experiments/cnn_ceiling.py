"""The data's ceiling: a small supervised 3D CNN trained on the 18 labels, scored on the evaluated volumes.

Zero-shot AUROC says how well the image model reads a finding; the linear probe on its embedding
(``train.metrics.linear_probe``) says how much of the finding the *encoder* keeps; this says how much of
it a supervised model trained from the labels can find in *these volumes* at this preprocessing spec at
all. It is measured once per data set (it is slow) and recorded; ``speechct-train evaluate --ceiling
FILE`` reads the per-study scores from the JSON and scores them on exactly the evaluated studies, with
the same bootstrap draws as the zero-shot rows (``train.evaluate.recorded_ceiling``).

The network: the prepared volume (``engine.preprocess.prepare_ct`` at ``--spec``, HU / 1000) as three HU
windows (lung −1000…−200, soft tissue −160…240, dense 100…1000, each scaled to [0, 1]) → five stride-2
stages (3³ convolution, GroupNorm, ReLU; widths w, 2w, 4w, 8w, 16w) → global mean and max pooling → a
linear layer to the 18 labels; binary cross-entropy, AdamW. Trained on the train split of ``--data``,
scored on ``--split`` (``valid``: DATA/ct-rate's validation split; ``test``: DATA/ct-rate-test). Prepared
volumes go through the trainer's cache (DATA/cache), so volumes the teacher prepared are not prepared
again. A checkpoint is written every ``--checkpoint-every`` steps and at the end of each epoch; a rerun
with the same arguments resumes from it (with a larger ``--epochs``, it trains on from it).

    python scripts/experiments/cnn_ceiling.py --data BUNDLE_DATA                  # → BUNDLE_DATA/cnn_ceiling_valid.json
    speechct-train evaluate --bundle BUNDLE_DATA/run --data BUNDLE_DATA           # finds it there

JSON (``train.evaluate.CEILING_KEYS``): ``kind``, ``labels``, ``scores`` {volume name: [P(present) per
label]}, and ``split``, ``config``, ``seconds``, ``train`` (steps, final loss, AUROC on the training
volumes: does it fit), ``macro_auroc`` / ``per_finding_auroc`` on the scored split, ``measured`` (UTC).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

#: HU windows fed as the network's three channels
WINDOWS_HU = ((-1000.0, -200.0), (-160.0, 240.0), (100.0, 1000.0))


def build_cnn(width: int = 16, n_labels: int = 18, stages: int = 5):
    """The 3D CNN of the module docstring (``width`` 16: 1.2 M weights)."""
    from torch import nn

    layers, cin = [], len(WINDOWS_HU)
    for i in range(stages):
        cout = width * 2**i
        layers += [nn.Conv3d(cin, cout, 3, stride=2, padding=1, bias=False),
                   nn.GroupNorm(min(8, cout), cout), nn.ReLU(inplace=True)]
        cin = cout

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(2 * cin, n_labels)

        def forward(self, x):  # x: [B, Z, Y, X] prepared volumes (HU / 1000)
            import torch

            hu = x[:, None] * 1000.0
            chans = [((hu - lo) / (hi - lo)).clamp(0, 1) for lo, hi in WINDOWS_HU]
            f = self.features(torch.cat(chans, dim=1))
            return self.head(torch.cat([f.mean(dim=(2, 3, 4)), f.amax(dim=(2, 3, 4))], dim=1))

    return CNN()


def _records(data: Path, split: str):
    from train.data import CTRateIndex

    root = data / ("ct-rate-test" if split == "test" else "ct-rate")
    inner = "valid" if split == "test" else split  # the test root's valid split is the test set
    if not root.is_dir():
        raise SystemExit(f"error: {root}: no such folder")
    return sorted(CTRateIndex(root, inner, missing="skip").records, key=lambda r: r.volume_name)


def _auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from train.metrics import _auroc_rows

    return _auroc_rows(np.asarray(scores, np.float64).T, np.asarray(labels, np.int64).T)


def _scores(model, volumes, batch: int) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(volumes), batch):
            x = torch.from_numpy(np.stack([volumes(j) for j in range(i, min(i + batch, len(volumes)))]))
            out.append(torch.sigmoid(model(x.float())).numpy())
    model.train()
    return np.concatenate(out) if out else np.zeros((0, 18))


class _Volumes:
    """Prepared volumes of some records, read through the trainer's cache on demand."""

    def __init__(self, records, spec, cache):
        from train.evaluate import _ct_preparer

        self.records, self.prepare = records, _ct_preparer(spec, cache)

    def __len__(self):
        return len(self.records)

    def __call__(self, i: int) -> np.ndarray:
        return np.asarray(self.prepare(self.records[i]), np.float32)


def run(args: argparse.Namespace) -> Path:
    import torch

    from engine.labels import LABELS
    from engine.preprocess import get_spec

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = Path(args.data)
    out = Path(args.out) if args.out else data / f"cnn_ceiling_{args.split}.json"
    spec = get_spec(args.spec)
    cache = data / "cache" if (data / "cache").is_dir() or not args.no_cache else None
    train_recs = _records(data, "train")[: args.limit_train or None]
    eval_recs = _records(data, args.split)
    if not train_recs or not eval_recs:
        raise SystemExit(f"error: {data}: no train or no {args.split} studies")
    train_vol, eval_vol = _Volumes(train_recs, spec, cache), _Volumes(eval_recs, spec, cache)
    y_train = np.stack([r.labels for r in train_recs]).astype(np.float32)
    y_eval = np.stack([r.labels for r in eval_recs]).astype(np.float32)

    model = build_cnn(args.width)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    config = {k: getattr(args, k) for k in ("spec", "width", "epochs", "batch", "lr", "weight_decay", "seed",
                                            "limit_train")}
    config["windows_hu"] = [list(w) for w in WINDOWS_HU]
    config["parameters"] = int(sum(p.numel() for p in model.parameters()))
    ckpt = out.with_suffix(".ckpt.pt")
    step, epoch, losses, spent = 0, 0, [], 0.0
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)  # dicts, tensors and numbers only
        same = {k: v for k, v in state["config"].items() if k != "epochs"} == \
            {k: v for k, v in config.items() if k != "epochs"}
        if same:  # the same run (more epochs continue it); anything else starts afresh
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            step, epoch, losses, spent = state["step"], state["epoch"], state["losses"], state["seconds"]
            print(f"resumed at epoch {epoch}, step {step}")

    def save():
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"config": config, "model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                    "epoch": epoch, "losses": losses, "seconds": spent + time.perf_counter() - t0}, tmp)
        tmp.replace(ckpt)

    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    per_epoch = (len(train_recs) + args.batch - 1) // args.batch
    while epoch < args.epochs:
        order = np.random.default_rng([args.seed, epoch]).permutation(len(train_recs))
        for b in range(step - epoch * per_epoch, per_epoch):  # resume mid-epoch where it stopped
            rows = order[b * args.batch : (b + 1) * args.batch]
            x = torch.from_numpy(np.stack([train_vol(int(i)) for i in rows]))
            loss = loss_fn(model(x), torch.from_numpy(y_train[rows]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if step % args.log_every == 0:
                print(f"epoch {epoch + 1}/{args.epochs} step {step} loss {np.mean(losses[-args.log_every:]):.4f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
            if step % args.checkpoint_every == 0:
                save()
        epoch += 1
        save()

    s_eval = _scores(model, eval_vol, args.batch)
    s_train = _scores(model, train_vol, args.batch)
    auc, auc_train = _auroc(s_eval, y_eval), _auroc(s_train, y_train)
    prior = np.clip(y_train.mean(axis=0), 1e-6, 1 - 1e-6)  # the loss of predicting the class frequencies
    prior_loss = float(-(y_train * np.log(prior) + (1 - y_train) * np.log(1 - prior)).mean())
    record = {
        "kind": f"supervised 3D CNN ({config['parameters'] / 1e6:.2f} M weights, 3 HU windows, 5 stride-2 stages, "
                f"BCE; {len(train_recs)} train volumes, {args.epochs} epochs at the {spec.name} spec)",
        "labels": list(LABELS),
        "split": args.split,
        "data": str(data),
        "config": config,
        "seconds": round(spent + time.perf_counter() - t0, 1),
        "train": {"n": len(train_recs), "steps": step, "final_loss": float(np.mean(losses[-per_epoch:])),
                  "class_frequency_loss": prior_loss, "macro_auroc": float(np.nanmean(auc_train))},
        "macro_auroc": float(np.nanmean(auc)),
        "per_finding_auroc": {n: float(a) for n, a in zip(LABELS, auc)},
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scores": {r.volume_name: [round(float(v), 6) for v in row] for r, row in zip(eval_recs, s_eval)},
    }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out)
    print(f"macro AUROC {record['macro_auroc']:.3f} on {len(eval_recs)} {args.split} volumes "
          f"(training volumes {record['train']['macro_auroc']:.3f}); wrote {out}")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data folder with ct-rate/ (and ct-rate-test/ for --split test)")
    p.add_argument("--split", default="valid", choices=("valid", "test"))
    p.add_argument("--out", default=None, help="JSON to write (default DATA/cnn_ceiling_SPLIT.json)")
    p.add_argument("--spec", default="cpu-128", help="preprocessing spec (name or JSON file)")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--limit-train", type=int, default=None, help="train on the first N train volumes only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    p.add_argument("--no-cache", action="store_true", help="do not create DATA/cache (an existing one is used)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
