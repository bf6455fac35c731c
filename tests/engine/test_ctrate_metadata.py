"""A CT-RATE v1 volume opened from its download gets HU and spacing from the metadata CSV.

CT-RATE v1 NIfTI headers carry neither the rescale nor the spacing (air is stored as ~0); the
values live in ``dataset/metadata/*_metadata.csv``. These tests write a volume exactly that way
and check that the engine finds the row, that explicit overrides and v2 (``_fixed``) folders
are left alone, and that a volume read without its rescale is flagged instead of silently
encoded ~1024 HU too bright.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest

from engine.errors import SpeechCTWarning, StudyError
from engine.io import load_volume
from engine.io.ctrate_metadata import find_volume_meta
from engine.io.nifti import write_nifti
from engine.volume import Volume

COLUMNS = ["VolumeName", "Manufacturer", "PatientSex", "PatientAge", "SliceThickness", "Rows", "Columns",
           "NumberofSlices", "XYSpacing", "ZSpacing", "RescaleIntercept", "RescaleSlope", "RescaleType"]


def _hu_volume() -> Volume:
    rng = np.random.default_rng(0)
    hu = np.full((6, 10, 12), -1000, np.int16)  # air around a body
    hu[1:5, 2:8, 2:10] = rng.integers(-100, 400, size=(4, 6, 8))
    # the header's geometry is not what CT-RATE v1 trusts: the CSV's spacing must replace it. Read
    # with the header's (a 200 x 240 mm field of view) it is wide enough for the no-air check.
    return Volume(hu, (1.0, 20.0, 20.0))


def _row(name: str, **over) -> dict:
    row = {"VolumeName": name, "Manufacturer": "SIEMENS", "PatientSex": "F", "PatientAge": "061Y",
           "SliceThickness": "2.5", "Rows": "10", "Columns": "12", "NumberofSlices": "6",
           "XYSpacing": "[0.75, 0.8]", "ZSpacing": "2.5", "RescaleIntercept": "-1024.0", "RescaleSlope": "1.0",
           "RescaleType": "HU"}
    row.update(over)
    return row


def _ctrate_download(root: Path, rows: list[dict], name="valid_7_a_1.nii.gz", fixed=False) -> Path:
    """``root/dataset/valid[_fixed]/valid_7/valid_7_a/<name>`` stored raw (HU + 1024), header without rescale."""
    split = "valid_fixed" if fixed else "valid"
    path = root / "dataset" / split / "valid_7" / "valid_7_a" / name
    write_nifti(_hu_volume(), path, intercept=-1024.0)  # raw = HU + 1024, the header says nothing
    meta = root / "dataset" / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    with open(meta / "validation_metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_v1_volume_inside_its_download_reads_as_hu_with_the_csv_spacing(tmp_path):
    path = _ctrate_download(tmp_path, [_row("valid_6_a_1.nii.gz", RescaleIntercept="0"),
                                       _row("valid_7_a_1.nii.gz")])
    vol = load_volume(path)
    np.testing.assert_array_equal(vol.array, _hu_volume().array)
    assert vol.spacing == (2.5, 0.8, 0.75)  # (sz, sy, sx) from ZSpacing and "[x, y]"
    assert vol.metadata["rescale_source"] == str(tmp_path / "dataset" / "metadata" / "validation_metadata.csv")
    assert len(vol.warnings) == 1 and "small field of view" in vol.warnings[0]  # no rescale warning: the gate's note only


def test_the_same_file_outside_its_download_is_flagged_as_unrescaled(tmp_path):
    path = _ctrate_download(tmp_path, [_row("valid_7_a_1.nii.gz")])
    moved = tmp_path / "elsewhere" / path.name
    moved.parent.mkdir()
    path.rename(moved)
    with pytest.warns(SpeechCTWarning, match="no voxel below -200 HU .*RescaleIntercept"):
        vol = load_volume(moved)
    assert vol.array.min() == 24  # -1000 HU air stored as 24
    assert "rescale_source" not in vol.metadata
    assert any("look unrescaled" in w and str(moved) in w for w in vol.warnings)


def test_explicit_overrides_and_opting_out_skip_the_lookup(tmp_path):
    path = _ctrate_download(tmp_path, [_row("valid_7_a_1.nii.gz", RescaleIntercept="-2000")])
    vol = load_volume(path, slope=1.0, intercept=-1024.0, spacing=(3.0, 1.0, 1.0))
    np.testing.assert_array_equal(vol.array, _hu_volume().array)  # not -2000: the caller's values won
    assert vol.spacing == (3.0, 1.0, 1.0) and "rescale_source" not in vol.metadata
    from engine.io.nifti import read_nifti

    with pytest.warns(SpeechCTWarning, match="look unrescaled"):
        assert read_nifti(path, ctrate_metadata=False).array.min() == 24


def test_a_v2_fixed_folder_is_never_rescaled_from_the_csv(tmp_path):
    path = _ctrate_download(tmp_path, [_row("valid_7_a_1.nii.gz")], fixed=True)
    assert "_fixed" in str(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = load_volume(path)
    assert "rescale_source" not in vol.metadata
    assert vol.array.min() == 24  # v2 data are taken as stored; this one was written raw, so it is flagged
    assert any("look unrescaled" in str(w.message) for w in caught)


def test_a_volume_the_csv_does_not_list_is_left_to_its_header(tmp_path):
    path = _ctrate_download(tmp_path, [_row("valid_8_a_1.nii.gz")])
    assert find_volume_meta(path) is None
    with pytest.warns(SpeechCTWarning, match="look unrescaled"):
        load_volume(path)


def test_a_small_crop_without_air_is_not_flagged(tmp_path):
    path = tmp_path / "crop.nii.gz"
    write_nifti(Volume(np.full((4, 10, 12), 40, np.int16), (1.0, 10.0, 10.0)), path)  # 100 x 120 mm of soft tissue
    assert load_volume(path).warnings == []


def test_a_malformed_row_is_one_line_naming_the_csv(tmp_path):
    path = _ctrate_download(tmp_path, [_row("valid_7_a_1.nii.gz", XYSpacing="0.75")])
    with pytest.raises(StudyError) as err:
        load_volume(path)
    message = str(err.value)
    assert "\n" not in message
    assert "validation_metadata.csv" in message and "XYSpacing" in message and path.name in message


def test_a_csv_edited_after_a_read_is_read_again(tmp_path):
    path = _ctrate_download(tmp_path, [_row("valid_7_a_1.nii.gz")])
    assert find_volume_meta(path)[0].intercept == -1024.0
    _ctrate_download(tmp_path, [_row("valid_7_a_1.nii.gz", RescaleIntercept="-1000", ZSpacing="5")])
    meta, _ = find_volume_meta(path)
    assert (meta.intercept, meta.spacing[0]) == (-1000.0, 5.0)
