"""``speechct rank --sr``: the findings as a DICOM SR (TID 1500), re-read with highdicom/pydicom, parsed by
dcmtk's dsrdump, and sent to Orthanc with ``speechct pacs send`` (STOW-RS and C-STORE)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import highdicom as hd
import pydicom
import pytest

from engine.cli import main
from engine.io import write_nifti
from engine.labels import LABELS
from engine.report_sr import SCHEME
from tests.engine.library_fakes import make_volume
from tests.engine.tiny_bundle import tiny_bundle_path

from .conftest import write_pacs_settings
from .studies import PATIENT_ID, PATIENT_NAME, SHAPE, write_study

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
WAV = ROOT / "assets" / "samples" / "study-002" / "dictation.wav"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _tiny(monkeypatch):
    monkeypatch.setenv("SPEECHCT_BUNDLE", str(tiny_bundle_path()))


@pytest.fixture
def ranked(tmp_path, capsys):
    """A study with patient identifiers, ranked with a dictation, its SR written."""
    study = write_study(tmp_path / "study", 3)
    out_sr = tmp_path / "out" / "findings.dcm"
    code, out, err = run(capsys, "rank", "--ct", study["folder"], "--audio", WAV, "--json", "--sr", out_sr,
                         "--sr-dictation", "--threads", "1")
    assert code == 0, err
    return study, json.loads(out), out_sr


def test_the_sr_holds_the_findings_unverified_and_references_the_source(ranked):
    study, result, path = ranked
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert (ds.VerificationFlag, ds.CompletionFlag, ds.PreliminaryFlag) == ("UNVERIFIED", "COMPLETE", "PRELIMINARY")
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert ds.Modality == "SR" and "unverified" in ds.SeriesDescription and ds.Manufacturer == "SpeechCT"
    # identifiers come from the source header (copied in memory for the SR)
    assert (str(ds.PatientName), ds.PatientID, ds.StudyInstanceUID) == (PATIENT_NAME, PATIENT_ID, study["study_uid"])
    assert ds.SeriesInstanceUID not in study["series"]
    # the source series, every instance of it, is referenced as evidence
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == study["study_uid"]
    series = evidence.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == study["series"][0]
    referenced = {i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence}
    assert referenced == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in study["files"]}

    report = hd.sr.MeasurementReport.from_sequence([hd.sr.srread(path)])
    findings, check = report.get_image_measurement_groups()
    assert findings.tracking_identifier == "SpeechCT findings" and check.tracking_identifier == "SpeechCT dictation check"
    probs = {m.name.meaning.removeprefix("Probability of "): m.value for m in findings.get_measurements()}
    assert probs == pytest.approx({f["label"]: f["probability"] for f in result["findings"]}, abs=1e-6)
    assert all(m.name.scheme_designator == SCHEME for m in findings.get_measurements())
    calls = {q.name.meaning: q.value.meaning for q in findings.get_qualitative_evaluations()}
    assert set(calls) == set(LABELS) - set(result["unchecked"]) == set(LABELS) - {"Hiatal hernia"}
    assert calls == {f["label"]: "Present" if f["positive"] else "Absent" for f in result["findings"]
                     if f["label"] in calls}
    kinds = {q.name.meaning: q.value.meaning for q in check.get_qualitative_evaluations()}
    assert kinds == {d["label"]: f"dictation check: {d['kind']}" for d in result["discrepancies"]}
    # the algorithm is named on the group and on every measurement, with its threshold
    text = str(ds)
    assert text.count("Algorithm Name") >= 19 and "threshold 0.700" in text  # Cardiomegaly's tiny-bundle threshold


def test_dsrdump_parses_it(ranked):
    if shutil.which("dsrdump") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and no dsrdump (Debian: apt-get install dcmtk; scripts/system-deps.sh)")
        pytest.skip("dcmtk's dsrdump is not installed")
    _, _, path = ranked
    proc = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # dcmtk 3.6.7's VR checker cannot check UTF-8 (the source's ISO_IR 192, copied): its only remark allowed
    remarks = [line for line in proc.stderr.splitlines()
               if line.strip() and "VR checker does not support this Specific Character Set" not in line]
    assert remarks == [], proc.stderr
    assert "Verification Flag   : UNVERIFIED" in proc.stdout
    assert '"Imaging Measurement Report"' in proc.stdout and '"Probability of Cardiomegaly"' in proc.stdout


def test_identifiers_are_never_stored_by_us(ranked, tmp_path, capsys):
    study, _, _ = ranked
    lib = tmp_path / "lib"
    code, _, err = run(capsys, "index", "add", study["folder"], "--library", lib, "--threads", "1")
    assert code == 0, err
    for f in lib.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert b"Doe" not in data and PATIENT_ID.encode() not in data, f


def test_sr_needs_a_dicom_study(tmp_path, capsys):
    nii = tmp_path / "ct.nii.gz"
    write_nifti(make_volume(1, SHAPE), nii)
    code, _, err = run(capsys, "rank", "--ct", nii, "--sr", tmp_path / "x.dcm", "--threads", "1")
    assert code == 2 and err.count("\n") == 1 and "an SR references the source DICOM series" in err
    assert not (tmp_path / "x.dcm").exists()
    code, _, err = run(capsys, "rank", "--ct", nii, "--sr-dictation")
    assert code == 2 and "--sr-dictation goes with --sr and --audio" in err


@pytest.mark.parametrize("server", ["web", "dimse"])
def test_pacs_send_stores_the_sr(orthanc, ranked, tmp_path, capsys, server):
    study, _, path = ranked
    orthanc.upload(study["files"])
    settings = write_pacs_settings(tmp_path / "pacs.json", orthanc)
    code, out, err = run(capsys, "pacs", "send", path, "--server", server, "--settings", settings, "--json")
    assert code == 0, err
    sop = pydicom.dcmread(path).SOPInstanceUID
    assert json.loads(out)["sent"][0]["sop_instance_uid"] == sop
    assert sop in orthanc.sop_uids(study["study_uid"])
    # found again through the PACS: the study now has an SR series
    code, out, _ = run(capsys, "pacs", "find", "--study", study["study_uid"], "--server", server, "--settings",
                       settings, "--json")
    assert {s["modality"] for s in json.loads(out)["series"]} == {"CT", "SR"}


def test_pacs_send_bad_files(tmp_path, capsys):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    code, _, err = run(capsys, "pacs", "send", junk, "--url", "http://127.0.0.1:9/dicom-web")
    assert code == 2 and err.count("\n") == 1 and "junk.dcm" in err and "not a DICOM file" in err
    code, _, err = run(capsys, "pacs", "send", tmp_path / "missing.dcm", "--url", "http://127.0.0.1:9/dicom-web")
    assert code == 2 and "does not exist" in err
