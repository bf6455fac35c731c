"""Can the teacher's text side tell the 18 findings apart in reports worded as training never saw?
(issue 17, item 2: "tune what needs tuning").

The session-9 teacher's InfoNCE stayed near chance (2.0-2.6 against ln 16) while its label heads carried
the training; the suspicion is the frozen MiniLM mean over a report in the grammar's varied wording. This
probe isolates the text side, without CT: a linear read-out of the 18 labels from the report's pooled
MiniLM features, (a) frozen, as the shipped teacher has it, and (b) with MiniLM's top layer tuned on cached
layer-5 states (``TextTowerConfig.tuned_layers = 1``, the teacher's option), trained on the training
reports (training wording) and scored by macro AUROC on the valid and test reports (held-out wording:
train/synth/grammar.py's splits). It also prints each finding's AUROC and how far apart the two towers
put "X is present." and "X is not present." through the read-out (mean of present - absent logit).

    python scripts/experiments/text_side/read_reports.py --data build/bundle-data [--epochs 4]

Results go to ``--out`` (default scripts/experiments/text_side/results.json) and a table to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from engine.labels import LABELS  # noqa: E402
from engine.models.text import create_text_tower  # noqa: E402
from train import cache as C  # noqa: E402
from train.recipes import (  # noqa: E402
    pad_text_states,
    prompt_texts,
    read_studies,
    text_backbone_hash,
    text_features,
    text_lower_states,
)


def macro(logits: np.ndarray, labels: np.ndarray) -> tuple[float, list[float]]:
    per = [roc_auc_score(labels[:, j], logits[:, j]) if 0 < labels[:, j].sum() < len(labels) else float("nan")
           for j in range(labels.shape[1])]
    return float(np.nanmean(per)), per


def reports(data: Path, split: str) -> list[tuple[str, np.ndarray]]:
    """(findings text, 18 labels) of a split; ``test`` is the third root's (``ct-rate-test``) valid split."""
    if split == "test":
        from train.data import CTRateIndex

        return [(r.findings, r.labels) for r in CTRateIndex(data / "ct-rate-test", "valid").records]
    return [(st.findings, st.labels) for st in read_studies(data, split, audio=False)]


def run(variant: str, data: Path, epochs: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    tuned = variant == "tuned-top"
    tower = create_text_tower("minilm", tuned_layers=1 if tuned else 0)
    cache = C.FrozenCache(data / "cache")
    bh = text_backbone_hash(tower)
    splits = {s: reports(data, s) for s in ("train", "valid", "test")}

    def inputs(texts):
        return text_lower_states(texts, tower, cache, bh) if tuned else text_features(texts, tower, cache, bh)[1]

    x = {s: inputs([text for text, _ in v]) for s, v in splits.items()}
    x["prompts"] = inputs(prompt_texts())
    y = {s: np.stack([lab for _, lab in v]).astype(np.float32) for s, v in splits.items()}
    head = torch.nn.Linear(tower.hidden_size, len(LABELS))
    groups = [{"params": head.parameters(), "lr": 3e-3}]
    if tuned:
        groups.append({"params": [p for layer in tower.tuned_layers() for p in layer.parameters()], "lr": 3e-5})
    opt = torch.optim.Adam(groups)

    def pooled(rows_x, train: bool) -> torch.Tensor:
        if tuned:
            for layer in tower.tuned_layers():
                layer.train(train)
            hidden, mask = pad_text_states(list(rows_x), "cpu")
            return tower.pooled_from_lower(hidden, mask)
        return torch.from_numpy(np.asarray(rows_x, dtype=np.float32))

    rng = np.random.default_rng(seed)
    n, t0 = len(y["train"]), time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(n)
        for i in range(0, n - 15, 16):
            rows = order[i : i + 16]
            loss = F.binary_cross_entropy_with_logits(head(pooled(x["train"][rows], True)),
                                                      torch.from_numpy(y["train"][rows]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    out = {"variant": variant, "epochs": epochs, "train_seconds": round(time.perf_counter() - t0, 1)}
    with torch.no_grad():
        for s in ("train", "valid", "test"):
            logits = torch.cat([head(pooled(x[s][i : i + 64], False)) for i in range(0, len(y[s]), 64)]).numpy()
            out[f"{s}_auroc"], per = macro(logits, y[s])
            out[f"{s}_per_finding"] = [round(p, 3) for p in per]
        p = head(pooled(x["prompts"], False)).numpy()
        # row 2j is "<finding j> is present.", 2j+1 "... is not present.": the gap on finding j's own logit
        out["prompt_gap"] = float(np.mean([p[2 * j, j] - p[2 * j + 1, j] for j in range(len(LABELS))]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    ap.add_argument("variants", nargs="*", default=["frozen", "tuned-top"])
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = [run(v, a.data, a.epochs) for v in a.variants]
    a.out.write_text(json.dumps(results, indent=1))
    print("| text side | train AUROC | valid AUROC (held-out wording) | test AUROC | prompt gap | train s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['variant']} | {r['train_auroc']:.3f} | {r['valid_auroc']:.3f} | {r['test_auroc']:.3f} "
              f"| {r['prompt_gap']:+.2f} | {r['train_seconds']:.0f} |")
    print("per finding (valid):", *(f"{lab}: " + " / ".join(f"{r['valid_per_finding'][j]:.2f}" for r in results)
                                    for j, lab in enumerate(LABELS)), sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
