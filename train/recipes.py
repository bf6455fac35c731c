"""Training recipes: the CT–text teacher, the speech student (naive or distilled), the dictation head.

- **teacher**: ``engine.models.ct.CTEncoder`` + ``engine.models.text.TextTower`` (frozen backbone,
  trainable bias-free projection) + a learnable logit scale, symmetric InfoNCE between each CT
  volume and its ``Findings_EN`` (CT-CLIP's objective). Optionally (``teacher.aux_label_weight``)
  plus a binary cross-entropy on CT-RATE's 18 labels through a linear head on the CT embedding,
  for from-scratch runs on small synthetic sets. The frozen text backbone's pooled features and
  the prepared volumes come from the cache (``train.cache``).
- **student**: ``engine.models.speech.SpeechStudent`` (Whisper-base, top layers tuned) trained with
  ``InfoNCE(speech, CT) + λ · (1 − cos(speech, teacher text))`` (``engine.models.space.student_loss``);
  the teacher is frozen, its CT and text embeddings and the frozen lower Whisper layers' outputs
  are computed once into the cache; the logit scale is the teacher's, fixed. λ = 0 is the naive
  student.
- **dictation head**: ``engine.models.dictation.DictationHead`` trained afterwards, by
  cross-entropy per finding on the mentions CSV, on the *frozen* trained student's embeddings.
  Separate rather than joint so the head cannot pull the speech space away from the CT space
  (the student keeps exactly the paper's objective) and so it trains in seconds on cached
  embeddings, with many epochs.

Run folders: ``<out>/teacher/`` (``last.pt``, ``metrics.jsonl``, ``model.safetensors`` +
``model.json``), ``<out>/student/`` (or ``student-naive`` for λ = 0) and ``<out>/dictation/``.
Data folder: ``<data>/ct-rate/`` and ``<data>/speech-rate/`` (``speechct-train synth``'s layout),
cache under ``<data>/cache/``.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import DataError
from engine.labels import DICTATION_CLASSES, LABELS, prompt_pair
from engine.models.ct import CTEncoder, load_ct_config
from engine.models.dictation import (
    DictationHead,
    DictationHeadConfig,
    FrameDictationHead,
    build_head,
    dictation_loss,
    head_config_class,
)
from engine.models.space import CTCLIP_LOG_SCALE_INIT, LogitScale, info_nce, student_loss
from engine.models.speech import (
    SpeechStudent,
    SpeechStudentConfig,
    collate_windows,
    load_speech_config,
    pool_frames,
)
from engine.models.text import TextTowerConfig, create_text_tower
from engine.preprocess import PreprocessSpec, get_spec, prepare_ct
from engine.weights.factory import speech_student_from_backbone
from train import cache as C
from train.distributed import DistEnv, gather_with_grad

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
MODEL_FILE = "model.safetensors"
MODEL_JSON = "model.json"


# --------------------------------------------------------------------------- configs


def load_run_config(name_or_path: str | Path) -> dict[str, Any]:
    """A training config: a shipped name (``paper``, ``cpu-default``, ``smoke``) or a JSON path."""
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.is_file()):
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
        raise DataError(f"no training config {name_or_path!r} (shipped: {shipped})", path)
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"training config is not valid JSON: {exc.msg} at line {exc.lineno}", path) from exc
    cfg.setdefault("name", path.stem)
    return cfg


def _spec(cfg: dict) -> PreprocessSpec:
    spec = cfg["preprocess"]
    return PreprocessSpec.from_dict(spec) if isinstance(spec, dict) else get_spec(spec)


def _ct_config(cfg: dict):
    from engine.models.ct_config import CTEncoderConfig

    c = cfg["ct_encoder"]
    return CTEncoderConfig.from_dict(c) if isinstance(c, dict) else load_ct_config(c)


def _text_config(cfg: dict) -> TextTowerConfig:
    t = cfg.get("text_tower", "minilm")
    return TextTowerConfig.from_dict(t) if isinstance(t, dict) else TextTowerConfig.named(t)


def _speech_config(cfg: dict) -> SpeechStudentConfig:
    s = cfg.get("speech", "whisper-base-top2")
    return SpeechStudentConfig.from_dict(s) if isinstance(s, dict) else load_speech_config(s)


def stage_dir(out: str | Path, stage: str, distill_weight: float | None = None) -> Path:
    """``<out>/teacher``, ``<out>/student`` (λ > 0), ``<out>/student-naive`` (λ = 0), ``<out>/dictation``."""
    out = Path(out)
    if stage == "student":
        return out / ("student-naive" if distill_weight == 0 else "student")
    return out / stage


# --------------------------------------------------------------------------- data


@dataclass
class Study:
    """One volume with what training needs of it (no voxels or audio in memory)."""

    volume_name: str
    volume_path: Path
    overrides: dict[str, Any]
    findings: str  # the text the teacher is trained on
    spoken: str  # the text read aloud (the written Findings are the distillation target)
    labels: np.ndarray  # (18,) 0/1
    mentions: np.ndarray  # (18,) class indices into DICTATION_CLASSES (train.mentions)
    audio_path: Path | None
    record: Any


def read_studies(data: str | Path, split: str, *, audio: bool, limit: int | None = None) -> list[Study]:
    """The studies of a split under ``data`` (``ct-rate/`` + ``speech-rate/``), optionally the first ``limit``."""
    from train.data import CTRateIndex, SpeechRateIndex

    data = Path(data)
    ct_root = data / "ct-rate"
    speech_root = data / "speech-rate" if audio else None
    if not ct_root.is_dir():
        raise DataError("no ct-rate/ folder in the data folder (run speechct-train synth first)", data)
    if audio and not speech_root.is_dir():
        raise DataError("no speech-rate/ folder in the data folder (synth without --no-audio)", data)
    index = CTRateIndex(ct_root, split, speech_root=speech_root)
    spoken = {}
    if audio:
        spoken = {r.volume_name: r.text for r in SpeechRateIndex(speech_root, split)}
    studies = []
    for r in index.records[: limit or None]:
        overrides = {}
        if not r.fixed and r.meta is not None:
            overrides = {"slope": r.meta.slope, "intercept": r.meta.intercept, "spacing": list(r.meta.spacing)}
        studies.append(Study(r.volume_name, r.path, overrides, r.findings, spoken.get(r.volume_name) or r.findings,
                             r.labels.astype(np.float32), r.mentions.astype(np.int8), r.audio_path, r))
    return studies


def prepared_ct(study: Study, spec: PreprocessSpec, cache: C.FrozenCache) -> tuple[str, np.ndarray]:
    """(cache key, fp16 volume of ``spec.shape``) for one study, prepared once."""
    from train.data import load_record_volume

    key = C.ct_key(study.volume_path, study.overrides, spec.to_json())
    arr = cache.get_or_compute("ct", key, lambda: prepare_ct(load_record_volume(study.record), spec))
    return key, arr


def prepare_ct_cache(studies: list[Study], spec: PreprocessSpec, cache: C.FrozenCache,
                     progress: bool = False) -> list[str]:
    keys = []
    it = studies
    if progress:
        from tqdm import tqdm

        it = tqdm(studies, desc="prepare CT", unit="vol", dynamic_ncols=True)
    for s in it:
        keys.append(prepared_ct(s, spec, cache)[0])
    return keys


def text_backbone_hash(tower) -> str:
    return C.state_hash({k: v for k, v in tower.backbone.state_dict().items()})


def text_features(texts: list[str], tower, cache: C.FrozenCache, backbone_hash: str,
                  batch: int = 32) -> tuple[list[str], np.ndarray]:
    """Frozen backbone pooled features ``[n, hidden]`` float32 (cached per text)."""
    cfg = tower.config.to_dict()
    cfg["path"] = None
    keys = [C.text_features_key(t, backbone_hash, cfg) for t in texts]
    out: list[np.ndarray | None] = [cache.get("text_features", k) for k in keys]
    todo = [i for i, v in enumerate(out) if v is None]
    with torch.no_grad():
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            tokens = tower.tokenize([texts[i] for i in chunk])
            feats = tower.pooled_features(**tokens).float().cpu().numpy()
            for i, f in zip(chunk, feats):
                out[i] = cache.put("text_features", keys[i], f, dtype=np.float32)
    return keys, np.stack(out).astype(np.float32)


def text_lower_states(texts: list[str], tower, cache: C.FrozenCache, backbone_hash: str,
                      batch: int = 32) -> np.ndarray:
    """What enters the tower's tuned layers for each text (an object array of ``[tokens, hidden]``
    float16 arrays, real tokens only), computed once and cached: a tuned top layer then trains
    without running the frozen layers below it again."""
    cfg = tower.config.to_dict()
    cfg["path"] = None
    keys = [C.text_lower_key(t, backbone_hash, cfg, tower.first_tuned) for t in texts]
    out = np.empty(len(texts), dtype=object)
    for i, k in enumerate(keys):
        out[i] = cache.get("text_lower", k)
    todo = [i for i, v in enumerate(out) if v is None]
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        tokens = tower.tokenize([texts[i] for i in chunk])
        states = tower.lower_states(**tokens).float().cpu().numpy()
        mask = tokens["attention_mask"].bool().cpu().numpy()
        for i, h, m in zip(chunk, states, mask):
            out[i] = cache.put("text_lower", keys[i], h[m])
    return out


def pad_text_states(states, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A list of ``[tokens_i, hidden]`` arrays as one zero-padded float32 batch and its attention mask."""
    longest = max(len(h) for h in states)
    hidden = np.zeros((len(states), longest, states[0].shape[1]), dtype=np.float32)
    mask = np.zeros((len(states), longest), dtype=np.int64)
    for i, h in enumerate(states):
        hidden[i, : len(h)] = h
        mask[i, : len(h)] = 1
    return torch.from_numpy(hidden).to(device), torch.from_numpy(mask).to(device)


