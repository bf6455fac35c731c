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
    assert [s.name for s in stages] == ["synth", "teacher", "text-reader", "audio-cache", "student", "student-naive",
                                        "evaluate", "evaluate-test", "export"]
    assert "--n-test" in stages[0].args() and stages[7].args()[stages[7].args().index("--split") + 1] == "test"
    assert stages[2].args()[0] == "text-reader" and not stages[2].done()
    teacher = stages[1]
    assert "--resume" not in teacher.args() and not teacher.done()
    (tmp_path / "run" / "teacher").mkdir(parents=True)
    (tmp_path / "run" / "teacher" / "last.pt").write_bytes(b"x")
    assert "--resume" in teacher.args()  # decided when the stage starts, from what is on disk
    (tmp_path / "run" / "teacher" / "model.safetensors").write_bytes(b"x")
    assert teacher.done()
    naive = stages[5].args()
    assert naive[naive.index("--distill-weight") + 1] == "0"
    assert "--float16" in stages[8].args()  # the float32 weights would exceed the 60 MiB cap


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


class _FakeTrainCli:
    """Stands in for ``subprocess.Popen`` of ``train.cli``: records each call and finishes its stage."""

    def __init__(self, data):
        self.data, self.calls, self.live, self.most_live = data, [], 0, 0

    def __call__(self, cmd, **kw):
        args = cmd[cmd.index("train.cli") + 1:]
        self.calls.append(args)
        self.live += 1
        self.most_live = max(self.most_live, self.live)
        fake = self

        class Proc:
            def wait(self):
                fake.live -= 1
                naive = "--distill-weight" in args
                folder = fake.data / "run" / ("dictation-naive" if naive else "dictation")
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "head.safetensors").write_bytes(b"x")
                return 0

        return Proc()


def _finished_up_to_students(data):
    (data / "synth_summary.json").write_text("{}")
    (data / "run" / "teacher").mkdir(parents=True)
    (data / "run" / "teacher" / "model.safetensors").write_bytes(b"x")
    (data / "run" / "text_reader").mkdir(parents=True)
    (data / "run" / "text_reader" / "head.safetensors").write_bytes(b"x")
    (data / "cache").mkdir()
    (data / "cache" / "pipeline-audio-cache.done").touch()


