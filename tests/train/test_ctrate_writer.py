"""CT-RATE layout: exact paths and CSV columns, readable by engine.io with the metadata overrides,
resumable, and byte-identical for a seed."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

from engine.errors import SpeechCTWarning
from engine.io import load_volume
from engine.io.nifti import read_nifti
from engine.labels import LABELS
from train.synth.ctrate import plan_dataset, write_ctrate


def _tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctrate") / "ct-rate"
    write_ctrate(root, 3, 2, seed=5, size="small", workers=1, progress=False)
    return root


def test_layout_and_csvs(tree):
    ds = tree / "dataset"
    plans = plan_dataset(3, 2, 5)
    for p in plans:
        f = ds / p.split / f"{p.split}_{p.patient}" / f"{p.split}_{p.patient}_{p.scan}" / f"{p.name}.nii.gz"
        assert f.is_file()
    reports = _rows(ds / "radiology_text_reports" / "train_reports.csv")
    assert list(reports[0]) == ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN",
                                "Impressions_EN"]
    labels = _rows(ds / "multi_abnormality_labels" / "valid_predicted_labels.csv")
    assert list(labels[0]) == ["VolumeName", *LABELS]
    mentions = _rows(ds / "multi_abnormality_labels" / "train_mentions_chexpert.csv")
    assert {v for r in mentions for k, v in r.items() if k != "VolumeName"} <= {"1", "0", "-1", ""}
    assert not (ds / "multi_abnormality_labels" / "train_mentions.csv").exists()
    dictations = _rows(ds / "radiology_text_reports" / "train_dictations.csv")
    assert [r["VolumeName"] for r in dictations] == [r["VolumeName"] for r in reports]
    assert all(r["Dictation_EN"] for r in dictations)
    meta = _rows(ds / "metadata" / "validation_metadata.csv")
    assert meta[0]["XYSpacing"] == "[2.8, 2.8]" and meta[0]["PatientAge"].endswith("Y")
    assert len(_rows(ds / "metadata" / "train_metadata.csv")) == len([p for p in plans if p.split == "train"])
    # where each finding lies (train.footprints): one file per volume, naming exactly its findings
    from train.footprints import footprint_path, read_footprints

    for row in labels:
        present = [lab for lab in LABELS if row[lab] == "1"]
        assert list(read_footprints(footprint_path(tree, row["VolumeName"]))) == present


def test_v1_volume_reads_back_with_metadata_overrides(tree):
    ds = tree / "dataset"
    row = _rows(ds / "metadata" / "train_metadata.csv")[0]
    name = row["VolumeName"]
    pid = "_".join(name.split("_")[:2])
    sid = "_".join(name.split("_")[:3])
    path = ds / "train" / pid / sid / name
    xy = [float(v) for v in row["XYSpacing"].strip("[]").split(",")]
    vol = load_volume(path, slope=float(row["RescaleSlope"]), intercept=float(row["RescaleIntercept"]),
                      spacing=(float(row["ZSpacing"]), xy[1], xy[0]))
    assert vol.orientation_code() == "LPS"
    a = vol.array.astype(float)
    assert np.median(a) < -500 and -1100 < a.min() and a.max() > 500  # HU, not raw values
    found = load_volume(path)  # no overrides: the engine finds the row in dataset/metadata/ itself
    np.testing.assert_array_equal(found.array, vol.array)
    assert found.spacing == vol.spacing and found.metadata["rescale_source"].endswith("train_metadata.csv")
    with pytest.warns(SpeechCTWarning, match="look unrescaled"):
        raw = read_nifti(path, ctrate_metadata=False).array.astype(float)  # raw = HU + 1024
    assert np.allclose(raw - 1024, a)


def test_resume_skips_finished_and_bytes_are_reproducible(tree, tmp_path):
    before = _tree_hash(tree)
    write_ctrate(tree, 3, 2, seed=5, size="small", workers=1, progress=False)  # all records exist
    assert _tree_hash(tree) == before
    other = tmp_path / "again"
    write_ctrate(other, 3, 2, seed=5, size="small", workers=1, progress=False)
    assert _tree_hash(other) == before


def test_v2_fixed_folders_hold_hu(tmp_path):
    root = tmp_path / "v2"
    write_ctrate(root, 1, 0, seed=2, size="small", version=2, workers=1, progress=False)
    files = list((root / "dataset" / "train_fixed").rglob("*.nii.gz"))
    assert files
    vol = load_volume(files[0])
    assert np.median(vol.array) < -500


def test_planted_slips_leave_a_present_finding_out_of_the_dictation(tmp_path):
    from train.synth.ctrate import TEST_WORDING

    root = tmp_path / "ct-rate-test"
    write_ctrate(root, 0, 8, seed=3, size="small", workers=1, progress=False, wording=TEST_WORDING, plant_rate=1.0)
    ds = root / "dataset" / "multi_abnormality_labels"
    planted = {r["VolumeName"]: r["Planted"] for r in _rows(ds / "valid_planted.csv")}
    labels = {r["VolumeName"]: r for r in _rows(ds / "valid_predicted_labels.csv")}
    mentions = {r["VolumeName"]: r for r in _rows(ds / "valid_mentions_chexpert.csv")}
    with_findings = [v for v, r in labels.items() if any(r[lab] == "1" for lab in LABELS)]
    assert sorted(planted) == sorted(with_findings) and planted
    for volume, finding in planted.items():
        assert labels[volume][finding] == "1"  # the image has it ...
        assert mentions[volume][finding] in ("0", "")  # ... and the dictation negates it or says nothing
        others = [lab for lab in LABELS if labels[volume][lab] == "1" and lab != finding]
        assert all(mentions[volume][lab] in ("1", "-1") for lab in others)  # the rest is said
    # the main root plants nothing
    write_ctrate(tmp_path / "main", 2, 1, seed=3, size="small", workers=1, progress=False)
    assert not list((tmp_path / "main").rglob("*_planted.csv"))
