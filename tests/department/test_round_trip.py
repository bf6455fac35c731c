"""The department round trip on a real Orthanc: the sample studies stored into the PACS, found and retrieved
over DICOMweb and over DIMSE, indexed in the shared PostgreSQL + pgvector library, searched by a spoken report
from two processes (two workstations) at once, ranked, and the SR sent back and found in the PACS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom

from engine.cli import main
from tests.engine.tiny_bundle import tiny_bundle_path

from .conftest import write_pacs_settings

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "assets" / "samples"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_round_trip(orthanc, pg_url, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPEECHCT_BUNDLE", str(tiny_bundle_path()))
    monkeypatch.setenv("SPEECHCT_PACS_CONFIG", write_pacs_settings(tmp_path / "pacs.json", orthanc))
    names = ("study-001", "study-002", "study-003")
    uids = {}
    for name in names:
        files = sorted((SAMPLES / name / "dicom").glob("*.dcm"))
        orthanc.upload(files)
        uids[name] = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    # found over both protocols
    for server in ("web", "dimse"):
        code, out, err = run(capsys, "pacs", "find", "--modality", "CT", "--server", server, "--json")
        assert code == 0, err
        assert {s["study_uid"] for s in json.loads(out)["studies"]} == set(uids.values())

    # retrieved over DICOMweb (two studies) and DIMSE (one), straight into the department's PostgreSQL library
    lib = pg_url  # no password in it: PGPASSWORD (set by the fixture)
    code, out, err = run(capsys, "index", "add", f"pacs://web/{uids['study-001']}", f"pacs://web/{uids['study-002']}",
                         f"pacs://dimse/{uids['study-003']}", "--library", lib, "--json", "--threads", "1")
    assert code == 0, err
    assert len(json.loads(out)["added"]) == 3
    cache = tmp_path / "pacs-cache" / "studies"
    for name, uid in uids.items():  # every instance arrived intact
        sent = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f).PixelData
                for f in (SAMPLES / name / "dicom").glob("*.dcm")}
        got = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f).PixelData for f in (cache / uid).rglob("*.dcm")}
        assert got == sent, name

    # searched by a spoken report from two workstations (processes) at once: both get the PACS studies,
    # read from the cache, in the same order
    argv = [sys.executable, "-m", "engine.cli", "search", "--audio", str(SAMPLES / "study-001" / "dictation.wav"),
            "-k", "3", "--library", lib, "--json", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    answers = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "pg-test-password" not in out + err
        answers.append(json.loads(out))
    for answer in answers:
        assert answer["library"] == lib
        hits = answer["hits"]
        assert {h["study"]["study_uid"] for h in hits} == set(uids.values())
        assert all(h["study"]["path"].startswith(str(cache)) for h in hits)
    assert [h["study"]["uid"] for h in answers[0]["hits"]] == [h["study"]["uid"] for h in answers[1]["hits"]]

    # ranked with its dictation, the SR written and sent back over DIMSE, then found over DICOMweb
    sr = tmp_path / "study-002-findings.dcm"
    code, out, err = run(capsys, "rank", "--ct", f"pacs://web/{uids['study-002']}", "--audio",
                         SAMPLES / "study-002" / "dictation.wav", "--sr", sr, "--threads", "1")
    assert code == 0, err
    assert f"SR       {sr}" in out
    code, out, err = run(capsys, "pacs", "send", sr, "--server", "dimse")
    assert code == 0 and "1 file(s) stored on dimse" in out, err
    code, out, err = run(capsys, "pacs", "find", "--study", uids["study-002"], "--server", "web", "--json")
    series = json.loads(out)["series"]
    assert {s["modality"] for s in series} == {"CT", "SR"}
    sr_series = next(s for s in series if s["modality"] == "SR")
    assert sr_series["description"] == "SpeechCT AI findings (unverified)" and sr_series["n_instances"] == 1
    assert pydicom.dcmread(sr).SOPInstanceUID in orthanc.sop_uids(uids["study-002"])
