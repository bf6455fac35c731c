"""Configuration of the CT encoder (the CTViT family), stored as JSON.

Axis order everywhere: the input volume is ``(z, y, x)`` = (slices, rows, columns);
tokens are laid out ``(t, h, w)`` = (slice blocks, row blocks, column blocks).

Named configs (``engine/configs/ct/*.json``):

* ``ctclip-paper``: CT-CLIP's CTViT (240x480x480, tubelets 10x20x20 -> 24x24x24 tokens,
  dim 512, 4+4 layers, 8 heads x 32, codebook 8192, CT-CLIP pooling to 512); 178.6 M
  weights (681 MiB fp32), 151 M of them in the pooling projection. Imported weights need it.
* ``cpu-small``: for training on a CPU (the "cpu-128" preprocess, 64x128x128, tubelets
  8x16x16 -> 8x8x8 tokens, dim 256, 2+2 layers, no codebook, latent 512); 4.17 M weights
  (15.9 MiB). It uses attention pooling because CT-CLIP's flatten-and-project head alone
  would need 8*8*256*512 = 8.4 M weights (46 MiB in total, over the ~20 MB bundle budget);
  it has no codebook because a codebook is only meaningful when imported from a trained
  VQ-VAE, and its temporal PEG uses the true token grid ("grid"), as nothing forces the quirk.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from engine.errors import BundleError

#: Folder of the named configs (``ctclip-paper``, ``cpu-small``).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "ct"

POOLINGS = ("ctclip", "attention")
PEG_LAYOUTS = ("ctclip", "grid")
STEMS = ("tubelet", "conv")


@dataclass
class CTEncoderConfig:
    """Shape and behaviour of a :class:`engine.models.ct.CTEncoder`.

    ``input_size`` is ``(z, y, x)`` in voxels. ``patch_size`` is the in-plane tubelet edge
    (rows = columns), ``temporal_patch_size`` the number of slices per tubelet. In-plane
    ``y`` and ``x`` must match ``input_size`` exactly (the CT-CLIP pooling flattens the
    in-plane grid); the slice count may be any multiple of ``temporal_patch_size``.
    """

    name: str = "custom"
    input_size: tuple[int, int, int] = (240, 480, 480)
    patch_size: int = 20
    temporal_patch_size: int = 10
    channels: int = 1
    dim: int = 512
    spatial_depth: int = 4
    temporal_depth: int = 4
    heads: int = 8
    dim_head: int = 32
    #: GEGLU feed-forward width is ``int(ff_mult * 2 / 3 * dim)``, as in CT-CLIP.
    ff_mult: float = 4.0
    #: Multiplier of the cosine-similarity attention logits (CT-CLIP: 8).
    attn_scale: float = 8.0
    #: Hidden width of the continuous relative-position-bias MLP (None = ``dim``).
    rel_pos_hidden: int | None = None
    rel_pos_layers: int = 2
    #: Size of the cosine-similarity VQ codebook; 0 = no codebook.
    codebook_size: int = 8192
    latent_dim: int = 512
    #: "ctclip": mean over t, flatten (h, w, dim), bias-free linear (large: h*w*dim*latent weights);
    #: "attention": one learned query attends over all tokens, then a linear (small).
    pooling: str = "ctclip"
    pool_heads: int = 8
    #: How the temporal blocks' position-generating conv sees its tokens. "ctclip" repeats
    #: CT-CLIP's reshape of the (b h w) t d sequence straight into (b, t, h, w), which mixes
    #: up the axes (needed to reproduce imported weights); "grid" uses the true token grid.
    temporal_peg_layout: str = "ctclip"
    grad_checkpointing: bool = False
    #: CT-CLIP LayerNorms every flattened tubelet before embedding it, which removes the tubelet's
    #: mean density and contrast. False embeds the raw voxels: a coarse encoder (45 mm tubelets at
    #: the cpu-128 spec) otherwise cannot tell fluid or consolidation from aerated lung.
    patch_norm: bool = True
    #: A second, non-linear path from the voxels to the latent (see ``ct_layers.DensityPath``):
    #: per ``density_pool`` block the mean, max and log-count of voxels above each of
    #: ``density_thresholds`` (prepared units, HU / 1000), standardised, through a rank-
    #: ``density_rank`` linear map. Off in CT-CLIP; needs a fixed ``input_size`` like "ctclip" pooling.
    density_path: bool = False
    density_pool: tuple[int, int, int] = (8, 8, 8)
    density_thresholds: tuple[float, ...] = ()
    density_rank: int = 128
    #: Append whole-volume and regional density summaries (``ct_summaries``) to the density path's
    #: features (HU-band shares per region, block-class quantiles, lung texture); needs ``density_path``.
    density_summaries: bool = False
    #: How voxels become tokens: "tubelet" (CT-CLIP's linear map of each flattened tubelet) or "conv"
    #: (``ct_layers.ConvStem``: stride-2 3D convolutions of ``stem_widths`` channels, one stage per
    #: halving of ``patch_size``, to the same token grid).
    stem: str = "tubelet"
    stem_widths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.input_size = tuple(int(v) for v in self.input_size)
        self.density_thresholds = tuple(float(v) for v in self.density_thresholds)
        self.density_pool = tuple(int(v) for v in self.density_pool)
        self.stem_widths = tuple(int(v) for v in self.stem_widths)
        problems = []
        if self.stem not in STEMS:
            problems.append(f"stem must be one of {STEMS}, got {self.stem!r}")
        elif self.stem == "conv" and (2 ** len(self.stem_widths) != self.patch_size
                                      or self.temporal_patch_size & (self.temporal_patch_size - 1)
                                      or self.temporal_patch_size > self.patch_size):
            problems.append(f"a conv stem needs log2(patch_size) = {self.patch_size.bit_length() - 1} stem_widths "
                            f"(got {len(self.stem_widths)}) and a power-of-2 temporal_patch_size <= patch_size")
        if len(self.input_size) != 3:
            problems.append(f"input_size must be (z, y, x), got {self.input_size}")
        else:
            z, y, x = self.input_size
            if y % self.patch_size or x % self.patch_size:
                problems.append(f"in-plane size {(y, x)} is not a multiple of patch_size {self.patch_size}")
            if z % self.temporal_patch_size:
                problems.append(f"slice count {z} is not a multiple of temporal_patch_size {self.temporal_patch_size}")
        if self.pooling not in POOLINGS:
            problems.append(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.temporal_peg_layout not in PEG_LAYOUTS:
            problems.append(f"temporal_peg_layout must be one of {PEG_LAYOUTS}, got {self.temporal_peg_layout!r}")
        if self.pooling == "attention" and self.dim % self.pool_heads:
            problems.append(f"dim {self.dim} is not divisible by pool_heads {self.pool_heads}")
        if self.density_path and (len(self.density_pool) != 3 or len(self.input_size) != 3
                                  or any(k < 1 or n % k for n, k in zip(self.input_size, self.density_pool))):
            problems.append(f"density_pool {self.density_pool} does not divide input_size {self.input_size}")
        if self.density_summaries and not self.density_path:
            problems.append("density_summaries needs density_path")
        if self.density_rank < 1:
            problems.append(f"density_rank must be positive, got {self.density_rank}")
        if list(self.density_thresholds) != sorted(set(self.density_thresholds)):
            problems.append(f"density_thresholds must be strictly increasing, got {list(self.density_thresholds)}")
        if problems:
            raise ValueError("invalid CT encoder config: " + "; ".join(problems))

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """``(t, h, w)`` token counts for ``input_size``."""
        z, y, x = self.input_size
        return z // self.temporal_patch_size, y // self.patch_size, x // self.patch_size

    @property
    def patch_numel(self) -> int:
        return self.channels * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def ff_inner(self) -> int:
        return int(self.ff_mult * (2 / 3) * self.dim)

    @property
    def rel_pos_width(self) -> int:
        return self.dim if self.rel_pos_hidden is None else self.rel_pos_hidden

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        d["density_thresholds"] = list(self.density_thresholds)
        d["density_pool"] = list(self.density_pool)
        d["stem_widths"] = list(self.stem_widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CTEncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown CT encoder config keys: {unknown}")
        return cls(**d)

    def replace(self, **changes) -> CTEncoderConfig:
        return dataclasses.replace(self, **changes)


def available_ct_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_ct_config(name_or_path: str | Path) -> CTEncoderConfig:
    """A named config (e.g. ``"ctclip-paper"``, ``"cpu-small"``) or a JSON file path."""
    candidate = CONFIG_DIR / f"{name_or_path}.json"
    path = candidate if candidate.is_file() else Path(name_or_path)
    if not path.is_file():
        raise BundleError(f"no such CT encoder config (named ones: {', '.join(available_ct_configs())})", path)
    try:
        data = json.loads(path.read_text())
        return CTEncoderConfig.from_dict(data)
    except (json.JSONDecodeError, ValueError, TypeError) as exc:
        raise BundleError(f"invalid CT encoder config: {exc}", path) from exc
