"""A teacher folder from CT-CLIP's released checkpoint, so that the paper's frozen teacher needs no training.

``teacher_from_ctclip(checkpoint, tokenizer_dir, cfg, out)`` writes ``<out>/teacher/`` in exactly the
layout ``train.recipes.load_teacher`` reads (``model.safetensors`` + ``model.json``), plus ``text/``:

- the CT encoder: ``engine.weights.ctclip.import_ctclip`` (CTViT, VQ codebook, ``to_visual_latent``),
  with the patch sizes and slice count of the run config's ``ct_encoder`` (they are not in the weights);
  every shape-readable setting must equal the config's, and the config's preprocess spec must make
  volumes of the encoder's input size;
- the text tower: CT-CLIP's own fine-tuned CXR-BERT (``text_transformer.*``, a plain ``BertModel``,
  CLS pooling, no pooler) and its ``to_text_latent`` as the projection. ``text/`` is a local Hugging Face
  folder holding those weights, a ``BertConfig`` read from the weights' shapes (the head count and the
  activation from the tokenizer folder's ``config.json`` when it has one) and the tokenizer from
  ``tokenizer_dir`` (``vocab.txt``; lower-cased, as CT-CLIP tokenises). The teacher's text config points
  at it by a path relative to the teacher folder, and says ``frozen: false``: CT-CLIP tuned its BERT, so
  a bundle exported from this teacher carries the tuned backbone (``text_head``), not only the projection;
- the logit scale: CT-CLIP's ``temperature`` (a log-scale, multiplier ``exp(temperature)``), unclamped as
  CT-CLIP uses it (``logit_scale_max: null`` in the stored config).

Nothing is read from the network. The folder is built beside ``<out>/teacher`` and renamed into place
only after ``load_teacher`` has read it back and reproduced the text embeddings, so a failed import leaves
no teacher behind. Bad input raises ``WeightsError``/``DataError`` naming the file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from engine.errors import DataError, WeightsError
from engine.models.ct_config import CTEncoderConfig
from engine.models.space import LogitScale
from engine.models.text import TextTower, TextTowerConfig, _quiet_transformers
from engine.weights.bundle import file_sha256
from engine.weights.ctclip import CTCLIPImport, import_ctclip
from train import cache as C
from train.recipes import (
    MODEL_FILE,
    MODEL_JSON,
    TeacherModel,
    _ct_config,
    _spec,
    _speech_config,
    _text_config,
    load_teacher,
    stage_dir,
)

#: The teacher's text backbone folder, relative to the teacher folder.
TEXT_FOLDER = "text"
#: BertConfig settings that are not readable from the weights' shapes, with BERT's defaults.
_BERT_SETTINGS = {"hidden_act": "gelu", "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
                  "attention_probs_dropout_prob": 0.1, "position_embedding_type": "absolute",
                  "pad_token_id": 0, "initializer_range": 0.02}
_CHECK_TEXT = ["Cardiomegaly is present.", "No pleural effusion. Mild bibasilar atelectasis."]


def _check_ct(imported: CTEncoderConfig, wanted: CTEncoderConfig, spec, config_file: str) -> None:
    """The checkpoint's CTViT must be the config's ``ct_encoder`` (all but its name), fed by the config's spec."""
    got, want = imported.to_dict(), wanted.to_dict()
    diffs = [f"{k} {got[k]} in the checkpoint, {want.get(k)} in the config" for k in sorted(got)
             if k != "name" and got[k] != want.get(k)]
    if diffs:
        raise DataError(f"the CT-CLIP checkpoint's CT encoder is not this config's ct_encoder: {'; '.join(diffs)}",
                        config_file)
    if tuple(spec.shape) != tuple(imported.input_size):
        raise DataError(f"the preprocess spec {spec.name!r} makes {list(spec.shape)} volumes; the checkpoint's CT "
                        f"encoder reads {list(imported.input_size)}", config_file)


def _read_vocab(tokenizer_dir: Path) -> int:
    if not tokenizer_dir.is_dir():
        raise DataError("tokenizer folder not found", tokenizer_dir)
    vocab = tokenizer_dir / "vocab.txt"
    if not vocab.is_file():
        raise DataError("no vocab.txt in the tokenizer folder (CT-CLIP's CXR-BERT tokenizer is a BERT WordPiece "
                        "vocabulary: put microsoft/BiomedVLP-CXR-BERT-specialized's files there)", tokenizer_dir)
    try:
        lines = vocab.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the vocabulary: {exc}", vocab) from exc
    if not lines:
        raise DataError("the vocabulary is empty", vocab)
    return len(lines)


