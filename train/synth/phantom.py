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

    def body_to_index(self, point) -> np.ndarray:
        """Voxel index (z, y, x), float, of a body-frame point (see :mod:`train.synth.shapes`)."""
        return (np.asarray(point, float) - np.asarray(self.frame_origin)) / np.asarray(self.volume.spacing)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *stream])


def make_phantom(seed: int, labels: Iterable[str] = (), *, size: str | Size = "default",
                 overrides: Mapping[str, Mapping] | None = None, with_masks: bool = False,
                 sex: str | None = None, age: int | None = None, kernel: str = "standard",
                 recon: int = 0) -> Phantom:
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
        return _make(seed, labels, sz, overrides, with_masks, sex, age, kernel, recon)
    finally:
        if limiter is not None:
            limiter.restore_original_limits()


def _make(seed, labels, sz: Size, overrides, with_masks, sex, age, kernel, recon) -> Phantom:
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

    for lab in DRAW_ORDER:
        if lab in details:
            ctx = Context(canvas, an, lm, _rng(seed, 2, LABELS.index(lab)))
            DRAW[lab](ctx, details[lab])

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
    return Phantom(volume, present, patient, masks, lm if with_masks else None,
                   {lab: int(lab in details) for lab in LABELS}, (float(z[0]), float(y[0]), float(x[0])))


def _clean(d: dict) -> dict:
    """Details as plain JSON-able Python values."""
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out
