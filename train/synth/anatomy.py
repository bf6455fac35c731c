"""Normal chest anatomy of the phantom: body wall, bones, lungs with lobes, vessels, airways,
heart and great vessels, upper abdomen.

Everything is drawn in the body frame of :mod:`train.synth.shapes` (mm; +x patient left,
+y posterior, +z superior; origin at the body's axial centre, z = 0 at the carina). Sizes
are physical, so the same anatomy can be drawn on any grid. HU values are those of an
unenhanced (or, with ``contrast``, a venous-phase) adult chest CT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import CubicSpline

from train.synth.shapes import (
    Canvas,
    ellipsoid_distance,
    paint_capsule,
    paint_ellipsoid,
    paint_polyline,
    rotation_matrix,
    segment_distance,
    smooth_field,
)
from train.synth.trees import Branch, grow_tree

#: Lobe codes of ``canvas.masks["lobes"]`` (int8; 0 = not lung) and their report names.
LOBES = {1: "right upper lobe", 2: "right middle lobe", 3: "right lower lobe",
         4: "left upper lobe", 5: "left lower lobe"}
RIGHT_LOBES, LEFT_LOBES = (1, 2, 3), (4, 5)

HU = {
    "air": -1000.0, "fat": -95.0, "muscle": 48.0, "skin": 30.0, "blood": 40.0, "myocardium": 45.0,
    "liver": 58.0, "spleen": 48.0, "stomach_wall": 35.0, "fluid": 10.0, "cartilage": 130.0,
    "cortical": 700.0, "cancellous": 230.0, "disc": 85.0, "csf": 12.0, "thyroid": 95.0, "table": 250.0,
}


@dataclass
class Anatomy:
    """Per-patient anatomical parameters (mm unless stated). Findings adjust the modifiers."""

    sex: str
    age: int
    half_width: float  # body half-width (left-right) at mid chest
    half_depth_ant: float  # body half-depth anteriorly (from centre to sternum skin)
    half_depth_post: float
    fat: float  # subcutaneous fat thickness
    muscle: float
    height_scale: float  # scales craniocaudal landmarks
    dome_right: float  # z of the right hemidiaphragm dome
    dome_left: float
    apex: float  # z of the lung apices
    heart_size: float  # scale of a normal heart
    heart_yaw_deg: float
    contrast: bool
    blood_hu: float
    lung_hu: float  # mean parenchyma HU (non-dependent)
    lung_gradient: float  # extra HU in the most dependent (posterior) lung
    noise_hu: float  # noise std in soft tissue
    aorta_radius: float  # ascending aorta
    trachea_radius: float
    # modifiers set by findings before drawing
    heart_scale: float = 1.0
    pericardial_fluid_mm: float = 0.0
    dome_shift: dict = field(default_factory=lambda: {"right": 0.0, "left": 0.0})
    airway_wall_scale: dict = field(default_factory=dict)  # lobe -> factor on bronchial wall thickness
    airway_dilation: dict = field(default_factory=dict)  # lobe -> factor on bronchial lumen
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"sex": self.sex, "age": self.age, "body_width_mm": round(2 * self.half_width),
                "body_depth_mm": round(self.half_depth_ant + self.half_depth_post),
                "subcutaneous_fat_mm": round(self.fat), "contrast": self.contrast}


def sample_anatomy(rng: np.random.Generator, sex: str | None = None, age: int | None = None) -> Anatomy:
    sex = sex or ("M" if rng.random() < 0.55 else "F")
    age = int(age if age is not None else np.clip(rng.normal(60, 13), 22, 92))
    male = sex == "M"
    hw = rng.uniform(142, 172) if male else rng.uniform(128, 160)
    fat = float(np.clip(rng.gamma(4.0, 4.5) + 5, 6, 40))
    hw = min(hw + 0.5 * fat, 176.0)
    hs = rng.uniform(0.93, 1.07) * (1.0 if male else 0.96)
    dome_r = -112.0 * hs + rng.normal(0, 7)
    return Anatomy(
        sex=sex, age=age, half_width=hw,
        half_depth_ant=rng.uniform(92, 118) + 0.4 * fat, half_depth_post=rng.uniform(88, 108) + 0.3 * fat,
        fat=fat, muscle=rng.uniform(8, 14) if male else rng.uniform(6, 11), height_scale=hs,
        dome_right=dome_r, dome_left=dome_r - rng.uniform(8, 20), apex=rng.uniform(92, 108) * hs,
        heart_size=rng.uniform(0.9, 1.05), heart_yaw_deg=rng.uniform(30, 45),
        contrast=bool(rng.random() < 0.25), blood_hu=rng.uniform(160, 280),
        lung_hu=rng.uniform(-875, -840), lung_gradient=rng.uniform(40, 80),
        noise_hu=rng.uniform(14, 24) * (1 + (hw - 140) / 200),
        aorta_radius=rng.uniform(14, 17) + 0.03 * (age - 50), trachea_radius=rng.uniform(8.5, 10.5) if male
        else rng.uniform(7.5, 9.0),
    )


@dataclass
class Landmarks:
    """Where the drawn structures ended up (body-frame mm), for lesions and reports."""

    vertebra_y: float
    cavity_half_width: float
    cavity_ant: float
    cavity_post: float
    heart_center: np.ndarray
    heart_radii: np.ndarray
    heart_rotation: np.ndarray
    aorta_path: np.ndarray  # (N, 3) points of the aorta centreline
    aorta_radii: np.ndarray  # (N,)
    coronaries: dict  # name -> (N, 3) points
    hila: dict  # "right"/"left" -> point
    esophagus_hiatus: np.ndarray
    branches: list[Branch]  # arterial branches (bronchi follow them)
    bronchi: list[tuple]  # (p0, p1, lumen_r, wall_mm, lobe, generation)
    sternum: tuple  # (z_low, z_high, y_front)
    lung_z_range: tuple  # (z_low, z_high)


def _spline(points, step=3.0):
    points = np.asarray(points, float)
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    t = np.concatenate([[0], np.cumsum(seg)])
    cs = CubicSpline(t, points, axis=0, bc_type="natural")
    return cs(np.arange(0, t[-1] + 1e-6, step))


def _capsule_mask(canvas: Canvas, mask: np.ndarray, points, radius: float) -> None:
    points = np.asarray(points, float)
    for a, b in zip(points[:-1], points[1:]):
        hit = canvas.box(np.minimum(a, b) - radius - 2, np.maximum(a, b) + radius + 2)
        if hit is None:
            continue
        sl, grid = hit
        mask[sl] |= segment_distance(grid, a, b) <= radius


def build_anatomy(canvas: Canvas, an: Anatomy, rng: np.random.Generator) -> Landmarks:
    """Draw the normal chest into ``canvas`` and fill ``canvas.masks``; returns landmarks."""
    Z, Y, X = canvas.grids()
    hu = canvas.hu
    hu.fill(HU["air"])
    masks = canvas.masks
    shape = canvas.shape
    hs = an.height_scale

    # ---- body wall: one "radial depth below the skin" map serves every layer --------------
    # The taper towards the neck changes only the top slices: compute the 2-D depth map once
    # per distinct (1 mm-quantised) half-width and gather it per slice.
    taper = 1.0 - 0.12 / (1.0 + np.exp(-(canvas.z - 75.0 * hs) / 15.0))
    a_q = np.round(an.half_width * taper).astype(np.float32)
    uniq, inverse = np.unique(a_q, return_inverse=True)
    Y2, X2 = Y[0], X[0]  # (ny,1), (1,nx)
    b = np.where(Y2 < 0, an.half_depth_ant, an.half_depth_post).astype(np.float32)
    radial = np.sqrt(X2 ** 2 + Y2 ** 2)
    maps = []
    for a in uniq:
        # flatter back: the posterior half-depth grows laterally
        bb = np.where(Y2 < 0, b, b * (1 + 0.35 * (X2 / a) ** 2))
        q = np.sqrt((X2 / a) ** 2 + (Y2 / bb) ** 2)
        maps.append((radial * (1.0 / np.maximum(q, 1e-3) - 1.0)).astype(np.float32))
    depth = np.stack(maps)[inverse.ravel()]  # (nz, ny, nx) mm inside the skin
    del maps
    body = depth > 0
    post = np.clip(Y2 / an.half_depth_post, 0, 1)
    muscle_t = (an.muscle + 24.0 * post ** 2 * np.exp(-(X2 / 60.0) ** 2))[None]  # paraspinal muscles
    rib_band = 11.0
    wall_in = (an.fat + muscle_t).astype(np.float32)
    cavity = depth > wall_in + rib_band
    masks["wall_depth"] = depth  # float32 mm below the skin; lesions use it for "subpleural"
    masks["wall_inner"] = wall_in + rib_band  # (1, ny, nx) depth of the parietal pleura
    hu[body] = HU["muscle"]
    fat_layer = body & (depth < an.fat)
    hu[fat_layer] = HU["fat"]
    hu[body & (depth < 1.8)] = HU["skin"]
    masks["body"] = body

    # ---- ribs, costal cartilage, sternum, scapulae, clavicles ---------------------------------
    band = body & ~cavity & (depth >= wall_in)
    idx = np.nonzero(band)
    zi, yi, xi = canvas.z[idx[0]], canvas.y[idx[1]], canvas.x[idx[2]]
    d_band = depth[idx]
    wall_in_b = wall_in[0, idx[1], idx[2]] if np.ndim(wall_in) == 3 else np.broadcast_to(wall_in, shape)[idx]
    span = an.half_depth_ant + an.half_depth_post
    period = 30.0 * hs
    phase = (zi + 95.0 * (an.half_depth_post - yi) / span) / period
    dz = (phase - np.floor(phase) - 0.5) * period / 5.0
    dr = (d_band - wall_in_b - rib_band / 2) / (rib_band / 2)
    rho = np.sqrt(dz ** 2 + dr ** 2)
    in_rib = (rho < 1.0) & (zi < an.apex + 25) & (zi > an.dome_left - 70)
    anterior_mid = (yi < 0) & (np.abs(xi) < 55 + 0.2 * np.abs(yi))
    vals = np.where(rho > 0.6, HU["cortical"], HU["cancellous"])
    vals = np.where(anterior_mid, HU["cartilage"], vals)
    sel = in_rib & ~((yi < 0) & (np.abs(xi) < 22))
    hu[idx[0][sel], idx[1][sel], idx[2][sel]] = vals[sel]
    # intercostal muscle elsewhere in the band stays muscle
    bc_ant = an.half_depth_ant - an.fat - an.muscle - rib_band
    bc_post = an.half_depth_post - an.fat - an.muscle - rib_band
    cav_hw = an.half_width - an.fat - an.muscle - rib_band
    sternum_y = -(an.half_depth_ant - an.fat - an.muscle * 0.5 - 6)
    st_lo, st_hi = an.dome_right + 10, 70 * hs
    hit = canvas.box((st_lo, sternum_y - 12, -20), (st_hi, sternum_y + 12, 20))
    if hit is not None:
        sl, (gz, gy, gx) = hit
        width = np.where(gz > 40 * hs, 24.0, 15.0)  # manubrium is wider
        r = np.sqrt((gx / width) ** 2 + ((gy - sternum_y) / 6.5) ** 2)
        inside = (r < 1) & (gz >= st_lo) & (gz <= st_hi)
        vals = np.where(r > 0.65, HU["cortical"] * 0.9, HU["cancellous"])
        hu[sl] = np.where(inside, vals, hu[sl])
    for side in (-1, 1):
        clav = [(78 * hs, sternum_y - 2, side * 22), (92 * hs, sternum_y + 10, side * 70),
                (100 * hs, -0.2 * an.half_depth_ant, side * 0.82 * an.half_width)]
        paint_polyline(canvas, _spline(clav, 4.0), 7.0, HU["cortical"] * 0.8, where=body)
        # scapula: a thin plate in the posterolateral muscles
        hit = canvas.box((-40 * hs, 10, side * 0.9 * an.half_width), (95 * hs, an.half_depth_post, side * 35))
        hit = hit or canvas.box((-40 * hs, 10, side * 35), (95 * hs, an.half_depth_post, side * 0.9 * an.half_width))
        if hit is not None:
            sl, (gz, gy, gx) = hit
            d = depth[sl]
            plate = (d > an.fat + 2) & (d < an.fat + 7.5) & (np.abs(gx) > 45) & (np.abs(gx) < 0.78 * an.half_width)
            plate &= (gz > -40 * hs + 0.4 * np.abs(gx)) & (gz < 95 * hs)
            hu[sl] = np.where(plate, HU["cortical"] * 0.75, hu[sl])

    # ---- spine --------------------------------------------------------------------------------
    vy = bc_post - 12.0  # vertebral body centre
    hit = canvas.box((canvas.z[0] - 5, vy - 30, -48), (canvas.z[-1] + 5, vy + 75, 48))
    if hit is not None:
        sl, (gz, gy, gx) = hit
        grow = 1.0 + np.clip(-gz, 0, None) / 700.0
        rv = np.sqrt((gx / (19.0 * grow)) ** 2 + ((gy - vy) / (15.5 * grow)) ** 2)
        vert_h = 24.0 * hs * grow
        ph = (gz - 7.0) / vert_h
        disc = (ph - np.floor(ph)) < 0.2
        bone = np.where(rv > 0.8, HU["cortical"], HU["cancellous"])
        body_v = np.where(disc, HU["disc"], bone)
        canal_y = vy + 15.5 * grow + 9
        rc = np.sqrt(gx ** 2 + (gy - canal_y) ** 2)
        arch = (rc > 8.5) & (rc < 14) & (gy > canal_y - 6)
        spinous = (np.abs(gx) < 4.5) & (gy > canal_y + 10) & (gy < canal_y + 38)
        transverse = (np.abs(gy - canal_y + 2) < 3.5) & (np.abs(gx) < 26) & (np.abs(gx) > 8) & ~disc
        out = hu[sl]
        out = np.where(arch | spinous | transverse, HU["cortical"] * 0.85, out)
        out = np.where(rc <= 8.5, HU["csf"], out)
        out = np.where(rv < 1.0, body_v, out)
        hu[sl] = out
    notch = (np.abs(X) < 30.0) & (Y > vy - 22.0)

    # ---- diaphragm, apices, mediastinum: the lung space ---------------------------------------
    dome = np.where(X < 0, an.dome_right + an.dome_shift["right"], an.dome_left + an.dome_shift["left"])
    xd = np.where(X < 0, -0.45 * cav_hw, 0.45 * cav_hw)
    zd = dome - 45.0 * ((X - xd) / (0.62 * cav_hw)) ** 2 - 40.0 * (np.clip(Y + 20, 0, None) / 95.0) ** 2 \
        - 8.0 * (np.clip(-Y - 40, 0, None) / 40.0) ** 2
    zd = np.maximum(zd, dome - 85.0).astype(np.float32)  # (1, ny, nx)
    x_ap = np.where(X < 0, -0.5 * cav_hw, 0.5 * cav_hw)
    z_apex = an.apex - 70.0 * (((X - x_ap) ** 2 + (Y - 15.0) ** 2) / (0.55 * cav_hw) ** 2)
    hscale = an.heart_size * an.heart_scale
    heart_r = np.array([44.0, 40.0, 58.0]) * hscale * (an.half_width / 155.0) ** 0.3
    heart_c = np.array([an.dome_left + heart_r[0] * 0.78, -0.30 * bc_ant + 8 * (hscale - 1) * 0,
                        22.0 + 30.0 * (hscale - 1.0)])
    heart_rot = rotation_matrix((1, 0, 0), np.deg2rad(an.heart_yaw_deg)) @ rotation_matrix((0, 0, 1),
                                                                                               np.deg2rad(-18))
    # the mediastinum narrows anteriorly (the lungs nearly meet behind the sternum) and
    # widens around the aortic arch; smooth in z so that its outline is not a box
    med_base = 17.0 + 10.0 * np.exp(-((Z - 20.0 * hs) / 22.0) ** 2)
    med_w = med_base * (0.45 + 0.55 * np.clip((Y + 0.6 * an.half_depth_ant) / (0.6 * an.half_depth_ant + vy), 0, 1))
    mediast = (np.abs(X - 3.0) < med_w) & (Y < vy + 5)
    cavity_lung = cavity & (Z > zd) & (Z < z_apex) & ~notch & ~mediast
    # heart with its pericardium and fat keeps the lung away
    peri = an.pericardial_fluid_mm
    hit = canvas.box(heart_c - heart_r.max() - peri - 12, heart_c + heart_r.max() + peri + 12)
    heart_space = np.zeros(shape, bool)
    if hit is not None:
        sl, grid = hit
        heart_space[sl] = ellipsoid_distance(grid, heart_c, heart_r + 5 + peri, heart_rot) < 0
    cavity_lung &= ~heart_space

    # aorta
    top = canvas.z[-1] + 10
    vz = hs
    asc_r = an.aorta_radius
    aorta_ctrl = [
        (heart_c[0] + heart_r[0] * 0.55, heart_c[1] + 14, heart_c[2] - 14),
        (-10 * vz, -0.32 * bc_ant, -14), (20 * vz, -0.25 * bc_ant, -10), (37 * vz, -0.05 * bc_ant, 0),
        (36 * vz, vy - 38, 14), (18 * vz, vy - 20, 21), (-40 * vz, vy - 16, 20),
        (an.dome_left - 10, vy - 16, 14), (canvas.z[0] - 10, vy - 20, 8),
    ]
    aorta = _spline(aorta_ctrl, 3.0)
    frac = np.linspace(0, 1, len(aorta))
    aorta_r = np.interp(frac, [0, 0.3, 0.5, 1.0], [asc_r, asc_r * 0.9, asc_r * 0.78, asc_r * 0.7])
    aorta_space = np.zeros(shape, bool)
    for i in range(len(aorta) - 1):
        _capsule_mask(canvas, aorta_space, aorta[i:i + 2], aorta_r[i] + 3)
    cavity_lung &= ~aorta_space
    lung_right = cavity_lung & (X < 3.0)
    lung_left = cavity_lung & (X >= 3.0)

    # ---- lobes and fissures ---------------------------------------------------------------
    lobes = np.zeros(shape, np.int8)
    y_front, y_back = -bc_ant, bc_post
    tfrac = np.clip((Y - y_front) / (y_back - y_front), 0, 1)
    zf_r = (an.dome_right + 15) + tfrac * (28 * hs - an.dome_right - 15)
    zf_l = (an.dome_left + 15) + tfrac * (35 * hs - an.dome_left - 15)
    z_h = -28.0 * hs
    lower_r = lung_right & (Z < zf_r)
    lobes[lung_right] = 1
    lobes[lung_right & (Z < z_h) & (Y < 25)] = 2
    lobes[lower_r] = 3
    lobes[lung_left] = 4
    lobes[lung_left & (Z < zf_l)] = 5
    masks["lobes"] = lobes
    lung = lobes > 0
    masks["lung"] = lung

    # ---- parenchyma --------------------------------------------------------------------------
    lung_tex = smooth_field(shape, canvas.spacing, 22.0, rng)
    dep = (np.clip((Y - y_front) / (y_back - y_front), 0, 1) ** 2).astype(np.float32)
    lung_tex *= np.float32(10.0)
    lung_tex += an.lung_hu + an.lung_gradient * dep
    hu[lung] = lung_tex[lung]
    del lung_tex
    # fissures: faint ~1 mm sheets; each is a height z_f(y), so paint the one or two slices
    # nearest to it in every row instead of testing the whole grid
    def sheet(zf_rows, where):
        kf = (np.broadcast_to(zf_rows, (shape[1], 1))[:, 0] - canvas.z[0]) / canvas.spacing[0]
        for dk in (0, 1):
            k = np.floor(kf).astype(int) + dk
            w = np.clip(1.0 - np.abs(kf - k) * canvas.spacing[0] / 1.5, 0, 1) * 0.35
            ok = (k >= 0) & (k < shape[0])
            jj = np.nonzero(ok)[0]
            kk = k[ok]
            region = hu[kk, jj, :]
            wm = w[ok][:, None] * where[kk, jj, :]
            hu[kk, jj, :] = region + wm * (-150.0 - region)

    sheet(zf_r[0], lung_right)
    sheet(zf_l[0], lung_left)
    sheet(np.full((shape[1], 1), z_h), lung_right & (Y < 25) & (Z > zf_r))
    # ---- mediastinal and abdominal fat, abdominal organs ---------------------------------------
    above = Z > zd
    mediastinum = cavity & above & ~lung
    hu[mediastinum] = HU["fat"]
    masks["mediastinum"] = mediastinum
    abdomen = cavity & ~above
    hu[abdomen] = HU["fat"] + 10
    blood = an.blood_hu if an.contrast else HU["blood"]
    liver_hu = HU["liver"] + (40 if an.contrast else 0)
    liver_c = (an.dome_right - 70, 5, -0.35 * cav_hw)
    hit = canvas.box(np.array(liver_c) - 130, np.array(liver_c) + 130)
    if hit is not None:
        sl, grid = hit
        inside = ellipsoid_distance(grid, liver_c, (95, 0.95 * (bc_ant + bc_post) / 2, 0.95 * cav_hw), None) < 0
        inside &= abdomen[sl] & (grid[0] < zd[:, sl[1], sl[2]] - 3) & (grid[2] < 0.55 * cav_hw - 0.5 * (grid[1] + 60))
        hu[sl] = np.where(inside, liver_hu, hu[sl])
    stomach_c = np.array([an.dome_left - 38, -0.15 * bc_ant, 0.5 * cav_hw])
    hit = canvas.box(stomach_c - 60, stomach_c + 60)
    if hit is not None:
        sl, grid = hit
        dist = ellipsoid_distance(grid, stomach_c, (42, 38, 40), None)
        inside = (dist < 0) & abdomen[sl] & (grid[0] < zd[:, sl[1], sl[2]] - 4)
        wall = inside & (dist > -4)
        gas = inside & ~wall & (grid[0] > stomach_c[0] + 14)
        content = np.where(gas, HU["air"], 15.0)
        hu[sl] = np.where(inside, np.where(wall, HU["stomach_wall"], content), hu[sl])
    spleen_c = (an.dome_left - 55, 0.55 * bc_post, 0.78 * cav_hw)
    paint_ellipsoid(canvas, spleen_c, (48, 32, 22), HU["spleen"] + (50 if an.contrast else 0),
                    rotation=rotation_matrix((1, 0, 0), np.deg2rad(-35)), where=abdomen & (Z < zd - 4))

    # ---- heart ------------------------------------------------------------------------------
    heart = np.zeros(shape, bool)
    masks["heart"] = heart
    paint_ellipsoid(canvas, heart_c, heart_r + 5 + peri, HU["fat"], heart_rot)
    if peri > 0:
        paint_ellipsoid(canvas, heart_c, heart_r + 1.5 + peri, HU["fluid"] + 5, heart_rot)
    paint_ellipsoid(canvas, heart_c, heart_r, HU["myocardium"], heart_rot, mask_name="heart")
    inv = heart_rot.T  # local → body frame
    # chambers in the heart's local frame (a0 ~ superior, a1 ~ anterior(-)/posterior(+), a2 = long
    # axis from the base (-) to the apex (+)); offsets and sizes are fractions of the radii
    chambers = {
        "lv": ((-0.05, 0.1, 0.25), (0.5, 0.5, 0.55)),
        "rv": ((-0.1, -0.45, 0.05), (0.45, 0.35, 0.55)),
        "la": ((0.3, 0.5, -0.45), (0.4, 0.38, 0.4)),
        "ra": ((0.1, -0.05, -0.55), (0.45, 0.4, 0.32)),
    }
    for off, size in chambers.values():
        c = heart_c + inv @ (np.array(off) * heart_r)
        paint_ellipsoid(canvas, c, np.array(size) * heart_r, blood if an.contrast else HU["blood"] - 6,
                        heart_rot, where=heart)
    # coronary arteries in the epicardial fat: RCA and LCx in the atrioventricular groove
    # (a ring near the base), LAD in the anterior interventricular groove towards the apex
    def to_body(a0, a1, a2):
        local = np.stack([a0, a1, a2], axis=-1) * heart_r * 1.07
        return heart_c + local @ inv.T

    ring = np.sqrt(1 - 0.4 ** 2)
    t = np.linspace(0, 1, 24)
    phi_r = np.pi * (0.6 + 0.8 * t)
    phi_l = np.pi * (0.4 - 0.8 * t)
    lad_u = np.linspace(-0.35, 0.85, 24)
    coronaries = {
        "RCA": to_body(ring * np.cos(phi_r), ring * np.sin(phi_r) * -1, np.full(24, -0.4)),
        "LCX": to_body(ring * np.cos(phi_l), ring * np.sin(phi_l) * -1, np.full(24, -0.4)),
        "LAD": to_body(0.25 * np.sqrt(1 - lad_u ** 2), -0.95 * np.sqrt(1 - lad_u ** 2), lad_u),
    }
    for pts in coronaries.values():
        paint_polyline(canvas, pts, 1.7, blood if an.contrast else HU["blood"], where=~lung)

    # ---- great vessels --------------------------------------------------------------------
    aorta_mask = np.zeros(shape, bool)
    masks["aorta"] = aorta_mask
    for i in range(len(aorta) - 1):
        paint_capsule(canvas, aorta[i], aorta[i + 1], aorta_r[i], blood, mask_name="aorta")
    arch_top = aorta[np.argmax(aorta[:, 0])]
    for dx, end, r in ((-4, (top, -0.3 * bc_ant, -22), 6.0), (4, (top, -0.22 * bc_ant, 12), 4.5),
                       (11, (top, -0.1 * bc_ant, 30), 5.0)):
        start = arch_top + np.array([0, 0, dx])
        paint_polyline(canvas, _spline([start, start + (25, -5, dx), end], 4.0), r, blood, where=~lung)
    svc = _spline([(top, -0.38 * bc_ant, -20), (55 * hs, -0.4 * bc_ant, -26),
                   (0, -0.3 * bc_ant, -30), (heart_c[0] + heart_r[0] * 0.55, heart_c[1] + 5, heart_c[2] - 38)], 4.0)
    paint_polyline(canvas, svc, 10.0, blood, where=~lung)
    paint_polyline(canvas, _spline([(55 * hs, -0.4 * bc_ant, 48), (58 * hs, -0.42 * bc_ant, 10),
                                    (55 * hs, -0.4 * bc_ant, -24)], 4.0), 6.5, blood, where=~lung)
    paint_polyline(canvas, [(heart_c[0] - heart_r[0] * 0.5, heart_c[1] + 20, -22), (canvas.z[0] - 10, 10, -22)],
                   12.0, blood, where=~lung)
    paint_polyline(canvas, [(top, vy - 8, -11), (10 * hs, vy - 10, -12), (canvas.z[0] - 10, vy - 6, -10)],
                   3.5, blood, where=~lung)  # azygos
    # pulmonary trunk and arteries
    hila = {"right": np.array([-14 * hs, -2.0, -0.42 * cav_hw]), "left": np.array([-4 * hs, 12.0, 0.42 * cav_hw])}
    trunk = _spline([heart_c + inv @ (np.array([0.5, -0.55, -0.2]) * heart_r), (-14 * hs, -0.3 * bc_ant, 14),
                     (-6 * hs, -0.12 * bc_ant, 16)], 3.0)
    paint_polyline(canvas, trunk, 13.0, blood, where=~lung)
    bif = trunk[-1]
    paint_polyline(canvas, _spline([bif, (-8 * hs, -0.05 * bc_ant, -6), hila["right"] + (0, 0, 12)], 3.0),
                   10.5, blood)
    paint_polyline(canvas, _spline([bif, (4 * hs, 6, 28), hila["left"] - (0, 0, 12)], 3.0), 10.5, blood)
    la_c = heart_c + inv @ (np.array([0.3, 0.5, -0.45]) * heart_r)
    vein_roots = {1: (-22 * hs, 4, -0.38 * cav_hw), 2: (-36 * hs, 0, -0.36 * cav_hw),
                  3: (-52 * hs, 22, -0.36 * cav_hw), 4: (-16 * hs, 22, 0.36 * cav_hw),
                  5: (-48 * hs, 32, 0.36 * cav_hw)}
    for root in vein_roots.values():
        paint_capsule(canvas, la_c, root, 7.0, blood)

    # ---- trachea, main bronchi, esophagus, thyroid ----------------------------------------
    carina = np.array([0.0, vy - 40.0, 1.0])
    tr = an.trachea_radius
    trachea = [(top, vy - 52, 0.0), (50 * hs, vy - 47, 0.0), carina + (6, 0, 0)]
    esoph = _spline([(top, vy - 24, 4), (0, vy - 22, 8), (an.dome_left - 10, vy - 34, 24)], 4.0)
    paint_polyline(canvas, esoph, 8.0, HU["muscle"] - 8)
    paint_polyline(canvas, esoph[: len(esoph) // 2], 2.0, HU["air"])
    masks["airway"] = np.zeros(shape, bool)
    main_r = (carina, carina + (-22 * hs, 4, -26))
    main_l = (carina, carina + (-30 * hs, 10, 42))
    for seg, r in ((trachea[:2], tr), (trachea[1:], tr), (main_r, 0.7 * tr), (main_l, 0.62 * tr)):
        paint_capsule(canvas, seg[0], seg[1], r + 1.8, HU["muscle"] - 10)
    for seg, r in ((trachea[:2], tr), (trachea[1:], tr), (main_r, 0.7 * tr), (main_l, 0.62 * tr)):
        paint_capsule(canvas, seg[0], seg[1], r, HU["air"], mask_name="airway")
    masks["trachea"] = masks["airway"].copy()
    for side in (-1, 1):
        paint_ellipsoid(canvas, (top - 12, vy - 58, side * 16), (22, 10, 9), HU["thyroid"], where=~lung)

    # ---- lung vessel and airway trees --------------------------------------------------------
    def lobe_at(pt):
        k = int(round((pt[0] - canvas.z[0]) / canvas.spacing[0]))
        j = int(round((pt[1] - canvas.y[0]) / canvas.spacing[1]))
        i = int(round((pt[2] - canvas.x[0]) / canvas.spacing[2]))
        if 0 <= k < shape[0] and 0 <= j < shape[1] and 0 <= i < shape[2]:
            return int(lobes[k, j, i])
        return 0

    centroids = {}
    sub = (slice(None, None, 3),) * 3
    lob_sub = lobes[sub]
    zz, yy, xx = np.meshgrid(canvas.z[::3], canvas.y[::3], canvas.x[::3], indexing="ij")
    for code in LOBES:
        m = lob_sub == code
        if m.any():
            centroids[code] = np.array([zz[m].mean(), yy[m].mean(), xx[m].mean()])
    lobe_roots = {1: (hila["right"] + (14, -2, 6), "right"), 2: (hila["right"] + (-12, -10, 4), "right"),
                  3: (hila["right"] + (-14, 8, 6), "right"), 4: (hila["left"] + (10, -4, -6), "left"),
                  5: (hila["left"] + (-16, 8, -6), "left")}
    branches: list[Branch] = []
    veins: list[Branch] = []
    for code, (root, _side) in lobe_roots.items():
        if code not in centroids:
            continue
        c = centroids[code]
        # start inside the lobe: walk from the hilum towards the centroid until inside
        start = np.asarray(root, float)
        for _ in range(12):
            if lobe_at(start) == code:
                break
            start = start + (c - start) * 0.15
        if lobe_at(start) != code:
            continue
        branches += grow_tree(start, c - start, 5.2, code, lobe_at, c, rng, max_generation=7, min_radius=0.75)
        vroot = np.asarray(vein_roots[code], float)
        for _ in range(12):
            if lobe_at(vroot) == code:
                break
            vroot = vroot + (c - vroot) * 0.15
        if lobe_at(vroot) == code:
            veins += grow_tree(vroot, c - vroot + rng.normal(0, 15, 3), 4.2, code, lobe_at, c, rng,
                               max_generation=6, min_radius=0.75)
        # connect lobar roots to the hilum
        paint_capsule(canvas, root, start, 5.0, blood)
    for br in branches + veins:
        paint_capsule(canvas, br.p0, br.p1, br.radius, blood, where=lung)
    # bronchi run beside the arteries down to about the sub-segmental level
    bronchi = []
    max_gen = an.extra.get("bronchi_max_gen", {})
    for br in branches:
        if br.generation > max_gen.get(br.lobe, 4):
            continue
        d = br.p1 - br.p0
        d = d / (np.linalg.norm(d) or 1.0)
        off = np.cross(d, (1.0, 0.0, 0.0))
        off = off / (np.linalg.norm(off) or 1.0)
        lumen = br.radius * 0.85 * an.airway_dilation.get(br.lobe, 1.0)
        wall = max(0.7, 0.22 * br.radius) * an.airway_wall_scale.get(br.lobe, 1.0)
        shift = off * (br.radius + lumen + wall + 0.3)
        bronchi.append((br.p0 + shift, br.p1 + shift, lumen, wall, br.lobe, br.generation))
    for p0, p1, lumen, wall, _, _ in bronchi:
        paint_capsule(canvas, p0, p1, lumen + wall, HU["muscle"] - 15, where=lung)
    for p0, p1, lumen, _, _, _ in bronchi:
        paint_capsule(canvas, p0, p1, lumen, HU["air"], where=lung, mask_name="airway")
    # main bronchi to the lobar bronchi
    for code, (_root, side) in lobe_roots.items():
        end = main_r[1] if side == "right" else main_l[1]
        first = [b for b in bronchi if b[4] == code and b[5] == 0]
        if first:
            paint_capsule(canvas, end, first[0][0], 4.5 * an.airway_dilation.get(code, 1.0) + 1.5, HU["muscle"] - 15)
            paint_capsule(canvas, end, first[0][0], 4.5 * an.airway_dilation.get(code, 1.0), HU["air"],
                          mask_name="airway")

    # ---- small peripheral vessels: zero-set intersections of two smooth fields -------------
    f1 = smooth_field(shape, canvas.spacing, 11.0, rng)[lung]
    f2 = smooth_field(shape, canvas.spacing, 11.0, rng)[lung]
    tubes = np.exp(-(f1 ** 2 + f2 ** 2) * np.float32(1 / (2 * 0.1 ** 2)))
    del f1, f2
    vals = hu[lung]
    hu[lung] = vals + 0.65 * tubes * (blood - vals)
    del tubes, vals

    # ---- patient table --------------------------------------------------------------------
    table_y = an.half_depth_post + 18
    hit = canvas.box((canvas.z[0] - 5, table_y - 10, -210), (canvas.z[-1] + 5, table_y + 30, 210))
    if hit is not None:
        sl, (gz, gy, gx) = hit
        curve = table_y + 0.0012 * gx ** 2
        plate = (np.abs(gy - curve) < 2.5) & (np.abs(gx) < 200)
        hu[sl] = np.where(plate & (hu[sl] < -500), HU["table"], hu[sl])

    # lung region where the heart used to be (for later shell statistics)
    masks["cavity"] = cavity
    return Landmarks(
        vertebra_y=vy, cavity_half_width=cav_hw, cavity_ant=bc_ant, cavity_post=bc_post,
        heart_center=heart_c, heart_radii=heart_r, heart_rotation=heart_rot, aorta_path=aorta,
        aorta_radii=aorta_r, coronaries=coronaries, hila=hila,
        esophagus_hiatus=np.array([an.dome_left + 5, vy - 32, 22]), branches=branches, bronchi=bronchi,
        sternum=(st_lo, st_hi, sternum_y), lung_z_range=(float(min(an.dome_right, an.dome_left) - 85), an.apex),
    )