def _ct_batch(keys: list[str], cache: C.FrozenCache, device, augment: dict | None = None,
              seed: int = 0) -> torch.Tensor:
    arrays = [cache.get("ct", k) for k in keys]
    if any(a is None for a in arrays):
        raise DataError("a prepared volume vanished from the cache during training", cache.root)
    batch = np.stack(arrays).astype(np.float32)
    if augment:
        batch = augment_ct(batch, np.random.default_rng(seed), **augment)
    return torch.from_numpy(batch).unsqueeze(1).to(device)


def augment_ct(batch: np.ndarray, rng: np.random.Generator, shift: tuple[int, int, int] = (0, 0, 0),
               noise: float = 0.0, scale: float = 0.0) -> np.ndarray:
    """Training-time jitter of prepared volumes ``[B, z, y, x]`` (values in CT-CLIP's [-1, 1] HU/1000):
    a random translation of up to ``shift`` voxels per axis (patient positioning; the edge is
    padded with air, -1), additive Gaussian noise of SD ``noise`` (scanner noise) and a random
    gain of up to ±``scale`` around -1 (calibration drift). No flips: reports name sides.

    Only the training batches of the teacher get it, so that a small synthetic set teaches findings
    rather than the exact voxels of each patient.
    """
    out = np.full_like(batch, -1.0)
    for b in range(batch.shape[0]):
        d = [int(rng.integers(-m, m + 1)) if m else 0 for m in shift]
        src = tuple(slice(max(0, -k), n - max(0, k)) for k, n in zip(d, batch.shape[1:]))
        dst = tuple(slice(max(0, k), n - max(0, -k)) for k, n in zip(d, batch.shape[1:]))
        out[(b, *dst)] = batch[(b, *src)]
        if scale:
            out[b] = (out[b] + 1.0) * (1.0 + rng.uniform(-scale, scale)) - 1.0
    if noise:
        out += rng.normal(0.0, noise, size=out.shape).astype(np.float32)
    return np.clip(out, -1.0, 1.0)


# --------------------------------------------------------------------------- quick monitors


