"""CT-RATE v1 metadata: the rescale and spacing its NIfTI headers do not carry.

CT-RATE v1 volumes store raw scanner values (air ≈ 0) in NIfTI files with blank headers; the
HU rescale (``RescaleSlope``, ``RescaleIntercept``, usually 1 and −1024) and the voxel spacing
(``XYSpacing`` as ``"[x, y]"``, ``ZSpacing``) live in ``dataset/metadata/*_metadata.csv``, one
row per ``VolumeName`` (the file name). Read without them, every voxel is ~1024 HU too bright
and the CT encoder sees nonsense. ``train.data`` passes a row's values explicitly;
:func:`find_volume_meta` lets the engine find them itself when a user opens a file inside a
CT-RATE download (``dataset/<split>/<patient>/<scan>/<name>.nii.gz``, four folders below
``dataset/``). CT-RATE v2 (``_fixed`` folders) already holds HU and is never looked up.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from engine.errors import DataError

#: How many folders above a volume to look for ``metadata/`` (CT-RATE nests volumes four deep).
SEARCH_DEPTH = 5

_FLOAT_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
#: The metadata CSV columns a volume's row is read from.
METADATA_COLUMNS = ("VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing")


@dataclass(frozen=True)
class VolumeMeta:
    """CT-RATE metadata for one volume: HU = slope · stored + intercept; spacing (sz, sy, sx) mm."""

    slope: float
    intercept: float
    spacing: tuple[float, float, float]


def parse_metadata_row(row: dict[str, str], path: Path) -> VolumeMeta:
    """Slope, intercept and spacing from a metadata row of the CSV at ``path``; DataError naming it."""
    name = row.get("VolumeName", "?")
    xy = [float(v) for v in _FLOAT_RE.findall(row.get("XYSpacing") or "")]
    if len(xy) != 2:
        raise DataError(f"metadata row {name!r}: XYSpacing {row.get('XYSpacing')!r} is not '[x, y]'", path)
    try:
        slope, intercept, sz = (float(row["RescaleSlope"]), float(row["RescaleIntercept"]), float(row["ZSpacing"]))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"metadata row {name!r}: RescaleSlope/RescaleIntercept/ZSpacing not numbers", path) from e
    sx, sy = xy
    if min(sz, sy, sx) <= 0 or slope == 0:
        raise DataError(f"metadata row {name!r}: non-positive spacing or zero slope", path)
    return VolumeMeta(slope=slope, intercept=intercept, spacing=(sz, sy, sx))


@lru_cache(maxsize=8)
def _rows_by_name(csv_path: str, mtime_ns: int, size: int) -> dict[str, dict[str, str]]:
    """VolumeName → row of one metadata CSV ({} when it is not one); cached per file version."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not set(METADATA_COLUMNS) <= set(reader.fieldnames or ()):
                return {}
            return {(row.get("VolumeName") or "").strip(): row for row in reader}
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"CT-RATE metadata CSV cannot be read ({e})", csv_path) from e


def _metadata_csvs(volume_path: Path) -> list[Path]:
    for folder in list(volume_path.parents)[:SEARCH_DEPTH]:
        meta = folder / "metadata"
        if meta.is_dir():
            found = sorted(meta.glob("*metadata*.csv"))
            if found:
                return found
    return []


def find_volume_meta(volume_path: str | Path) -> tuple[VolumeMeta, Path] | None:
    """The metadata row for ``volume_path`` (matched by file name) and the CSV it came from, found in a
    ``metadata/`` folder at most :data:`SEARCH_DEPTH` folders up; None outside a CT-RATE layout or
    when no CSV lists the file. A listed row that is malformed is a DataError naming the CSV."""
    path = Path(volume_path).absolute()
    for csv_path in _metadata_csvs(path):
        st = csv_path.stat()
        row = _rows_by_name(str(csv_path), st.st_mtime_ns, st.st_size).get(path.name)
        if row is not None:
            return parse_metadata_row(row, csv_path), csv_path
    return None
