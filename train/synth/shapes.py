"""Vectorised drawing primitives for the phantom, in patient millimetres.

The canvas holds a float32 HU array with axis order ``(z, y, x)``. Points are given as
``(z, y, x)`` tuples in the *body frame*: millimetres, ``+x`` towards the patient's left,
``+y`` posterior, ``+z`` superior (LPS axes), with the origin at the body's axial centre
and ``z = 0`` at the carina. Every primitive works on the bounding box of the shape only,
so hundreds of small vessels cost little.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage


@dataclass
class Canvas:
    """A HU array plus the body-frame coordinates of its voxel centres."""

    hu: np.ndarray  # float32 (z, y, x)
    z: np.ndarray  # (nz,) body-frame mm of each slice
    y: np.ndarray  # (ny,)
    x: np.ndarray  # (nx,)
    spacing: tuple[float, float, float]  # (sz, sy, sx) mm
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.hu.shape

    def grids(self):
        """Broadcastable (Z, Y, X) coordinate arrays of the whole canvas."""
        return self.z[:, None, None], self.y[None, :, None], self.x[None, None, :]

    def box(self, lo, hi):
        """Index slices covering body-frame box ``lo..hi`` (z, y, x) and its local grids.

        Returns ``None`` when the box misses the canvas.
        """
        slices = []
        for axis, coords in enumerate((self.z, self.y, self.x)):
            step = coords[1] - coords[0]
            i0 = int(np.floor((lo[axis] - coords[0]) / step))
            i1 = int(np.ceil((hi[axis] - coords[0]) / step)) + 1
            i0, i1 = max(i0, 0), min(i1, len(coords))
            if i1 <= i0:
                return None
            slices.append(slice(i0, i1))
        sl = tuple(slices)
        return sl, (self.z[sl[0]][:, None, None], self.y[sl[1]][None, :, None], self.x[sl[2]][None, None, :])

    def blend(self, sl, weight, value, where=None) -> None:
        """``hu = hu·(1−w) + value·w`` inside ``sl``; ``value`` may be an array of the box's shape."""
        if where is not None:
            weight = weight * where
        region = self.hu[sl]
        region += weight * (value - region)

    def soft_weight(self, signed_dist):
        """Partial-volume weight of a surface: 1 inside, 0 outside, linear across one voxel.

        ``signed_dist`` is negative inside the shape (mm).
        """
        vox = min(self.spacing[1], self.spacing[2])
        return np.clip(0.5 - signed_dist / vox, 0.0, 1.0).astype(np.float32)


def segment_distance(grid, p0, p1):
    """Distance (mm) from each grid point to the segment ``p0–p1`` (points as (z, y, x))."""
    gz, gy, gx = grid
    p0 = [float(v) for v in p0]
    d = [float(b) - a for a, b in zip(p0, p1)]
    inv_len2 = 1.0 / (d[0] ** 2 + d[1] ** 2 + d[2] ** 2 or 1e-9)
    rz, ry, rx = gz - p0[0], gy - p0[1], gx - p0[2]
    t = np.clip((rz * d[0] + ry * d[1] + rx * d[2]) * inv_len2, 0.0, 1.0)
    return np.sqrt((rz - t * d[0]) ** 2 + (ry - t * d[1]) ** 2 + (rx - t * d[2]) ** 2)


def paint_capsule(canvas: Canvas, p0, p1, radius: float, value, where: np.ndarray | None = None,
                  mask_name: str | None = None) -> None:
    """Paint a tube of ``radius`` mm between two points with soft edges.

    ``where`` (full-canvas bool array) restricts painting, e.g. to the lungs;
    ``mask_name`` also records the tube (weight > 0.5) into ``canvas.masks[mask_name]``.
    """
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    margin = radius + 2 * max(canvas.spacing)
    hit = canvas.box(np.minimum(p0, p1) - margin, np.maximum(p0, p1) + margin)
    if hit is None:
        return
    sl, grid = hit
    w = canvas.soft_weight(segment_distance(grid, p0, p1) - radius)
    if where is not None:
        w = w * where[sl]
    canvas.blend(sl, w, value)
    if mask_name is not None:
        canvas.masks[mask_name][sl] |= w > 0.5


def paint_polyline(canvas: Canvas, points, radii, value, where=None, mask_name=None) -> None:
    """Paint consecutive capsules through ``points`` (N, 3) with per-point ``radii``."""
    points = np.asarray(points, float)
    radii = np.broadcast_to(np.asarray(radii, float), (len(points),))
    for i in range(len(points) - 1):
        paint_capsule(canvas, points[i], points[i + 1], 0.5 * (radii[i] + radii[i + 1]), value, where, mask_name)


