"""The 18 CT-RATE findings as drawable patterns, each with its own instance details.

Every finding has a ``prepare`` step (changes :class:`~train.synth.anatomy.Anatomy` before the
normal chest is drawn: a bigger heart, a raised hemidiaphragm, dilated bronchi) and/or a
``draw`` step (paints into the finished chest). Both return/extend a details dict that the
report writer turns into words:

``{"label", "severity" ("mild"|"moderate"|"severe"|None), "side" ("right"|"left"|"bilateral"|None),
"lobes" (list of lobe names), "size_mm", "count", "kind", "location", "items"}``

Patterns are sized to stay visible after resampling to 2.8 × 2.8 × 5 mm (the CPU spec).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from train.synth.anatomy import HU, LEFT_LOBES, LOBES, RIGHT_LOBES, Anatomy, Landmarks
from train.synth.shapes import (
    Canvas,
    ellipsoid_distance,
    paint_capsule,
    paint_ellipsoid,
    paint_polyline,
    rotation_matrix,
    smooth_field,
)

SEVERITIES = ("mild", "moderate", "severe")


@dataclass
class Context:
    canvas: Canvas
    an: Anatomy
    lm: Landmarks
    rng: np.random.Generator


def _details(label, **kw) -> dict:
    d = {"label": label, "severity": None, "side": None, "lobes": [], "size_mm": None, "count": None,
         "kind": None, "location": None, "items": []}
    d.update(kw)
    return d


def _severity(rng, p=(0.5, 0.33, 0.17)) -> str:
    return str(rng.choice(SEVERITIES, p=p))


def _side(rng, p_bilateral=0.3, p_right=0.55) -> str:
    if rng.random() < p_bilateral:
        return "bilateral"
    return "right" if rng.random() < p_right else "left"


def _side_lobes(side: str) -> tuple[int, ...]:
    return {"right": RIGHT_LOBES, "left": LEFT_LOBES, "bilateral": RIGHT_LOBES + LEFT_LOBES}[side]


def _side_of_lobes(codes) -> str:
    r = any(c in RIGHT_LOBES for c in codes)
    lf = any(c in LEFT_LOBES for c in codes)
    return "bilateral" if r and lf else ("right" if r else "left")


def _lung_points(ctx: Context, codes, n: int, step: int = 2) -> np.ndarray:
    """``n`` random body-frame points inside the given lobes, (n, 3)."""
    c = ctx.canvas
    sub = c.masks["lobes"][::step, ::step, ::step]
    idx = np.flatnonzero(np.isin(sub, codes))
    if idx.size == 0:
        idx = np.flatnonzero(sub > 0)
    pick = ctx.rng.choice(idx, size=n)
    kz, ky, kx = np.unravel_index(pick, sub.shape)
    return np.stack([c.z[kz * step], c.y[ky * step], c.x[kx * step]], axis=1).astype(float)


def _peripheral_point(ctx: Context, codes, max_depth_mm: float = 25.0, tries: int = 40) -> np.ndarray:
    """A random lung point within ``max_depth_mm`` of the costal pleura (most nodules and scars
    are peripheral); falls back to any point of the lobes."""
    c = ctx.canvas
    depth, inner = c.masks["wall_depth"], c.masks["wall_inner"]
    pts = _lung_points(ctx, codes, tries)
    for p in pts:
        k, j, i = (int(round((p[a] - (c.z, c.y, c.x)[a][0]) / c.spacing[a])) for a in range(3))
        if depth[k, j, i] - inner[0, j, i] < max_depth_mm:
            return p
    return pts[0]


#: Nodules are drawn at least this far (mm) from the mediastinum: perihilar masses among the
#: hilar vessels are read as hilar, not as lung nodules.
NODULE_HILAR_CLEARANCE_MM = 30.0


def _parenchymal_point(ctx: Context, code: int, peripheral: bool, tries: int = 40) -> np.ndarray:
    """A point of lobe ``code`` at least ``NODULE_HILAR_CLEARANCE_MM`` from the mediastinum,
    within 30 mm of the costal pleura when ``peripheral``; the best try when none qualifies."""
    c = ctx.canvas
    med = c.masks["mediastinum"]
    pts = _lung_points(ctx, [code], tries)
    r = NODULE_HILAR_CLEARANCE_MM
    best, best_d = pts[0], -1.0
    for p in pts:
        if peripheral:
            k, j, i = (int(round((p[a] - (c.z, c.y, c.x)[a][0]) / c.spacing[a])) for a in range(3))
            if c.masks["wall_depth"][k, j, i] - c.masks["wall_inner"][0, j, i] >= 30.0:
                continue
        hit = c.box(p - r, p + r)
        if hit is None:
            continue
        sl, (gz, gy, gx) = hit
        near = med[sl] & ((gz - p[0]) ** 2 + (gy - p[1]) ** 2 + (gx - p[2]) ** 2 < r * r)
        if not near.any():
            return p
        d = 0.0 if near.all() else float(np.mean(~near))
        if d > best_d:
            best, best_d = p, d
    return best


def _lung_index(ctx: Context, codes=None):
    """Flat indices and (z, y, x) coordinates of lung voxels (optionally in some lobes)."""
    lobes = ctx.canvas.masks["lobes"]
    m = lobes > 0 if codes is None else np.isin(lobes, codes)
    idx = np.flatnonzero(m)
    kz, ky, kx = np.unravel_index(idx, lobes.shape)
    c = ctx.canvas
    return idx, c.z[kz], c.y[ky], c.x[kx]


def _lobe_names(codes) -> list[str]:
    return [LOBES[c] for c in sorted(set(int(c) for c in codes))]


# ------------------------------------------------------------------------------------------
# prepare steps (before the chest is drawn)
# ------------------------------------------------------------------------------------------

def prepare_cardiomegaly(an: Anatomy, rng, d: dict) -> None:
    d["severity"] = d["severity"] or _severity(rng)
    an.heart_scale = {"mild": 1.2, "moderate": 1.32, "severe": 1.45}[d["severity"]] * rng.uniform(0.97, 1.03)


def prepare_pericardial_effusion(an: Anatomy, rng, d: dict) -> None:
    d["severity"] = d["severity"] or _severity(rng, (0.45, 0.4, 0.15))
    lo, hi = {"mild": (6, 10), "moderate": (11, 16), "severe": (17, 25)}[d["severity"]]
    an.pericardial_fluid_mm = float(rng.uniform(lo, hi))
    d["size_mm"] = round(an.pericardial_fluid_mm)


def prepare_emphysema(an: Anatomy, rng, d: dict) -> None:
    d["severity"] = d["severity"] or _severity(rng)
    d["kind"] = d["kind"] or str(rng.choice(["centrilobular", "paraseptal", "panlobular"], p=[0.6, 0.25, 0.15]))
    an.lung_hu -= {"mild": 5, "moderate": 12, "severe": 22}[d["severity"]]
    shift = {"mild": 0, "moderate": -8, "severe": -16}[d["severity"]]  # hyperinflation flattens domes
    an.dome_shift["right"] += shift
    an.dome_shift["left"] += shift


def prepare_atelectasis(an: Anatomy, rng, d: dict) -> None:
    d["kind"] = d["kind"] or str(rng.choice(["linear", "dependent", "lobar"], p=[0.45, 0.4, 0.15]))
    d["severity"] = {"linear": "mild", "dependent": "moderate", "lobar": "severe"}[d["kind"]]
    side = d["side"] or _side(rng, 0.35 if d["kind"] != "lobar" else 0.0)
    d["side"] = side
    raise_mm = {"linear": 4.0, "dependent": 8.0, "lobar": 18.0}[d["kind"]]
    for s in (("right", "left") if side == "bilateral" else (side,)):
        an.dome_shift[s] += raise_mm * rng.uniform(0.8, 1.2)  # volume loss lifts the hemidiaphragm


def prepare_bronchiectasis(an: Anatomy, rng, d: dict) -> None:
    d["severity"] = d["severity"] or _severity(rng)
    d["kind"] = d["kind"] or str(rng.choice(["cylindrical", "varicose", "cystic"], p=[0.65, 0.2, 0.15]))
    n = {"mild": 1, "moderate": 2, "severe": 3}[d["severity"]]
    pool = [3, 5, 2, 4, 1]
    weights = np.array([0.3, 0.3, 0.15, 0.15, 0.1])
    codes = list(rng.choice(pool, size=n, replace=False, p=weights))
    factor = {"cylindrical": 1.9, "varicose": 2.4, "cystic": 2.8}[d["kind"]] * rng.uniform(0.95, 1.15)
    gens = an.extra.setdefault("bronchi_max_gen", {})
    for c in codes:
        an.airway_dilation[int(c)] = factor
        an.airway_wall_scale[int(c)] = max(an.airway_wall_scale.get(int(c), 1.0), 1.4)
        gens[int(c)] = 6  # dilated bronchi stay visible out to the periphery
    d["lobes"] = _lobe_names(codes)
    d["side"] = _side_of_lobes(codes)


def prepare_peribronchial_thickening(an: Anatomy, rng, d: dict) -> None:
    d["severity"] = d["severity"] or _severity(rng, (0.55, 0.35, 0.1))
    if rng.random() < 0.6:
        codes = [1, 2, 3, 4, 5]
    else:
        codes = [3, 5] if rng.random() < 0.7 else [1, 4]
    f = {"mild": 2.6, "moderate": 3.4, "severe": 4.2}[d["severity"]]
    gens = an.extra.setdefault("bronchi_max_gen", {})
    for c in codes:
        an.airway_wall_scale[c] = max(an.airway_wall_scale.get(c, 1.0), f)
        gens[c] = max(gens.get(c, 4), 5)
    d["lobes"] = _lobe_names(codes)
    d["side"] = _side_of_lobes(codes)
    d["location"] = "diffuse" if len(codes) == 5 else ("lower lobes" if codes == [3, 5] else "upper lobes")


def prepare_fibrotic(an: Anatomy, rng, d: dict) -> None:
    """Fibrotic sequelae: subpleural, mostly basal; the scarred lobes get traction bronchiectasis
    (dilated bronchi out to the periphery) and, at the bases, volume loss (a raised hemidiaphragm)."""
    d["severity"] = d["severity"] or _severity(rng, (0.5, 0.35, 0.15))
    n_regions = {"mild": 1, "moderate": 2, "severe": 3}[d["severity"]]
    # (not the small middle lobe: its scars are read with the fissure and the heart border)
    codes = [int(c) for c in rng.choice([3, 5, 1, 4], size=n_regions, replace=False, p=[0.33, 0.33, 0.17, 0.17])]
    gens = an.extra.setdefault("bronchi_max_gen", {})
    for c in codes:
        an.airway_dilation[c] = max(an.airway_dilation.get(c, 1.0), 1.6 * rng.uniform(0.95, 1.1))
        an.airway_wall_scale[c] = max(an.airway_wall_scale.get(c, 1.0), 1.3)
        gens[c] = max(gens.get(c, 4), 6)
    for s in ("right", "left"):
        if (3 if s == "right" else 5) in codes:
            an.dome_shift[s] += {"mild": 4.0, "moderate": 7.0, "severe": 10.0}[d["severity"]] * rng.uniform(0.8, 1.2)
    d["lobes"] = _lobe_names(codes)
    d["side"] = _side_of_lobes(codes)
    d["location"] = "subpleural, basal" if set(codes) & {3, 5} else "subpleural"


PREPARE = {
    "Pulmonary fibrotic sequela": prepare_fibrotic,
    "Cardiomegaly": prepare_cardiomegaly,
    "Pericardial effusion": prepare_pericardial_effusion,
    "Emphysema": prepare_emphysema,
    "Atelectasis": prepare_atelectasis,
    "Bronchiectasis": prepare_bronchiectasis,
    "Peribronchial thickening": prepare_peribronchial_thickening,
}


# ------------------------------------------------------------------------------------------
# draw steps (after the chest is drawn)
# ------------------------------------------------------------------------------------------

def draw_emphysema(ctx: Context, d: dict) -> None:
    c, rng = ctx.canvas, ctx.rng
    sev = d["severity"]
    kind = d["kind"]
    hu = c.hu.reshape(-1)
    if kind == "paraseptal":
        codes = (1, 4, 3, 5) if sev == "severe" else (1, 4)
        n = {"mild": 8, "moderate": 16, "severe": 30}[sev]
        pts = _lung_points(ctx, codes, n * 6)
        depth = c.masks["wall_depth"]
        inner = c.masks["wall_inner"]
        kept = 0
        for p in pts:
            k, j, i = (int(round((p[a] - (c.z, c.y, c.x)[a][0]) / c.spacing[a])) for a in range(3))
            if depth[k, j, i] - inner[0, j, i] > 12:  # subpleural only
                continue
            r = rng.uniform(5, 14)
            paint_ellipsoid(c, p, (r, r, r), -990.0, where=c.masks["lung"])
            kept += 1
            if kept >= n:
                break
        d["lobes"] = _lobe_names(codes)
        d["size_mm"] = 25
        d["count"] = kept
    else:
        codes = (1, 4, 2) if kind == "centrilobular" else (3, 5, 2, 4, 1)
        if kind == "centrilobular" and sev == "severe":
            codes = (1, 2, 3, 4, 5)
        idx, z, y, x = _lung_index(ctx, codes)
        field = smooth_field(c.shape, c.spacing, 7.0 if kind == "centrilobular" else 12.0, rng).reshape(-1)[idx]
        frac = {"mild": 0.08, "moderate": 0.17, "severe": 0.3}[sev]
        if kind == "centrilobular":  # upper-zone predominance
            zr = ctx.lm.lung_z_range
            zw = np.clip((z - zr[0]) / (zr[1] - zr[0]), 0, 1)
            field = field + 1.2 * (zw - 0.5)
        thr = np.quantile(field, 1 - frac)
        w = np.clip((field - thr) / 0.25, 0, 1).astype(np.float32)
        target = np.float32(-985.0) if kind == "centrilobular" else np.float32(-965.0)
        vals = hu[idx]
        hu[idx] = vals + w * (target - vals)
        d["lobes"] = _lobe_names(codes)
    d["side"] = "bilateral"
    d["location"] = "upper lobes" if kind in ("centrilobular", "paraseptal") and sev != "severe" else "diffuse"


def draw_mosaic(ctx: Context, d: dict) -> None:
    c, rng = ctx.canvas, ctx.rng
    d["severity"] = d["severity"] or _severity(rng)
    codes = (3, 5, 2) if rng.random() < 0.5 else (1, 2, 3, 4, 5)
    idx, z, y, x = _lung_index(ctx, codes)
    cell = rng.uniform(16, 26)
    warp = 0.35 * cell
    f = [smooth_field(c.shape, c.spacing, 20.0, rng).reshape(-1)[idx] for _ in range(3)]
    iz = np.floor((z + warp * f[0]) / cell).astype(np.int64)
    iy = np.floor((y + warp * f[1]) / cell).astype(np.int64)
    ix = np.floor((x + warp * f[2]) / cell).astype(np.int64)
    h = (iz * 73856093) ^ (iy * 19349663) ^ (ix * 83492791) ^ int(rng.integers(1 << 30))
    u = (h % 1009) / 1009.0
    frac_low = {"mild": 0.3, "moderate": 0.45, "severe": 0.55}[d["severity"]]
    delta = np.where(u < frac_low, -85.0, 45.0).astype(np.float32)
    hu = c.hu.reshape(-1)
    vals = hu[idx]
    parench = vals < -600  # vessels keep their density
    hu[idx] = np.where(parench, vals + delta, vals)
    d["lobes"] = _lobe_names(codes)
    d["side"] = "bilateral"
    d["location"] = "lower lobes" if len(codes) == 3 else "diffuse"


def draw_septal(ctx: Context, d: dict) -> None:
    c, rng = ctx.canvas, ctx.rng
    d["severity"] = d["severity"] or _severity(rng)
    codes = (3, 5, 2) if d["severity"] == "mild" else (1, 2, 3, 4, 5)
    idx, z, y, x = _lung_index(ctx, codes)
    depth = c.masks["wall_depth"].reshape(-1)[idx]
    inner = np.broadcast_to(c.masks["wall_inner"], c.shape).reshape(-1)[idx]
    periph_mm = {"mild": 22, "moderate": 32, "severe": 45}[d["severity"]]
    near = depth - inner < periph_mm
    idx, z, y, x = idx[near], z[near], y[near], x[near]
    cell = rng.uniform(13, 19)
    f = [smooth_field(c.shape, c.spacing, 18.0, rng).reshape(-1)[idx] for _ in range(3)]
    dist = np.full(idx.shape, 1e9, np.float32)
    for coord, fld in zip((z, y, x), f):
        t = (coord + 0.3 * cell * fld) / cell
        dist = np.minimum(dist, np.abs(t - np.round(t)) * cell)
    w = np.clip(1.0 - dist / 1.4, 0, 1).astype(np.float32) * 0.75
    hu = c.hu.reshape(-1)
    vals = hu[idx]
    hu[idx] = vals + w * (-60.0 - vals)
    d["lobes"] = _lobe_names(codes)
    d["side"] = "bilateral"
    d["location"] = "lower zones" if d["severity"] == "mild" else "diffuse, subpleural"


def draw_fibrotic(ctx: Context, d: dict) -> None:
    """Subpleural reticulation in the lobes chosen by ``prepare_fibrotic`` (a band along the
    costal pleura, thicker with severity), with a few fibrotic bands running to the hilum; the
    traction bronchiectasis and volume loss were set up before the chest was drawn."""
    c, rng = ctx.canvas, ctx.rng
    codes = [code for code, name in LOBES.items() if name in d["lobes"]]
    band = {"mild": 18.0, "moderate": 24.0, "severe": 30.0}[d["severity"]]
    lobes, lung = c.masks["lobes"], c.masks["lung"]
    pleural_depth = c.masks["wall_depth"] - c.masks["wall_inner"]  # mm below the costal pleura
    for code in codes:
        m = lobes == code
        if not m.any():
            continue
        sl = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(m))
        sub = m[sl] & (pleural_depth[sl] < band)
        # coarse reticulation: the zero sets of a smooth field make a net of curved lines
        f = smooth_field(sub.shape, c.spacing, 9.0, rng)
        w = np.clip(1.0 - np.abs(f) / 0.35, 0, 1) * sub
        # denser towards the pleura
        w *= np.clip(1.2 - pleural_depth[sl] / band, 0.3, 1.0)
        hu = c.hu[sl]
        hu += (0.85 * w * (-120.0 - hu)).astype(np.float32)
        hil = ctx.lm.hila["right" if code in RIGHT_LOBES else "left"]
        for _ in range(int(rng.integers(2, 5))):
            a = _peripheral_point(ctx, [code], band)
            direction = (hil - a) / (np.linalg.norm(hil - a) or 1.0) + rng.normal(0, 0.3, 3)
            direction /= np.linalg.norm(direction)
            pts = [a + direction * t + rng.normal(0, 2.0, 3) * (t > 0) for t in np.linspace(0, rng.uniform(25, 45), 5)]
            paint_polyline(c, pts, rng.uniform(1.6, 2.6), rng.uniform(-100, 20), where=lung)
    d["count"] = len(codes)


def draw_opacity(ctx: Context, d: dict) -> None:
    c, rng = ctx.canvas, ctx.rng
    d["severity"] = d["severity"] or _severity(rng)
    n = {"mild": int(rng.integers(1, 3)), "moderate": int(rng.integers(2, 5)), "severe": int(rng.integers(4, 8))}[
        d["severity"]]
    side = d["side"] or _side(rng, 0.45 if n > 1 else 0.0)
    codes_pool = _side_lobes(side)
    pts = _lung_points(ctx, codes_pool, n)
    lung = c.masks["lung"]
    lobes_hit = []
    sizes = []
    for p in pts:
        r = rng.uniform(18, 30) * (1.3 if d["severity"] == "severe" else 1.0)
        hit = c.box(p - r * 1.6, p + r * 1.6)
        if hit is None:
            continue
        sl, (gz, gy, gx) = hit
        f = smooth_field(tuple(s.stop - s.start for s in sl), c.spacing, 10.0, rng)
        dist = np.sqrt((gz - p[0]) ** 2 + (gy - p[1]) ** 2 + (gx - p[2]) ** 2) / r + 0.25 * f
        w = np.clip((1.0 - dist) / 0.3, 0, 1) * lung[sl]
        delta = rng.uniform(300, 400)
        region = c.hu[sl]
        region += (w * np.clip(delta, 0, np.maximum(-350.0 - region, 0))).astype(np.float32)
        lobes_hit.append(int(c.masks["lobes"][tuple(int(round((p[a] - (c.z, c.y, c.x)[a][0]) / c.spacing[a]))
                                                      for a in range(3))]))
        sizes.append(2 * r)
    lobes_hit = [x for x in lobes_hit if x] or list(codes_pool[:1])
    d["lobes"] = _lobe_names(lobes_hit)
    d["side"] = _side_of_lobes(lobes_hit)
    d["count"] = len(sizes)
    d["size_mm"] = int(round(max(sizes))) if sizes else None
    d["kind"] = "ground-glass"


def draw_nodules(ctx: Context, d: dict) -> None:
    """1–4 nodules; ``count``, ``lobes``, ``size_mm`` and ``kind`` given in the details (overrides)
    fix the number and the first (largest) nodule."""
    c, rng = ctx.canvas, ctx.rng
    preset_codes = [code for code, name in LOBES.items() if name in (d.get("lobes") or [])]
    preset_size, preset_kind = d.get("size_mm"), d.get("kind")
    n = int(d.get("count") or rng.choice([1, 1, 1, 2, 2, 3, 4]))
    lung = c.masks["lung"]
    items = []
    for k in range(n):
        kind = str(rng.choice(["solid", "part-solid", "ground-glass", "calcified"], p=[0.68, 0.1, 0.12, 0.1]))
        if k == 0 and preset_kind:
            kind = preset_kind
        lo = {"solid": 6.0, "part-solid": 9.0, "ground-glass": 10.0, "calcified": 5.0}[kind]
        size = float(np.clip(np.exp(rng.normal(np.log(11), 0.5)), lo, 30.0))
        if kind == "calcified":
            size = min(size, 8.0)
        if k == 0 and preset_size:
            size = float(preset_size)
        code = int(rng.choice([1, 2, 3, 4, 5], p=[0.28, 0.08, 0.24, 0.24, 0.16]))
        if k == 0 and preset_codes:
            code = preset_codes[0]
        p = _parenchymal_point(ctx, code, rng.random() < 0.75)
        r = size / 2
        hu_val = {"solid": rng.uniform(15, 50), "part-solid": -350.0, "ground-glass": -560.0,
                  "calcified": rng.uniform(350, 700)}[kind]
        radii = r * rng.uniform(0.85, 1.15, 3)
        paint_ellipsoid(c, p, radii, hu_val, rotation=rotation_matrix(rng.normal(size=3), rng.uniform(0, 3)),
                        where=lung)
        if kind == "part-solid":
            paint_ellipsoid(c, p, radii * 0.6, 30.0, where=lung)
        if size >= 14 and kind == "solid":  # lobulation and spicules
            for _ in range(int(rng.integers(3, 7))):
                v = rng.normal(size=3)
                v /= np.linalg.norm(v)
                paint_capsule(c, p + v * r * 0.7, p + v * r * rng.uniform(1.3, 1.8), 0.9, 20.0, where=lung)
        items.append({"size_mm": int(round(size)), "lobe": LOBES[code], "kind": kind, "code": code})
    items[1:] = sorted(items[1:], key=lambda it: -it["size_mm"])
    if not preset_size:
        items.sort(key=lambda it: -it["size_mm"])
    d["items"] = items
    d["count"] = n
    d["size_mm"] = items[0]["size_mm"]
    d["lobes"] = _lobe_names(it["code"] for it in items)
    d["side"] = _side_of_lobes([it["code"] for it in items])
    d["kind"] = items[0]["kind"]


def draw_consolidation(ctx: Context, d: dict) -> None:
    c, rng = ctx.canvas, ctx.rng
    d["severity"] = d["severity"] or _severity(rng, (0.4, 0.4, 0.2))
    n = 2 if d["severity"] == "severe" else 1
    codes = list(rng.choice([3, 5, 2, 1, 4], size=n, replace=False, p=[0.32, 0.28, 0.14, 0.13, 0.13]))
    lobes = c.masks["lobes"]
    airway = c.masks["airway"]
    for code in codes:
        p = _lung_points(ctx, [int(code)], 1)[0]
        r = {"mild": 22.0, "moderate": 34.0, "severe": 48.0}[d["severity"]] * rng.uniform(0.9, 1.2)
        hit = c.box(p - r * 1.5, p + r * 1.5)
        if hit is None:
            continue
        sl, (gz, gy, gx) = hit
        f = smooth_field(tuple(s.stop - s.start for s in sl), c.spacing, 14.0, rng)
        dist = np.sqrt((gz - p[0]) ** 2 + (gy - p[1]) ** 2 + (gx - p[2]) ** 2) / r + 0.2 * f
        inside = (lobes[sl] == code)  # fissures bound it
        w = (np.clip((1.0 - dist) / 0.15, 0, 1) * inside).astype(np.float32)
        target = rng.uniform(-10, 40) + 8 * smooth_field(w.shape, c.spacing, 6.0, rng)
        region = c.hu[sl]
        region += w * (target - region)
        # air bronchograms: the bronchi inside stay air-filled
        air = airway[sl] & (w > 0.5)
        region[air] = -930.0
    d["lobes"] = _lobe_names(codes)
    d["side"] = _side_of_lobes(codes)
    d["count"] = len(codes)
    d["kind"] = "with air bronchograms"


def draw_atelectasis(ctx: Context, d: dict) -> None:
    c, rng = ctx.canvas, ctx.rng
    side = d["side"]
    sides = ("right", "left") if side == "bilateral" else (side,)
    lobes = c.masks["lobes"]
    Z, Y, X = c.grids()
    codes = []
    for s in sides:
        code = 3 if s == "right" else 5
        if d["kind"] == "linear" and rng.random() < 0.25:
            code = 2 if s == "right" else 4
        codes.append(code)
        if d["kind"] == "linear":
            p = _lung_points(ctx, [code], 1)[0]
            rot = rotation_matrix(rng.normal(size=3) * (0.2, 1, 1), rng.uniform(-0.35, 0.35))
            paint_ellipsoid(c, p, (rng.uniform(3.5, 5.0), rng.uniform(16, 24), rng.uniform(26, 38)),
                            rng.uniform(-60, 20), rotation=rot, where=lobes == code)
        else:
            m = lobes == code
            ys = Y[0, :, 0]
            rows = np.nonzero(m.any(axis=(0, 2)))[0]
            if rows.size == 0:
                continue
            y_back = ys[rows.max()]
            thick = rng.uniform(14, 24) if d["kind"] == "dependent" else rng.uniform(35, 50)
            zs = np.nonzero(m.any(axis=(1, 2)))[0]
            z_lo = c.z[zs.min()]
            height = (c.z[zs.max()] - z_lo)
            # thickest at the base, tapering upwards
            taper = np.clip(1.0 - (Z - z_lo) / (0.75 * height), 0.15, 1.0)
            limit = y_back - thick * taper
            region = m & (Y > limit)
            if d["kind"] == "lobar":  # collapse towards the spine (paramediastinal)
                region &= np.abs(X) < np.abs(ctx.lm.hila[s][2]) + 25
            c.hu[region] = np.float32(rng.uniform(15, 45)) + 6 * rng.standard_normal(int(region.sum())).astype(
                np.float32)
    d["lobes"] = _lobe_names(codes)


def draw_effusion(ctx: Context, d: dict) -> None:
    c, rng = ctx.canvas, ctx.rng
    d["severity"] = d["severity"] or _severity(rng)
    side = d["side"] or _side(rng, 0.45)
    d["side"] = side
    lobes = c.masks["lobes"]
    Z, Y, X = c.grids()
    sizes = {}
    for s in (("right", "left") if side == "bilateral" else (side,)):
        codes = RIGHT_LOBES if s == "right" else LEFT_LOBES
        m = np.isin(lobes, codes)
        if not m.any():
            continue
        lo, hi = {"mild": (10, 18), "moderate": (22, 38), "severe": (42, 65)}[d["severity"]]
        thick = rng.uniform(lo, hi)
        zs = np.nonzero(m.any(axis=(1, 2)))[0]
        z_lo = c.z[zs.min()]
        reach = 2.2 * thick + 30  # how far up the layer climbs
        # the most posterior lung voxel of every (z, x) column: the dependent pleural surface
        has = m.any(axis=1)
        back_idx = m.shape[1] - 1 - np.argmax(m[:, ::-1, :], axis=1)
        y_back = np.where(has, c.y[back_idx], -1e9)[:, None, :]
        limit = y_back - thick * np.clip(1.0 - (Z - z_lo) / reach, 0.0, 1.0)
        fluid = m & (Y > limit)
        val = rng.uniform(5, 22)
        c.hu[fluid] = np.float32(val)
        # the layer also fills the costophrenic recess below the lung base
        sizes[s] = int(round(thick))
    d["size_mm"] = max(sizes.values()) if sizes else None
    d["items"] = [{"side": s, "size_mm": v} for s, v in sizes.items()]


def draw_medical_material(ctx: Context, d: dict) -> None:
    c, rng, an, lm = ctx.canvas, ctx.rng, ctx.an, ctx.lm
    kind = d["kind"] or str(rng.choice(["pacemaker", "port catheter", "sternotomy wires", "central venous catheter"],
                                       p=[0.35, 0.25, 0.3, 0.1]))
    d["kind"] = kind
    metal = 3000.0
    heart_tip = lm.heart_center + lm.heart_rotation.T @ (np.array([-0.2, -0.35, 0.55]) * lm.heart_radii)
    svc_entry = (lm.heart_center[0] + lm.heart_radii[0] * 0.7, lm.heart_center[1] - 5, -30.0)
    front = -(an.half_depth_ant - an.fat * 0.5)
    if kind in ("pacemaker", "port catheter"):
        side = "left" if (kind == "pacemaker" and rng.random() < 0.8) else "right"
        sx = 1 if side == "left" else -1
        gen = np.array([55.0 * an.height_scale, front * 0.88, sx * 0.55 * an.half_width])
        d["side"] = side
        if kind == "pacemaker":
            paint_ellipsoid(c, gen, (20, 5, 24), metal)
            tip_pts = [gen, (70, -0.45 * lm.cavity_ant, sx * 45), (60, -0.38 * lm.cavity_ant, -24), svc_entry,
                       heart_tip]
            paint_polyline(c, tip_pts, 1.6, 2500.0)
            d["location"] = f"{side} infraclavicular"
        else:
            paint_ellipsoid(c, gen, (9, 7, 12), metal)
            paint_polyline(c, [gen, (72, -0.45 * lm.cavity_ant, sx * 35), (60, -0.38 * lm.cavity_ant, -24),
                               svc_entry], 1.4, 900.0)
            d["location"] = f"{side} anterior chest wall"
    elif kind == "central venous catheter":
        paint_polyline(c, [(c.z[-1] + 5, -0.3 * lm.cavity_ant, -40), (60, -0.38 * lm.cavity_ant, -24), svc_entry],
                       1.6, 1200.0)
        d["location"] = "superior vena cava"
    else:
        z_lo, z_hi, sy = lm.sternum
        n = int(rng.integers(5, 8))
        for zz in np.linspace(z_lo + 20, z_hi - 10, n):
            t = np.linspace(0, 2 * np.pi, 17)
            loop = np.stack([np.full_like(t, zz), sy + 8.5 * np.sin(t), 17.0 * np.cos(t)], axis=1)
            paint_polyline(c, loop, 1.5, metal)
        d["count"] = n
        d["location"] = "sternum"


def draw_arterial_calcification(ctx: Context, d: dict) -> None:
    c, rng, lm = ctx.canvas, ctx.rng, ctx.lm
    d["severity"] = d["severity"] or _severity(rng)
    n = {"mild": int(rng.integers(4, 8)), "moderate": int(rng.integers(8, 15)), "severe": int(rng.integers(15, 30))}[
        d["severity"]]
    path, radii = lm.aorta_path, lm.aorta_radii
    top = int(np.argmax(path[:, 0]))
    usable = np.arange(len(path) // 8, max(len(path) - 6, len(path) // 8 + 2))
    locs = set()
    for _ in range(n):
        i = int(rng.choice(usable))
        i = min(i, len(path) - 2)
        t = path[i + 1] - path[i]
        t /= np.linalg.norm(t) or 1.0
        v = rng.normal(size=3)
        v -= (v @ t) * t
        v /= np.linalg.norm(v) or 1.0
        centre = path[i] + v * (radii[i] - 1.0)
        length = rng.uniform(3, 9)
        paint_capsule(c, centre - t * length / 2, centre + t * length / 2, rng.uniform(1.6, 2.6),
                      rng.uniform(800, 1300))
        frac = i / len(path)
        locs.add("aortic arch" if abs(i - top) < len(path) * 0.12 else ("ascending aorta" if i < top
                                                                         else "descending aorta"))
        del frac
    d["count"] = n
    d["location"] = ", ".join(sorted(locs))
    d["items"] = sorted(locs)


def draw_coronary_calcification(ctx: Context, d: dict) -> None:
    c, rng, lm = ctx.canvas, ctx.rng, ctx.lm
    d["severity"] = d["severity"] or _severity(rng)
    k = {"mild": 1, "moderate": 2, "severe": 3}[d["severity"]]
    names = list(rng.choice(["LAD", "LCX", "RCA"], size=k, replace=False, p=[0.5, 0.25, 0.25]))
    for name in names:
        pts = lm.coronaries[name]
        for _ in range({"mild": 1, "moderate": 2, "severe": 3}[d["severity"]]):
            i = int(rng.integers(0, len(pts) - 4))
            seg = pts[i:i + int(rng.integers(2, 4))]
            paint_polyline(c, seg, rng.uniform(2.3, 3.0), rng.uniform(900, 1400))
    full = {"LAD": "left anterior descending artery", "LCX": "circumflex artery", "RCA": "right coronary artery"}
    d["items"] = [full[n] for n in names]
    d["location"] = ", ".join(d["items"])
    d["count"] = len(names)


def hernia_centre(lm: Landmarks, r: float) -> np.ndarray:
    """Where a hiatal hernia of radius ``r`` sits: above the hiatus, in front of the descending aorta."""
    h = lm.esophagus_hiatus
    aorta_front = lm.vertebra_y - 16 - lm.aorta_radii[-1]
    return np.array([h[0] + r * 0.6, aorta_front - r * 0.9 - 3, 10.0])


def draw_hiatal_hernia(ctx: Context, d: dict) -> None:
    c, rng, lm = ctx.canvas, ctx.rng, ctx.lm
    d["severity"] = d["severity"] or _severity(rng, (0.5, 0.35, 0.15))
    r = {"mild": 14.0, "moderate": 21.0, "severe": 30.0}[d["severity"]] * rng.uniform(0.9, 1.1)
    centre = hernia_centre(lm, r)
    radii = np.array([r * 1.1, r * 0.9, r])
    paint_ellipsoid(c, centre, radii + 3.5, HU["stomach_wall"])
    paint_ellipsoid(c, centre, radii, 15.0)
    # gas cap over fluid (supine: the gas lies anterior), the usual giveaway of a herniated stomach
    gas_level = rng.uniform(-0.1, 0.4)
    hit = c.box(centre - radii, centre + radii)
    if hit is not None:
        sl, (gz, gy, gx) = hit
        inside = ellipsoid_distance((gz, gy, gx), centre, radii) < -1
        c.hu[sl][inside & (gy < centre[1] + gas_level * radii[1])] = -990.0
    d["size_mm"] = int(round(2 * r))


def lymph_stations(lm: Landmarks, axillary_side: int = 1) -> dict[str, tuple]:
    """Body-frame centres (z, y, x) of the nodal stations the phantom can enlarge."""
    vy = lm.vertebra_y
    return {
        "right paratracheal": (25.0, vy - 50, -22.0),
        "subcarinal": (-22.0, vy - 30, 4.0),
        "prevascular": (28.0, -0.55 * lm.cavity_ant, 4.0),
        "aortopulmonary window": (8.0, vy - 45, 24.0),
        "right hilar": tuple(lm.hila["right"] + (-6, 10, 14)),
        "left hilar": tuple(lm.hila["left"] + (-6, 6, -14)),
        "axillary": (40.0, 10.0, axillary_side * (lm.cavity_half_width + 28)),
    }


#: Mediastinal nodal stations: the largest enlarged node always sits in one of them.
MEDIASTINAL_STATIONS = ("right paratracheal", "subcarinal", "prevascular", "aortopulmonary window")


def draw_lymphadenopathy(ctx: Context, d: dict) -> None:
    """Enlarged nodes (short axis 12–30 mm; normal mediastinal nodes are < 10 mm) in the fat of
    their stations: the first and largest in a mediastinal station, more (hilar, axillary) with
    severity."""
    c, rng, lm = ctx.canvas, ctx.rng, ctx.lm
    d["severity"] = d["severity"] or _severity(rng)
    stations = lymph_stations(lm, 1 if rng.random() < 0.5 else -1)
    n = {"mild": 1, "moderate": int(rng.integers(2, 4)), "severe": int(rng.integers(3, 6))}[d["severity"]]
    first = str(rng.choice(MEDIASTINAL_STATIONS, p=[0.32, 0.32, 0.18, 0.18]))
    rest = [s for s in stations if s != first]
    weights = np.array([{"right paratracheal": 0.2, "subcarinal": 0.2}.get(s, 0.12) for s in rest])
    names = [first] + list(rng.choice(rest, size=n - 1, replace=False, p=weights / weights.sum()))
    sizes = sorted((float({"mild": rng.uniform(12, 16), "moderate": rng.uniform(15, 21),
                           "severe": rng.uniform(20, 30)}[d["severity"]]) for _ in names), reverse=True)
    items = []
    hu = c.hu
    fat = c.masks.get("mediastinal_fat")
    for name, short in zip(names, sizes):
        radii = np.array([short * 0.75, short * 0.5, short * 0.55])
        # nodes grow in the fat between vessels: of a few candidates near the station, take the fattiest
        best, best_score = np.asarray(stations[name], float), -1.0
        for cand in np.asarray(stations[name], float) + rng.normal(0, 8, (16, 3)):
            hit = c.box(cand - radii, cand + radii)
            if hit is None:
                continue
            sl, _ = hit
            inside = (hu[sl] > -160) & (hu[sl] < -40) if fat is None else fat[sl]
            score = float(inside.mean())
            if score > best_score:
                best, best_score = cand, score
        paint_ellipsoid(c, best, radii, rng.uniform(30, 50), rotation=rotation_matrix((1, 0, 0), rng.uniform(-0.3, 0.3)),
                        where=~c.masks["aorta"] & ~c.masks["airway"])
        items.append({"station": name, "size_mm": int(round(short))})
    d["items"] = items
    d["size_mm"] = items[0]["size_mm"]
    d["count"] = n
    d["location"] = ", ".join(it["station"] for it in items)


def draw_cardiomegaly(ctx: Context, d: dict) -> None:
    """The heart was enlarged in ``prepare``; record the cardiothoracic ratio it produced."""
    lm = ctx.lm
    an = ctx.an
    width = 2 * lm.heart_radii[2]
    d["size_mm"] = int(round(width))
    # a normal heart (scale 1) has a cardiothoracic ratio of about 0.46
    d["measure"] = round(float(0.46 * an.heart_scale * an.heart_size), 2)


def draw_pericardial_effusion(ctx: Context, d: dict) -> None:
    pass  # drawn with the heart (prepare step)


def draw_bronchiectasis(ctx: Context, d: dict) -> None:
    c, rng, lm = ctx.canvas, ctx.rng, ctx.lm
    if d["kind"] != "cystic":
        return
    codes = [code for code, name in LOBES.items() if name in d["lobes"]]
    ends = [b for b in lm.bronchi if b[4] in codes and b[5] >= 3]
    for _p0, p1, _lumen, _wall, _, _ in ends[: 12]:
        r = rng.uniform(4, 7)
        paint_ellipsoid(c, p1, (r + 1.2,) * 3, 20.0, where=c.masks["lung"])
        paint_ellipsoid(c, p1, (r,) * 3, -990.0, where=c.masks["lung"])


def draw_peribronchial(ctx: Context, d: dict) -> None:
    pass  # bronchial walls were thickened in prepare


DRAW = {
    "Emphysema": draw_emphysema,
    "Mosaic attenuation pattern": draw_mosaic,
    "Interlobular septal thickening": draw_septal,
    "Pulmonary fibrotic sequela": draw_fibrotic,
    "Bronchiectasis": draw_bronchiectasis,
    "Peribronchial thickening": draw_peribronchial,
    "Lung opacity": draw_opacity,
    "Lung nodule": draw_nodules,
    "Consolidation": draw_consolidation,
    "Atelectasis": draw_atelectasis,
    "Pleural effusion": draw_effusion,
    "Lymphadenopathy": draw_lymphadenopathy,
    "Hiatal hernia": draw_hiatal_hernia,
    "Cardiomegaly": draw_cardiomegaly,
    "Pericardial effusion": draw_pericardial_effusion,
    "Arterial wall calcification": draw_arterial_calcification,
    "Coronary artery wall calcification": draw_coronary_calcification,
    "Medical material": draw_medical_material,
}
