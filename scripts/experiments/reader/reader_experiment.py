"""Does a dictation reader hold on wording it never heard? Readers side by side on the report grammar.

Stages (each resumable; everything under ``--work``):

  corpus   spoken reports and single sentences from the grammar (``train.synth.reports``) with
           phantom-free details (``sample_details``): train wording in the training voices, and the
           evaluation sets in the held-out voices: ``trainheld`` (training wording), ``valid`` and ``test``
           (held-out wording).
  frames   the speech student's encoder frames of every clip (a bundle's student, frozen), fp16.
  tokens   MiniLM token states of the exact text read aloud (the text ceiling's input).
  fit      a frame dictation head (``engine.models.dictation.FrameDictationHead``, 4 states) on the
           train sets, epoch chosen on ``valid``, scored on ``trainheld`` / ``valid`` / ``test``;
           ``--input frames`` (speech-native) or ``--input tokens`` (text ceiling).

    python scripts/experiments/reader/reader_experiment.py corpus --work W
    python scripts/experiments/reader/reader_experiment.py frames --work W --bundle assets/models/default
    python scripts/experiments/reader/reader_experiment.py tokens --work W
    python scripts/experiments/reader/reader_experiment.py fit --work W --input frames

Results go to ``W/results.jsonl`` (one line per fit); docs/reader-experiments.md records them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

SETS = {  # name: (wording, voices, kind, count)
    "train_reports": ("train", "train", "report", 1200),
    "train_sentences": ("train", "train", "sentence", 2500),
    "trainheld": ("train", "valid", "report", 200),
    "valid": ("valid", "valid", "report", 250),
    "test": ("test", "valid", "report", 300),
}


def _items(name: str, seed: int) -> list[dict]:
    from engine.labels import LABELS
    from train.synth.cohort import sample_cohort
    from train.synth.reports import sample_details, write_report

    wording, _, kind, count = SETS[name]
    rng = np.random.default_rng([seed, list(SETS).index(name)])
    n_studies = count if kind == "report" else count // 3
    items = []
    for i, patient in enumerate(sample_cohort(n_studies, seed=seed * 100 + list(SETS).index(name))):
        findings = {lab: sample_details(lab, rng) for lab in patient.present}
        rep = write_report(findings, wording=wording, seed=int(rng.integers(1 << 31)))
        if kind == "report":
            items.append({"id": f"{name}_{i:05d}", "text": rep.dictation, "states": rep.mentions,
                          "labels": sorted(findings)})
        else:  # the report's sentences one by one (a sentence says nothing of the other findings)
            from train.synth.grammar import NOT_MENTIONED

            for j, (text, states) in enumerate(rep.sentences):
                full = dict.fromkeys(LABELS, NOT_MENTIONED)
                full.update(states)
                items.append({"id": f"{name}_{i:05d}_{j}", "text": text, "states": full, "labels": sorted(findings)})
    return items[:count]


def cmd_corpus(a) -> None:
    import soundfile as sf

    from train.synth.speechrate import _draw_reading, _rng, fit_rate
    from train.synth.voices import resolve_voices, speak

    for name, (_, voices, _, _) in SETS.items():
        out = a.work / "audio" / name
        out.mkdir(parents=True, exist_ok=True)
        index = a.work / f"{name}.jsonl"
        if index.exists():
            print(f"{name}: done")
            continue
        t0 = time.time()
        rows = []
        pool = resolve_voices(None, "train" if voices == "train" else "valid")
        for it in _items(name, a.seed):
            wav = out / f"{it['id']}.wav"
            rng = _rng(a.seed, name, it["id"])
            voice, rate, pitch = _draw_reading(rng, pool)
            rate = fit_rate(it["text"], rate, 29.0)
            if not wav.exists():
                audio = speak(it["text"], voice, rate, pitch)
                sf.write(wav, audio, 16000, subtype="PCM_16")
            rows.append({**it, "voice": voice.id, "wav": str(wav.relative_to(a.work))})
        index.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{name}: {len(rows)} clips in {time.time() - t0:.0f} s")


def _rows(work: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (work / f"{name}.jsonl").read_text().splitlines()]


def cmd_frames(a) -> None:
    import soundfile as sf
    import torch

    from engine.runtime import Engine

    torch.set_num_threads(a.threads)
    eng = Engine(a.bundle, device="cpu", cache_dir=False)
    tag = a.tag or Path(a.bundle).name
    for name in a.sets or SETS:
        out = a.work / "frames" / tag / name
        out.mkdir(parents=True, exist_ok=True)
        t0, n = time.time(), 0
        for r in _rows(a.work, name)[: a.limit or None]:
            f = out / f"{r['id']}.npy"
            if f.exists():
                continue
            wav, sr = sf.read(a.work / r["wav"], dtype="float32")
            _, frames = eng.encode_speech_frames(wav, sr, keep_frames=True)
            fr = frames.float()
            if fr.shape[0] % 2:
                fr = torch.cat([fr, fr[-1:]])
            np.save(f, fr.view(-1, 2, fr.shape[1]).mean(1).numpy().astype(np.float16))  # 40 ms frames
            n += 1
        print(f"frames {name}: {n} encoded in {time.time() - t0:.0f} s", flush=True)


def cmd_tokens(a) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    import engine.offline  # noqa: F401 - no hub access
    from engine.models.text import resolve_text_backbone

    torch.set_num_threads(a.threads)
    path = resolve_text_backbone("all-MiniLM-L6-v2")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    for name in SETS:
        out = a.work / "tokens" / name
        out.mkdir(parents=True, exist_ok=True)
        rows = [r for r in _rows(a.work, name) if not (out / f"{r['id']}.npy").exists()]
        for i in range(0, len(rows), 32):
            batch = rows[i:i + 32]
            enc = tok([r["text"] for r in batch], padding=True, truncation=True, max_length=256, return_tensors="pt")
            with torch.no_grad():
                h = model(**enc).last_hidden_state
            for r, hs, m in zip(batch, h, enc["attention_mask"]):
                np.save(out / f"{r['id']}.npy", hs[m.bool()].numpy().astype(np.float16))
        print(f"tokens {name}: {len(rows)} encoded")


def _load(work: Path, source: str, name: str, limit: int | None = None):
    import torch

    from engine.labels import DICTATION_CLASSES, LABELS

    rows = [r for r in _rows(work, name) if (work / source / name / f"{r['id']}.npy").exists()]
    if limit:
        rows = rows[:limit]
    x = [torch.from_numpy(np.load(work / source / name / f"{r['id']}.npy").astype(np.float32)) for r in rows]
    y = torch.tensor([[DICTATION_CLASSES.index(r["states"][lab]) for lab in LABELS] for r in rows])
    return x, y


def _score(head, x, y) -> dict:
    import torch

    from engine.labels import DICTATION_CLASSES, LABELS
    from engine.models.dictation import pad_utterances
    from train.metrics import dictation_f1

    head.eval()
    with torch.no_grad():
        logits = torch.cat([head(*pad_utterances(x[i:i + 32])) for i in range(0, len(x), 32)])
    pred = logits.argmax(-1).numpy()
    return dictation_f1(pred, y.numpy(), DICTATION_CLASSES, LABELS)


def cmd_fit(a) -> None:
    import torch

    from engine.models.dictation import (
        FrameDictationHead,
        FrameDictationHeadConfig,
        dictation_loss,
        pad_utterances,
    )

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    source = "tokens" if a.input == "tokens" else f"frames/{a.tag}"
    train_sets = ["train_reports"] + (["train_sentences"] if a.sentences else [])
    xs, ys = [], []
    for s in train_sets:
        x, y = _load(a.work, source, s)
        xs += x
        ys.append(y)
    y_train = torch.cat(ys)
    evals = {s: _load(a.work, source, s) for s in ("valid", "trainheld", "test")}
    dim = xs[0].shape[1]
    cfg = FrameDictationHeadConfig(dim=dim, hidden=a.hidden, stride=1, kernel=a.kernel, heads=4,
                                   dropout=a.dropout)
    head = FrameDictationHead(cfg)
    opt = torch.optim.AdamW(head.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    order = np.arange(len(xs))
    rng = np.random.default_rng(a.seed)
    best, history, t0 = None, [], time.time()
    for epoch in range(a.epochs):
        head.train()
        rng.shuffle(order)
        total = 0.0
        for i in range(0, len(order), a.batch):
            idx = order[i:i + a.batch]
            batch = [xs[j] for j in idx]
            if a.frame_dropout:
                batch = [b[torch.rand(b.shape[0]) > a.frame_dropout] if b.shape[0] > 8 else b for b in batch]
            loss = dictation_loss(head(*pad_utterances(batch)), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        v = _score(head, *evals["valid"])
        history.append({"epoch": epoch + 1, "loss": total / len(order), "valid_macro_f1": v["macro_f1"]})
        print(f"epoch {epoch + 1}: loss {total / len(order):.4f} valid macro F1 {v['macro_f1']:.3f} "
              f"({time.time() - t0:.0f} s)", flush=True)
        if best is None or v["macro_f1"] > best[0]:
            best = (v["macro_f1"], epoch + 1, {k: t.clone() for k, t in head.state_dict().items()})
    head.load_state_dict(best[2])
    result = {"input": a.input, "tag": a.tag if a.input == "frames" else "MiniLM", "sentences": a.sentences,
              "config": cfg.to_dict(), "epochs": a.epochs, "best_epoch": best[1], "lr": a.lr,
              "seconds": round(time.time() - t0), "history": history}
    for s, (x, y) in evals.items():
        r = _score(head, x, y)
        result[s] = {k: r[k] for k in ("macro_f1", "per_class", "present_read_absent", "confusion")}
        pc = " / ".join(f"{v:.2f}" for v in r["per_class"].values())
        print(f"{s:10s} macro F1 {r['macro_f1']:.3f} ({pc}), present read absent {r['present_read_absent']:.3f}")
    with open(a.work / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    if a.save:
        torch.save({"config": cfg.to_dict(), "state": head.state_dict()}, a.save)




# ----------------------------------------------------------------------------- sentence-embedding reader


def _split_sentences(text: str) -> list[str]:
    import re

    t = re.sub(r"\b(new paragraph|next paragraph|new line|full stop|period|stop)\b", ".", text)
    t = re.sub(r"\bcomma\b", ",", t)
    return [s.strip(" .,") for s in re.split(r"(?<!\d)[.?!:](?!\d)", t) if len(s.strip(" .,").split()) >= 1]


def cmd_sentemb(a) -> None:
    """Text only: per-sentence MiniLM sentence embeddings (mean pooled, unit norm), a per-finding 4-way
    linear classifier trained on the single training sentences, aggregated over a report's sentences."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    import engine.offline  # noqa: F401
    from engine.labels import DICTATION_CLASSES, LABELS
    from engine.models.text import resolve_text_backbone
    from train.metrics import dictation_f1

    torch.set_num_threads(a.threads)
    path = resolve_text_backbone("all-MiniLM-L6-v2")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def embed(texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), 64):
            enc = tok(texts[i:i + 64], padding=True, truncation=True, max_length=128, return_tensors="pt")
            with torch.no_grad():
                h = model(**enc).last_hidden_state
            m = enc["attention_mask"][..., None].float()
            out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
        return torch.cat(out)

    train = _rows(a.work, "train_sentences")
    x = embed([r["text"] for r in train])
    y = torch.tensor([[DICTATION_CLASSES.index(r["states"][lab]) for lab in LABELS] for r in train])
    head = torch.nn.Linear(x.shape[1], len(LABELS) * 4)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(head(x).view(-1, 4), y.view(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    result = {"input": "sentence embeddings (MiniLM, text)", "train": "train_sentences"}
    for name in ("trainheld", "valid", "test"):
        rows = _rows(a.work, name)
        preds = []
        for r in rows:
            sents = _split_sentences(r["text"]) or [r["text"]]
            with torch.no_grad():
                p = head(embed(sents)).view(len(sents), len(LABELS), 4).softmax(-1)
            mentioned = 1 - p[..., 3]  # [S, L]
            best = mentioned.argmax(0)
            row = []
            for j in range(len(LABELS)):
                s = int(best[j])
                row.append(3 if mentioned[s, j] < 0.5 else int(p[s, j, :3].argmax()))
            preds.append(row)
        t = np.array([[DICTATION_CLASSES.index(r["states"][lab]) for lab in LABELS] for r in rows])
        out = dictation_f1(np.array(preds), t, DICTATION_CLASSES, LABELS)
        result[name] = {k: out[k] for k in ("macro_f1", "per_class", "present_read_absent")}
        pc = " / ".join(f"{v:.2f}" for v in out["per_class"].values())
        print(f"{name:10s} macro F1 {out['macro_f1']:.3f} ({pc}), present read absent {out['present_read_absent']:.3f}")
    with open(a.work / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=("corpus", "frames", "tokens", "fit", "sentemb"))
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bundle", type=Path, default=ROOT / "assets" / "models" / "default")
    p.add_argument("--tag", default="default", help="frames folder name (which student)")
    p.add_argument("--input", choices=("frames", "tokens"), default="frames")
    p.add_argument("--sentences", action="store_true", help="also train on the single-sentence clips")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--kernel", type=int, default=5)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--frame-dropout", type=float, default=0.0)
    p.add_argument("--save", type=Path, default=None)
    p.add_argument("--limit", type=int, default=None, help="frames: at most this many clips per set")
    p.add_argument("--sets", nargs="+", default=None, choices=list(SETS), help="frames: which sets, in order")
    a = p.parse_args()
    {"corpus": cmd_corpus, "frames": cmd_frames, "tokens": cmd_tokens, "fit": cmd_fit, "sentemb": cmd_sentemb}[a.stage](a)


if __name__ == "__main__":
    main()