def recall_at_k(query: torch.Tensor, gallery: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """Training monitor: :func:`train.metrics.recall_at_k` (the one implementation) as ``{"R@k": recall}``
    for the k the gallery can hold."""
    from train.metrics import recall_at_k as recall

    ks = [k for k in ks if k <= gallery.shape[0]]
    found = recall(query.detach().float().cpu().numpy(), gallery.detach().float().cpu().numpy(), ks)
    return {f"R@{k}": entry["recall"] for k, entry in found["k"].items()}


def _log_odds(rate: np.ndarray) -> torch.Tensor:
    """``log(p / (1 - p))`` of rates clipped to [1e-4, 1 - 1e-4] (a finding no study has stays finite)."""
    rate = np.clip(rate, 1e-4, 1 - 1e-4)
    return torch.from_numpy(np.log(rate / (1 - rate))).float()


def zero_shot_auroc(ct: torch.Tensor, prompts: torch.Tensor, labels: np.ndarray, scale: float) -> float:
    """Training monitor: macro AUROC of CT-CLIP's prompt-pair softmax (train.evaluate is the real protocol)."""
    from sklearn.metrics import roc_auc_score

    from engine.findings import zero_shot_probabilities

    # prompts are interleaved (present, not present) per label, as prompt_texts() orders them
    p_present = zero_shot_probabilities(ct, prompts[0::2], prompts[1::2], scale).numpy()
    aucs = [roc_auc_score(labels[:, j], p_present[:, j]) for j in range(labels.shape[1])
            if 0 < labels[:, j].sum() < labels.shape[0]]
    return float(np.mean(aucs)) if aucs else float("nan")


def prompt_direction_cosine(prompts: torch.Tensor) -> float:
    """Mean pairwise cosine of the 18 findings' present − absent prompt directions (``prompts``
    interleaved as :func:`prompt_texts`): near 1 when "not" moves every prompt the same way, so that
    zero-shot scores share one "how abnormal" axis instead of reading each finding."""
    p = F.normalize(prompts.float(), dim=-1)
    d = F.normalize(p[0::2] - p[1::2], dim=-1)
    c = d @ d.T
    n = c.shape[0]
    return float((c.sum() - c.diagonal().sum()) / (n * (n - 1)))


def prompt_texts() -> list[str]:
    """The 36 zero-shot prompts: for each label in order, "… is present." then "… is not present."."""
    return [t for lab in LABELS for t in prompt_pair(lab)]


# --------------------------------------------------------------------------- teacher


class TeacherModel(nn.Module):
    """The trainable part of the teacher: CT encoder, text projection, logit scale, and (when the
    config asks for the auxiliary label loss) a linear finding classifier on the CT embedding that
    only shapes training: bundles do not carry it."""

    def __init__(self, ct: CTEncoder, text_projection: nn.Linear, logit_scale: LogitScale,
                 label_head: nn.Linear | None = None, token_head: nn.Linear | None = None,
                 text_top: list[nn.Module] | None = None):
        super().__init__()
        self.ct = ct
        self.text_projection = text_projection
        #: the text tower's tuned top layers (shared with the tower), so checkpoints carry them
        self.text_top = nn.ModuleList(text_top) if text_top else None
        self.logit_scale = logit_scale
        self.label_head = label_head
        #: per-token finding classifier for the dense loss (``teacher.dense_aux_weight``); training only
        self.token_head = token_head


def build_teacher(cfg: dict, *, pretrained_text: bool = True):
    """(TeacherModel, TextTower) fresh from a config; the tower shares the model's projection."""
    text = create_text_tower(_text_config(cfg)) if pretrained_text else None
    ct_config = _ct_config(cfg)
    ct = CTEncoder(ct_config)
    proj = text.projection if text is not None else nn.Linear(384, ct_config.latent_dim, bias=False)
    # CT-CLIP starts the multiplier at e (log 1.0) and has 10^5 steps to raise it; a short run may
    # start sharper (CLIP's 1/0.07), else its zero-shot probabilities stay squeezed around 0.5
    init = cfg.get("logit_scale_init")
    scale = LogitScale(math.log(init) if init else CTCLIP_LOG_SCALE_INIT, max_scale=cfg.get("logit_scale_max", 100.0))
    head = nn.Linear(ct_config.latent_dim, len(LABELS)) if cfg["teacher"].get("aux_label_weight") else None
    tokens = nn.Linear(ct_config.dim, len(LABELS)) if cfg["teacher"].get("dense_aux_weight") else None
    top = text.tuned_layers() if text is not None and text.config.tuned_layers else None
    return TeacherModel(ct, proj, scale, head, tokens, top), text


#: Weight of a finding's tokens against the (many more) tokens without it in the dense loss.
DENSE_POS_WEIGHT = 5.0


def footprint_targets(studies: list[Study], keys: list[str], ct_root: Path, spec: PreprocessSpec,
                      ct_config, cache: C.FrozenCache) -> np.ndarray:
    """``(n, 18, t, h, w)`` uint8 per-token finding targets from the synthetic studies' footprints
    (:mod:`train.footprints`), cached beside the prepared volumes."""
    from train.footprints import footprint_path, read_footprints, token_targets

    tubelet = (ct_config.temporal_patch_size, ct_config.patch_size, ct_config.patch_size)
    out = []
    for study, key in zip(studies, keys):
        path = footprint_path(ct_root, study.volume_name)
        if not path.is_file():
            raise DataError("teacher.dense_aux_weight needs the synthetic footprints, and this study has none "
                            "(real CT-RATE has none: set dense_aux_weight to 0; a synthetic set from before "
                            "footprints existed: run speechct-train synth again on the same folder)", path)
        ckey = C.json_hash({"ct": key, "tubelet": tubelet, "footprint": C.file_sha256(path)})
        out.append(cache.get_or_compute("footprint_tokens", ckey,
                                        lambda p=path: token_targets(read_footprints(p), spec, tubelet), dtype=np.uint8))
    return np.stack(out).astype(np.uint8)


#: Training volumes the CT encoder's density-path standardisation is fitted on (deterministic: the first ones).
DENSITY_FIT_VOLUMES = 512


class TeacherRecipe:
    """CT encoder + text projection, symmetric InfoNCE with embeddings gathered over ranks."""

    stage = "teacher"

    def __init__(self, cfg: dict, data: str | Path, *, env: DistEnv, progress: bool = True,
                 limit: dict[str, int] | None = None):
        self.cfg = cfg
        self.env = env
        self.spec = _spec(cfg)
        self.cache = C.FrozenCache(Path(data) / "cache")
        torch.manual_seed(int(cfg.get("seed", 0)))
        self.module, self.text = build_teacher(cfg)
        self.module.to(env.device)
        self.text.to(env.device)
        limit = limit or cfg.get("limit") or {}
        t0 = time.perf_counter()
        self.train = read_studies(data, "train", audio=False, limit=limit.get("train"))
        self.valid = read_studies(data, "valid", audio=False, limit=limit.get("valid"))
        show = progress and env.is_main
        self.train_keys = prepare_ct_cache(self.train, self.spec, self.cache, show)
        self.valid_keys = prepare_ct_cache(self.valid, self.spec, self.cache, show)
        density = self.module.ct.density
        if density is not None:  # a resumed run then loads the same statistics from its checkpoint
            keys = self.train_keys[:DENSITY_FIT_VOLUMES]
            density.fit_standardization(_ct_batch(keys[i : i + 16], self.cache, env.device)
                                        for i in range(0, len(keys), 16))
        self.backbone_hash = text_backbone_hash(self.text)
        self.train_text = self._text_inputs([s.findings for s in self.train])
        self.valid_text = self._text_inputs([s.findings for s in self.valid])
        self.prompt_feats = self._text_inputs(prompt_texts())
        self.train_tokens = None
        if self.cfg["teacher"].get("dense_aux_weight"):
            self.train_tokens = footprint_targets(self.train, self.train_keys, Path(data) / "ct-rate", self.spec,
                                                  self.module.ct.config, self.cache)
        if self.cfg["teacher"].get("prior_bias_init"):
            self._init_head_biases()
        self.prep_seconds = time.perf_counter() - t0

    @torch.no_grad()
    def _init_head_biases(self) -> None:
        """``teacher.prior_bias_init``: start each head's bias at the log-odds its loss is minimised by when
        the inputs say nothing (the training prevalence; for the dense head, weighted by its positive
        weight). From 0 the bias needs thousands of steps at these rates to get there, and meanwhile
        the loss pushes every logit down through the encoder instead of teaching it the findings."""
        if self.module.label_head is not None:
            self.module.label_head.bias.copy_(self.prevalence_log_odds.to(self.module.label_head.bias.device))
        if self.module.token_head is not None and self.train_tokens is not None:
            rate = self.train_tokens.astype(np.float64).mean(axis=(0, 2, 3, 4))
            weighted = DENSE_POS_WEIGHT * rate / (DENSE_POS_WEIGHT * rate + 1 - rate)
            self.module.token_head.bias.copy_(_log_odds(weighted).to(self.module.token_head.bias.device))

    @property
    def n_train(self) -> int:
        return len(self.train)

    def head_parameters(self) -> set[int]:
        heads = {id(p) for p in self.module.text_projection.parameters()} | {id(self.module.logit_scale.log_scale)}
        for head in (self.module.label_head, self.module.token_head):
            if head is not None:
                heads |= {id(p) for p in head.parameters()}
        return heads

    def init_from(self, folder: str | Path) -> None:
        """Start from a finished teacher's weights (``--init-from``): the same config, a new schedule."""
        from safetensors.torch import load_file

        path = Path(folder) / MODEL_FILE
        state = load_file(str(path))
        try:
            self.module.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1].strip()
            raise DataError(f"these weights do not fit this config's teacher ({first})", path) from exc
        self.initialised_from = {"folder": str(folder), "weights_sha256": C.state_hash(state)}

    def lr_multipliers(self) -> dict[int, float]:
        """A tuned pretrained text layer learns at ``teacher.text_lr_mult`` x lr (default 0.1): the
        encoder and heads start from scratch, the layer from MiniLM's weights."""
        if self.module.text_top is None:
            return {}
        mult = float(self.cfg["teacher"].get("text_lr_mult", 0.1))
        return {id(p): mult for p in self.module.text_top.parameters()}

    def _text_inputs(self, texts: list[str]) -> np.ndarray:
        """Per text, what the trained part of the text side starts from: the frozen pooled features
        ``[n, hidden]``, or with tuned layers the cached states that enter them (object array)."""
        if self.text.config.tuned_layers:
            return text_lower_states(texts, self.text, self.cache, self.backbone_hash)
        return text_features(texts, self.text, self.cache, self.backbone_hash)[1]

    def text_embed(self, inputs: np.ndarray) -> torch.Tensor:
        """Projected text embeddings of some rows of :meth:`_text_inputs`."""
        dev = self.env.device
        if self.text.config.tuned_layers:
            hidden, mask = pad_text_states(list(inputs), dev)
            return self.module.text_projection(self.text.pooled_from_lower(hidden, mask))
        return self.module.text_projection(torch.from_numpy(np.asarray(inputs, dtype=np.float32)).to(dev))

    def _embed(self, keys: list[str], feats: np.ndarray, augment: dict | None = None,
               seed: int = 0, with_tokens: bool = False):
        dev = self.env.device
        ct, tokens = self.module.ct.forward_with_tokens(_ct_batch(keys, self.cache, dev, augment, seed))
        txt = self.text_embed(feats)
        return (ct, txt, tokens) if with_tokens else (ct, txt)

    def loss(self, rows: list[int], offset: int, env: DistEnv):
        augment = self.cfg["teacher"].get("augment")
        ct, txt, tokens = self._embed([self.train_keys[i] for i in rows], self.train_text[rows], augment=augment,
                                      seed=hash((int(self.cfg.get("seed", 0)), *map(int, rows))) & 0xFFFFFFFF,
                                      with_tokens=True)
        all_ct, all_txt = gather_with_grad(ct, env), gather_with_grad(txt, env)
        loss = info_nce(ct, txt, self.module.logit_scale, all_a=all_ct, all_b=all_txt, offset=offset)
        parts = {"logit_scale": self.module.logit_scale.value, "info_nce": float(loss.detach())}
        # teacher.info_nce_weight (default 1): 0 trains the label read-outs alone, an ablation that asks
        # whether the contrastive loss is what holds the CT encoder back (docs/ct-encoder.md)
        loss = float(self.cfg["teacher"].get("info_nce_weight", 1.0)) * loss
        labels = torch.from_numpy(np.stack([self.train[i].labels for i in rows])).to(ct.device).float()
        weight = float(self.cfg["teacher"].get("aux_label_weight") or 0.0)
        if weight:
            # From scratch on ~1k homogeneous synthetic chests the contrastive signal alone is weak
            # (with attention pooling every embedding converged to one point, loss stuck at ln(batch));
            # the labels CT-RATE ships with the reports give the CT encoder a direct signal.
            bce = F.binary_cross_entropy_with_logits(self.module.label_head(ct.float()), labels)
            parts["label_bce"] = float(bce.detach())
            loss = loss + weight * bce
            text_weight = float(self.cfg["teacher"].get("text_label_weight") or 0.0)
            if text_weight:
                # The same read-out on the report's embedding: each finding gets one direction that both
                # towers must use, so "no pleural effusion" moves the text away from effusion and not
                # along one shared "normal" axis (present - absent prompt directions were ~parallel).
                text_bce = F.binary_cross_entropy_with_logits(self.module.label_head(txt.float()), labels)
                parts["text_label_bce"] = float(text_bce.detach())
                loss = loss + text_weight * text_bce
        prompt_weight = float(self.cfg["teacher"].get("prompt_label_weight") or 0.0)
        if prompt_weight:
            prompt_bce = self._prompt_bce(ct, labels)
            parts["prompt_bce"] = float(prompt_bce.detach())
            loss = loss + prompt_weight * prompt_bce
        dense = float(self.cfg["teacher"].get("dense_aux_weight") or 0.0)
        if dense and self.train_tokens is not None:
            # Where each finding lies (the phantom's footprints) tells the encoder where to look: a
            # per-token classifier on the tokens the latent is pooled from. Tokens are mostly
            # negative, so positives weigh DENSE_POS_WEIGHT times more.
            target = torch.from_numpy(self.train_tokens[rows]).to(tokens.device).float()  # (B, 18, t, h, w)
            logits = self.module.token_head(tokens.float()).permute(0, 4, 1, 2, 3)
            pos_weight = torch.full((len(LABELS), 1, 1, 1), DENSE_POS_WEIGHT, device=tokens.device)
            token_bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
            parts["token_bce"] = float(token_bce.detach())
            loss = loss + dense * token_bce
        return loss, parts

    def _prompt_bce(self, ct: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``teacher.prompt_label_weight``: the labels' cross-entropy of the product's own zero-shot read-out,
        ``scale·(cos(ct, "X is present.") − cos(ct, "X is not present."))``, with the prompts through the
        trained text side and a fixed offset at the training prevalence's log-odds (so the cosine gap
        carries the evidence, not the base rate). The label head trains a read-out zero-shot never uses;
        this trains the one it does (docs/ct-encoder.md)."""
        prompts = F.normalize(self.text_embed(self.prompt_feats).float(), dim=-1)
        sims = F.normalize(ct.float(), dim=-1) @ prompts.T
        offset = self.prevalence_log_odds.to(ct.device)
        return F.binary_cross_entropy_with_logits(self.module.logit_scale.value * (sims[:, 0::2] - sims[:, 1::2]) + offset,
                                                  target)

    @functools.cached_property
    def prevalence_log_odds(self) -> torch.Tensor:
        """The training prevalence's log-odds per finding: the label head's first bias and the prompt loss's
        fixed offset."""
        return _log_odds(np.stack([s.labels for s in self.train]).astype(np.float64).mean(0))

    def embed_valid(self) -> tuple[torch.Tensor, torch.Tensor]:
        cts, txts = [], []
        b = 8
        for start in range(0, len(self.valid), b):
            idx = list(range(start, min(start + b, len(self.valid))))
            ct, txt = self._embed([self.valid_keys[i] for i in idx], self.valid_text[idx])
            cts.append(ct.float().cpu())
            txts.append(txt.float().cpu())
        return torch.cat(cts), torch.cat(txts)

    @torch.no_grad()
    def validate(self, env: DistEnv) -> dict[str, float]:
        if not env.is_main:
            return {}
        ct, txt = self.embed_valid()
        scale = self.module.logit_scale.value
        bs = self.cfg["teacher"]["batch_size"]
        losses = [float(info_nce(ct[i : i + bs], txt[i : i + bs], scale)) for i in range(0, len(ct) - bs + 1, bs)]
        with torch.no_grad():
            prompts = self.text_embed(self.prompt_feats).float().cpu()
        labels = np.stack([s.labels for s in self.valid])
        out = {"valid_loss": float(np.mean(losses)) if losses else float("nan"),
               "zero_shot_auroc": zero_shot_auroc(ct, prompts, labels, scale),
               "prompt_direction_cos": prompt_direction_cosine(prompts)}
        out.update({f"text2ct_{k}": v for k, v in recall_at_k(txt, ct).items()})
        return out

    def extra_state(self) -> dict[str, Any]:
        return {"config": self.cfg, "n_train": self.n_train, "n_valid": len(self.valid)}

    def save_final(self, folder: str | Path, summary: dict[str, Any]) -> Path:
        """``model.safetensors`` (CT encoder, text projection, logit scale) + ``model.json``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        tmp = folder / f".{MODEL_FILE}.tmp"
        save_file(state, str(tmp), metadata={"format": "pt"})
        tmp.replace(folder / MODEL_FILE)
        meta = {"kind": "teacher", "config": self.cfg, "preprocess": self.spec.to_dict(),
                "ct_encoder": self.module.ct.config.to_dict(), "text": self.text.manifest_entry(),
                "logit_scale": self.module.logit_scale.value, "weights_sha256": C.state_hash(state),
                "n_train": self.n_train, "n_valid": len(self.valid), "summary": summary,
                "prep_seconds": round(self.prep_seconds, 1),
                "initialised_from": getattr(self, "initialised_from", None)}
        (folder / MODEL_JSON).write_text(json.dumps(meta, indent=1, default=str))
        return folder / MODEL_FILE


