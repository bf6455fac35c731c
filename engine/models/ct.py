"""The CT encoder: CT-CLIP's CTViT (3D tubelets, factorised spatial/temporal transformer,
cosine VQ codebook) plus a pooling head to the shared latent.

Input ``x`` is ``(B, 1, Z, Y, X)`` = (batch, channel, slices, rows, columns), already
prepared by ``engine.preprocess`` (CT-CLIP: HU clipped to [-1000, 1000] / 1000).
Tokens are ``(B, t, h, w, dim)``. The latent is unnormalised; the shared-space module
normalises it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models.ct_config import CTEncoderConfig, available_ct_configs, load_ct_config
from engine.models.ct_layers import (
    ContinuousPositionBias,
    ConvStem,
    CosineCodebook,
    DensityPath,
    FactorisedTransformer,
    TubeletEmbedding,
)

__all__ = [
    "AttentionPooling",
    "CTCLIPPooling",
    "CTEncoder",
    "CTEncoderConfig",
    "available_ct_configs",
    "load_ct_config",
]


class CTCLIPPooling(nn.Module):
    """CT-CLIP's image latent: mean over t, flatten ``(h, w, dim)``, bias-free linear.

    The projection has ``h * w * dim * latent`` weights (151 M at the paper size).
    """

    def __init__(self, grid_hw: tuple[int, int], dim: int, latent_dim: int):
        super().__init__()
        self.proj = nn.Linear(grid_hw[0] * grid_hw[1] * dim, latent_dim, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.proj(tokens.mean(dim=1).reshape(tokens.shape[0], -1))


class AttentionPooling(nn.Module):
    """A light head: one learned query attends over all tokens, then LayerNorm + linear.

    About ``4 * dim^2 + dim * latent`` weights, independent of the grid size, so it also
    accepts volumes with other token grids.
    """

    def __init__(self, dim: int, heads: int, latent_dim: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.randn(1, dim) * dim**-0.5)
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, latent_dim, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        b, d = tokens.shape[0], tokens.shape[-1]
        kv = self.norm(tokens.reshape(b, -1, d))
        k, v = self.to_kv(kv).chunk(2, dim=-1)
        q = self.to_q(self.query).expand(b, 1, d)
        q, k, v = (x.reshape(b, x.shape[1], self.heads, d // self.heads).transpose(1, 2) for x in (q, k, v))
        pooled = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, d)
        return self.proj(self.norm_out(self.to_out(pooled)))


class CTEncoder(nn.Module):
    """CTViT-family 3D encoder. See the module docstring for axis orders."""

    def __init__(self, config: CTEncoderConfig):
        super().__init__()
        self.config = config
        c = config
        if c.stem == "conv":
            self.patch_embed = ConvStem(c.channels, c.patch_size, c.temporal_patch_size, c.dim, c.stem_widths)
        else:
            self.patch_embed = TubeletEmbedding(c.channels, c.patch_size, c.temporal_patch_size, c.dim,
                                               patch_norm=c.patch_norm)
        self.density = (DensityPath(c.input_size, c.density_pool, c.density_thresholds, c.density_rank,
                                    c.latent_dim, summaries=c.density_summaries, channels=c.channels)
                        if c.density_path else None)
        self.rel_pos_bias = ContinuousPositionBias(c.rel_pos_width, c.heads, c.rel_pos_layers)
        common = dict(dim=c.dim, heads=c.heads, dim_head=c.dim_head, scale=c.attn_scale, ff_inner=c.ff_inner)
        self.spatial = FactorisedTransformer("spatial", c.spatial_depth, **common)
        self.temporal = FactorisedTransformer("temporal", c.temporal_depth, peg_layout=c.temporal_peg_layout,
                                              **common)
        self.codebook = CosineCodebook(c.codebook_size, c.dim) if c.codebook_size > 0 else None
        _, h, w = c.token_grid
        if c.pooling == "ctclip":
            self.pool = CTCLIPPooling((h, w), c.dim, c.latent_dim)
        else:
            self.pool = AttentionPooling(c.dim, c.pool_heads, c.latent_dim)
        self.set_grad_checkpointing(c.grad_checkpointing)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each transformer block in the backward pass (less memory, ~1/3 more time)."""
        self.spatial.grad_checkpointing = enabled
        self.temporal.grad_checkpointing = enabled

    def _check_input(self, x: Tensor) -> None:
        c = self.config
        if x.ndim != 5 or x.shape[1] != c.channels:
            raise ValueError(f"CT encoder expects (B, {c.channels}, Z, Y, X), got {tuple(x.shape)}")
        z, y, xx = x.shape[2:]
        if (y, xx) != tuple(c.input_size[1:]) and c.pooling == "ctclip":
            raise ValueError(f"CT encoder {c.name!r} expects {c.input_size[1]}x{c.input_size[2]} slices, "
                             f"got {y}x{xx}")
        if c.density_path and (z, y, xx) != tuple(c.input_size):
            raise ValueError(f"CT encoder {c.name!r} has a density path and expects {tuple(c.input_size)} "
                             f"voxels (z, y, x), got {(z, y, xx)}")
        if z % c.temporal_patch_size or y % c.patch_size or xx % c.patch_size:
            raise ValueError(f"volume {(z, y, xx)} (z, y, x) is not a multiple of the tubelet "
                             f"{(c.temporal_patch_size, c.patch_size, c.patch_size)}")

    def encode_tokens(self, x: Tensor, use_codebook: bool = True) -> Tensor:
        """``(B, 1, Z, Y, X)`` -> ``(B, t, h, w, dim)`` tokens after both transformers and,
        when ``use_codebook`` and the config has a codebook, after the VQ lookup."""
        self._check_input(x)
        tokens = self.patch_embed(x)
        b, t, h, w, d = tokens.shape
        video_shape = (b, t, h, w)
        bias = self.rel_pos_bias(h, w, tokens.device, tokens.dtype)
        seq = self.spatial(tokens.reshape(b * t, h * w, d), video_shape, bias)
        seq = seq.reshape(b, t, h, w, d).permute(0, 2, 3, 1, 4).reshape(b * h * w, t, d)
        seq = self.temporal(seq, video_shape)
        tokens = seq.reshape(b, h, w, t, d).permute(0, 3, 1, 2, 4).contiguous()
        if use_codebook and self.codebook is not None:
            tokens = self.codebook(tokens)
        return tokens

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 1, Z, Y, X)`` -> ``(B, latent_dim)``, unnormalised."""
        return self.forward_with_tokens(x)[0]

    def forward_with_tokens(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The latent and the ``(B, t, h, w, dim)`` tokens it was pooled from (for dense training losses)."""
        tokens = self.encode_tokens(x)
        latent = self.pool(tokens)
        if self.density is not None:
            latent = latent + self.density(x)
        return latent, tokens
