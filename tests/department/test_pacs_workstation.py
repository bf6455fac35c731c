"""The app's PACS calls without Qt (:mod:`engine.pacs.workstation`, :func:`engine.report_sr.send_result`):
the server list (default first, unusable entries with their reason, no secret), and what is refused before
any PACS is asked. The calls against a real Orthanc are in tests/desktop/test_pacs_tab.py."""

from __future__ import annotations

import json
import os
import threading

import pytest

from engine.errors import StudyError
from engine.pacs.errors import PacsError
from engine.pacs.workstation import retrieve, server_choices
from engine.report_sr import send_result


def write(path, raw: dict) -> str:
    path.write_text(json.dumps(raw))
    os.chmod(path, 0o600)
    return str(path)


def test_server_choices_default_first_unusable_ones_said_no_secret(tmp_path):
    settings = write(tmp_path / "pacs.json", {"default": "b", "servers": {
        "a": {"dicomweb": "https://pacs.example.org/dicom-web", "username": "reader", "password": "s3cret-pw"},
        "b": {"dimse": "PACS@pacs.example.org:104"},
        "c": {"dicomweb": "https://other.example.org/dicom-web", "auth": "basic", "username": "reader"}}})
    choices, warns = server_choices(settings)
    assert [c.name for c in choices] == ["b", "a", "c"] and warns == []
    assert [c.label for c in choices] == ["b (PACS@pacs.example.org:104)", "a (https://pacs.example.org/dicom-web)",
                                          "c (unusable)"]
    assert choices[0].problem is None and "basic auth needs a username and a password" in choices[2].problem
    assert "s3cret-pw" not in repr(choices)


def test_server_choices_of_no_file_and_of_a_broken_file(tmp_path):
    assert server_choices(tmp_path / "none.json") == ([], [])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PacsError, match="bad.json: the PACS settings are not valid JSON"):
        server_choices(tmp_path / "bad.json")


def test_a_cancelled_retrieval_asks_no_pacs(tmp_path):
    settings = write(tmp_path / "pacs.json", {"servers": {"down": {"dicomweb": "http://127.0.0.1:9/dicom-web"}}})
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(PacsError, match="retrieval cancelled"):
        retrieve("down", "1.2.3", cancel=cancel, settings=settings, cache=None)


def test_send_result_refuses_a_wrong_server_and_a_study_that_is_not_dicom(tmp_path):
    settings = write(tmp_path / "pacs.json", {"servers": {"down": {"dicomweb": "http://127.0.0.1:9/dicom-web"}}})
    result = {"study": {"format": "nifti", "path": str(tmp_path / "ct.nii.gz")}, "findings": []}
    with pytest.raises(PacsError, match="no server named 'nowhere'"):
        send_result(result, "nowhere", settings=settings)
    with pytest.raises(StudyError, match="ct.nii.gz: an SR references the source DICOM series: this study is nifti"):
        send_result(result, "down", settings=settings)  # said before any connection
