"""``speechct pacs find / get`` and ``index add pacs://`` against a real Orthanc, over DICOMweb and DIMSE."""

from __future__ import annotations

import json

import pytest

from engine.cli import main
from engine.io import list_series
from engine.pacs.cache import StudyCache
from engine.pacs.client import connect
from engine.pacs.retrieve import get_study
from engine.pacs.settings import resolve_server
from tests.engine.tiny_bundle import tiny_bundle_path

from .conftest import write_pacs_settings
from .orthanc import free_port
from .studies import PATIENT_ID, PATIENT_NAME, write_study


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def stocked(orthanc, tmp_path):
    """Orthanc holding two CT studies (one of two series) + a settings file naming it."""
    a = write_study(tmp_path / "a", 1, date="20240301", study_description="CT CHEST WITH CONTRAST")
    b = write_study(tmp_path / "b", 2, date="20240615", study_description="CT THORAX LOW DOSE", n_series=2)
    orthanc.upload(a["files"] + b["files"])
    settings = write_pacs_settings(tmp_path / "pacs.json", orthanc)
    return orthanc, settings, a, b


@pytest.mark.parametrize("server", ["web", "dimse"])
def test_find_and_get(stocked, capsys, tmp_path, server):
    orthanc, settings, a, b = stocked
    base = ["--server", server, "--settings", settings]
    code, out, err = run(capsys, "pacs", "find", "--modality", "CT", "--json", *base)
    assert code == 0, err
    found = {s["study_uid"]: s for s in json.loads(out)["studies"]}
    assert set(found) == {a["study_uid"], b["study_uid"]}
    assert found[b["study_uid"]]["n_series"] == 2 and found[b["study_uid"]]["n_instances"] == len(b["files"])
    assert found[a["study_uid"]]["date"] == "20240301" and found[a["study_uid"]]["modalities"] == ["CT"]
    assert PATIENT_NAME.split("^")[0] not in out and PATIENT_ID not in out  # never printed
    for flags, expected in ((["--date", "20240601-"], {b["study_uid"]}), (["--description", "CONTRAST"], {a["study_uid"]}),
                            (["--patient-id", PATIENT_ID, "--date", "-20240401"], {a["study_uid"]})):
        code, out, err = run(capsys, "pacs", "find", *flags, "--json", *base)
        assert code == 0, err
        assert {s["study_uid"] for s in json.loads(out)["studies"]} == expected, flags
    code, out, _ = run(capsys, "pacs", "find", "--study", b["study_uid"], *base)
    assert code == 0 and all(uid in out for uid in b["series"]) and "1 study on" in out

    cache = tmp_path / "cache"
    code, out, err = run(capsys, "pacs", "get", b["study_uid"], "--json", "--cache", cache, *base)
    assert code == 0, err
    got = json.loads(out)
    assert not got["cached"] and got["fetched"] == len(b["files"]) and sorted(got["series"]) == sorted(b["series"])
    assert len(list_series(got["folder"])) == 2  # the normal reader takes it from here
    record = (cache / "studies" / b["study_uid"] / ".study.json").read_text()
    assert PATIENT_ID not in record and "Doe" not in record  # the cache's own record holds no identifiers
    code, out, _ = run(capsys, "pacs", "get", b["study_uid"], "--json", "--cache", cache, *base)
    assert json.loads(out)["cached"] and json.loads(out)["fetched"] == 0
    # one series only, then the whole study: only the other series is fetched
    code, out, err = run(capsys, "pacs", "get", a["study_uid"], "--series", a["series"][0], "--json", "--cache",
                         tmp_path / "c2", *base)
    assert code == 0 and json.loads(out)["folder"].endswith(a["series"][0]), err
    code, out, _ = run(capsys, "pacs", "get", b["study_uid"], "--series", b["series"][1], "--json", "--cache",
                       tmp_path / "c3", *base)
    code, out, _ = run(capsys, "pacs", "get", b["study_uid"], "--json", "--cache", tmp_path / "c3", *base)
    again = json.loads(out)
    assert again["fetched"] == len(b["files"]) // 2 and again["resumed"] == len(b["files"]) // 2
    # text output, as a person reads it
    code, out, _ = run(capsys, "pacs", "cache", "--cache", cache)
    assert code == 0 and b["study_uid"] in out and "1 study," in out


def test_c_move_with_our_own_receiver(stocked, tmp_path):
    orthanc, settings, a, _ = stocked
    port = free_port()
    orthanc.add_modality("speechct", "SPEECHCT", port)
    server = resolve_server(aet=orthanc.dimse_address, retrieve="move", move_port=port, timeout=20)
    cache = StudyCache(tmp_path / "cache", 10**9)
    result = get_study(connect(server), a["study_uid"], cache)
    assert result.fetched == len(a["files"]) and cache.get(a["study_uid"]).n_instances == len(a["files"])


def test_index_add_and_rank_from_pacs_uri(stocked, capsys, tmp_path, monkeypatch):
    orthanc, settings, a, b = stocked
    monkeypatch.setenv("SPEECHCT_PACS_CONFIG", settings)
    monkeypatch.setenv("SPEECHCT_BUNDLE", str(tiny_bundle_path()))
    lib = tmp_path / "lib"
    code, out, err = run(capsys, "index", "add", f"pacs://web/{a['study_uid']}", f"pacs://dimse/{b['study_uid']}",
                         "--library", lib, "--json", "--threads", "1")
    assert code == 0, err
    assert len(json.loads(out)["added"]) == 3  # a: 1 series, b: 2 series
    code, out, err = run(capsys, "index", "list", "--library", lib, "--json")
    studies = json.loads(out)["studies"]
    assert {s["study_uid"] for s in studies} == {a["study_uid"], b["study_uid"]}
    assert all("/studies/" in s["path"] for s in studies)  # read from the cache, never from .partial
    code, out, err = run(capsys, "rank", "--ct", f"pacs://web/{a['study_uid']}/{a['series'][0]}", "--json",
                         "--threads", "1")
    assert code == 0, err
    assert json.loads(out)["study"]["series_uid"] == a["series"][0]


def test_two_processes_get_the_same_study_once(stocked, tmp_path):
    """Two workstations' processes ask for one study at once: one fetches it, the other waits and finds it cached."""
    import os
    import subprocess
    import sys

    orthanc, settings, _, b = stocked
    env = {**os.environ, "SPEECHCT_PACS_CONFIG": settings, "SPEECHCT_PACS_CACHE": str(tmp_path / "shared-cache")}
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-m", "engine.cli", "pacs", "get", b["study_uid"], "--server", server,
                               "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root, env=env)
             for server in ("web", "dimse")]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sorted(r["fetched"] for r in results) == [0, len(b["files"])]
    assert sorted(r["cached"] for r in results) == [False, True]
    assert len(StudyCache(tmp_path / "shared-cache", 10**9).list()) == 1
