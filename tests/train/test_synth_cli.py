"""``speechct-train synth`` end to end (CT part; the audio half is H7's and tested there)."""

from __future__ import annotations

import json

from train.cli import build_parser, main


def test_synth_parser_registered():
    args = build_parser().parse_args(["synth", "--out", "x", "--n-train", "2", "--no-audio"])
    assert args.command == "synth" and args.no_audio and args.size == "default"


def test_synth_no_audio_small(tmp_path, capsys):
    rc = main(["synth", "--out", str(tmp_path), "--n-train", "2", "--n-valid", "1", "--seed", "3", "--size", "small",
               "--workers", "1", "--no-audio", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "CT-RATE layout" in out and "Lung nodule" in out
    summary = json.loads((tmp_path / "synth_summary.json").read_text())
    assert summary["ct_rate"]["patients"] == {"train": 2, "valid": 1}
    assert (tmp_path / "ct-rate" / "dataset" / "radiology_text_reports" / "validation_reports.csv").is_file()


def test_synth_bad_counts_is_one_line_error(tmp_path, capsys):
    rc = main(["synth", "--out", str(tmp_path), "--n-train", "0", "--n-valid", "0", "--no-audio"])
    assert rc == 2
    assert "n-train" in capsys.readouterr().err