def bert_config(text_state: dict[str, torch.Tensor], tokenizer_dir: Path, checkpoint: Path):
    """A ``BertConfig`` for CT-CLIP's text weights: sizes from the tensors' shapes; head count, activation
    and norm epsilon from ``tokenizer_dir/config.json`` when present (its sizes must then agree), else
    BERT's defaults with 64-wide heads."""
    from transformers import BertConfig

    def shape(key: str) -> tuple[int, ...]:
        if key not in text_state:
            raise WeightsError(f"CT-CLIP text tower lacks text_transformer.{key}", checkpoint)
        return tuple(text_state[key].shape)

    vocab, hidden = shape("embeddings.word_embeddings.weight")
    layers = {int(m.group(1)) for k in text_state if (m := re.match(r"encoder\.layer\.(\d+)\.", k))}
    sizes = {"vocab_size": vocab, "hidden_size": hidden,
             "max_position_embeddings": shape("embeddings.position_embeddings.weight")[0],
             "type_vocab_size": shape("embeddings.token_type_embeddings.weight")[0],
             "num_hidden_layers": max(layers) + 1 if layers else 0,
             "intermediate_size": shape("encoder.layer.0.intermediate.dense.weight")[0]}
    settings = dict(_BERT_SETTINGS)
    file = tokenizer_dir / "config.json"
    if file.is_file():
        try:
            given = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the BERT config: {exc}", file) from exc
        wrong = [f"{k} {given[k]} != {v} in the checkpoint" for k, v in sizes.items() if k in given and given[k] != v]
        if wrong:
            raise DataError(f"this BERT config does not describe the checkpoint's text tower: {'; '.join(wrong)}", file)
        settings.update({k: given[k] for k in _BERT_SETTINGS if k in given})
        heads = given.get("num_attention_heads")
    else:
        heads = hidden // 64 if hidden % 64 == 0 else None
    if not heads or hidden % int(heads):
        raise DataError(f"the attention head count of a {hidden}-wide BERT is not in its weights: put the BERT's "
                        "config.json (num_attention_heads) in the tokenizer folder", tokenizer_dir)
    return BertConfig(**sizes, num_attention_heads=int(heads), **settings)


def _write_text_backbone(imported: CTCLIPImport, tokenizer_dir: Path, folder: Path, text_cfg: TextTowerConfig,
                         checkpoint: Path) -> TextTower:
    """``folder`` = a BERT Hugging Face folder with CT-CLIP's text weights + the tokenizer; the tower on it."""
    from transformers import BertTokenizer

    if not imported.text_state or imported.text_projection is None:
        raise WeightsError("the checkpoint holds no text tower (text_transformer.* and to_text_latent.weight "
                           "missing): it is not a full CT-CLIP checkpoint", checkpoint)
    n_vocab = _read_vocab(tokenizer_dir)
    config = bert_config(imported.text_state, tokenizer_dir, checkpoint)
    if n_vocab != config.vocab_size:
        raise DataError(f"vocab.txt has {n_vocab} tokens but the checkpoint's word embeddings have "
                        f"{config.vocab_size} rows: not the tokenizer this CT-CLIP was trained with",
                        tokenizer_dir / "vocab.txt")
    # CT-CLIP: BertTokenizer.from_pretrained(CXR-BERT, do_lower_case=True) (the plain class, never remote code)
    try:
        with _quiet_transformers():
            tokenizer = BertTokenizer.from_pretrained(str(tokenizer_dir), do_lower_case=True, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"cannot read the BERT tokenizer: {first}", tokenizer_dir) from exc
    if len(tokenizer) != config.vocab_size:
        raise DataError(f"the tokenizer has {len(tokenizer)} tokens but the checkpoint's word embeddings have "
                        f"{config.vocab_size} rows: not the tokenizer this CT-CLIP was trained with", tokenizer_dir)
    folder.mkdir(parents=True)
    with _quiet_transformers():
        config.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
    shutil.copy(tokenizer_dir / "vocab.txt", folder / "vocab.txt")
    # the plain BertTokenizer wrote it: no pointer to CXR-BERT's custom (remote-code) tokenizer class
    tok_file = folder / "tokenizer_config.json"
    if tok_file.is_file():
        saved = json.loads(tok_file.read_text())
        tok_file.write_text(json.dumps({k: v for k, v in saved.items()
                                        if k not in ("auto_map", "is_local", "local_files_only")}, indent=2))
    projection = torch.as_tensor(imported.text_projection)
    max_length = min(text_cfg.max_length, config.max_position_embeddings)
    tower_cfg = TextTowerConfig(backbone=text_cfg.backbone, path=str(folder), pooling=text_cfg.pooling,
                                max_length=max_length, latent_dim=int(projection.shape[0]), frozen=False)
    tower = TextTower(tower_cfg, pretrained=False)
    try:
        tower.load_ctclip_text(imported)
    except WeightsError as exc:
        raise WeightsError(exc.message, checkpoint) from exc
    with _quiet_transformers():
        tower.backbone.save_pretrained(str(folder))
    return tower.eval()


