"""Which transcript-reader design holds on wording it never heard? (issue 16, session 12)

The shipped transcript reader (``train/text_reader.py``: a frame dictation head over MiniLM's layer-5 token
states) reads the validation wording's exact text at macro F1 0.72 (uncertain 0.31) while its training
loss goes to 0.015: it learns the training templates. This compares head variants on text alone, with no
CT and no audio, so each costs minutes:

- ``base``: the shipped reader (hidden 128, kernel 5, heads 4, dropout 0.1, AdamW 2e-3, 8 epochs);
- ``shared``: one state read-out for all findings (each finding keeps its queries, null slot and a bias):
  "not seen" after *effusion* and after *nodule* is the same cue, so every finding's examples teach it;
- ``tokdrop``: 15 % of the tokens of each training report dropped afresh each epoch;
- ``tuned``: MiniLM's top layer trained with the head (1e-4), as the teacher tunes it;
- combinations.

Reports come from the grammar itself (``train.synth.reports.write_report``) for the cohort's prevalences:
``--n-train`` of the training wording, ``--n-eval`` each of the validation and test wording. Scored per
variant: macro F1 over the four states, uncertain F1, present read as absent. Results are appended to
``text_reader_variants.jsonl`` beside this file.

    python scripts/experiments/reader/text_reader_variants.py --work build/reader-exp base shared tokdrop
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from engine.labels import DICTATION_CLASSES, LABELS  # noqa: E402
from engine.models.dictation import (  # noqa: E402
    FrameDictationHead,
    FrameDictationHeadConfig,
    dictation_loss,
    pad_utterances,
)
from train.metrics import dictation_f1  # noqa: E402
from train.text_reader import extra_training_reports  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIG = ROOT / "train" / "configs" / "cpu-default.json"

VARIANTS = {
    "base": {},
    "shared": {"shared": True},
    "tokdrop": {"tokdrop": 0.15},
    "shared-tokdrop": {"shared": True, "tokdrop": 0.15},
    "tuned": {"tuned": True},
    "shared-tokdrop-tuned": {"shared": True, "tokdrop": 0.15, "tuned": True},
    "shared-tokdrop-k9": {"shared": True, "tokdrop": 0.15, "kernel": 9},
    "shared-tokdrop-h256": {"shared": True, "tokdrop": 0.15, "hidden": 256},
    "sent": {"inputs": "sentences", "kernel": 1},
    "sent-k3": {"inputs": "sentences", "kernel": 3},
}

#: Sentence ends: punctuation, and only the *training* wording's spoken commands (the split keeps the
#: validation and test commands unseen, so a splitter may not know them either).
SENTENCE_END = re.compile(r"(?<=[.;:?!])\s+|\s*\b(?:period|new paragraph)\b[.,]?\s*", re.IGNORECASE)


def sentences(text: str) -> list[str]:
    parts = [x.strip() for x in SENTENCE_END.split(text) if x and x.strip()]
    return parts or [text]


def sentence_features(tower, texts, cache: Path):
    """Per text, MiniLM's own sentence embedding (all layers, mean-pooled, as it was trained for
    paraphrase similarity) of each of its sentences, ``[n_sentences, 384]``."""
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    flat, owner = [], []
    for i, t in enumerate(texts):
        for sent in sentences(t):
            flat.append(sent)
            owner.append(i)
    out = []
    with torch.no_grad():
        for i in range(0, len(flat), 64):
            out.append(tower.pooled_features(**tower.tokenize(flat[i : i + 64])).float())
    emb = torch.cat(out)
    owner_t = torch.tensor(owner)
    states = [emb[owner_t == i].to(torch.float16) for i in range(len(texts))]
    torch.save(states, cache)
    return states


def features(tower, texts, cache: Path):
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    states = [s.to(torch.float16) for s in tower.token_states(texts)]
    torch.save(states, cache)
    return states


def run_variant(name: str, spec: dict, tower, data: dict, epochs: int, seed: int = 5) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    x_train, y_train = data["train"]
    cfg = FrameDictationHeadConfig(dim=x_train[0].shape[-1], hidden=spec.get("hidden", 128), stride=1,
                                   kernel=spec.get("kernel", 5), heads=4, dropout=0.1,
                                   n_classes=len(DICTATION_CLASSES), shared_readout=bool(spec.get("shared")))
    head = FrameDictationHead(cfg)

    layers = []
    if spec.get("tuned"):
        import copy

        layers = [copy.deepcopy(layer) for layer in tower.tuned_layers()] if tower.config.tuned_layers else []
        if not layers:
            raise SystemExit("the text tower tunes no layer; 'tuned' needs text_tower.tuned_layers >= 1")
        for layer in layers:
            layer.train()
            for p in layer.parameters():
                p.requires_grad_(True)

    def encode(batch):
        x, lengths = pad_utterances([b.float() for b in batch])
        if layers:
            from transformers.masking_utils import create_bidirectional_mask

            att = (torch.arange(x.shape[1])[None] < lengths[:, None]).long()
            mask = create_bidirectional_mask(config=tower.backbone.config, inputs_embeds=x, attention_mask=att)
            for layer in layers:
                out = layer(x, mask)
                x = out[0] if isinstance(out, tuple) else out
        return x, lengths

    groups = [{"params": list(head.parameters()), "lr": 2e-3}]
    if layers:
        groups.append({"params": [p for la in layers for p in la.parameters()], "lr": 1e-4})
    opt = torch.optim.AdamW(groups, weight_decay=1e-2)
    rng = np.random.default_rng(seed)
    order = np.argsort([x.shape[0] for x in x_train], kind="stable")
    batches = [order[i : i + 32] for i in range(0, len(order), 32)]
    drop = float(spec.get("tokdrop", 0.0))
    history = []

    def score(split):
        x, y = data[split]
        head.eval()
        for la in layers:
            la.eval()
        with torch.no_grad():
            pred = torch.cat([head(*encode(x[i : i + 32])) for i in range(0, len(x), 32)])
        head.train()
        for la in layers:
            la.train()
        return dictation_f1(pred.argmax(-1).numpy(), y, DICTATION_CLASSES, LABELS)

    best = None
    for epoch in range(epochs):
        rng.shuffle(batches)
        total = 0.0
        for idx in batches:
            seqs = [x_train[i] for i in idx]
            if drop:
                seqs = [s[torch.from_numpy(rng.random(len(s)) >= drop)] if len(s) > 4 else s for s in seqs]
            loss = dictation_loss(head(*encode(seqs)), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        v = score("valid")
        history.append({"epoch": epoch + 1, "loss": round(total / len(x_train), 4), "valid": round(v["macro_f1"], 4)})
        print(name, history[-1], flush=True)
        if best is None or v["macro_f1"] > best[0]["macro_f1"]:
            best = (v, epoch + 1, score("test"))
    v, best_epoch, t = best

    def summary(f1):
        return {"macro_f1": round(f1["macro_f1"], 4),
                "per_class": {k: round(x, 3) for k, x in f1["per_class"].items()},
                "present_read_absent": round(float(f1.get("present_read_absent") or 0.0), 4)}
    return {"variant": name, "spec": spec, "best_epoch": best_epoch, "valid": summary(v), "test": summary(t),
            "history": history, "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+", choices=sorted(VARIANTS))
    p.add_argument("--work", type=Path, default=ROOT / "build" / "reader-exp")
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-eval", type=int, default=500)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from train.recipes import _text_config, create_text_tower

    cfg = json.loads(CONFIG.read_text())
    tower = create_text_tower(_text_config(cfg)).eval()
    a.work.mkdir(parents=True, exist_ok=True)
    data = {}
    inputs = {VARIANTS[v].get("inputs", "tokens") for v in a.variants}
    for split, wording, n, seed in (("train", "train", a.n_train, 11), ("valid", "valid", a.n_eval, 12),
                                    ("test", "test", a.n_eval, 13)):
        rows = extra_training_reports(n, seed, wording)
        texts = [t for t, _ in rows]
        y = np.stack([m for _, m in rows])
        for kind in inputs:
            x = (features(tower, texts, a.work / f"{split}-{n}-s{seed}.pt") if kind == "tokens"
                 else sentence_features(tower, texts, a.work / f"{split}-{n}-s{seed}-sentences.pt"))
            data[kind, split] = (x, torch.from_numpy(y) if split == "train" else y)
    for name in a.variants:
        kind = VARIANTS[name].get("inputs", "tokens")
        views = {split: data[kind, split] for split in ("train", "valid", "test")}
        result = run_variant(name, VARIANTS[name], tower, views, a.epochs)
        result.update(n_train=a.n_train, n_eval=a.n_eval, epochs=a.epochs)
        print(json.dumps({k: result[k] for k in ("variant", "best_epoch", "valid", "test", "seconds")}), flush=True)
        with open(HERE / "text_reader_variants.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