@dataclass
class FrozenTeacher:
    """A trained teacher loaded from its run folder, for the student, the export and evaluation."""

    model: TeacherModel
    text: Any  # TextTower
    spec: PreprocessSpec
    meta: dict[str, Any]
    weights_hash: str

    @property
    def logit_scale(self) -> float:
        return self.model.logit_scale.value


def load_teacher(folder: str | Path, device: str | torch.device = "cpu") -> FrozenTeacher:
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / MODEL_FILE).is_file() or not (folder / MODEL_JSON).is_file():
        raise DataError("no trained teacher here (run speechct-train teacher first)", folder)
    meta = json.loads((folder / MODEL_JSON).read_text())
    cfg = meta["config"]
    text_cfg = cfg.get("text_tower")
    if isinstance(text_cfg, dict) and text_cfg.get("path") and not Path(text_cfg["path"]).is_absolute():
        # a text backbone inside the teacher folder (train.ctclip_teacher): the folder may have moved
        cfg = {**cfg, "text_tower": {**text_cfg, "path": str(folder / text_cfg["path"])}}
    model, text = build_teacher(cfg)
    state = load_file(str(folder / MODEL_FILE))
    model.load_state_dict(state)
    model.requires_grad_(False).eval().to(device)
    text.requires_grad_(False).to(device).eval()
    return FrozenTeacher(model, text, PreprocessSpec.from_dict(meta["preprocess"]), meta, C.state_hash(state))


