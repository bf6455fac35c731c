"""Synthetic chest CT phantoms with known findings: the one generator behind every synthetic study.

``make_phantom(seed, labels)`` draws a normal chest (:mod:`train.synth.anatomy`), applies the
requested findings (:mod:`train.synth.lesions`), adds scanner blur and correlated noise and
returns a :class:`Phantom` whose ``volume`` is a :class:`engine.volume.Volume` in LPS
orientation: array ``(z, y, x)`` in HU (int16), +x towards the patient's left, +y posterior,
+z superior, identity direction.

Sizes (``SIZES``):

* ``default``: 130 × 256 × 256 voxels at 2.5 × 1.4 × 1.4 mm (z, y, x) — a 325 mm scan range,
  358.4 mm field of view, CT-RATE-like;
* ``small``: 64 × 128 × 128 voxels at 5.0 × 2.8 × 2.8 mm — the CPU preprocessing spec's own
  grid, for fast tests and the committed samples.

Determinism: the same ``(seed, labels, size, overrides)`` gives the same voxels. Anatomy,
each finding and the noise draw from separate random streams, so adding a finding does not
re-roll the patient (except where the finding changes the anatomy itself, e.g. cardiomegaly).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from engine.labels import LABELS
from engine.volume import Volume
from train.synth.anatomy import Landmarks, build_anatomy, sample_anatomy
from train.synth.lesions import DRAW, PREPARE, Context, _details
from train.synth.shapes import Canvas


@dataclass(frozen=True)
class Size:
    shape: tuple[int, int, int]  # (z, y, x) voxels
    spacing: tuple[float, float, float]  # (z, y, x) mm


SIZES = {
    "default": Size((130, 256, 256), (2.5, 1.4, 1.4)),
    "small": Size((64, 128, 128), (5.0, 2.8, 2.8)),
}

#: Order in which findings are drawn: parenchymal textures first, space-occupying and
#: metal last so that they overwrite what lies beneath them.
DRAW_ORDER = (
    "Emphysema", "Mosaic attenuation pattern", "Interlobular septal thickening", "Pulmonary fibrotic sequela",
    "Bronchiectasis", "Peribronchial thickening", "Lung opacity", "Lung nodule", "Consolidation", "Atelectasis",
    "Pleural effusion", "Lymphadenopathy", "Hiatal hernia", "Cardiomegaly", "Pericardial effusion",
    "Arterial wall calcification", "Coronary artery wall calcification", "Medical material",
)
assert sorted(DRAW_ORDER) == sorted(LABELS)


#: Reconstruction kernels: (in-plane blur sigma in units of 1.4 mm, noise factor).
KERNELS = {"standard": (0.6, 1.0), "sharp": (0.35, 1.8)}


@dataclass
class Phantom:
    volume: Volume
    findings: dict[str, dict]  # label -> instance details (present findings only), in LABELS order
    patient: dict  # sex, age, body size, contrast, ...
    masks: dict[str, np.ndarray] | None = None  # anatomy masks on the volume grid (with_masks=True)
    landmarks: Landmarks | None = None
    labels: dict[str, int] = field(default_factory=dict)  # all 18 labels, 0/1
    #: body-frame mm (z, y, x) of voxel [0, 0, 0]; index = (point - frame_origin) / spacing
    frame_origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    #: where each present finding lies (``with_footprints=True``): label -> :class:`engine.volume.Volume`
    #: of the fraction of each block of FOOTPRINT_BLOCK^3 voxels the finding changed (0..1, float32)
    footprints: dict[str, Volume] | None = None

    def body_to_index(self, point) -> np.ndarray:
        """Voxel index (z, y, x), float, of a body-frame point (see :mod:`train.synth.shapes`)."""
        return (np.asarray(point, float) - np.asarray(self.frame_origin)) / np.asarray(self.volume.spacing)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *stream])


def make_phantom(seed: int, labels: Iterable[str] = (), *, size: str | Size = "default",
                 overrides: Mapping[str, Mapping] | None = None, with_masks: bool = False,
                 sex: str | None = None, age: int | None = None, kernel: str = "standard",
                 recon: int = 0, with_footprints: bool = False) -> Phantom:
    """Draw one chest CT with the given findings.

    ``labels``: names from :data:`engine.findings.LABELS`. ``overrides`` may fix parts of a
    finding's details, e.g. ``{"Pleural effusion": {"side": "left", "severity": "severe"}}``.
    ``kernel`` ("standard" | "sharp") and ``recon`` model another reconstruction of the same
    acquisition: same patient and findings, different blur and noise.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
    labels = list(dict.fromkeys(labels))
    unknown = [lab for lab in labels if lab not in LABELS]
    if unknown:
        raise ValueError(f"unknown finding label(s) {unknown}; expected names from engine.findings.LABELS")
    sz = SIZES[size] if isinstance(size, str) else size
    overrides = overrides or {}
    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(1)  # many small BLAS calls: threads only add contention
    except ImportError:  # pragma: no cover - scikit-learn brings threadpoolctl
        limiter = None
    try:
        return _make(seed, labels, sz, overrides, with_masks, sex, age, kernel, recon, with_footprints)
    finally:
        if limiter is not None:
            limiter.restore_original_limits()


