"""scripts/make_bundle.py: stage order, skipping finished stages, resume flags, the timing table."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("make_bundle", ROOT / "scripts" / "make_bundle.py")
mb = importlib.util.module_from_spec(spec)
sys.modules["make_bundle"] = mb  # dataclasses look their module up there
spec.loader.exec_module(mb)


def test_stages_in_order_and_resume_flags(tmp_path):
    a = mb.parse_args(["--data", str(tmp_path), "--threads", "1"])
    stages = mb.stages(a)
    assert [s.name for s in stages] == ["synth", "teacher", "audio-cache", "student", "student-naive", "evaluate",
                                        "export"]
    teacher = stages[1]
    assert "--resume" not in teacher.args() and not teacher.done()
    (tmp_path / "run" / "teacher").mkdir(parents=True)
    (tmp_path / "run" / "teacher" / "last.pt").write_bytes(b"x")
    assert "--resume" in teacher.args()  # decided when the stage starts, from what is on disk
    (tmp_path / "run" / "teacher" / "model.safetensors").write_bytes(b"x")
    assert teacher.done()
    naive = stages[4].args()
    assert naive[naive.index("--distill-weight") + 1] == "0"


def test_timing_table_sums_attempts(tmp_path):
    a = mb.parse_args(["--data", str(tmp_path)])
    rows = [{"stage": "teacher", "seconds": 600.0, "rc": -9}, {"stage": "teacher", "seconds": 1200.0, "rc": 0},
            {"stage": "synth", "seconds": 1800.0, "rc": 0}]
    (tmp_path / "pipeline_timings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = mb.timing_table(tmp_path, mb.stages(a))
    assert "| teacher | " in table and "| 30.0 min | 2 | yes |" in table
    assert "| student | " in table and "| 0.0 min | 0 | - |" in table
    assert "**1.00 h**" in table


def test_unknown_stop_after_is_one_line_error(tmp_path, capsys):
    assert mb.main(["--data", str(tmp_path), "--stop-after", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown stage 'nope'" in err[0]
