"""Reading tools on a slice, free of rendering: the HU value at a point, a ruler's length (mm) and an
elliptical ROI's mean / SD HU. Points are LPS mm; a measurement belongs to one view and one slice
position (it is shown only while that slice is on screen, as in OHIF and Weasis)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.volume import Volume

TOOLS = ("wl", "ruler", "ellipse")  # what a left-drag does on a slice view
TOOL_NAMES = {"wl": "Window/level", "ruler": "Ruler (mm)", "ellipse": "Ellipse ROI (HU)"}


def voxel_index(volume: Volume, points) -> np.ndarray:
    """Nearest (k, j, i) voxel indices of LPS points, shape (n, 3); -1 rows for points outside."""
    pts = np.atleast_2d(np.asarray(points, float))
    ijk = (np.linalg.inv(volume.affine_lps()) @ np.c_[pts, np.ones(len(pts))].T)[:3].T
    kji = np.rint(ijk[:, ::-1]).astype(int)
    inside = np.all((kji >= 0) & (kji < np.array(volume.shape)), axis=1)
    kji[~inside] = -1
    return kji


def hu_at(volume: Volume, point) -> float | None:
    """HU of the voxel nearest ``point`` (LPS mm), None outside the volume."""
    k, j, i = voxel_index(volume, point)[0]
    return None if k < 0 else float(volume.array[k, j, i])


@dataclass
class Measurement:
    """``kind`` "ruler": a line from ``p1`` to ``p2``; "ellipse": the ellipse inscribed in the
    screen-aligned box with corners ``p1`` and ``p2``. ``view`` and ``position`` (mm along the view's
    normal) say which slice it was drawn on."""

    kind: str
    view: str
    position: float
    p1: np.ndarray
    p2: np.ndarray
    right: np.ndarray  # the view's screen axes in LPS, for the ellipse's box
    up: np.ndarray
    stats: dict | None = None  # ellipse: {"mean", "sd", "n", "area_mm2"}

    @property
    def length_mm(self) -> float:
        return float(np.linalg.norm(self.p2 - self.p1))

    def label(self) -> str:
        if self.kind == "ruler":
            return f"{self.length_mm:.1f} mm"
        s = self.stats or {}
        if not s.get("n"):
            return "ROI: no voxels"
        return f"mean {s['mean']:.0f} HU  SD {s['sd']:.0f}  ({s['area_mm2']:.0f} mm²)"

    def ellipse_axes(self) -> tuple[np.ndarray, float, float]:
        """Centre (LPS) and the half-axes along ``right`` and ``up`` (mm)."""
        centre = (self.p1 + self.p2) / 2.0
        d = self.p2 - self.p1
        return centre, abs(float(d @ self.right)) / 2.0, abs(float(d @ self.up)) / 2.0

    def outline(self, n: int = 64) -> np.ndarray:
        """Points of the drawn shape (LPS), for the overlay."""
        if self.kind == "ruler":
            return np.stack([self.p1, self.p2])
        c, a, b = self.ellipse_axes()
        t = np.linspace(0, 2 * np.pi, n + 1)
        return c + np.outer(np.cos(t) * a, self.right) + np.outer(np.sin(t) * b, self.up)


def ellipse_stats(volume: Volume, m: Measurement) -> dict:
    """Mean, SD and count of the voxels whose centres lie inside the ellipse on its slice; the slice
    is sampled on the volume's in-plane grid (the finer of the two in-plane spacings)."""
    centre, a, b = m.ellipse_axes()
    step = float(min(volume.spacing[1:])) / 2.0
    u = np.arange(-a, a + step, step)
    v = np.arange(-b, b + step, step)
    uu, vv = np.meshgrid(u, v)
    inside = (uu / max(a, 1e-6)) ** 2 + (vv / max(b, 1e-6)) ** 2 <= 1.0
    pts = centre + np.outer(uu[inside], m.right) + np.outer(vv[inside], m.up)
    kji = voxel_index(volume, pts)
    kji = kji[kji[:, 0] >= 0]
    kji = np.unique(kji, axis=0)  # each voxel once, however finely it was sampled
    area = float(np.pi * a * b)
    if len(kji) == 0:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0, "area_mm2": area}
    hu = volume.array[kji[:, 0], kji[:, 1], kji[:, 2]].astype(np.float64)
    return {"mean": float(hu.mean()), "sd": float(hu.std(ddof=1)) if len(hu) > 1 else 0.0, "n": int(len(hu)),
            "area_mm2": area}
