"""Split scanned DICOM frames into series and work out each series' geometry from headers alone.

3D Slicer's habits: one SeriesInstanceUID is split further by orientation, image type
(localizers apart), matrix size, multi-frame file and acquisition number; slices are sorted
by their position along the slice normal (never by InstanceNumber); the slice spacing comes
from the positions (not SliceThickness); irregular geometry is reported, never "fixed".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from engine.errors import StudyError
from engine.io.dicom_scan import SliceHeader
from engine.io.series import SeriesInfo
from engine.io.validate import check_orientation, check_position, check_spacing
from engine.volume import Volume

#: Positions closer than this along the normal (mm) are the same slice position.
DUPLICATE_TOL_MM = 1e-3
#: Orientation cosines closer than this (max abs difference) are the same orientation.
ORIENTATION_TOL = 1e-3
#: A slice axis leaning more than this from the normal (degrees) is a gantry tilt.
TILT_TOL_DEG = 0.05


@dataclass
class DicomSeries:
    """One loadable stack of frames with its geometry (LPS mm, array order (z, y, x))."""

    uid: str
    slices: list[SliceHeader]  # in spatial order: slice index k = 0 first
    spacing: tuple[float, float, float]  # (sz, sy, sx)
    origin: tuple[float, float, float]
    direction: np.ndarray  # columns: +x (column), +y (row), +z (slice) unit vectors
    warnings: list[str] = field(default_factory=list)
    #: why this stack cannot be loaded (a header field that makes no physical sense), else None
    error: StudyError | None = None

    @property
    def first(self) -> SliceHeader:
        return self.slices[0]

    @property
    def modality(self) -> str:
        return self.first.modality

    @property
    def description(self) -> str:
        return self.first.meta.get("series_description", "")

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.first.image_type.upper()

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.slices), self.first.rows, self.first.columns)

    def orientation_code(self) -> str:
        probe = Volume(np.zeros((1, 1, 1), np.int8), self.spacing, self.origin, self.direction)
        return probe.orientation_code()

    def files(self) -> list[str]:
        return list(dict.fromkeys(s.path for s in self.slices))

    def info(self) -> SeriesInfo:
        return SeriesInfo(
            uid=self.uid,
            description=self.description,
            modality=self.modality,
            n_slices=len(self.slices),
            shape=self.shape,
            spacing=self.spacing,
            orientation=self.orientation_code(),
            files=self.files(),
            warnings=list(self.warnings),
            image_type=self.first.image_type,
        )

    def summary(self) -> str:
        desc = f" '{self.description}'" if self.description else ""
        kind = ", localizer" if self.is_localizer else ""
        return (
            f"{self.uid}{desc} ({self.modality}, {len(self.slices)} slices, {self.orientation_code()}{kind})"
        )


def _orientation_labels(members: list[SliceHeader]) -> dict[int, int]:
    """Cluster label per frame (by id): orientations within ORIENTATION_TOL of a cluster's first join it.

    A tolerance rather than rounding, so that scanner jitter in the last digits never splits a
    series at a rounding boundary.
    """
    centres: list[np.ndarray | None] = []
    labels = {}
    for h in members:
        o = None if h.orientation is None else np.asarray(h.orientation, dtype=np.float64)
        for i, c in enumerate(centres):
            if (o is None and c is None) or (
                o is not None and c is not None and np.max(np.abs(o - c)) < ORIENTATION_TOL
            ):
                labels[id(h)] = i
                break
        else:
            labels[id(h)] = len(centres)
            centres.append(o)
    return labels


def split_series(slices: list[SliceHeader]) -> list[DicomSeries]:
    """Group frames into series (sorted by series number, then uid) with their geometry."""
    by_uid: dict[str, list[SliceHeader]] = defaultdict(list)
    for h in slices:
        by_uid[h.series_uid].append(h)
    out = []
    for uid, group in by_uid.items():
        for suffix, members in _subdivide(group):
            try:
                out.append(build_series(uid + suffix, members))
            except StudyError as exc:  # listed (info shows it), refused when loaded
                out.append(DicomSeries(uid + suffix, members, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3),
                                       error=exc))
    out.sort(key=lambda s: (s.first.meta.get("series_number") or 0, s.uid))
    return out


def _subdivide(group: list[SliceHeader]) -> list[tuple[str, list[SliceHeader]]]:
    """Split one SeriesInstanceUID's frames into stacks that can each form a volume.

    Keys, each adding a suffix only when it actually splits: the multi-frame file (".mf<i>"),
    the matrix size (".size<i>"), the image type (".type<i>": localizers apart), the orientation
    (".ori<i>") and the acquisition number (".acq<N>") — the last only when every acquisition
    has more than one frame, since some scanners number each slice as its own acquisition.
    """
    parts: list[tuple[str, list[SliceHeader]]] = [("", group)]
    orientation = _orientation_labels(group)
    keys = (
        ("mf", lambda h: h.path if h.frame is not None else ""),
        ("size", lambda h: (h.rows, h.columns)),
        ("type", lambda h: h.image_type.upper()),
        ("ori", lambda h: orientation[id(h)]),
    )
    for name, key in keys:
        parts = [(suffix + s, m) for suffix, members in parts for s, m in _split_by(members, name, key)]
    result = []
    for suffix, members in parts:
        values = defaultdict(list)
        for h in members:
            values[h.acquisition].append(h)
        if len(values) > 1 and all(len(v) > 1 for v in values.values()):
            for acq in sorted(values, key=lambda a: (len(a), a)):
                result.append((f"{suffix}.acq{acq or 'none'}", values[acq]))
        else:
            result.append((suffix, members))
    return result


def _split_by(members: list[SliceHeader], name: str, key) -> list[tuple[str, list[SliceHeader]]]:
    groups = defaultdict(list)
    for h in members:
        groups[key(h)].append(h)
    if len(groups) == 1:
        return [("", members)]
    # Largest stack first, so ".ori1" is the main orientation.
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), str(kv[0])))
    return [(f".{name}{i}", m) for i, (_, m) in enumerate(ordered, start=1)]


def build_series(uid: str, members: list[SliceHeader]) -> DicomSeries:
    """Sort the frames of one stack along the slice normal and derive spacing, origin, direction."""
    warnings: list[str] = []
    first = members[0]
    sy, sx = first.pixel_spacing or (1.0, 1.0)
    if first.pixel_spacing is None:
        warnings.append(f"{first.path}: no PixelSpacing; assuming 1 mm")
    else:
        sy, sx = check_spacing(first.pixel_spacing, first.path, "PixelSpacing")
    if len({h.pixel_spacing for h in members}) > 1:
        warnings.append(f"series {uid}: PixelSpacing differs between slices; using the first slice's")
    if first.orientation is None or any(h.position is None for h in members):
        return _without_positions(uid, members, (sy, sx), warnings)

    # the validation gate's header checks (engine.io.validate): before any arithmetic on the fields
    x, y = check_orientation(first.orientation, first.path, warnings)
    for h in members:
        check_position(h.position, h.path)
    normal = np.cross(x, y)
    normal /= np.linalg.norm(normal)
    along = np.array([normal @ np.asarray(h.position) for h in members])
    # Ties (duplicated positions) are broken by InstanceNumber, then path and frame, for stability.
    order = sorted(
        range(len(members)),
        key=lambda i: (along[i], members[i].instance_number, members[i].path, members[i].frame or 0),
    )
    ordered = [members[i] for i in order]
    along = along[order]

    duplicates = np.flatnonzero(np.diff(along) < DUPLICATE_TOL_MM) + 1
    if duplicates.size:
        dropped = [ordered[i] for i in duplicates]
        names = ", ".join(_frame_name(h) for h in dropped[:3]) + (" …" if len(dropped) > 3 else "")
        warnings.append(
            f"series {uid}: {len(dropped)} slice(s) duplicate the position of another slice; "
            f"kept the lowest InstanceNumber and left out {names}"
        )
        keep = np.ones(len(ordered), bool)
        keep[duplicates] = False
        ordered = [h for h, k in zip(ordered, keep) if k]
        along = along[keep]

    positions = np.array([h.position for h in ordered], dtype=np.float64)
    origin = tuple(positions[0])
    if len(ordered) == 1:
        sz = first.slice_thickness if first.slice_thickness and first.slice_thickness > 0 else 1.0
        source = (
            "SliceThickness" if first.slice_thickness and first.slice_thickness > 0 else "a default of 1 mm"
        )
        warnings.append(f"series {uid}: a single 2-D slice; slice spacing {sz:g} mm taken from {source}")
        direction = np.stack([x, y, normal], axis=1)
        return DicomSeries(uid, ordered, (float(sz), float(sy), float(sx)), origin, direction, warnings)

    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    sz = float(np.median(steps))
    span = positions[-1] - positions[0]
    z = span / np.linalg.norm(span)
    tilt = float(np.degrees(np.arccos(np.clip(z @ normal, -1.0, 1.0))))
    if tilt > TILT_TOL_DEG:
        warnings.append(
            f"series {uid}: gantry tilt of {tilt:.2f}° (slices step {tilt:.2f}° off their normal); "
            "kept as a sheared affine, not resampled"
        )
    warnings.extend(_spacing_warnings(uid, steps, sz, along))
    direction = np.stack([x, y, z], axis=1)
    return DicomSeries(uid, ordered, (sz, float(sy), float(sx)), origin, direction, warnings)


def _spacing_warnings(uid: str, steps: np.ndarray, sz: float, along: np.ndarray) -> list[str]:
    tol = max(1e-2, 1e-3 * sz)
    irregular = np.abs(steps - sz) > tol
    if not irregular.any():
        return []
    out = []
    ratios = steps / sz
    gaps = (
        irregular & (np.abs(ratios - np.round(ratios)) * sz <= max(tol, 0.05 * sz)) & (np.round(ratios) >= 2)
    )
    if gaps.any():
        missing = int(np.sum(np.round(ratios[gaps]) - 1))
        where = ", ".join(f"{along[i]:.2f}–{along[i + 1]:.2f} mm" for i in np.flatnonzero(gaps)[:3])
        out.append(
            f"series {uid}: about {missing} missing slice(s) (gaps along the normal at {where}); not filled"
        )
    if (irregular & ~gaps).any():
        out.append(
            f"series {uid}: non-uniform slice spacing ({steps.min():.3f}–{steps.max():.3f} mm); "
            f"the volume uses the median {sz:.3f} mm, not resampled"
        )
    return out


def _without_positions(uid: str, members, in_plane, warnings) -> DicomSeries:
    """Frames with no ImagePositionPatient/ImageOrientationPatient: order by InstanceNumber, say so."""
    ordered = sorted(members, key=lambda h: (h.instance_number, h.path, h.frame or 0))
    first = ordered[0]
    sz = first.slice_thickness if first.slice_thickness and first.slice_thickness > 0 else 1.0
    what = "a single 2-D slice" if len(ordered) == 1 else f"{len(ordered)} slices ordered by InstanceNumber"
    warnings.append(
        f"series {uid}: no ImagePositionPatient/ImageOrientationPatient; {what}, identity direction, "
        f"slice spacing {sz:g} mm"
    )
    return DicomSeries(uid, ordered, (float(sz), *map(float, in_plane)), (0.0, 0.0, 0.0), np.eye(3), warnings)


def _frame_name(h: SliceHeader) -> str:
    return h.path if h.frame is None else f"{h.path}[frame {h.frame}]"
