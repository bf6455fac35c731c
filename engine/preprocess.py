"""CT preprocessing: one function turns a HU volume into the tensor the CT encoder eats.

CT-CLIP's protocol (ibrahimethemhamamci/CT-CLIP, ``scripts/data.py``) is one
:class:`PreprocessSpec` (``CTCLIP_SPEC``); training and inference both call
:func:`prepare_ct`, so they cannot drift apart. See ``docs/orientation.md`` for the
sources behind every step.

Steps of :func:`prepare_ct`
---------------------------
1. Reorient (permute/flip only, :meth:`engine.volume.Volume.reoriented`) to
   ``spec.orientation``, the orientation of CT-RATE's NIfTI voxels as engine.io reads
   them (``"LPS"``: +x → patient left, +y → posterior, +z → superior).
2. Put the axes in CT-CLIP's order. CT-CLIP reads nibabel's array ``(i, j, k)`` and
   transposes it to ``(k, i, j)``; our ``(z, y, x)`` array is nibabel's ``(k, j, i)``,
   so CT-CLIP's order is ``(z, x, y)`` of ours. The output axes are therefore
   (slice, CTViT row, CTViT column) = (towards S, towards L, towards P) for CTCLIP_SPEC.
3. :func:`prepare_array`: CT-CLIP's voxel arithmetic on that array.

Voxel arithmetic of :func:`prepare_array` (CT-CLIP's, step by step)
-------------------------------------------------------------------
* output grid size per axis ``int(n * (spacing / target_spacing))`` (truncation), with
  ``spacing`` first snapped to the decimal it was written as (:func:`snap_spacing`);
* trilinear resampling with ``align_corners=False`` (torch's formula: source index
  ``(d + 0.5) * n_in / n_out - 0.5``, clamped at 0);
* clip to the HU window (after resampling, as CT-CLIP's training loader does;
  ``clip_before_resample=True`` reproduces its ``data_inference_nii.py`` instead);
* divide by ``scale_divisor``;
* centre crop / pad to ``spec.shape`` with CT-CLIP's index arithmetic: crop start
  ``max((n - t) // 2, 0)``, pad before ``(t - kept) // 2``, the odd voxel after;
  padding uses ``pad_value`` (in output units, i.e. after scaling).

Differences from CT-CLIP that are deliberate: arithmetic in float32 instead of
float64 (torch's float32 bilinear kernel places source points to ~n·2⁻²⁴ voxel, so
outputs differ by ≲ 3e-5, i.e. ≲ 0.03 HU, measured against a float64 reference), and
the slice axis is resampled only where the crop keeps it, a few slices at a time, so a
512×512×400 scan never exists as a whole float32 (let alone float64) copy.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import StudyError
from engine.volume import Volume

__all__ = [
    "CPU_SPEC",
    "CTCLIP_SPEC",
    "PreprocessSpec",
    "builtin_spec_names",
    "get_spec",
    "output_geometry",
    "prepare_array",
    "prepare_ct",
    "snap_spacing",
]

_SPEC_DIR = Path(__file__).with_name("configs") / "preprocess"
_OPPOSITE = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a HU volume becomes the encoder's input.

    All per-axis tuples are in output axis order (slice, row, column), i.e. CT-CLIP's
    ``(k, i, j)`` order, see the module docstring.
    """

    name: str
    #: target voxel spacing (s_slice, s_row, s_column) in mm
    spacing: tuple[float, float, float]
    #: output shape (slices, rows, columns)
    shape: tuple[int, int, int]
    #: HU clip window (lo, hi)
    hu_window: tuple[float, float]
    #: clipped HU are divided by this
    scale_divisor: float
    #: value of padded voxels, in output units (after scaling)
    pad_value: float
    #: engine.volume orientation code (+x, +y, +z) voxels are brought to before CT-CLIP's order
    orientation: str = "LPS"
    #: clip before resampling (CT-CLIP's data_inference_nii.py) instead of after (its training loader)
    clip_before_resample: bool = False

    def __post_init__(self) -> None:
        # Normalise JSON lists to tuples so specs compare equal after a round trip.
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "hu_window", tuple(float(h) for h in self.hu_window))
        object.__setattr__(self, "scale_divisor", float(self.scale_divisor))
        object.__setattr__(self, "pad_value", float(self.pad_value))
        object.__setattr__(self, "orientation", str(self.orientation).upper())
        object.__setattr__(self, "clip_before_resample", bool(self.clip_before_resample))
        problems = []
        if not self.name:
            problems.append("empty name")
        if len(self.spacing) != 3 or not all(s > 0 and math.isfinite(s) for s in self.spacing):
            problems.append(f"spacing must be 3 positive mm values, got {self.spacing}")
        if len(self.shape) != 3 or not all(s > 0 for s in self.shape):
            problems.append(f"shape must be 3 positive sizes, got {self.shape}")
        if len(self.hu_window) != 2 or not self.hu_window[0] < self.hu_window[1]:
            problems.append(f"hu_window must be (lo, hi) with lo < hi, got {self.hu_window}")
        if self.scale_divisor == 0 or not math.isfinite(self.scale_divisor):
            problems.append(f"scale_divisor must be finite and non-zero, got {self.scale_divisor}")
        if not _is_orientation_code(self.orientation):
            problems.append(f"orientation must be a code like 'LPS', got {self.orientation!r}")
        if problems:
            raise ValueError(f"invalid PreprocessSpec {self.name!r}: " + "; ".join(problems))

    # --- JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        d = asdict(self)
        for key in ("spacing", "shape", "hu_window"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise ``ValueError``."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown PreprocessSpec keys: {sorted(unknown)}")
        required = {"name", "spacing", "shape", "hu_window", "scale_divisor", "pad_value"}
        missing = required - set(d)
        if missing:
            raise ValueError(f"missing PreprocessSpec keys: {sorted(missing)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        return cls.from_dict(json.loads(text))


def _is_orientation_code(code: str) -> bool:
    if len(code) != 3 or any(c not in _OPPOSITE for c in code):
        return False
    axes = [{"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}[c] for c in code]
    return sorted(axes) == [0, 1, 2]


def builtin_spec_names() -> list[str]:
    return sorted(p.stem for p in _SPEC_DIR.glob("*.json"))


def get_spec(name: str | Path) -> PreprocessSpec:
    """A built-in spec by name (``"ctclip"``, ``"cpu-128"``) or a spec JSON file by path."""
    path = Path(name)
    if path.suffix != ".json":
        path = _SPEC_DIR / f"{name}.json"
        if not path.is_file():
            raise KeyError(f"no preprocess spec named {name!r}; built-in: {builtin_spec_names()}")
    try:
        return PreprocessSpec.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a valid preprocess spec ({e})") from e


#: CT-CLIP's protocol: 1.5 × 0.75 × 0.75 mm, 240 × 480 × 480, HU [−1000, 1000] / 1000, pad −1.
CTCLIP_SPEC = get_spec("ctclip")
#: CPU-sized protocol for synthetic phantoms (~1.4 × 1.4 × 2.5 mm, ~256 × 256 × 130):
#: 5.0 × 2.8 × 2.8 mm, 64 × 128 × 128, same window, scale and pad.
CPU_SPEC = get_spec("cpu-128")


# --- geometry --------------------------------------------------------------------------
@dataclass(frozen=True)
class _AxisPlan:
    n_in: int  # input voxels
    n_resampled: int  # int(n_in * factor): CT-CLIP's resampled size
    crop_start: int  # first resampled voxel kept
    crop_stop: int  # one past the last resampled voxel kept
    pad_before: int  # output voxels of pad before the kept ones


def snap_spacing(mm: float) -> float:
    """The shortest decimal that rounds to the same float32 as ``mm`` (1.39999998 -> 1.4).

    NIfTI headers hold float32 and DICOM slice steps come from differences of positions,
    so one study read both ways gives 1.39999998 and 1.4000000000000057 mm; CT-CLIP's
    spacings come from decimal strings (the metadata CSV). Without snapping,
    int(256 * 1.39999998 / 2.8) = 127 but int(256 * 1.4 / 2.8) = 128.
    """
    return float(str(np.float32(mm)))


def _axis_plan(n_in: int, spacing: float, target_spacing: float, target: int) -> _AxisPlan:
    # Same expression and evaluation order as CT-CLIP's resize_array: factor first, then int().
    factor = snap_spacing(spacing) / target_spacing
    n_res = int(n_in * factor)
    start = max((n_res - target) // 2, 0)
    stop = min(start + target, n_res)
    pad_before = (target - (stop - start)) // 2
    return _AxisPlan(n_in, n_res, start, stop, pad_before)


def output_geometry(
    in_shape: tuple[int, int, int], spacing: tuple[float, float, float], spec: PreprocessSpec
) -> dict[str, tuple[int, int, int]]:
    """Where the input lands in the output: resampled size, crop start and pad before, per axis.

    ``in_shape`` and ``spacing`` are in output axis order (slice, row, column).
    Useful to map output voxels back to the study (e.g. attention maps in the viewer).
    """
    plans = [_axis_plan(n, s, t, o) for n, s, t, o in zip(in_shape, spacing, spec.spacing, spec.shape)]
    return {
        "resampled_shape": tuple(p.n_resampled for p in plans),
        "crop_start": tuple(p.crop_start for p in plans),
        "pad_before": tuple(p.pad_before for p in plans),
        "kept_shape": tuple(p.crop_stop - p.crop_start for p in plans),
    }


def _linear_taps(plan: _AxisPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation taps of the kept resampled voxels (crop_start..crop_stop-1).

    torch's align_corners=False rule: source position (d + 0.5) * n_in / n_out - 0.5,
    clamped at 0; neighbours i0 = floor, i1 = min(i0 + 1, n_in - 1). Returns (i0, i1, w1)
    with out[d] = (1 - w1) * in[i0] + w1 * in[i1]; positions in float64.
    """
    d = np.arange(plan.crop_start, plan.crop_stop, dtype=np.float64)
    src = np.maximum((d + 0.5) * (plan.n_in / plan.n_resampled) - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, plan.n_in - 1)
    return i0, i1, src - i0


class _SliceResampler:
    """Linear resampling across slices (dim 0) onto the kept part of the CT-CLIP grid.

    Hand-written rather than F.interpolate because F.interpolate can only produce the
    whole resampled grid, not the cropped window we keep a few slices at a time; the
    taps are computed in float64 (F.interpolate uses float32 positions).
    """

    def __init__(self, plan: _AxisPlan, device: torch.device):
        self.identity = plan.n_resampled == plan.n_in
        self.keep_start = plan.crop_start
        self.i0, self.i1, w1 = _linear_taps(plan)
        self._i0 = torch.from_numpy(self.i0).to(device)
        self._i1 = torch.from_numpy(self.i1).to(device)
        self._w0 = torch.from_numpy((1.0 - w1).astype(np.float32)).to(device)[:, None, None]
        self._w1 = torch.from_numpy(w1.astype(np.float32)).to(device)[:, None, None]

    def source_range(self, start: int, stop: int) -> tuple[int, int]:
        """First and last input slice that kept output slices start..stop-1 read."""
        if self.identity:
            return self.keep_start + start, self.keep_start + stop - 1
        return int(self.i0[start]), int(self.i1[stop - 1])  # taps are non-decreasing

    def __call__(self, slab: torch.Tensor, start: int, stop: int, first: int) -> torch.Tensor:
        """Kept output slices start..stop-1 from ``slab``, whose slice 0 is input slice ``first``."""
        if self.identity:  # scale 1: every tap is i0 = d with weight 0
            return slab[self.keep_start + start - first : self.keep_start + stop - first]
        lo = slab.index_select(0, self._i0[start:stop] - first).mul_(self._w0[start:stop])
        return lo.add_(slab.index_select(0, self._i1[start:stop] - first).mul_(self._w1[start:stop]))


# --- the arithmetic ----------------------------------------------------------------------
def prepare_array(
    array: ArrayT,
    spacing: tuple[float, float, float],
    spec: PreprocessSpec,
    *,
    chunk_bytes: int = 64 << 20,
) -> ArrayT:
    """CT-CLIP's voxel arithmetic on an array already in output axis order.

    ``array``: HU, shape (slices, rows, columns), any real dtype, numpy or torch (any
    device). ``spacing``: its voxel spacing in mm, same axis order. Returns float32 of
    exactly ``spec.shape``: a numpy array for numpy input, a tensor on the input's
    device for torch input. Work happens a few slices at a time (about ``chunk_bytes``
    of float32 scratch), so the input is never converted to float32 as a whole.
    """
    is_numpy = isinstance(array, np.ndarray)
    if not is_numpy and not isinstance(array, torch.Tensor):
        raise TypeError(f"prepare_array takes a numpy array or torch tensor, got {type(array).__name__}")
    if array.ndim != 3:
        raise ValueError(f"prepare_array needs a 3-D (slices, rows, columns) array, got shape {tuple(array.shape)}")
    if is_numpy and not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"prepare_array needs real numbers, got dtype {array.dtype}")
    if len(spacing) != 3 or not all(float(s) > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive mm values, got {spacing}")
    device = torch.device("cpu") if is_numpy else array.device
    plans = [
        _axis_plan(int(n), float(s), t, o)
        for n, s, t, o in zip(array.shape, spacing, spec.spacing, spec.shape)
    ]
    empty = [i for i, p in enumerate(plans) if p.n_resampled == 0]
    if empty:
        raise StudyError(
            f"volume of shape {tuple(array.shape)} at {tuple(spacing)} mm has no voxels left on axis "
            f"{empty[0]} at the {spec.spacing} mm grid of spec {spec.name!r}"
        )
    pz, py, px = plans
    lo, hi = spec.hu_window
    if is_numpy:  # np.full fills the fresh output buffer faster than torch.full on CPU (docs/performance.md)
        out = torch.from_numpy(np.full(spec.shape, spec.pad_value, dtype=np.float32))
    else:
        out = torch.full(spec.shape, spec.pad_value, dtype=torch.float32, device=device)
    along_z = _SliceResampler(pz, device)
    in_plane_same = (py.n_resampled, px.n_resampled) == (py.n_in, px.n_in)
    n_out = pz.crop_stop - pz.crop_start
    # Scratch per output slice: its share of input slices (float32) plus the in-plane stages.
    in_per_out = pz.n_in / pz.n_resampled + 2
    per_slice = 4 * in_per_out * (py.n_in * px.n_in + 2 * spec.shape[1] * max(px.n_in, spec.shape[2]))
    step = max(1, int(chunk_bytes // per_slice))

    with torch.no_grad():
        for a in range(0, n_out, step):
            b = min(a + step, n_out)
            first, last = along_z.source_range(a, b)
            if is_numpy:
                block = torch.from_numpy(np.asarray(array[first : last + 1], dtype=np.float32))
            else:
                block = array[first : last + 1].to(dtype=torch.float32)
            if spec.clip_before_resample:
                block = block.clamp(lo, hi)
            # Trilinear = bilinear in-plane, then linear across slices (exact up to float rounding).
            if not in_plane_same:
                # Slices as channels: F.interpolate is much faster than index gathers (docs/performance.md).
                block = F.interpolate(
                    block[None], size=(py.n_resampled, px.n_resampled), mode="bilinear", align_corners=False
                )[0]
            block = block[:, py.crop_start : py.crop_stop, px.crop_start : px.crop_stop]
            chunk = along_z(block, a, b, first)
            if not spec.clip_before_resample:
                chunk = chunk.clamp(lo, hi)
            chunk = chunk / spec.scale_divisor
            z0 = pz.pad_before + a
            out[
                z0 : z0 + (b - a),
                py.pad_before : py.pad_before + chunk.shape[1],
                px.pad_before : px.pad_before + chunk.shape[2],
            ] = chunk
    return out.numpy() if is_numpy else out


def prepare_ct(volume: Volume, spec: PreprocessSpec = CTCLIP_SPEC) -> np.ndarray:
    """The encoder input for ``volume``: float32 numpy array of exactly ``spec.shape``.

    Axes (slice, row, column) in CT-CLIP's order; for ``spec.orientation == "LPS"``
    these run towards patient superior, left and posterior. CTViT adds batch and
    channel dimensions itself. Raises :class:`StudyError` when the volume is too
    small to leave any voxel on the spec's grid.
    """
    oriented = volume.reoriented(spec.orientation)
    sz, sy, sx = oriented.spacing
    # (z, y, x) -> (z, x, y): CT-CLIP's transpose(2, 0, 1) of nibabel's (i, j, k) = (x, y, z).
    ctclip_order = oriented.array.transpose(0, 2, 1)
    try:
        return prepare_array(ctclip_order, (sz, sx, sy), spec)
    except StudyError as e:
        raise StudyError(e.message, volume.metadata.get("source")) from None
