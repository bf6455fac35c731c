"""``speechct rank | index | search | selftest`` on the tiny bundle and the bundled samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.labels import LABELS

from .tiny_bundle import tiny_bundle_path

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "assets" / "samples"
STUDY = SAMPLES / "study-001" / "dicom"
WAV = SAMPLES / "study-002" / "dictation.wav"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHCT_EMBEDDING_CACHE", str(tmp_path / "emb"))
    monkeypatch.setenv("SPEECHCT_BUNDLE", str(tiny_bundle_path()))


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_rank_json_schema_and_order(capsys):
    code, out, err = run(capsys, "rank", "--ct", STUDY, "--audio", WAV, "--json", "--threads", "1")
    assert code == 0, err
    r = json.loads(out)
    assert list(r) == ["schema", "inputs", "bundle", "device", "study", "findings", "dictation", "discrepancies",
                       "unchecked", "similar", "timings_ms", "cached"]
    assert r["inputs"] == {"ct": str(STUDY), "series": None, "audio": str(WAV)}
    assert r["bundle"]["name"] == "tiny-test" and r["study"]["format"] == "dicom"
    probs = [f["probability"] for f in r["findings"]]
    assert probs == sorted(probs, reverse=True)
    assert sorted(f["label"] for f in r["findings"]) == sorted(LABELS)
    for f in r["findings"]:
        assert f["positive"] == (f["probability"] > f["threshold"])
    assert [d["label"] for d in r["dictation"]] == list(LABELS)
    # discrepancies are exactly the disagreements between the two lists above
    said = {d["label"]: d["status"] for d in r["dictation"]}
    expected = {f["label"] for f in r["findings"] if (f["positive"] and said[f["label"]] != "present")
                or (not f["positive"] and said[f["label"]] == "present")} - set(r["unchecked"])
    assert r["unchecked"] == ["Hiatal hernia"]  # the tiny bundle's validation AUROC 0.6 < 0.75
    assert {d["label"] for d in r["discrepancies"]} == expected
    kinds = ["negated", "omitted", "unsupported"]
    assert [kinds.index(d["kind"]) for d in r["discrepancies"]] == sorted(kinds.index(d["kind"])
                                                                          for d in r["discrepancies"])
    assert r["timings_ms"]["encode_ct"] > 0 and r["timings_ms"]["encode_speech"] > 0
    assert r["similar"] is None


def test_rank_text_output(capsys):
    code, out, _ = run(capsys, "rank", "--ct", STUDY, "--threads", "1")
    assert code == 0
    assert "Findings (P(present)" in out and "Timings" in out and "Discrepancies" not in out
    assert sum(label in out for label in LABELS) == len(LABELS)
    # without a dictation too, the finding the tiny bundle is weak on (AUROC 0.6 < 0.75) says so, and only it
    weak = [line for line in out.splitlines() if line.endswith("  weak")]
    assert len(weak) == 1 and "Hiatal hernia" in weak[0] and "AUROC 0.60" in weak[0]
    assert "weak = the image model's validation AUROC is too low" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["rank", "--ct", "/nonexistent/ct"], "does not exist"),
    (["rank", "--ct", str(STUDY), "--audio", "/nonexistent.wav"], "audio file not found"),
    (["rank", "--ct", str(STUDY), "--bundle", "/nonexistent/bundle"], "bundle folder does not exist"),
    (["search", "-k", "3"], "needs a query"),
    (["index", "remove", "no-such-uid"], "no study"),
])
def test_errors_are_one_line_exit_2(capsys, tmp_path, argv, message):
    argv = argv + (["--library", str(tmp_path / "lib")] if argv[0] in ("search", "index") else [])
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("speechct: error:") and err.count("\n") == 1 and message in err


def test_rank_bad_audio_file_is_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    code, _, err = run(capsys, "rank", "--ct", STUDY, "--audio", bad)
    assert code == 2 and "bad.wav" in err and err.count("\n") == 1


def test_index_add_search_remove_and_persistence(capsys, tmp_path):
    lib = tmp_path / "lib"
    code, out, err = run(capsys, "index", "add", SAMPLES, "--library", lib, "--json", "--threads", "1")
    assert code == 0, err
    added = json.loads(out)
    assert len(added["added"]) == 3 and added["failed"] == []
    # again: nothing new, everything already there
    code, out, _ = run(capsys, "index", "add", SAMPLES / "study-002" / "dicom", "--library", lib, "--json")
    assert json.loads(out)["added"] == [] and len(json.loads(out)["already"]) == 1
    # a dictation can be attached to one study
    code, out, err = run(capsys, "index", "add", SAMPLES / "study-003" / "dicom", "--dictation",
                         SAMPLES / "study-003" / "dictation.wav", "--library", lib, "--json")
    assert code == 0, err
    code, out, _ = run(capsys, "index", "list", "--library", lib, "--json")
    listed = json.loads(out)
    assert len(listed["studies"]) == 3 and not listed["needs_rebuild"]
    assert sum(s["has_dictation"] for s in listed["studies"]) == 1

    code, out, err = run(capsys, "search", "--ct", STUDY, "-k", "5", "--library", lib, "--json")
    assert code == 0, err
    hits = json.loads(out)["hits"]
    query_uid = next(s["uid"] for s in listed["studies"] if s["path"] == str(STUDY.resolve()))
    assert len(hits) == 2 and query_uid not in {h["uid"] for h in hits}  # never the query itself
    assert hits[0]["score"] >= hits[1]["score"]
    assert set(hits[0]) == {"uid", "score", "cosines", "study"}

    code, out, err = run(capsys, "search", "--audio", WAV, "--text", "pleural effusion", "-k", "3",
                         "--library", lib, "--json")
    assert code == 0, err
    combined = json.loads(out)["hits"]
    assert len(combined) == 3 and set(combined[0]["cosines"]) == {"speech→ct", "text→ct"}

    code, out, _ = run(capsys, "index", "remove", query_uid, "--library", lib)
    assert code == 0 and "removed" in out
    # another process sees the removal (the library persists on disk)
    env = {**os.environ, "SPEECHCT_BUNDLE": str(tiny_bundle_path())}
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "index", "list", "--library", str(lib), "--json"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    uids = {s["uid"] for s in json.loads(proc.stdout)["studies"]}
    assert len(uids) == 2 and query_uid not in uids


def test_rank_with_similar_excludes_the_query(capsys, tmp_path):
    lib = tmp_path / "lib"
    assert run(capsys, "index", "add", SAMPLES, "--library", lib, "--json")[0] == 0
    code, out, err = run(capsys, "rank", "--ct", STUDY, "--similar", "5", "--library", lib, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert len(r["similar"]) == 2 and r["study"]["uid"] not in {h["uid"] for h in r["similar"]}


def test_selftest_passes_on_the_bundle(capsys):
    code, out, err = run(capsys, "selftest", "--json", "--threads", "1")
    report = json.loads(out)
    assert code == 0, (out, err)
    assert report["ok"] and report["device"] == "cpu"
    assert [c["name"] for c in report["checks"]] == ["bundle", "models", "ct", "rank", "sr", "speech", "dictation",
                                                    "text", "department"]


def test_selftest_fails_with_exit_1(capsys, tmp_path):
    bundle = tmp_path / "broken"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{not json")
    code, out, _ = run(capsys, "selftest", "--bundle", bundle)
    assert code == 1 and "FAIL  bundle" in out and "not valid JSON" in out and "selftest FAILED" in out
