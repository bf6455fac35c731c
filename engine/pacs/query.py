"""What a PACS search returns, and the search keys, the same for DICOMweb and DIMSE.

No patient name, ID or birth date is kept in these records: a search may *filter* by patient ID
(``--patient-id``), but what comes back and is printed names studies by UID, date, modality and
description only.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from engine.pacs.errors import PacsError

_DATE = re.compile(r"^(\d{8})?(-(\d{8})?)?$")


@dataclass(frozen=True)
class StudyMatch:
    study_uid: str
    date: str | None
    description: str | None
    modalities: tuple[str, ...]
    n_series: int | None
    n_instances: int | None

    def to_json(self) -> dict:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        return d


@dataclass(frozen=True)
class SeriesMatch:
    series_uid: str
    modality: str | None
    description: str | None
    number: int | None
    n_instances: int | None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StudyQuery:
    """Search keys (DICOM matching): ``date`` YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either end open),
    ``modality`` one modality in the study (e.g. CT), ``description`` a substring of StudyDescription
    (``*``/``?`` wildcards kept as given), ``patient_id`` exact, ``limit`` at most this many."""

    date: str | None = None
    modality: str | None = None
    description: str | None = None
    patient_id: str | None = None
    study_uid: str | None = None
    limit: int | None = None

    def __post_init__(self):
        if self.date is not None and (not _DATE.match(self.date) or self.date in ("", "-")):
            raise PacsError(f"--date must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either end may be open), "
                            f"got {self.date!r}")
        if self.modality is not None and not re.fullmatch(r"[A-Z0-9]{1,16}", self.modality):
            raise PacsError(f"--modality must be a DICOM modality such as CT, got {self.modality!r}")
        if self.limit is not None and self.limit <= 0:
            raise PacsError(f"--limit must be > 0, got {self.limit}")

    def description_pattern(self) -> str | None:
        if not self.description:
            return None
        d = self.description
        return d if any(c in d for c in "*?") else f"*{d}*"


def as_int(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def as_text(value) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def modalities_of(value) -> tuple[str, ...]:
    if value in (None, ""):
        return ()
    if isinstance(value, str):
        return tuple(v for v in value.split("\\") if v)
    return tuple(str(v) for v in value if v)