# --------------------------------------------------------------------------- student


def teacher_text_embeddings(teacher: FrozenTeacher, texts: list[str], cache: C.FrozenCache,
                            batch: int = 32) -> np.ndarray:
    """The frozen teacher's text embeddings ``[n, latent]`` float32 (its whole tower, tuned layers
    included), cached per text and teacher weights."""
    cfg = teacher.text.config.to_dict()
    cfg["path"] = None
    backbone = text_backbone_hash(teacher.text)
    keys = [C.embedding_key(C.text_features_key(x, backbone, cfg), teacher.weights_hash, "teacher_text")
            for x in texts]
    out: list[np.ndarray | None] = [cache.get("teacher_text", k) for k in keys]
    todo = [i for i, v in enumerate(out) if v is None]
    with torch.no_grad():
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            emb = teacher.text.encode([texts[i] for i in chunk]).float().cpu().numpy()
            for i, e in zip(chunk, emb):
                out[i] = cache.put("teacher_text", keys[i], e, dtype=np.float32)
    return np.stack(out).astype(np.float32)


def _whisper_lower(student: SpeechStudent, path: Path, backbone_sha: str, cache: C.FrozenCache):
    """Cached ``{"hidden": [sum frames, D] fp16, "frames": [windows] int32}`` of one dictation."""
    from engine import audio as A

    cfg = student.config
    key = C.whisper_lower_key(path, backbone_sha, student.split, cfg.window_frames, cfg.overlap_frames)
    hit = cache.get_many("whisper_lower", key)
    if hit is not None:
        return key
    mel = A.log_mel(A.load_audio(path))
    windows = [w for w, _ in A.split_windows(mel, cfg.window_frames, cfg.overlap_frames)]
    mel_b, lengths = collate_windows(windows)
    dev = next(student.parameters()).device
    hidden, frames = student.encode_lower(mel_b.to(dev), lengths.to(dev))
    parts = [hidden[i, : int(frames[i])].to(torch.float16).cpu().numpy() for i in range(len(windows))]
    cache.put_many("whisper_lower", key, {"hidden": np.concatenate(parts),
                                          "frames": frames.cpu().numpy().astype(np.int32)})
    return key