def teacher_config(cfg: dict[str, Any], ct_config: CTEncoderConfig, tower: TextTower) -> dict[str, Any]:
    """The run config as stored in the teacher's ``model.json``: what ``load_teacher`` rebuilds it from."""
    text = tower.config.to_dict()
    text["path"] = TEXT_FOLDER  # relative: load_teacher resolves it against the teacher folder
    teacher = {k: v for k, v in cfg.get("teacher", {}).items() if k != "aux_label_weight"}
    return {**cfg, "ct_encoder": ct_config.to_dict(), "text_tower": text, "logit_scale_max": None,
            "logit_scale_init": None, "teacher": teacher}


def teacher_from_ctclip(checkpoint: str | Path, tokenizer_dir: str | Path, cfg: dict[str, Any],
                        out: str | Path, *, config_file: str | Path | None = None) -> Path:
    """Write ``<out>/teacher`` from a CT-CLIP checkpoint and a local tokenizer folder; return the folder.

    ``cfg`` is a run config (``train.recipes.load_run_config``; ``config_file`` is where it came from,
    named in errors about it).
    """
    t0 = time.perf_counter()
    checkpoint, tokenizer_dir = Path(checkpoint).expanduser(), Path(tokenizer_dir).expanduser()
    config_name = str(config_file or f"config {cfg.get('name', '?')!r}")
    target = stage_dir(out, "teacher")
    if target.exists() and any(target.iterdir()):
        raise DataError("a teacher is already here: choose another --out", target)
    if not checkpoint.is_file():
        raise WeightsError("CT-CLIP checkpoint not found", checkpoint)
    _read_vocab(tokenizer_dir)  # before the (large) checkpoint is read
    spec = _spec(cfg)
    wanted = _ct_config(cfg)
    text_cfg = _text_config(cfg)
    if text_cfg.pooling != "cls":
        raise DataError(f"the text tower pools {text_cfg.pooling!r}; CT-CLIP's pools the CLS token "
                        "(text_tower: cxr-bert)", config_name)
    imported = import_ctclip(checkpoint, base=wanted)
    _check_ct(imported.config, wanted, spec, config_name)
    if imported.logit_scale is None:
        raise WeightsError("the checkpoint has no temperature (CT-CLIP's logit scale)", checkpoint)
    latent = imported.config.latent_dim
    for what, dim in (("text_tower", text_cfg.latent_dim), ("speech", _speech_config(cfg).latent_dim)):
        if dim != latent:
            raise DataError(f"{what} latent_dim is {dim}; the checkpoint's shared space is {latent}-d",
                            config_name)

    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".teacher.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        tower = _write_text_backbone(imported, tokenizer_dir, staging / TEXT_FOLDER, text_cfg, checkpoint)
        model = TeacherModel(imported.build_encoder(), tower.projection, LogitScale(imported.logit_scale))
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        from safetensors.torch import save_file

        save_file(state, str(staging / MODEL_FILE), metadata={"format": "pt"})
        stored = teacher_config(cfg, imported.config, tower)
        source = {"kind": "ctclip", "checkpoint": str(checkpoint.resolve()), "bytes": checkpoint.stat().st_size,
                  "sha256": file_sha256(checkpoint), "tokenizer": str(tokenizer_dir.resolve()),
                  "dropped_keys": len(imported.dropped),
                  "bert": {k: getattr(tower.backbone.config, k) for k in
                           ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")}}
        meta = {"kind": "teacher", "source": source, "config": stored, "preprocess": spec.to_dict(),
                "ct_encoder": imported.config.to_dict(), "text": tower.manifest_entry(),
                "logit_scale": model.logit_scale.value, "weights_sha256": C.state_hash(state),
                "n_train": None, "n_valid": None,
                "summary": {"steps": 0, "epochs": 0, "seconds": 0.0, "valid": {},
                            "note": "imported from a CT-CLIP checkpoint, not trained here"},
                "prep_seconds": round(time.perf_counter() - t0, 1)}
        (staging / MODEL_JSON).write_text(json.dumps(meta, indent=1, default=str))
        # read back exactly as the student, evaluation and export will
        loaded = load_teacher(staging)
        with torch.no_grad():
            same = torch.allclose(loaded.text.encode(_CHECK_TEXT), tower.encode(_CHECK_TEXT), atol=1e-5, rtol=1e-4)
        if (loaded.weights_hash != meta["weights_sha256"] or not same
                or len(loaded.text.tokenizer) != tower.backbone.config.vocab_size):
            raise WeightsError("the written teacher does not read back as imported", staging)
        if target.exists():
            target.rmdir()  # empty (checked above)
        staging.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
