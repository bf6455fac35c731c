"""Import of CT-CLIP checkpoints (ibrahimethemhamamci/CT-CLIP, ``CTCLIP.state_dict()``).

Maps the image side (``visual_transformer.*`` = CTViT, ``to_visual_latent.weight``) onto
:class:`engine.models.ct.CTEncoder`, hands the text side (``text_transformer.*`` = the
CXR-BERT tower, ``to_text_latent.weight``) to the text tower, and accounts for every
other key with a reason. Foreign files are read with ``torch.load(weights_only=True)``
(or safetensors) only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from engine.errors import WeightsError
from engine.models.ct import CTEncoder
from engine.models.ct_config import CTEncoderConfig, load_ct_config

VISUAL = "visual_transformer."
TEXT = "text_transformer."

# (CT-CLIP key below visual_transformer., our key). Order matters only for readability.
_RENAMES: list[tuple[str, str]] = [
    (r"to_patch_emb\.1\.(weight|bias)", r"patch_embed.norm_in.\1"),
    (r"to_patch_emb\.2\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"to_patch_emb\.3\.(weight|bias)", r"patch_embed.norm_out.\1"),
    (r"spatial_rel_pos_bias\.net\.(\d+)\.0\.(weight|bias)", r"rel_pos_bias.layers.\1.\2"),
    (r"spatial_rel_pos_bias\.net\.(\d+)\.(weight|bias)", r"rel_pos_bias.layers.\1.\2"),
    (r"enc_(spatial|temporal)_transformer\.layers\.(\d+)\.0\.dsconv\.(weight|bias)", r"\1.blocks.\2.peg.conv.\3"),
    (r"enc_(spatial|temporal)_transformer\.layers\.(\d+)\.1\.norm\.gamma", r"\1.blocks.\2.attn.norm.weight"),
    (r"enc_(spatial|temporal)_transformer\.layers\.(\d+)\.1\.norm\.beta", r"\1.blocks.\2.attn.norm.bias"),
    (r"enc_(spatial|temporal)_transformer\.layers\.(\d+)\.1\.(to_q|to_kv|to_out)\.weight",
     r"\1.blocks.\2.attn.\3.weight"),
    (r"enc_(spatial|temporal)_transformer\.layers\.(\d+)\.1\.(q_scale|k_scale)", r"\1.blocks.\2.attn.\3"),
    (r"enc_(spatial|temporal)_transformer\.layers\.(\d+)\.3\.0\.(weight|bias)", r"\1.blocks.\2.ff.norm.\3"),
    (r"enc_(spatial|temporal)_transformer\.layers\.(\d+)\.3\.1\.weight", r"\1.blocks.\2.ff.proj_in.weight"),
    (r"enc_(spatial|temporal)_transformer\.layers\.(\d+)\.3\.4\.weight", r"\1.blocks.\2.ff.proj_out.weight"),
    (r"enc_(spatial|temporal)_transformer\.norm_out\.gamma", r"\1.norm_out.weight"),
    (r"enc_(spatial|temporal)_transformer\.norm_out\.beta", r"\1.norm_out.bias"),
    (r"vq\._codebook\.embed", "codebook.embed"),
]

# (full CT-CLIP key pattern, why it is not used).
_DROPS: list[tuple[str, str]] = [
    (r"visual_transformer\.to_patch_emb_first_frame\..*",
     "first-frame patch embedding: CT-CLIP's forward embeds every frame with to_patch_emb"),
    (r"visual_transformer\.to_pixels(_first_frame)?\..*", "VQ-VAE decoder head (reconstruction only)"),
    (r"visual_transformer\.dec_(spatial|temporal)_transformer\..*", "VQ-VAE decoder transformer"),
    (r"visual_transformer\.(discr|vgg)\..*", "GAN discriminator / perceptual network (VQ-VAE training only)"),
    (r"visual_transformer\.vq\._codebook\.(cluster_size|embed_avg)", "codebook EMA statistics (training only)"),
    (r"visual_transformer\.vq\._codebook\.initted", "k-means init flag (checked to be set)"),
    (r"visual_transformer\.enc_(spatial|temporal)_transformer\.layers\.\d+\.1\.context_norm\..*",
     "cross-attention context norm: unused by self-attention"),
    (r"visual_transformer\.enc_(spatial|temporal)_transformer\.layers\.\d+\.1\.null_kv",
     "null key/values with zero entries (num_null_kv = 0)"),
    (r"to_visual_latent_extra\..*", "CLOOB extra image projection (extra_latent_projection=False)"),
    (r"to_text_latent_extra\..*", "CLOOB extra text projection (extra_latent_projection=False)"),
    (r"text_transformer\.embeddings\.position_ids",
     "constant buffer; its presence breaks loading in newer transformers (CT-CLIP's known fault)"),
    (r"(mlm|visual_ssl)\..*", "self-supervised training heads (not used at inference)"),
]


@dataclass
class CTCLIPImport:
    """What a CT-CLIP checkpoint holds, sorted by consumer.

    ``ct_state`` loads into ``CTEncoder(config)`` (strict). ``text_state`` is the CXR-BERT
    ``BertModel`` state with the ``text_transformer.`` prefix stripped. ``text_projection``
    is ``to_text_latent.weight`` ``[latent, 768]``. ``logit_scale`` is CT-CLIP's
    ``temperature`` parameter, a log-scale as in open_clip: similarities are multiplied by
    ``exp(logit_scale)``. ``dropped`` maps each unused key to the reason; ``unmatched``
    lists keys no rule knows (only non-empty with ``strict=False``).
    """

    config: CTEncoderConfig
    ct_state: dict[str, Tensor]
    text_state: dict[str, Tensor] = field(default_factory=dict)
    text_projection: Tensor | None = None
    logit_scale: float | None = None
    dropped: dict[str, str] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)

    def build_encoder(self) -> CTEncoder:
        """A ``CTEncoder`` in eval mode holding the imported weights."""
        encoder = CTEncoder(self.config)
        encoder.load_state_dict(self.ct_state, strict=True)
        return encoder.eval()


def _read_state(source, where: str) -> dict[str, Tensor]:
    if isinstance(source, dict):
        state = source
    else:
        path = Path(source)
        if not path.is_file():
            raise WeightsError("CT-CLIP checkpoint not found", path)
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                try:  # mmap: a 1.7 GB checkpoint is paged in only as far as it is used
                    state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as exc:
                    if "mmap" not in str(exc):  # legacy (non-zip) files cannot be mapped
                        raise
                    state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle, zip and safetensors errors have no common base
            raise WeightsError(f"cannot read CT-CLIP checkpoint ({type(exc).__name__}: {exc})", path) from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError("not a CT-CLIP state dict (expected a flat mapping of key -> tensor)", where)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _layer_count(state: dict[str, Tensor], prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def infer_ctclip_config(state: dict[str, Tensor], base: CTEncoderConfig | None = None) -> CTEncoderConfig:
    """Read dim, heads, depths, codebook, latent and the in-plane grid from the tensor shapes.

    Patch sizes and the slice count are not recorded in the weights: they come from
    ``base`` (default: the paper config) and must agree with the patch-embedding width.
    """
    base = base or load_ct_config("ctclip-paper")
    v = VISUAL
    try:
        dim, patch_numel = state[v + "to_patch_emb.2.weight"].shape
        heads = state[v + "spatial_rel_pos_bias.net.2.weight"].shape[0]
        rel_hidden = state[v + "spatial_rel_pos_bias.net.0.0.weight"].shape[0]
        dim_head = state[v + "enc_spatial_transformer.layers.0.1.q_scale"].shape[0]
    except KeyError as exc:
        raise WeightsError(f"CT-CLIP checkpoint lacks {exc.args[0]}: cannot infer the CTViT configuration") from exc
    if patch_numel != base.patch_numel:
        raise WeightsError(f"tubelet of {patch_numel} voxels does not match the base config's "
                           f"{base.patch_numel}: pass an explicit CTEncoderConfig")
    embed = state.get(v + "vq._codebook.embed")
    codebook = int(embed.shape[-2]) if embed is not None else 0
    cfg = dict(dim=int(dim), heads=int(heads), dim_head=int(dim_head), codebook_size=codebook,
               spatial_depth=_layer_count(state, v + "enc_spatial_transformer.layers."),
               temporal_depth=_layer_count(state, v + "enc_temporal_transformer.layers."),
               rel_pos_hidden=None if rel_hidden == dim else int(rel_hidden), name="ctclip-import")
    proj = state.get("to_visual_latent.weight")
    if proj is not None:
        latent, flat = proj.shape
        side = math.isqrt(flat // dim)
        if side * side * dim != flat:
            raise WeightsError(f"to_visual_latent input {flat} is not a square grid of {dim}-d tokens")
        cfg.update(latent_dim=int(latent), pooling="ctclip",
                   input_size=(base.input_size[0], side * base.patch_size, side * base.patch_size))
    return base.replace(**cfg)


def _meta_state(config: CTEncoderConfig) -> dict[str, Tensor]:
    with torch.device("meta"):
        return CTEncoder(config).state_dict()


def import_ctclip(state_dict_or_path, config: CTEncoderConfig | None = None, strict: bool = True, *,
                  base: CTEncoderConfig | None = None) -> CTCLIPImport:
    """Split a CT-CLIP checkpoint (path to .pt/.pth/.safetensors, or a state dict).

    Without ``config`` the CTViT settings are read from the tensor shapes on top of ``base``
    (default: the paper config; see :func:`infer_ctclip_config`). Raises :class:`WeightsError`
    naming the file and every unknown key (when ``strict``), every key the encoder needs but
    the checkpoint lacks, and every shape that disagrees.
    """
    where = "<state dict>" if isinstance(state_dict_or_path, dict) else str(state_dict_or_path)
    state = _read_state(state_dict_or_path, where)
    if config is None:
        try:
            config = infer_ctclip_config(state, base)
        except WeightsError as exc:
            raise WeightsError(exc.message, where) from exc
    result = CTCLIPImport(config=config, ct_state={})
    drops = [(re.compile(p), why) for p, why in _DROPS]
    renames = [(re.compile(p), repl) for p, repl in _RENAMES]

    for key, tensor in state.items():
        reason = next((why for pattern, why in drops if pattern.fullmatch(key)), None)
        if reason is not None:
            if key.endswith("null_kv") and tensor.numel() != 0:
                raise WeightsError(f"{key} holds {tuple(tensor.shape)} null key/values; only 0 are supported", where)
            if key.endswith("initted") and tensor.device.type != "meta" and not bool(tensor.flatten()[0]):
                raise WeightsError("the VQ codebook was never initialised (initted = 0)", where)
            result.dropped[key] = reason
        elif key.startswith(VISUAL):
            sub = key[len(VISUAL):]
            target = next((p.sub(r, sub) for p, r in renames if p.fullmatch(sub)), None)
            if target is None:
                result.unmatched.append(key)
            elif target == "codebook.embed":
                if tensor.ndim != 3 or tensor.shape[0] != 1:
                    raise WeightsError(f"{key} has shape {tuple(tensor.shape)}; one codebook expected", where)
                result.ct_state[target] = tensor[0]
            else:
                result.ct_state[target] = tensor
        elif key == "to_visual_latent.weight":
            result.ct_state["pool.proj.weight"] = tensor
        elif key.startswith(TEXT):
            result.text_state[key[len(TEXT):]] = tensor
        elif key == "to_text_latent.weight":
            result.text_projection = tensor
        elif key == "temperature":
            result.logit_scale = float(tensor) if tensor.device.type != "meta" else None
        else:
            result.unmatched.append(key)

    if result.unmatched and strict:
        raise WeightsError(f"{len(result.unmatched)} CT-CLIP keys match no rule: {', '.join(result.unmatched)}", where)
    expected = _meta_state(config)
    missing = sorted(set(expected) - set(result.ct_state))
    extra = sorted(set(result.ct_state) - set(expected))
    wrong = [f"{k} {tuple(result.ct_state[k].shape)} != {tuple(expected[k].shape)}"
             for k in sorted(set(expected) & set(result.ct_state)) if result.ct_state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing for the CT encoder: {', '.join(missing)}")
    if extra:
        problems.append(f"not in the CT encoder {config.name!r}: {', '.join(extra)}")
    if wrong:
        problems.append(f"shape mismatch: {'; '.join(wrong)}")
    if problems:
        raise WeightsError("CT-CLIP checkpoint does not fit the CT encoder config: " + " | ".join(problems), where)
    return result
