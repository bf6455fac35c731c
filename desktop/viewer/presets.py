"""Window/level presets (HU): the radiologist's number keys 1/2/3."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WindowPreset:
    name: str
    window: float  # HU width
    level: float  # HU centre


LUNG = WindowPreset("Lung", 1500.0, -600.0)
MEDIASTINUM = WindowPreset("Mediastinum", 350.0, 50.0)
BONE = WindowPreset("Bone", 2000.0, 350.0)

#: Key character -> preset (docs/design.md §5).
PRESET_KEYS: dict[str, WindowPreset] = {"1": LUNG, "2": MEDIASTINUM, "3": BONE}
DEFAULT_PRESET = LUNG