def _make(seed, labels, sz: Size, overrides, with_masks, sex, age, kernel, recon, with_footprints=False) -> Phantom:
    rng_anat = _rng(seed, 0)
    an = sample_anatomy(rng_anat, sex=sex, age=age)
    details = {}
    for lab in labels:
        d = _details(lab)
        d.update({k: v for k, v in overrides.get(lab, {}).items()})
        details[lab] = d
        if lab in PREPARE:
            PREPARE[lab](an, _rng(seed, 1, LABELS.index(lab)), d)

    nz, ny, nx = sz.shape
    sz_, sy, sx = sz.spacing
    pos = _rng(seed, 3)
    # body centre offset in the field of view, and where the carina sits in the scan range
    off_x, off_y = pos.uniform(-12, 12), pos.uniform(-18, 2)
    z_bottom = -(0.665 * nz * sz_) + pos.uniform(-6, 6)
    origin = (-(nx - 1) / 2 * sx, -(ny - 1) / 2 * sy, round(-(nz - 1) * sz_ - pos.uniform(20, 120), 1))
    x = (origin[0] + np.arange(nx) * sx - off_x).astype(np.float32)
    y = (origin[1] + np.arange(ny) * sy - off_y).astype(np.float32)
    z = (z_bottom + np.arange(nz) * sz_).astype(np.float32)
    canvas = Canvas(np.empty(sz.shape, np.float32), z, y, x, sz.spacing)
    lm = build_anatomy(canvas, an, rng_anat)
    # the normal mediastinal fat (before any finding): where enlarged nodes and a herniated
    # stomach show up as soft tissue or gas; an anatomical region, not a lesion mask
    fat = canvas.hu
    canvas.masks["mediastinal_fat"] = canvas.masks["mediastinum"] & (fat > -160) & (fat < -40)

    changed: dict[str, np.ndarray] = {}
    for lab in DRAW_ORDER:
        if lab in details:
            ctx = Context(canvas, an, lm, _rng(seed, 2, LABELS.index(lab)))
            before = canvas.hu.copy() if with_footprints else None
            DRAW[lab](ctx, details[lab])
            if before is not None:
                changed[lab] = np.abs(canvas.hu - before) > FOOTPRINT_MIN_HU

    # scanner: point-spread blur with correlated noise (white noise through the same kernel)
    noise_rng = _rng(seed, 4, recon)
    blur, noise_gain = KERNELS[kernel]
    sigma = (0.45 * 2.5 / sz_, blur * 1.4 / sy, blur * 1.4 / sx)
    sigma = tuple(max(0.35, s) for s in sigma)
    gain = float(np.prod([1.0 / np.sqrt(2 * np.sqrt(np.pi) * s) for s in sigma]))
    hu = canvas.hu
    hu += noise_rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(an.noise_hu * noise_gain / gain)
    hu = ndimage.gaussian_filter(hu, sigma=sigma, mode="nearest", truncate=2.5)
    np.clip(hu, -1024, 3071, out=hu)
    arr = np.rint(hu).astype(np.int16)

    volume = Volume(arr, spacing=sz.spacing, origin=origin, direction=np.eye(3),
                    metadata={"modality": "CT", "series_description": "SYNTHETIC CHEST", "body_part": "CHEST",
                              "kernel": kernel.upper(), "slice_thickness": float(sz_), "manufacturer": "SpeechCT phantom"})
    present = {lab: _clean(details[lab]) for lab in LABELS if lab in details}
    masks = None
    if with_masks:
        keep = ("body", "cavity", "lung", "lobes", "heart", "aorta", "airway", "trachea", "mediastinum",
                "mediastinal_fat")
        masks = {k: canvas.masks[k] for k in keep if k in canvas.masks}
    patient = an.summary() | {"noise_hu": round(an.noise_hu, 1)}
    footprints = None
    if with_footprints:
        footprints = {lab: _footprint(_finding_region(lab, details[lab], changed.get(lab), canvas.masks), volume)
                      for lab in LABELS if lab in details}
    return Phantom(volume, present, patient, masks, lm if with_masks else None,
                   {lab: int(lab in details) for lab in LABELS}, (float(z[0]), float(y[0]), float(x[0])),
                   footprints)


