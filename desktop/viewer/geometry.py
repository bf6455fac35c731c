"""Patient-space geometry of a Volume for the viewer: world = LPS millimetres.

The VTK image is built in voxel space (origin 0, the volume's spacing) and placed in the world by
the 4×4 ``affine`` (direction × spacing is split: spacing lives in the image, rotation + origin
in the prop's user matrix), so oblique and tilted series are cut along patient axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.volume import Volume

#: The three slice views and the LPS axis each one's slice index moves along.
VIEWS = ("axial", "coronal", "sagittal")
NORMAL_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}  # LPS index: x=0 (L), y=1 (P), z=2 (S)


@dataclass(frozen=True)
class Geometry:
    shape: tuple[int, int, int]  # (z, y, x) voxels
    spacing: tuple[float, float, float]  # (z, y, x) mm
    rotation_origin: np.ndarray  # 4×4: voxel-space mm (x, y, z) -> LPS mm
    bounds_min: np.ndarray  # LPS mm, corner voxel centres' bounding box
    bounds_max: np.ndarray
    step: np.ndarray  # mm per slice along L, P, S

    @classmethod
    def of(cls, volume: Volume) -> Geometry:
        nz, ny, nx = volume.shape
        sz, sy, sx = volume.spacing
        m = np.eye(4)
        m[:3, :3] = volume.direction
        m[:3, 3] = volume.origin
        corners = np.array([[i, j, k] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)], float)
        world = (volume.affine_lps() @ np.c_[corners, np.ones(8)].T)[:3].T
        # Slice step along each patient axis: the voxel axis most aligned with it sets the pace.
        spacing_xyz = np.array([sx, sy, sz])
        step = np.array([spacing_xyz[int(np.argmax(np.abs(volume.direction[a])))] for a in range(3)])
        return cls(tuple(volume.shape), tuple(volume.spacing), m, world.min(0), world.max(0), step)

    @property
    def centre(self) -> np.ndarray:
        return (self.bounds_min + self.bounds_max) / 2.0

    def n_slices(self, view: str) -> int:
        a = NORMAL_AXIS[view]
        return int(np.floor((self.bounds_max[a] - self.bounds_min[a]) / self.step[a] + 1e-6)) + 1

    def slice_index(self, view: str, point: np.ndarray) -> int:
        a = NORMAL_AXIS[view]
        return int(round((point[a] - self.bounds_min[a]) / self.step[a]))

    def position_of(self, view: str, index: int) -> float:
        a = NORMAL_AXIS[view]
        return float(self.bounds_min[a] + index * self.step[a])