def speech_backbone_sha(speech: SpeechStudent) -> str:
    return getattr(speech.backbone, "sha256", None) or C.state_hash(speech.encoder)


def cache_whisper_lower(speech: SpeechStudent, studies: list[Study], cache: C.FrozenCache, backbone_sha: str,
                        progress: bool = False) -> list[str]:
    """Cache keys of the frozen lower Whisper layers' outputs of each study's dictation (computed once)."""
    it = studies
    if progress:
        from tqdm import tqdm

        it = tqdm(studies, desc="whisper lower layers", unit="wav", dynamic_ncols=True)
    keys = []
    for s in it:
        if s.audio_path is None:
            raise DataError(f"volume {s.volume_name} has no spoken report", s.volume_path)
        keys.append(_whisper_lower(speech, s.audio_path, backbone_sha, cache))
    return keys


def prepare_student_audio(cfg: dict, data: str | Path, *, progress: bool = True,
                          limit: dict[str, int] | None = None) -> dict[str, int]:
    """Fill the Whisper lower-layer cache for both splits without a teacher (runs beside the teacher)."""
    speech = speech_student_from_backbone(_speech_config(cfg))
    cache = C.FrozenCache(Path(data) / "cache")
    limit = limit or cfg.get("student_limit") or cfg.get("limit") or {}
    counts = {}
    for split in ("train", "valid"):
        studies = read_studies(data, split, audio=True, limit=limit.get(split))
        counts[split] = len(cache_whisper_lower(speech, studies, cache, speech_backbone_sha(speech), progress))
    return counts


class StudentModel(nn.Module):
    """The trainable part of the student; ``dictation`` is the optional jointly trained 3-way head
    (``student.dictation_weight``) that only shapes training: the bundle's head is refitted on the
    finished embeddings."""

    def __init__(self, speech: SpeechStudent, dictation: DictationHead | None = None):
        super().__init__()
        self.speech = speech
        self.dictation = dictation