#: A voxel belongs to a finding's footprint when drawing the finding changed it by more than this
#: (before scanner blur and noise, so the difference is the finding alone).
FOOTPRINT_MIN_HU = 15.0
#: Footprints are stored as the covered fraction of blocks of this many voxels per axis.
FOOTPRINT_BLOCK = 4
#: Findings drawn into the anatomy itself (``PREPARE``), whose footprint is an anatomical region.
_REGION_OF = {"Cardiomegaly": "heart", "Pericardial effusion": "heart"}
_LOBE_CODES = {"right upper lobe": 1, "right middle lobe": 2, "right lower lobe": 3, "left upper lobe": 4,
               "left lower lobe": 5}


def _finding_region(label: str, details: dict, changed: np.ndarray | None, masks: dict) -> np.ndarray:
    """Voxels of one finding: what its draw step changed, and for findings made in the anatomy
    (an enlarged heart, pericardial fluid, dilated or thickened bronchi) the region they live in."""
    region = np.zeros(masks["body"].shape, bool) if changed is None else changed.copy()
    if label in _REGION_OF:
        region |= masks[_REGION_OF[label]]
    elif label in ("Bronchiectasis", "Peribronchial thickening") and details.get("lobes"):
        codes = [_LOBE_CODES[name] for name in details["lobes"] if name in _LOBE_CODES]
        region |= np.isin(masks["lobes"], codes)
    return region


def _footprint(region: np.ndarray, volume: Volume) -> Volume:
    """The covered fraction of each FOOTPRINT_BLOCK^3 block of ``region``, on a grid whose voxel
    centres are the block centres (same orientation as ``volume``)."""
    b = FOOTPRINT_BLOCK
    pad = [(0, (-n) % b) for n in region.shape]
    r = np.pad(region, pad).astype(np.float32)
    nz, ny, nx = (n // b for n in r.shape)
    frac = r.reshape(nz, b, ny, b, nx, b).mean(axis=(1, 3, 5))
    sz, sy, sx = volume.spacing
    origin = tuple(o + (b - 1) / 2 * s for o, s in zip(volume.origin, (sx, sy, sz)))
    return Volume(frac.astype(np.float32), spacing=(sz * b, sy * b, sx * b), origin=origin,
                  direction=volume.direction)


def _clean(d: dict) -> dict:
    """Details as plain JSON-able Python values."""
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out
