"""The CT volume every part of SpeechCT passes around.

Conventions (the one place they are written down):

* ``array`` holds Hounsfield units, axis order ``(z, y, x)`` = (slice, row, column).
  ``array[k, j, i]`` is the voxel at column ``i``, row ``j`` of slice ``k``.
* ``spacing`` is ``(sz, sy, sx)`` in millimetres, in the same order as the array axes.
* Geometry is in DICOM patient coordinates (LPS: +x towards the patient's Left,
  +y towards Posterior, +z towards Superior), whatever the file format was;
  NIfTI's RAS affines are converted on reading.
* ``origin`` is the LPS position (mm) of the centre of voxel ``array[0, 0, 0]``.
* ``direction`` is a 3×3 matrix whose *columns* are the unit LPS vectors along
  increasing column index (x), row index (y) and slice index (z), as in ITK/DICOM.

So the LPS position of voxel ``(k, j, i)`` is
``origin + direction @ (i * sx, j * sy, k * sz)`` (see :meth:`Volume.affine_lps`).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field

import numpy as np

#: Metadata keys that may be kept; anything identifying a patient is never stored.
SAFE_METADATA_KEYS = (
    "modality",
    "study_uid",
    "series_uid",
    "frame_of_reference_uid",
    "series_description",
    "study_description",
    "study_date",
    "series_number",
    "manufacturer",
    "body_part",
    "kernel",
    "slice_thickness",
    "source",  # the path the volume was read from
    "format",  # "dicom" | "dicom-enhanced" | "nifti"
    "rescale_source",  # the CT-RATE metadata CSV a NIfTI's HU rescale and spacing came from
)


@dataclass
class Volume:
    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    metadata: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3-D (z, y, x), got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        unknown = set(self.metadata) - set(SAFE_METADATA_KEYS)
        if unknown:
            raise ValueError(f"metadata keys not in SAFE_METADATA_KEYS: {sorted(unknown)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    def affine_lps(self) -> np.ndarray:
        """4×4 matrix mapping homogeneous (i, j, k, 1) voxel indices to LPS mm."""
        sz, sy, sx = self.spacing
        a = np.eye(4)
        a[:3, :3] = self.direction @ np.diag([sx, sy, sz])
        a[:3, 3] = self.origin
        return a

    def orientation_code(self) -> str:
        """Three letters naming where +x, +y, +z (column, row, slice) point, e.g. ``"LPS"``.

        For oblique volumes this is the nearest axis-aligned code: patient axes are assigned
        to voxel axes jointly (the permutation with the largest sum of |cos|), so even an
        exact 45° rotation yields a valid code with each patient axis used once.
        """
        letters = (("L", "R"), ("P", "A"), ("S", "I"))
        absd = np.abs(self.direction)
        # Six permutations: exhaustive search is exact and cheaper than anything clever.
        best = max(
            itertools.permutations(range(3)),
            key=lambda perm: (sum(absd[perm[c], c] for c in range(3)), tuple(-p for p in perm)),
        )
        code = ""
        for col, axis in enumerate(best):
            code += letters[axis][0 if self.direction[axis, col] >= 0 else 1]
        return code

    def is_oblique(self, tol_deg: float = 1.0) -> bool:
        cos_tol = np.cos(np.deg2rad(tol_deg))
        return bool(np.any(np.max(np.abs(self.direction), axis=0) < cos_tol))

    def replace(self, **changes) -> Volume:
        """A new Volume with ``changes``; metadata and warnings are copied, never shared."""
        changes.setdefault("metadata", dict(self.metadata))
        changes.setdefault("warnings", list(self.warnings))
        return dataclasses.replace(self, **changes)

    def hu_range(self) -> tuple[float, float]:
        return float(self.array.min()), float(self.array.max())

    def reoriented(self, code: str) -> Volume:
        """The same voxels with axes permuted/flipped so that ``orientation_code() == code``.

        Only permutations and flips (no resampling); for oblique volumes the nearest
        axis-aligned code is reached. ``code`` names +x, +y, +z as in :meth:`orientation_code`.
        """
        code = code.upper()
        opposite = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}
        if len(code) != 3 or any(c not in opposite for c in code):
            raise ValueError(f"bad orientation code {code!r}")
        current = self.orientation_code()
        if current == code:
            return self
        # For each target axis (x, y, z), find the source axis (x, y, z) and whether to flip.
        src_for_target = []
        for c in code:
            for s, cc in enumerate(current):
                if cc == c or cc == opposite[c]:
                    src_for_target.append((s, cc != c))
                    break
            else:
                raise ValueError(f"cannot reorient {current} to {code}")
        if sorted(s for s, _ in src_for_target) != [0, 1, 2]:
            raise ValueError(f"cannot reorient {current} to {code}")
        # array axes are (z, y, x) = reversed (x, y, z) index order.
        arr = self.array
        for s, flip in src_for_target:
            if flip:
                arr = np.flip(arr, axis=2 - s)
        perm_xyz = [s for s, _ in src_for_target]  # target x,y,z <- source axis
        arr = np.transpose(arr, [2 - perm_xyz[2], 2 - perm_xyz[1], 2 - perm_xyz[0]])
        spacing_xyz = tuple(self.spacing[::-1])
        new_spacing_xyz = [spacing_xyz[s] for s in perm_xyz]
        # New origin: LPS of the voxel that now sits at index (0, 0, 0).
        shape_xyz = self.array.shape[::-1]
        first_idx = [0, 0, 0]
        for s, flip in src_for_target:
            if flip:
                first_idx[s] = shape_xyz[s] - 1
        origin = (self.affine_lps() @ np.array([*first_idx, 1.0]))[:3]
        new_dir = np.stack(
            [self.direction[:, s] * (-1.0 if flip else 1.0) for s, flip in src_for_target], axis=1
        )
        return self.replace(
            array=np.ascontiguousarray(arr),
            spacing=tuple(new_spacing_xyz[::-1]),
            origin=tuple(origin),
            direction=new_dir,
        )