def test_students_train_side_by_side_with_the_threads_split(tmp_path, monkeypatch):
    _finished_up_to_students(tmp_path)
    fake = _FakeTrainCli(tmp_path)
    monkeypatch.setattr(mb.subprocess, "Popen", fake)
    assert mb.main(["--data", str(tmp_path), "--threads", "2", "--stop-after", "student-naive"]) == 0
    assert fake.most_live == 2 and [c[0] for c in fake.calls] == ["student", "student"]
    assert all(c[c.index("--threads") + 1] == "1" for c in fake.calls)
    assert sum("--distill-weight" in c for c in fake.calls) == 1
    rows = [json.loads(line) for line in (tmp_path / "pipeline_timings.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {"student", "student-naive"} and all("side by side" in r["note"] for r in rows)


def test_one_student_at_a_time_and_a_lone_student_keep_all_threads(tmp_path, monkeypatch):
    _finished_up_to_students(tmp_path)
    fake = _FakeTrainCli(tmp_path)
    monkeypatch.setattr(mb.subprocess, "Popen", fake)
    argv = ["--data", str(tmp_path), "--threads", "2", "--stop-after", "student-naive"]
    assert mb.main([*argv, "--one-student-at-a-time"]) == 0
    assert fake.most_live == 1 and all(c[c.index("--threads") + 1] == "2" for c in fake.calls)
    (tmp_path / "run" / "dictation-naive" / "head.safetensors").unlink()  # only the naive one left to do
    fake.calls.clear()
    assert mb.main(argv) == 0
    assert len(fake.calls) == 1 and fake.calls[0][fake.calls[0].index("--threads") + 1] == "2"


def test_timing_total_counts_side_by_side_attempts_once(tmp_path):
    a = mb.parse_args(["--data", str(tmp_path)])
    rows = [{"stage": "teacher", "seconds": 600.0, "rc": 0, "finished": "2026-11-30 03:00:00"},
            {"stage": "student", "seconds": 3000.0, "rc": 0, "finished": "2026-11-30 04:00:00"},
            {"stage": "student-naive", "seconds": 2400.0, "rc": 0, "finished": "2026-11-30 03:50:00"}]
    (tmp_path / "pipeline_timings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = mb.timing_table(tmp_path, mb.stages(a))
    assert "| student | " in table and "| 50.0 min | 1 | yes |" in table  # each stage keeps its own time
    assert "**1.00 h**" in table  # 10 min teacher + 50 min of students running together, not 1.67 h


def _fake_data(data, report="No effusion."):
    import gzip

    ds = data / "ct-rate" / "dataset"
    (ds / "train").mkdir(parents=True, exist_ok=True)
    (ds / "train_reports.csv").write_text(f"VolumeName,Findings_EN\ntrain_1_a_1.nii.gz,{report}\n")
    (ds / "train" / "train_1_a_1.nii.gz").write_bytes(gzip.compress(b"voxels", mtime=0))


def test_a_stored_stage_is_restored_only_on_the_same_data_and_config(tmp_path, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.setattr(mb.stage_store, "STORE", store)
    first, again = tmp_path / "first", tmp_path / "again"
    _fake_data(first)
    teacher = first / "run" / "teacher"
    teacher.mkdir(parents=True)
    (teacher / "model.safetensors").write_bytes(b"weights")
    (teacher / "model.json").write_text("{}")
    (teacher / "last.pt").write_bytes(b"not kept")
    (first / "pipeline_timings.jsonl").write_text(json.dumps({"stage": "teacher", "seconds": 3600.0, "rc": 0}) + "\n")
    assert mb.main(["--data", str(first), "--store-stage", "teacher"]) == 0
    assert sorted(str(p.relative_to(store / "teacher")) for p in (store / "teacher").rglob("*") if p.is_file()) == \
        ["stage.json", "teacher/model.json", "teacher/model.safetensors"]

    # the same data remade in a fresh checkout (another gzip time stamp): restored, with the stored time
    import gzip

    _fake_data(again)
    (again / "ct-rate" / "dataset" / "train" / "train_1_a_1.nii.gz").write_bytes(gzip.compress(b"voxels", mtime=99))
    (again / "synth_summary.json").write_text("{}")
    fake = _FakeTrainCli(again)
    monkeypatch.setattr(mb.subprocess, "Popen", fake)
    assert mb.main(["--data", str(again), "--stop-after", "teacher"]) == 0
    assert (again / "run" / "teacher" / "model.safetensors").read_bytes() == b"weights" and fake.calls == []
    rows = [json.loads(line) for line in (again / "pipeline_timings.jsonl").read_text().splitlines()]
    assert rows[0]["seconds"] == 3600.0 and "restored" in rows[0]["note"]

    other = tmp_path / "other"
    _fake_data(other, report="Small effusion.")
    ok, why = mb.stage_store.restore("teacher", other, other / "run", mb.load_config("cpu-default"))
    assert not ok and "other data" in why
    ok, why = mb.stage_store.restore("teacher", again, tmp_path / "x", mb.load_config("smoke"))
    assert not ok and "another config" in why
    assert mb.main(["--data", str(other), "--store-stage", "teacher"]) == 2  # not finished there


def test_a_student_setting_or_the_description_does_not_change_the_teachers_config_fingerprint():
    cfg = mb.load_config("cpu-default")
    fp = mb.stage_store.config_fingerprint(cfg, "teacher")
    changed = {**cfg, "description": "new words", "student": {**cfg["student"], "lr": 1.0}}
    assert mb.stage_store.config_fingerprint(changed, "teacher") == fp
    assert mb.stage_store.config_fingerprint({**cfg, "teacher": {**cfg["teacher"], "lr": 1.0}}, "teacher") != fp


def test_a_stored_student_is_restored_only_beside_its_own_teacher(tmp_path, monkeypatch):
    monkeypatch.setattr(mb.stage_store, "STORE", tmp_path / "store")
    data = tmp_path / "d"
    _fake_data(data)
    run = data / "run"
    for folder, files in {"teacher": ("model.safetensors",), "student": ("model.safetensors", "model.json"),
                          "dictation": ("head.safetensors", "head.json")}.items():
        (run / folder).mkdir(parents=True, exist_ok=True)
        for f in files:
            (run / folder / f).write_text("{}")
    (run / "teacher" / "model.json").write_text(json.dumps({"weights_sha256": "aaa"}))
    cfg = mb.load_config("cpu-default")
    mb.stage_store.store("student", data, run, cfg, [])
    fresh = tmp_path / "fresh"
    (fresh / "teacher").mkdir(parents=True)
    ok, why = mb.stage_store.restore("student", data, fresh, cfg)
    assert not ok and "other models" in why  # no teacher yet
    (fresh / "teacher" / "model.safetensors").write_text("another teacher")
    ok, why = mb.stage_store.restore("student", data, fresh, cfg)
    assert not ok and "other models" in why
    (fresh / "teacher" / "model.safetensors").write_text("{}")
    ok, _ = mb.stage_store.restore("student", data, fresh, cfg)
    assert ok and (fresh / "dictation" / "head.safetensors").is_file() and (fresh / "student" / "model.json").is_file()


def test_with_every_training_stage_kept_a_fresh_checkout_runs_none_of_them(tmp_path, monkeypatch):
    """Teacher, transcript reader and both students restored: not even the audio cache runs (only the
    students read it)."""
    monkeypatch.setattr(mb.stage_store, "STORE", tmp_path / "store")
    first, fresh = tmp_path / "first", tmp_path / "fresh"
    for data in (first, fresh):
        _fake_data(data)
        (data / "synth_summary.json").write_text("{}")
    run = first / "run"
    for folders in mb.stage_store.KEPT.values():
        for folder, files in folders.items():
            (run / folder).mkdir(parents=True, exist_ok=True)
            for f in files[:2]:
                (run / folder / f).write_text("{}")
    (run / "teacher" / "model.json").write_text(json.dumps({"weights_sha256": "aaa"}))
    assert mb.main(["--data", str(first), *(a for st in mb.stage_store.KEPT for a in ("--store-stage", st))]) == 0
    fake = _FakeTrainCli(fresh)
    monkeypatch.setattr(mb.subprocess, "Popen", fake)
    assert mb.main(["--data", str(fresh), "--stop-after", "student-naive"]) == 0
    assert fake.calls == []
    assert (fresh / "run" / "dictation-naive" / "head.safetensors").is_file()