class StudentRecipe:
    """Whisper student: InfoNCE(speech, teacher CT) + λ·(1 − cos(speech, teacher text))."""

    stage = "student"

    def __init__(self, cfg: dict, data: str | Path, teacher_dir: str | Path, *, env: DistEnv,
                 distill_weight: float | None = None, progress: bool = True,
                 limit: dict[str, int] | None = None, student: SpeechStudent | None = None):
        self.cfg = cfg
        self.env = env
        self.distill_weight = float(cfg["student"].get("distill_weight", 1.0) if distill_weight is None
                                    else distill_weight)
        self.cache = C.FrozenCache(Path(data) / "cache")
        t0 = time.perf_counter()
        self.teacher = load_teacher(teacher_dir, env.device)
        self.spec = self.teacher.spec
        torch.manual_seed(int(cfg.get("seed", 0)) + 1)
        self.speech = student if student is not None else speech_student_from_backbone(_speech_config(cfg))
        self.speech.to(env.device)
        self.dictation_weight = float(cfg["student"].get("dictation_weight") or 0.0)
        joint = dictation_head(cfg, self.speech.config.latent_dim, "embedding").to(env.device) if self.dictation_weight else None
        self.module = StudentModel(self.speech, joint)
        self.backbone_sha = speech_backbone_sha(self.speech)
        limit = limit or cfg.get("student_limit") or cfg.get("limit") or {}
        show = progress and env.is_main
        self.train = read_studies(data, "train", audio=True, limit=limit.get("train"))
        self.valid = read_studies(data, "valid", audio=True, limit=limit.get("valid"))
        self.train_ct, self.train_txt, self.train_lower = self._prepare(self.train, show)
        self.valid_ct, self.valid_txt, self.valid_lower = self._prepare(self.valid, show)
        self.prep_seconds = time.perf_counter() - t0

    def _prepare(self, studies: list[Study], show: bool):
        t = self.teacher
        ct_keys = prepare_ct_cache(studies, self.spec, self.cache, show)
        ct_emb = []
        for start in range(0, len(studies), 8):
            keys = ct_keys[start : start + 8]
            ek = [C.embedding_key(k, t.weights_hash, "teacher_ct") for k in keys]
            got = [self.cache.get("teacher_ct", k) for k in ek]
            if any(g is None for g in got):
                with torch.no_grad():
                    emb = t.model.ct(_ct_batch(keys, self.cache, self.env.device)).float().cpu().numpy()
                got = [self.cache.put("teacher_ct", k, e, dtype=np.float32) for k, e in zip(ek, emb)]
            ct_emb.extend(got)
        # the teacher's embedding of the written report (the paper's target), not of the dictation's
        # spoken commands and self-corrections; on Speech-RATE proper the two are the same text
        txt = teacher_text_embeddings(t, [s.findings for s in studies], self.cache)
        lower = cache_whisper_lower(self.speech, studies, self.cache, self.backbone_sha, show)
        return (torch.from_numpy(np.stack(ct_emb)).float(), torch.from_numpy(txt).float(), lower)

    @property
    def n_train(self) -> int:
        return len(self.train)

    def head_parameters(self) -> set[int]:
        heads = {id(p) for p in self.speech.projection.parameters()}
        if self.module.dictation is not None:
            heads |= {id(p) for p in self.module.dictation.parameters()}
        return heads

    def lower_windows(self, lower_keys: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cached lower-layer outputs of some dictations as one zero-padded window batch on the
        device: ``(hidden [W, T, D], frames [W], owner [W])``, ``owner`` = index into ``lower_keys``."""
        hidden, frames, owner = [], [], []
        for u, key in enumerate(lower_keys):
            entry = self.cache.get_many("whisper_lower", key)
            if entry is None:
                raise DataError("a cached Whisper lower-layer output vanished during training", self.cache.root)
            lengths = entry["frames"].tolist()
            hidden += torch.split(torch.from_numpy(entry["hidden"].astype(np.float32)), lengths)
            frames += lengths
            owner += [u] * len(lengths)
        dev = self.env.device
        batch = torch.zeros(len(hidden), max(frames), hidden[0].shape[-1])
        for i, h in enumerate(hidden):
            batch[i, : h.shape[0]] = h
        return (batch.to(dev), torch.tensor(frames, dtype=torch.long, device=dev),
                torch.tensor(owner, dtype=torch.long, device=dev))

    def embed(self, lower_keys: list[str]) -> torch.Tensor:
        """Student embeddings ``[n, latent]`` from cached lower-layer outputs (with gradients)."""
        batch, frames, owner = self.lower_windows(lower_keys)
        pooled = self.speech.forward_upper(batch, frames)
        utt = pool_frames(pooled.unsqueeze(1), torch.ones_like(frames), owner)
        return self.speech.projection(utt)

    def loss(self, rows: list[int], offset: int, env: DistEnv):
        speech = self.embed([self.train_lower[i] for i in rows])
        ct = self.train_ct[rows].to(env.device)
        txt = self.train_txt[rows].to(env.device)
        all_speech, all_ct = gather_with_grad(speech, env), gather_with_grad(ct, env)
        loss, parts = student_loss(speech, ct, txt, self.teacher.logit_scale, self.distill_weight,
                                   all_speech=all_speech, all_ct=all_ct, offset=offset, return_parts=True)
        if self.module.dictation is not None:
            # A head refitted on frozen embeddings reads what the embedding kept; the contrastive and
            # distillation targets keep little of "no X" vs "X" (valid macro F1 0.57 on the default
            # data), so the mentions can also shape the tuned layers.
            mentions = torch.from_numpy(np.stack([self.train[i].mentions for i in rows]))
            ce = dictation_loss(self.module.dictation(speech), mentions)
            parts["dictation"] = ce.detach()
            loss = loss + self.dictation_weight * ce
        return loss, {k: float(v) for k, v in parts.items()}

    def embed_all(self, keys: list[str], batch: int = 8) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self.embed(keys[i : i + batch]).float().cpu() for i in range(0, len(keys), batch)])

    def validate(self, env: DistEnv) -> dict[str, float]:
        if not env.is_main:
            return {}
        speech = self.embed_all(self.valid_lower)
        ct, txt = self.valid_ct, self.valid_txt
        scale = self.teacher.logit_scale
        bs = self.cfg["student"]["batch_size"]
        losses = [float(student_loss(speech[i : i + bs], ct[i : i + bs], txt[i : i + bs], scale, self.distill_weight))
                  for i in range(0, len(speech) - bs + 1, bs)]
        prompts = self.teacher.text.encode(prompt_texts()).float().cpu()
        labels = np.stack([s.labels for s in self.valid])
        out = {"valid_loss": float(np.mean(losses)) if losses else float("nan"),
               "cos_to_teacher_text": float(F.cosine_similarity(speech, txt).mean()),
               "speech_zero_shot_auroc": zero_shot_auroc(speech, prompts, labels, scale)}
        out.update({f"speech2ct_{k}": v for k, v in recall_at_k(speech, ct).items()})
        return out

    def extra_state(self) -> dict[str, Any]:
        return {"config": self.cfg, "distill_weight": self.distill_weight, "dictation_weight": self.dictation_weight,
                "teacher_sha256": self.teacher.weights_hash}

    def save_final(self, folder: str | Path, summary: dict[str, Any]) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        state = {k: v.detach().cpu().contiguous() for k, v in self.speech.trainable_state_dict().items()}
        tmp = folder / f".{MODEL_FILE}.tmp"
        save_file(state, str(tmp), metadata={"format": "pt"})
        tmp.replace(folder / MODEL_FILE)
        meta = {"kind": "student", "config": self.cfg, "speech": self.speech.config.to_dict(),
                "backbone": self.speech.config.backbone, "backbone_sha256": self.backbone_sha,
                "distill_weight": self.distill_weight, "dictation_weight": self.dictation_weight,
                "teacher_sha256": self.teacher.weights_hash, "weights_sha256": C.state_hash(state),
                "n_train": self.n_train, "n_valid": len(self.valid),
                "summary": summary, "prep_seconds": round(self.prep_seconds, 1)}
        (folder / MODEL_JSON).write_text(json.dumps(meta, indent=1, default=str))
        return folder / MODEL_FILE


def load_student(folder: str | Path, device: str | torch.device = "cpu",
                 student: SpeechStudent | None = None) -> tuple[SpeechStudent, dict[str, Any]]:
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / MODEL_FILE).is_file() or not (folder / MODEL_JSON).is_file():
        raise DataError("no trained student here (run speechct-train student first)", folder)
    meta = json.loads((folder / MODEL_JSON).read_text())
    speech = student if student is not None else speech_student_from_backbone(SpeechStudentConfig.from_dict(meta["speech"]))
    speech.load_trainable_state_dict(load_file(str(folder / MODEL_FILE)))
    # requires_grad stays as the student set it: trainable_state_dict() selects by it
    return speech.to(device).eval(), meta


# --------------------------------------------------------------------------- dictation head


def dictation_head(cfg: dict, dim: int, kind: str | None = None) -> DictationHead | FrameDictationHead:
    """A fresh 3-way-per-finding head shaped by the config's ``dictation`` section (its keys that
    are fields of the head's config; the rest are training settings); ``kind`` (default the
    section's, else ``embedding``) picks the embedding or the frame head."""
    hc = cfg.get("dictation", {})
    config_class = head_config_class(kind or hc.get("kind", DictationHeadConfig.KIND))
    shape = {f.name: hc[f.name] for f in dataclass_fields(config_class) if f.name in hc and f.name not in ("dim", "kind")}
    return build_head(config_class(dim=dim, **shape))


def student_frames(recipe: StudentRecipe, lower_keys: list[str]) -> list[torch.Tensor]:
    """The frozen student's top frames of each dictation (its windows' real frames in order),
    float16 on the CPU: the frame head's inputs, computed once from the lower-layer cache."""
    out = []
    with torch.no_grad():
        for key in lower_keys:
            batch, frames, _ = recipe.lower_windows([key])
            top = recipe.speech.upper_frames(batch, frames).float().cpu()
            out.append(torch.cat([top[i, :n] for i, n in enumerate(frames.tolist())]).to(torch.float16))
    return out


def _frame_batches(lengths: list[int], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of similar-length utterances (little padding), in random order."""
    order = np.argsort(lengths, kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def train_dictation_head(recipe: StudentRecipe, out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Fit the per-finding mention-state head on the frozen student (train split) — on its embeddings or,
    with ``dictation.kind = "frames"``, on its encoder frames — report the valid macro F1 per
    class, save ``head.safetensors`` + ``head.json`` in ``out``."""
    from safetensors.torch import save_file

    from engine.models.dictation import pad_utterances
    from train.metrics import dictation_f1

    hc = dict(recipe.cfg.get("dictation", {}))
    seed = int(recipe.cfg.get("seed", 0)) + 2
    t0 = time.perf_counter()
    recipe.speech.eval()
    frames = hc.get("kind", "embedding") == "frames"
    if frames:
        x_train, x_valid = student_frames(recipe, recipe.train_lower), student_frames(recipe, recipe.valid_lower)
        dim = x_train[0].shape[-1]
    else:
        x_train, x_valid = recipe.embed_all(recipe.train_lower), recipe.embed_all(recipe.valid_lower)
        dim = x_train.shape[1]
    y_train = torch.from_numpy(np.stack([s.mentions for s in recipe.train]))
    y_valid = torch.from_numpy(np.stack([s.mentions for s in recipe.valid]))
    features_s = time.perf_counter() - t0
    torch.manual_seed(seed)
    head = dictation_head(recipe.cfg, dim)

    def logits_of(x, idx) -> torch.Tensor:
        if frames:
            return head(*pad_utterances([x[int(i)] for i in idx]))
        return head(x[idx])

    lr = float(hc.get("lr", 1e-3))
    opt_class = torch.optim.AdamW if frames else torch.optim.Adam  # Adam for embedding heads: existing configs reproduce
    opt = opt_class(head.parameters(), lr=lr, weight_decay=float(hc.get("weight_decay", 1e-4)))
    epochs, bs = int(hc.get("epochs", 300)), int(hc.get("batch_size", 32))
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    lengths = [int(x.shape[0]) for x in x_train] if frames else []
    n_batches = math.ceil(len(x_train) / bs)
    # frame heads train for few epochs: a one-cycle schedule; embedding heads keep a constant rate
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * n_batches, pct_start=0.1)
             if frames else None)
    history = []
    it = range(epochs)
    if progress and frames:
        from tqdm import tqdm

        it = tqdm(it, desc="frame dictation head", unit="epoch", dynamic_ncols=True)
    for epoch in it:
        head.train()
        total = 0.0
        if frames:
            batches = _frame_batches(lengths, bs, rng)
        else:
            order = torch.randperm(len(x_train), generator=gen)
            batches = [order[i : i + bs] for i in range(0, len(order), bs)]
        for idx in batches:
            loss = dictation_loss(logits_of(x_train, idx), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * len(idx)
        if (epoch + 1) % max(1, epochs // 10) == 0 or epoch == epochs - 1:
            history.append({"epoch": epoch + 1, "train_loss": total / len(x_train)})
    head.eval()
    with torch.no_grad():
        logits = torch.cat([logits_of(x_valid, np.arange(i, min(i + 32, len(x_valid))))
                            for i in range(0, len(x_valid), 32)])
        valid_loss = float(dictation_loss(logits, y_valid))
        pred = logits.argmax(-1).numpy()
    scores = dictation_f1(pred, y_valid.long().numpy(), DICTATION_CLASSES, LABELS[: pred.shape[1]])
    summary = {"valid_loss": valid_loss, "valid_macro_f1": scores["macro_f1"],
               "valid_f1_per_class": scores["per_class"], "valid_accuracy": scores["accuracy"], "epochs": epochs,
               "seconds": round(time.perf_counter() - t0, 1), "features_seconds": round(features_s, 1),
               "history": history, "config": head.config.to_dict()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(out / "head.safetensors"),
              metadata={"format": "pt"})
    (out / "head.json").write_text(json.dumps(summary, indent=1))
    if progress:
        print(f"dictation head ({head.config.kind}): valid macro F1 {summary['valid_macro_f1']:.3f} "
              f"({', '.join(f'{k} {v:.3f}' for k, v in scores['per_class'].items())}), {summary['seconds']} s")
    return summary
