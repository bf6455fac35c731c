"""Building blocks of the CTViT encoder, arithmetic-equal to CT-CLIP's CTViT encode path.

Token tensors are ``(batch, t, h, w, dim)`` (t = slice blocks) unless a docstring says
otherwise; transformer inputs are ``(sequences, tokens, dim)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from engine.models.ct_summaries import summaries, summary_count


class BiasFreeLayerNorm(nn.Module):
    """LayerNorm with a learnable gain and a fixed (buffer) bias, as CT-CLIP's ``LayerNorm``.

    The bias stays a persistent buffer so imported checkpoints load it verbatim.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.register_buffer("bias", torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias)


class TubeletEmbedding(nn.Module):
    """``(B, C, Z, Y, X)`` voxels -> ``(B, t, h, w, dim)`` tokens.

    Each tubelet is flattened in CT-CLIP's order ``(c, pt, p1, p2)`` (channel, slice, row,
    column), then LayerNorm (unless ``patch_norm`` is off) -> Linear -> LayerNorm. The volume is embedded a few slice
    blocks at a time so the flattened copy never holds the whole volume twice.
    """

    def __init__(self, channels: int, patch: int, temporal_patch: int, dim: int, rows_per_chunk: int = 4096,
                 patch_norm: bool = True):
        super().__init__()
        self.patch, self.temporal_patch, self.channels = patch, temporal_patch, channels
        numel = channels * temporal_patch * patch * patch
        self.norm_in = nn.LayerNorm(numel) if patch_norm else nn.Identity()
        self.proj = nn.Linear(numel, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.rows_per_chunk = rows_per_chunk

    def forward(self, x: Tensor) -> Tensor:
        b, c, z, y, xx = x.shape
        p, pt = self.patch, self.temporal_patch
        t, h, w = z // pt, y // p, xx // p
        blocks_per_chunk = max(1, self.rows_per_chunk // max(1, b * h * w))
        out = []
        for t0 in range(0, t, blocks_per_chunk):
            t1 = min(t, t0 + blocks_per_chunk)
            slab = x[:, :, t0 * pt : t1 * pt]
            slab = slab.reshape(b, c, t1 - t0, pt, h, p, w, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
            slab = slab.reshape(b, t1 - t0, h, w, c * pt * p * p)
            out.append(self.norm_out(self.proj(self.norm_in(slab))))
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)


class ConvStem(nn.Module):
    """``(B, C, Z, Y, X)`` voxels -> ``(B, t, h, w, dim)`` tokens through stride-2 3D convolutions.

    A non-linear, shift-tolerant alternative to the linear tubelet embedding (as hybrid ViTs and 3D
    ResNets start): each stage is a 3x3x3 convolution, GroupNorm and GELU, halving rows and columns,
    and slices in the last ``log2(temporal_patch)`` stages, so the output has the tubelet grid and the
    transformer, pooling and imported CTViT weights are unchanged. A small lesion anywhere in a
    token's box reaches it through the same filters, which a single linear map of the flattened
    tubelet cannot learn from a few hundred studies.
    """

    def __init__(self, channels: int, patch: int, temporal_patch: int, dim: int, widths: tuple[int, ...]):
        super().__init__()
        n = len(widths)
        if 2**n != patch or temporal_patch > patch or temporal_patch & (temporal_patch - 1):
            raise ValueError(f"conv stem: {n} stride-2 stages give {2**n}, not patch {patch} "
                             f"(and temporal_patch {temporal_patch} must be a power of 2 <= patch)")
        z_stages = temporal_patch.bit_length() - 1
        layers: list[nn.Module] = []
        cin = channels
        for i, width in enumerate(widths):
            sz = 2 if i >= n - z_stages else 1
            layers += [nn.Conv3d(cin, width, 3, stride=(sz, 2, 2), padding=1, bias=False),
                       nn.GroupNorm(min(8, width), width), nn.GELU()]
            cin = width
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(cin, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm_out(self.proj(self.convs(x).permute(0, 2, 3, 4, 1)))


class DensityPath(nn.Module):
    """``(B, C, Z, Y, X)`` voxels -> ``(B, latent)``: a linear read-out of pooled density maps,
    added to the transformer's latent.

    The volume is cut into ``pool``-sized blocks; per block the mean, the max and, per threshold,
    the count of voxels above it (log scale) are taken. Each feature is standardised with the
    training set's mean and std (buffers, fitted once by :meth:`fit_standardization`), then a rank-
    ``rank`` bias-free linear map gives the latent offset.

    With ``summaries``, whole-volume and regional summaries (``ct_summaries``) follow the per-block
    features and are standardised and read out with them.

    Why: the tubelet transformer, trained from scratch on ~10^3 volumes, did not learn small dense
    things (a pacemaker lead, calcium in a coronary wall, a -950 HU emphysema pocket) that a linear
    probe on exactly these pooled maps finds at AUROC 0.9 or more. Max and counts are not linear in
    the voxels, so a linear tubelet embedding cannot supply them.
    """

    #: Smallest std a feature is divided by (prepared units: 50 HU for the mean and max; a few
    #: voxels on the log-count scale).
    STD_FLOOR = 0.05

    def __init__(self, input_size: tuple[int, int, int], pool: tuple[int, int, int],
                 thresholds: tuple[float, ...], rank: int, latent_dim: int, summaries: bool = False,
                 channels: int = 1):
        super().__init__()
        self.pool, self.thresholds, self.summaries = tuple(pool), tuple(thresholds), bool(summaries)
        cells = math.prod(n // k for n, k in zip(input_size, pool))
        self.voxels = math.prod(pool)
        features = cells * channels * (2 + len(thresholds))
        if self.summaries:
            features += summary_count() * channels
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))
        self.down = nn.Linear(features, rank, bias=False)
        self.up = nn.Linear(rank, latent_dim, bias=False)

    def features(self, x: Tensor) -> Tensor:
        """``(B, C, Z, Y, X)`` -> ``(B, features)``, before standardisation."""
        feats = [F.avg_pool3d(x, self.pool), F.max_pool3d(x, self.pool)]
        for v in self.thresholds:  # one at a time: a broadcast comparison would hold every voxel per threshold
            count = F.avg_pool3d((x > v).to(x.dtype), self.pool) * self.voxels
            feats.append(torch.log1p(count) / math.log1p(self.voxels))
        if self.summaries:
            feats.append(summaries(x).to(x.dtype))
        return torch.cat([f.flatten(1) for f in feats], dim=1)

    @torch.no_grad()
    def fit_standardization(self, batches) -> int:
        """Set ``mean`` / ``std`` from an iterable of ``(B, C, Z, Y, X)`` batches; returns the volume count."""
        total, s1, s2 = 0, None, None
        for x in batches:
            f = self.features(x.to(self.mean.device, torch.float32)).double()
            s1 = f.sum(0) if s1 is None else s1 + f.sum(0)
            s2 = f.square().sum(0) if s2 is None else s2 + f.square().sum(0)
            total += f.shape[0]
        if not total:
            raise ValueError("no volumes to fit the density standardisation on")
        mean = s1 / total
        var = (s2 / total - mean.square()).clamp_min(0)
        self.mean.copy_(mean.float())
        # Floored: a block that barely varies over the training set (air outside every body) would
        # otherwise turn training-time jitter (10 HU noise) into features of |z| > 1000.
        self.std.copy_(var.sqrt().clamp_min(self.STD_FLOOR).float())
        return total

    def forward(self, x: Tensor) -> Tensor:
        f = (self.features(x) - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.up(self.down(f))


class ContinuousPositionBias(nn.Module):
    """Attention bias ``(heads, h*w, h*w)`` from an MLP of log-scaled 2D offsets (Swin v2).

    CT-CLIP evaluates the MLP on all (h*w)^2 token pairs on every call. The result depends
    only on the offset (dy, dx), so the MLP runs on the (2h-1)(2w-1) distinct offsets and
    is gathered out; when no gradient is needed the gathered bias is cached per grid and
    recomputed only if the weights change (tracked by tensor version counters).
    """

    def __init__(self, hidden: int, heads: int, layers: int = 2):
        super().__init__()
        widths = [2] + [hidden] * layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.layers.append(nn.Linear(hidden, heads))
        self._cache: dict[tuple, tuple[tuple, Tensor]] = {}
        #: How many times the MLP itself ran (tests use it to prove the cache is reused).
        self.mlp_evaluations = 0

    def _weights_version(self) -> tuple:
        return tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in self.parameters())

    def compute(self, h: int, w: int, device: torch.device) -> Tensor:
        self.mlp_evaluations += 1
        weight = self.layers[0].weight
        dy = torch.arange(-(h - 1), h, device=device)
        dx = torch.arange(-(w - 1), w, device=device)
        rel = torch.stack(torch.meshgrid(dy, dx, indexing="ij"), dim=-1).float()
        # Same formula as CT-CLIP (sign * log(|d| + 1)), not log1p, to stay bit-close.
        rel = torch.sign(rel) * torch.log(rel.abs() + 1)
        table = rel.to(weight.dtype)
        for i, layer in enumerate(self.layers):
            table = layer(table)
            if i < len(self.layers) - 1:
                table = F.leaky_relu(table, 0.1)
        ys = torch.arange(h, device=device).repeat_interleave(w)
        xs = torch.arange(w, device=device).repeat(h)
        iy = ys[:, None] - ys[None, :] + (h - 1)
        ix = xs[:, None] - xs[None, :] + (w - 1)
        return table[iy, ix].permute(2, 0, 1).contiguous()

    def forward(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if needs_grad:
            return self.compute(h, w, device).to(dtype)
        key = (h, w, str(device), dtype)
        version = self._weights_version()
        hit = self._cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        bias = self.compute(h, w, device).to(dtype)
        self._cache[key] = (version, bias)
        return bias


class PositionGeneratingConv(nn.Module):
    """CT-CLIP's PEG: depthwise 3x3x3 conv over the token grid, causal along its first axis.

    Input and output are ``(B, T, H, W, dim)``; the first grid axis is padded (2, 0), the
    other two (1, 1).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, grid: Tensor) -> Tensor:
        x = grid.permute(0, 4, 1, 2, 3)
        x = F.pad(x, (1, 1, 1, 1, 2, 0))
        x = self.conv(x)
        return x.permute(0, 2, 3, 4, 1)


class CosineAttention(nn.Module):
    """CT-CLIP's self-attention: l2-normalised q and k with learned per-channel scales,
    logits times a fixed ``scale`` (8), plus an optional additive bias, via SDPA.

    Only the queries see the pre-norm: CT-CLIP computes keys and values from the raw input
    (``kv_input`` is taken before ``x`` is normalised), and imported weights expect that.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, scale: float):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head, self.scale = heads, dim_head, scale
        self.norm = BiasFreeLayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        s, n, _ = x.shape
        q = self.to_q(self.norm(x))
        k, v = self.to_kv(x).chunk(2, dim=-1)
        q, k, v = (t.reshape(s, n, self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
        # (q^ * qs) . (k^ * ks) == (q^ * qs * ks) . k^: one scaling pass instead of two.
        q = F.normalize(q, dim=-1) * (self.q_scale * self.k_scale)
        k = F.normalize(k, dim=-1)
        mask = None if bias is None else bias.unsqueeze(0).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.to_out(out.transpose(1, 2).reshape(s, n, self.heads * self.dim_head))


class GEGLUFeedForward(nn.Module):
    """LayerNorm -> bias-free Linear to 2*inner -> value * GELU(gate) -> bias-free Linear."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, inner * 2, bias=False)
        self.proj_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        if torch.is_grad_enabled():
            return self.proj_out(F.gelu(gate) * value)
        return self.proj_out(value.mul_(F.gelu(gate)))  # inference: reuse the buffer


class Block(nn.Module):
    """PEG residual, attention residual, feed-forward residual (CT-CLIP's layer order)."""

    def __init__(self, dim: int, heads: int, dim_head: int, scale: float, ff_inner: int):
        super().__init__()
        self.peg = PositionGeneratingConv(dim)
        self.attn = CosineAttention(dim, heads, dim_head, scale)
        self.ff = GEGLUFeedForward(dim, ff_inner)

    def forward(self, x: Tensor, to_grid, from_grid, bias: Tensor | None) -> Tensor:
        if torch.is_grad_enabled():
            x = from_grid(self.peg(to_grid(x))) + x
            x = self.attn(x, bias) + x
            return self.ff(x) + x
        # Inference: same sums, accumulated in place (saves a token-sized buffer per step).
        x = from_grid(self.peg(to_grid(x))).add_(x)
        x = self.attn(x, bias).add_(x)
        return self.ff(x).add_(x)


class FactorisedTransformer(nn.Module):
    """A stack of blocks over one axis ("spatial": sequences are slice blocks, tokens the
    h*w grid; "temporal": sequences are (h, w) positions, tokens the t slice blocks),
    followed by a bias-free LayerNorm."""

    def __init__(self, axis: str, depth: int, dim: int, heads: int, dim_head: int, scale: float,
                 ff_inner: int, peg_layout: str = "ctclip"):
        super().__init__()
        self.axis, self.peg_layout = axis, peg_layout
        self.blocks = nn.ModuleList(Block(dim, heads, dim_head, scale, ff_inner) for _ in range(depth))
        self.norm_out = BiasFreeLayerNorm(dim)
        self.grad_checkpointing = False

    def _grid_maps(self, video_shape: tuple[int, int, int, int]):
        b, t, h, w = video_shape
        if self.axis == "spatial" or self.peg_layout == "ctclip":
            # Spatial: (b t)(h w) d really is (b, t, h, w, d) in memory. Temporal "ctclip":
            # CT-CLIP reshapes (b h w) t d to (b, t, h, w, d) as well, although the memory
            # order is (b, h, w, t): the PEG then sees a permuted grid. Reproduced on purpose.
            def to_grid(x):
                return x.reshape(b, t, h, w, -1)

            tokens_per_sequence = t if self.axis == "temporal" else h * w

            def from_grid(g):
                return g.reshape(-1, tokens_per_sequence, g.shape[-1])

            return to_grid, from_grid

        def to_grid_true(x):
            return x.reshape(b, h, w, t, -1).permute(0, 3, 1, 2, 4)

        def from_grid_true(g):
            return g.permute(0, 2, 3, 1, 4).reshape(b * h * w, t, g.shape[-1])

        return to_grid_true, from_grid_true

    def forward(self, x: Tensor, video_shape: tuple[int, int, int, int], bias: Tensor | None = None) -> Tensor:
        to_grid, from_grid = self._grid_maps(video_shape)
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled() and self.training
        for block in self.blocks:
            if use_ckpt:
                x = checkpoint(block, x, to_grid, from_grid, bias, use_reentrant=False)
            else:
                x = block(x, to_grid, from_grid, bias)
        return self.norm_out(x)


class CosineCodebook(nn.Module):
    """CT-CLIP's VQ lookup (vector-quantize-pytorch ``CosineSimCodebook``, inference side).

    Each token picks the code with the highest cosine similarity; the returned token is the
    stored code vector itself. The codebook is a frozen buffer (no EMA updates here); when
    training, gradients pass straight through to the unquantised tokens.
    """

    def __init__(self, size: int, dim: int, rows_per_chunk: int = 2048):
        super().__init__()
        embed = torch.empty(size, dim)
        if not embed.is_meta:  # random ops on meta pull in torch._refs (seconds of imports)
            embed = F.normalize(embed.normal_(), dim=-1)
        self.register_buffer("embed", embed)
        self.rows_per_chunk = rows_per_chunk

    def indices(self, tokens: Tensor) -> Tensor:
        flat = tokens.detach().reshape(-1, tokens.shape[-1])
        codes = F.normalize(self.embed, dim=-1).to(flat.dtype)
        out = [
            (F.normalize(chunk, dim=-1) @ codes.T).argmax(dim=-1)
            for chunk in flat.split(self.rows_per_chunk)
        ]
        return torch.cat(out).reshape(tokens.shape[:-1])

    def forward(self, tokens: Tensor) -> Tensor:
        quantised = self.embed[self.indices(tokens)].to(tokens.dtype)
        if tokens.requires_grad:
            quantised = tokens + (quantised - tokens).detach()
        return quantised
