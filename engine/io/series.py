"""What a reader can say about one series before (or after) loading its pixels."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SeriesInfo:
    #: SeriesInstanceUID; when one UID is split (orientation, acquisition, image type)
    #: a suffix like ".acq2" or ".ori1" keeps the keys unique. For NIfTI: the file path.
    uid: str
    description: str
    modality: str
    n_slices: int
    shape: tuple[int, int, int]  # (z, y, x)
    spacing: tuple[float, float, float]  # (z, y, x) mm
    orientation: str  # e.g. "LPS", see engine.volume.Volume.orientation_code
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    image_type: str = ""  # e.g. "ORIGINAL\\PRIMARY\\AXIAL"; localizers are "...\\LOCALIZER"
