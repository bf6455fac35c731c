"""Desktop tests: offscreen Qt + OSMesa VTK (set in tests/conftest.py), one sample study."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "assets" / "samples" / "study-001"


@pytest.fixture(scope="session")
def sample_volume():
    from engine.io import load_volume

    return load_volume(SAMPLE / "dicom")
