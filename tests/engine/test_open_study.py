"""engine.io.open_study: one walk, one header parse per file, shared by .series and .load."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from engine.io import list_series, load_volume, open_study

SAMPLE = Path(__file__).resolve().parents[2] / "assets" / "samples" / "study-001" / "dicom"


@pytest.fixture
def header_parses(monkeypatch):
    """Header reads per file: ``read_header`` (the plain reader or pydicom) and pydicom's own header parses."""
    import engine.io.dicom_scan as dicom_scan

    counts: Counter = Counter()
    real = dicom_scan.read_header

    def counting(path, *args, **kwargs):
        counts[str(path)] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(dicom_scan, "read_header", counting)
    import pydicom

    real_dcmread = pydicom.dcmread

    def counting_dcmread(fp, *args, **kwargs):
        if kwargs.get("stop_before_pixels"):
            counts["pydicom:" + str(getattr(fp, "name", fp))] += 1
        return real_dcmread(fp, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting_dcmread)
    return counts


def test_series_and_load_parse_each_header_once(header_parses):
    files = sorted(p for p in SAMPLE.rglob("*") if p.is_file())
    source = open_study(SAMPLE)
    assert not header_parses  # the walk sniffs; headers are parsed when first needed
    infos = source.series
    volume = source.load(infos[0].uid)
    assert source.series == infos
    # once per file, and never by pydicom: the samples are plain files (engine.io.dicom_plain_header)
    assert sorted(header_parses) == [str(f) for f in files] and set(header_parses.values()) == {1}
    # the same as the one-call functions
    assert [i.uid for i in list_series(SAMPLE)] == [i.uid for i in infos]
    np.testing.assert_array_equal(load_volume(SAMPLE).array, volume.array)


def test_a_nifti_file_and_a_missing_path(tmp_path):
    from engine.errors import StudyError
    from engine.io import write_nifti

    vol = load_volume(SAMPLE)
    write_nifti(vol, tmp_path / "a.nii.gz")
    source = open_study(tmp_path / "a.nii.gz")
    assert [i.uid for i in source.series] == [str(tmp_path / "a.nii.gz")]
    assert source.load().shape == vol.shape
    with pytest.raises(StudyError, match="does not exist"):
        open_study(tmp_path / "nothing")