def ellipsoid_distance(grid, center, radii, rotation: np.ndarray | None = None):
    """Approximate signed distance (mm, negative inside) to an ellipsoid.

    ``radii`` are semi-axes along the (z, y, x) axes after ``rotation`` (3×3, applied to
    (z, y, x) offsets). Uses the normalised radius × smallest semi-axis: exact for spheres,
    good enough for soft edges elsewhere.
    """
    gz, gy, gx = grid
    center = [float(c) for c in center]
    radii = [float(r) for r in radii]
    dz, dy, dx = gz - center[0], gy - center[1], gx - center[2]
    if rotation is not None:
        r = np.asarray(rotation).tolist()
        dz, dy, dx = (r[0][0] * dz + r[0][1] * dy + r[0][2] * dx,
                      r[1][0] * dz + r[1][1] * dy + r[1][2] * dx,
                      r[2][0] * dz + r[2][1] * dy + r[2][2] * dx)
    rho = np.sqrt((dz / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dx / radii[2]) ** 2)
    return (rho - 1.0) * min(radii)


def paint_ellipsoid(canvas: Canvas, center, radii, value, rotation=None, where=None,
                    mask_name: str | None = None, texture=None) -> np.ndarray | None:
    """Paint a soft-edged ellipsoid; returns the weight array over its box (or None).

    ``texture`` (callable of the box shape → array) adds voxel-wise HU variation.
    """
    center = np.asarray(center, float)
    ext = max(radii) + 2 * max(canvas.spacing)
    hit = canvas.box(center - ext, center + ext)
    if hit is None:
        return None
    sl, grid = hit
    w = canvas.soft_weight(ellipsoid_distance(grid, center, radii, rotation))
    if where is not None:
        w = w * where[sl]
    val = value if texture is None else value + texture(w.shape)
    canvas.blend(sl, w, val)
    if mask_name is not None:
        canvas.masks[mask_name][sl] |= w > 0.5
    return w


def rotation_matrix(axis_zyx, angle_rad: float) -> np.ndarray:
    """Rotation about ``axis`` (z, y, x components) by ``angle``; acts on (z, y, x) vectors."""
    a = np.asarray(axis_zyx, float)
    a = a / (np.linalg.norm(a) or 1.0)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation weights (n_out × n_in) mapping a coarse axis onto a fine one."""
    pos = np.linspace(0, n_in - 1, n_out)
    i0 = np.clip(np.floor(pos).astype(int), 0, max(n_in - 2, 0))
    frac = pos - i0
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), i0] = 1 - frac
    if n_in > 1:
        m[np.arange(n_out), i0 + 1] += frac
    return m


def smooth_field(shape, spacing, scale_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std random field with features about ``scale_mm`` across.

    Coarse Gaussian noise (one sample per ``scale_mm``) interpolated linearly with three
    small matrix products, which is far cheaper than filtering the full grid.
    """
    coarse_shape = [max(2, int(np.ceil(n * s / scale_mm)) + 1) for n, s in zip(shape, spacing)]
    coarse = rng.standard_normal(coarse_shape).astype(np.float32)
    mz, my, mx = (_interp_matrix(n, c) for n, c in zip(shape, coarse_shape))
    # linear interpolation between unit-variance knots loses variance; rescale on the coarse
    # grid's interpolation weights instead of a full-grid std pass
    gain = float(np.sqrt(np.mean(np.sum(mz ** 2, 1)) * np.mean(np.sum(my ** 2, 1)) * np.mean(np.sum(mx ** 2, 1))))
    out = np.tensordot(mz, coarse, axes=(1, 0))  # (nz, cy, cx)
    out = np.tensordot(out, mx, axes=(2, 1))  # (nz, cy, nx)
    out = np.matmul(my, out)  # (nz, ny, nx)
    out *= np.float32(1.0 / gain)
    return out


def correlated_noise(shape, sigma_vox, rng: np.random.Generator) -> np.ndarray:
    """Unit-std Gaussian noise filtered to a scanner-like (low-pass) power spectrum."""
    white = rng.standard_normal(shape, dtype=np.float32)
    out = ndimage.gaussian_filter(white, sigma=sigma_vox, mode="nearest", truncate=2.5)
    # std of filtered unit white noise = 1 / sqrt(prod(2·sqrt(pi)·sigma)) for sigma ≳ 0.5
    gain = float(np.prod([1.0 / np.sqrt(2 * np.sqrt(np.pi) * max(s, 0.3)) for s in sigma_vox]))
    out *= np.float32(1.0 / gain)
    return out
