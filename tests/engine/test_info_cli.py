"""`speechct info`: text and JSON reports, series choice and reasons, no patient identifiers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

import engine.cli
import engine.commands.info as info_module
from engine.io.dicom_write import write_dicom_series
from engine.io.nifti import write_nifti
from engine.volume import Volume


def _volume(n_slices: int, lo: int = -1000) -> Volume:
    arr = (np.arange(n_slices * 6 * 5).reshape(n_slices, 6, 5) + lo).astype(np.int16)
    return Volume(arr, (2.0, 0.8, 0.7), origin=(-10.0, 20.0, 30.0))


@pytest.fixture
def study(tmp_path) -> Path:
    """A DICOM folder: a 5-slice chest series, a 3-slice series, a localizer and an MR series."""
    folder = tmp_path / "study"
    write_dicom_series(_volume(5), folder, series_number=2, series_description="Chest 2.0")
    write_dicom_series(_volume(3, lo=-500), folder, series_number=3, series_description="Thin part")
    write_dicom_series(
        _volume(1), folder, series_number=1, series_description="Scout",
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    write_dicom_series(_volume(4), folder, series_number=4, series_description="MR brain", modality="MR")
    return folder


def _info(capsys, *args: str) -> tuple[int, str, str]:
    code = engine.cli.main(["info", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _no_nan(value):
    raise ValueError(f"JSON holds {value}")


def test_text_report(study, capsys):
    code, out, err = _info(capsys, str(study))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"{study}: 4 series (dicom)"
    chosen = [line for line in lines if line.startswith("  * ")]
    assert len(chosen) == 1 and "'Chest 2.0'" in chosen[0]
    assert "CT  5 slices  shape 5x6x5  spacing 2x0.8x0.7 mm  LPS  HU -1000..-851" in chosen[0]
    assert sum(line.startswith("  - ") for line in lines) == 3
    assert "      localizer" in lines
    assert any("cannot load:" in line and "modality MR, not CT" in line for line in lines)
    [why] = [line for line in lines if line.startswith("chosen: ")]
    assert "the CT series with the most slices (5) of 2 candidate(s); skipped 1 non-CT and 1 localizer" in why
    assert "origin -10, 20, 30 mm (LPS)  LPS  HU -1000..-851" in out
    assert re.search(r"^warnings \(\d+\):$", out, re.M)
    assert "4 series found; loaded" in out


def test_json_report_follows_the_documented_schema(study, capsys):
    code, out, _ = _info(capsys, str(study), "--json")
    assert code == 0
    report = json.loads(out, parse_constant=_no_nan)
    assert set(report) == {"path", "format", "series", "chosen", "warnings"}
    assert report["path"] == str(study) and report["format"] == "dicom"
    series_keys = {
        "uid", "description", "modality", "image_type", "n_slices", "shape", "spacing", "orientation",
        "hu_min", "hu_max", "chosen", "warnings", "error",
    }
    for s in report["series"]:
        assert set(s) == series_keys
        assert isinstance(s["uid"], str) and isinstance(s["n_slices"], int)
        assert len(s["shape"]) == 3 and all(isinstance(n, int) for n in s["shape"])
        assert len(s["spacing"]) == 3 and all(isinstance(x, float) for x in s["spacing"])
        assert isinstance(s["warnings"], list)
    assert sum(s["chosen"] for s in report["series"]) == 1
    by_desc = {s["description"]: s for s in report["series"]}
    assert by_desc["Chest 2.0"]["chosen"] and by_desc["Chest 2.0"]["hu_min"] == -1000.0
    assert by_desc["Thin part"]["hu_min"] == -500.0 and by_desc["Thin part"]["hu_max"] == -500.0 + 89
    assert by_desc["MR brain"]["hu_min"] is None and "modality MR, not CT" in by_desc["MR brain"]["error"]
    assert "LOCALIZER" in by_desc["Scout"]["image_type"]
    chosen = report["chosen"]
    assert set(chosen) == {"uid", "reason", "shape", "spacing", "origin", "orientation", "oblique", "hu_min", "hu_max"}
    assert chosen["uid"] == by_desc["Chest 2.0"]["uid"]
    assert chosen["shape"] == [5, 6, 5] and chosen["orientation"] == "LPS" and chosen["oblique"] is False
    assert chosen["origin"] == [-10.0, 20.0, 30.0]
    assert all(isinstance(w, str) for w in report["warnings"])


def test_docstring_schema_names_every_field(study, capsys):
    _, out, _ = _info(capsys, str(study), "--json")
    report = json.loads(out)
    documented = set(re.findall(r'"(\w+)":', info_module.__doc__))
    produced = set(report) | set(report["chosen"]) | set().union(*(set(s) for s in report["series"]))
    assert produced == documented


def test_series_option_and_reason(study, capsys):
    _, out, _ = _info(capsys, str(study), "--json")
    thin = next(s for s in json.loads(out)["series"] if s["description"] == "Thin part")
    code, out, _ = _info(capsys, str(study), "--series", thin["uid"], "--json")
    assert code == 0
    report = json.loads(out)
    assert report["chosen"]["uid"] == thin["uid"]
    assert report["chosen"]["reason"] == "requested with --series"
    assert report["chosen"]["shape"] == [3, 6, 5]
    assert [s["description"] for s in report["series"] if s["chosen"]] == ["Thin part"]


def test_nifti_file(tmp_path, capsys):
    path = write_nifti(_volume(4), tmp_path / "train_1_a_1.nii.gz")
    code, out, _ = _info(capsys, str(path))
    assert code == 0
    assert out.splitlines()[0] == f"{path}: 1 series (nifti)"
    assert f"chosen: {path} (the only series)" in out
    # a crop this small gets the validation gate's field-of-view note, and nothing else
    assert out.splitlines()[-2:] == ["warnings (1):", f"  ! {path}: small field of view (5 x 3 mm); the findings "
                                     "are made for a whole chest (about 300-500 mm across)"]


def test_ctrate_v2_note_is_shown(tmp_path, capsys):
    path = write_nifti(_volume(2), tmp_path / "valid_fixed" / "valid_1_a_1.nii.gz")
    code, out, _ = _info(capsys, str(path))
    assert code == 0
    assert "CT-RATE v2 ('_fixed'): data already in HU" in out


def test_patient_identifiers_never_printed(tmp_path, capsys):
    files = write_dicom_series(_volume(3), tmp_path / "named", series_description="Chest")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "PID-4711"
        ds.PatientBirthDate = "19700101"
        ds.OtherPatientIDs = "OTHER-99"
        ds.save_as(f)
    for extra in ([], ["--json"]):
        code, out, err = _info(capsys, str(tmp_path / "named"), *extra)
        assert code == 0
        for secret in ("Doe", "Jane", "PID-4711", "19700101", "OTHER-99"):
            assert secret not in out and secret not in err


def test_real_subprocess_prints_exactly_one_json_object(tmp_path):
    path = write_nifti(_volume(3), tmp_path / "one.nii.gz")
    exe = Path(sys.executable).with_name("speechct")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "engine.cli"]
    proc = subprocess.run([*command, "info", str(path), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)  # the whole of stdout is one object
    assert report["chosen"]["uid"] == str(path)
    assert report["format"] == "nifti"


def test_hu_ranges_are_capped_for_big_trees(tmp_path, capsys, monkeypatch):
    for n in range(4):
        write_nifti(_volume(n + 1), tmp_path / f"v{n}.nii.gz")
    monkeypatch.setattr(info_module, "MAX_LOADED_SERIES", 1)
    code, out, _ = _info(capsys, str(tmp_path), "--json")
    assert code == 0
    report = json.loads(out)
    with_hu = [s["description"] for s in report["series"] if s["hu_min"] is not None]
    assert with_hu == ["v0", "v3"]  # the first other one, and the chosen (largest) one
    assert any("HU ranges not computed for 2 of 4 series" in w for w in report["warnings"])
