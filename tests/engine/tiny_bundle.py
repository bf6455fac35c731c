"""A tiny bundle written with engine code only (tests/engine may not import train).

- CT encoder: the smoke config (16×32×32 input on a 20 × 11.2 × 11.2 mm grid), random weights;
- speech: the installed whisper-base backbone as a linear probe (``trainable_layers=0``), so the
  bundle stores only a random 512→64 projection;
- text: all-MiniLM-L6-v2 with a random 384→64 projection;
- prompts: "controlled": present_l = e_l, absent_l = −e_l in the 64-d space, so P(present) for
  finding l is ``sigmoid(2·s·x_l/|x|)`` — positive exactly when the embedding's coordinate l > 0;
- dictation head: linear, "controlled": logits (present, uncertain, absent, not mentioned) of finding l
  are ``(10·x_l, 10·x_{36+l} - 2, 10·x_{18+l}, 1)`` for the unit embedding x, so coordinate l says
  "present", 36 + l "uncertain", 18 + l "absent" and none of them leaves it "not mentioned"
  (``legacy=True``: the three-state head bundles shipped before "uncertain");
- thresholds: 0.5 each except Cardiomegaly at 0.7 (so a test can see a bundle threshold at work).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.labels import CLASS_SETS, LABELS, prompt_pair
from engine.models.ct import CTEncoder
from engine.models.ct_config import CTEncoderConfig
from engine.models.dictation import DictationHead, DictationHeadConfig
from engine.weights.bundle import save_bundle
from engine.weights.manifest import speech_entry

DIM = 64
LOGIT_SCALE = 10.0
N = len(LABELS)
SMOKE_SPEC = {"name": "smoke-16", "spacing": [20.0, 11.2, 11.2], "shape": [16, 32, 32],
              "hu_window": [-1000.0, 1000.0], "scale_divisor": 1000.0, "pad_value": -1.0,
              "orientation": "LPS", "clip_before_resample": False}
SMOKE_CT = {"name": "smoke", "input_size": [16, 32, 32], "patch_size": 8, "temporal_patch_size": 4,
            "channels": 1, "dim": 32, "spatial_depth": 1, "temporal_depth": 1, "heads": 2, "dim_head": 16,
            "ff_mult": 2.0, "attn_scale": 8.0, "rel_pos_hidden": None, "rel_pos_layers": 2,
            "codebook_size": 0, "latent_dim": DIM, "pooling": "attention", "pool_heads": 2,
            "temporal_peg_layout": "grid", "grad_checkpointing": False}
THRESHOLDS = {label: (0.7 if label == "Cardiomegaly" else 0.5) for label in LABELS}
#: validation AUROC per finding: Hiatal hernia's is too low to check against a dictation
AUROC = {label: (0.6 if label == "Hiatal hernia" else 0.9) for label in LABELS}


def controlled_prompts() -> torch.Tensor:
    """``[36, DIM]``: per label, present = e_l then absent = −e_l."""
    rows = []
    for i in range(N):
        e = torch.zeros(DIM)
        e[i] = 1.0
        rows += [e, -e]
    return torch.stack(rows)


def controlled_head(legacy: bool = False) -> DictationHead:
    c = 3 if legacy else 4
    head = DictationHead(DictationHeadConfig(dim=DIM, hidden=0, n_labels=N, dropout=0.0, n_classes=c))
    weight = torch.zeros(N * c, DIM)
    bias = torch.zeros(N * c)
    present, absent, silent = (0, 1, 2) if legacy else (0, 2, 3)
    for i in range(N):
        weight[c * i + present, i] = 10.0
        weight[c * i + absent, N + i] = 10.0
        bias[c * i + silent] = 1.0
        if not legacy:
            weight[c * i + 1, 2 * N + i] = 10.0
            bias[c * i + 1] = -2.0
    with torch.no_grad():
        head.net[0].weight.copy_(weight)
        head.net[0].bias.copy_(bias)
    return head.eval()


def embedding(present: tuple[str, ...] = (), absent: tuple[str, ...] = (),
              uncertain: tuple[str, ...] = ()) -> np.ndarray:
    """A unit vector that the controlled prompts/head read as: ``present`` positive / dictated present,
    ``absent`` dictated absent (coordinate 18 + l), ``uncertain`` dictated uncertain (36 + l), everything
    else negative on the image side."""
    v = np.zeros(DIM, dtype=np.float32)
    v[:N] = -0.05
    for label in present:
        v[LABELS.index(label)] = 1.0
    for label in absent:
        v[N + LABELS.index(label)] = 1.0
    for label in uncertain:
        v[2 * N + LABELS.index(label)] = 1.0
    return v / np.linalg.norm(v)


def write_tiny_bundle(folder: Path, seed: int = 0, *, ct_config: dict | None = None,
                      preprocess: dict | None = None, dictation: str = "embedding", legacy_head: bool = False,
                      reader: dict | None = None, extra_tensors: dict | None = None) -> Path:
    """Write the bundle to ``folder`` (replaced if present) and return it.

    ``dictation="frames"`` ships a random ``FrameDictationHead`` (reads the speech frames) instead
    of the controlled embedding head; ``legacy_head`` a three-state one, as bundles before "uncertain".

    ``ct_config``/``preprocess`` replace the smoke CT encoder and spec (e.g. a benchmark times the
    pilot bundle's encoder with random weights); the CT latent is always forced to :data:`DIM`.
    """
    ct_config = {**(ct_config or SMOKE_CT), "latent_dim": DIM}
    preprocess = preprocess or SMOKE_SPEC
    from engine.models.speech import SpeechStudentConfig
    from engine.models.text import TextTowerConfig
    from engine.weights.whisper import resolve_whisper_backbone

    torch.manual_seed(seed)
    ct = CTEncoder(CTEncoderConfig.from_dict(ct_config))
    backbone = resolve_whisper_backbone("whisper-base")
    speech_cfg = SpeechStudentConfig(backbone="whisper-base", trainable_layers=0, latent_dim=DIM)
    # a linear probe's only tensor, named as SpeechStudent.trainable_state_dict() names it
    d_model = int(backbone.config["d_model"])
    speech_head = {"projection.0.weight": torch.randn(DIM, d_model) / d_model**0.5}
    text_cfg = TextTowerConfig(backbone="all-MiniLM-L6-v2", pooling="mean", max_length=128, latent_dim=DIM)
    text_cfg_dict = text_cfg.to_dict()
    text_head = {"projection.weight": torch.randn(DIM, 384) / 384**0.5}
    texts = [t for label in LABELS for t in prompt_pair(label)]
    if dictation == "frames":
        from engine.models.dictation import FrameDictationHead, FrameDictationHeadConfig

        head = FrameDictationHead(FrameDictationHeadConfig(dim=d_model, hidden=16, heads=2, kernel=3))
    else:
        head = controlled_head(legacy_head)
    manifest = {
        "name": "tiny-test",
        "labels": list(LABELS),
        "preprocess": preprocess,
        "ct_encoder": ct_config,
        "speech": speech_entry(speech_cfg.to_dict(), backbone.sha256),
        "text": {"backbone": text_cfg.backbone, "frozen": True, "pooling": "mean", "config": text_cfg_dict},
        "space": {"dim": DIM, "logit_scale": LOGIT_SCALE},
        "prompts": {"kind": "text", "texts": texts, "group": "prompts"},
        "thresholds": {"method": "fixed (test bundle)", "values": THRESHOLDS, "auroc": AUROC},
        "dictation_head": {"labels": list(LABELS), "classes": list(CLASS_SETS[head.config.n_classes]),
                           "group": "dictation_head", "config": head.config.to_dict()},
        "provenance": {"data": "none: random weights for tests", "seeds": {"all": seed}},
    }
    if reader is not None:  # a dictation_reader section (engine.runtime.Engine.read_dictation)
        manifest["dictation_reader"] = reader
    return save_bundle(folder, manifest=manifest, overwrite=True, tensors={
        "ct_encoder": ct.state_dict(),
        "speech_head": speech_head,
        "text_head": text_head,
        "dictation_head": head.state_dict(),
        "prompts": {"embeddings": controlled_prompts()},
        **(extra_tensors or {}),
    })


_BUNDLE: Path | None = None


def tiny_bundle_path() -> Path:
    """The tiny bundle, written once per test process into a temporary folder (removed at exit)."""
    global _BUNDLE
    if _BUNDLE is None:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="speechct-tiny-bundle-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _BUNDLE = write_tiny_bundle(root / "tiny")
    return _BUNDLE
