"""The transcript reader: a frame dictation head over the frozen text backbone's token states.

The ASR cascade's second reader (the first is the rule labeler, :mod:`engine.mention_rules`): the
dictation is transcribed (:mod:`engine.transcribe`), the transcript goes through the teacher's frozen text
backbone (all-MiniLM-L6-v2 in the CPU bundle), and the same head design as the speech-native reader
(:class:`engine.models.dictation.FrameDictationHead`, four mention states per finding) reads its token
states. It learns from text alone, so besides the training split's dictations it can read many more
reports of the training wording at no audio cost (``extra_reports``, phantom-free details from
:func:`train.synth.reports.sample_details`). It never sees the validation or test wording.

``speechct-train text-reader --data D --out RUN`` writes ``RUN/text_reader/`` (``head.safetensors`` +
``head.json``: the head config, the backbone, the epoch chosen on the validation split's exact dictation
text, its F1). ``speechct-train evaluate`` scores it on the same ASR transcripts as the rule labeler.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.labels import DICTATION_CLASSES, LABELS
from engine.models.dictation import (
    FrameDictationHead,
    FrameDictationHeadConfig,
    dictation_loss,
    pad_utterances,
)

HEAD_FILE, HEAD_JSON = "head.safetensors", "head.json"


def extra_training_reports(n: int, seed: int, wording: str = "train") -> list[tuple[str, np.ndarray]]:
    """``n`` dictations of the *training* wording (or another ``wording``, for experiments that score on
    it) with their four-state mentions (class indices), from phantom-free details and the cohort's
    prevalences; deterministic for a seed."""
    from train.synth.cohort import sample_cohort
    from train.synth.reports import sample_details, write_report

    rng = np.random.default_rng([seed, 97])
    out = []
    for patient in sample_cohort(n, seed=seed * 100 + 97):
        findings = {lab: sample_details(lab, rng) for lab in patient.present}
        rep = write_report(findings, wording=wording, seed=int(rng.integers(1 << 31)))
        out.append((rep.dictation, np.array([DICTATION_CLASSES.index(rep.mentions[lab]) for lab in LABELS])))
    return out


def _dictations(data: Path, split: str) -> list[tuple[str, np.ndarray]]:
    """(what was said, mention classes) per study of a split: the synthetic ``*_dictations.csv`` text when the
    tree has one (no audio needed), else the written Findings (what real Speech-RATE reads aloud)."""
    from train.data import dataset_dir, read_csv_rows
    from train.recipes import read_studies
    from train.synth.ctrate import DICTATION_COLUMNS, DICTATION_CSV

    studies = read_studies(data, split, audio=False)
    path = dataset_dir(data / "ct-rate") / "radiology_text_reports" / DICTATION_CSV[split]
    said = {}
    if path.is_file():
        said = {r["VolumeName"]: r["Dictation_EN"] for r in read_csv_rows(path, DICTATION_COLUMNS, "dictations")}
    return [(said.get(s.volume_name) or s.findings, s.mentions.astype(np.int64)) for s in studies]


def read_texts(tower, head: FrameDictationHead, texts: list[str], batch: int = 32) -> np.ndarray:
    """Mention-state class indices ``[N, 18]`` of ``texts`` (transcripts or exact text)."""
    states = tower.token_states(texts)
    head.eval()
    with torch.no_grad():
        logits = [head(*pad_utterances(states[i : i + batch])) for i in range(0, len(states), batch)]
    return torch.cat(logits).argmax(-1).numpy()


def train_text_reader(cfg: dict, data: str | Path, out: str | Path, *, extra_reports: int = 3000,
                      epochs: int = 8, progress: bool = True) -> dict[str, Any]:
    """Fit the transcript reader on the train split's dictations (+ ``extra_reports``), choose the epoch on
    the valid split's dictations (exact text), save ``head.safetensors`` + ``head.json`` in ``out``."""
    from safetensors.torch import save_file

    from train.metrics import dictation_f1
    from train.recipes import _text_config, create_text_tower

    t0 = time.perf_counter()
    data, out = Path(data), Path(out)
    seed = int(cfg.get("seed", 0)) + 5
    tower = create_text_tower(_text_config(cfg)).eval()
    train = _dictations(data, "train") + extra_training_reports(extra_reports, seed)
    valid = _dictations(data, "valid")
    x_train = [x.to(torch.float16) for x in tower.token_states([t for t, _ in train])]
    x_valid = tower.token_states([t for t, _ in valid])
    y_train = torch.from_numpy(np.stack([m for _, m in train]))
    y_valid = np.stack([m for _, m in valid])
    features_s = time.perf_counter() - t0
    hc = cfg.get("dictation", {})
    config = FrameDictationHeadConfig(dim=x_train[0].shape[-1], hidden=int(hc.get("hidden", 128)), stride=1,
                                      kernel=5, heads=int(hc.get("heads", 4)), dropout=float(hc.get("dropout", 0.1)),
                                      n_classes=len(DICTATION_CLASSES))
    torch.manual_seed(seed)
    head = FrameDictationHead(config)
    opt = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=1e-2)
    rng = np.random.default_rng(seed)
    order = np.argsort([x.shape[0] for x in x_train], kind="stable")  # similar lengths batch together
    batches = [order[i : i + 32] for i in range(0, len(order), 32)]
    best, history = None, []
    for epoch in range(epochs):
        head.train()
        rng.shuffle(batches)
        total = 0.0
        for idx in batches:
            loss = dictation_loss(head(*pad_utterances([x_train[i].float() for i in idx])), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        head.eval()
        with torch.no_grad():
            pred = torch.cat([head(*pad_utterances(x_valid[i : i + 32])) for i in range(0, len(x_valid), 32)])
        f1 = dictation_f1(pred.argmax(-1).numpy(), y_valid, DICTATION_CLASSES, LABELS)
        history.append({"epoch": epoch + 1, "train_loss": total / len(x_train), "valid_macro_f1": f1["macro_f1"]})
        if progress:
            print(f"text reader epoch {epoch + 1}: loss {total / len(x_train):.4f}, valid macro F1 "
                  f"{f1['macro_f1']:.3f}", flush=True)
        if best is None or f1["macro_f1"] > best[0]["macro_f1"]:
            best = (f1, epoch + 1, {k: v.detach().clone() for k, v in head.state_dict().items()})
    f1, best_epoch, state = best
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{HEAD_FILE}.tmp"
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
    tower_config = tower.config.to_dict() | {"path": None}
    summary = {"kind": "text_reader", "tower": tower_config, "config": config.to_dict(),
               "n_train": len(x_train), "n_train_split": len(train) - extra_reports, "extra_reports": extra_reports,
               "epochs": epochs, "best_epoch": best_epoch, "valid_macro_f1": f1["macro_f1"],
               "valid_f1_per_class": f1["per_class"], "valid_present_read_absent": f1.get("present_read_absent"),
               "history": history, "seconds": round(time.perf_counter() - t0, 1),
               "features_seconds": round(features_s, 1), "seed": seed}
    (out / HEAD_JSON).write_text(json.dumps(summary, indent=1))
    tmp.replace(out / HEAD_FILE)  # last: the head file marks a finished stage
    return summary


def load_text_reader(folder: str | Path):
    """(text tower, head) of a trained transcript reader folder."""
    from safetensors.torch import load_file

    from engine.errors import DataError
    from engine.models.text import TextTowerConfig, create_text_tower

    folder = Path(folder)
    if not (folder / HEAD_FILE).is_file():
        raise DataError("no trained transcript reader here (run speechct-train text-reader first)", folder)
    meta = json.loads((folder / HEAD_JSON).read_text())
    head = FrameDictationHead(FrameDictationHeadConfig.from_dict(meta["config"]))
    head.load_state_dict(load_file(str(folder / HEAD_FILE)))
    tower = create_text_tower(TextTowerConfig.from_dict(meta["tower"]))
    return tower.eval(), head.eval()
