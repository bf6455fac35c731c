"""CPU training smoke test: a few steps of teacher and student on a tiny generated set; losses fall."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.models.dictation import dictation_loss
from train.cli import main as train_main
from train.distributed import DistEnv
from train.recipes import (
    StudentRecipe,
    TeacherRecipe,
    load_run_config,
    load_teacher,
    stage_dir,
    train_dictation_head,
)
from train.trainer import OptimConfig, Trainer

from .training_fixtures import SMOKE_CONFIG, make_tiny_data, tiny_student


def _full_batch_loss(recipe) -> float:
    """Loss over the whole (tiny) training set as one batch, eval mode: a noise-free 'did it learn'."""
    recipe.module.eval()
    with torch.no_grad():
        loss, _ = recipe.loss(list(range(recipe.n_train)), 0, DistEnv())
    return float(loss)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("smoke")
    data = make_tiny_data(root / "data", n_train=16, n_valid=8)
    out = root / "run"
    rc = train_main(["teacher", "--config", str(SMOKE_CONFIG), "--data", str(data), "--out", str(out),
                     "--max-steps", "16", "--quiet"])
    assert rc == 0
    return data, out


def test_teacher_cli_learns_and_writes_its_run(run):
    data, out = run
    folder = stage_dir(out, "teacher")
    assert {"last.pt", "metrics.jsonl", "model.safetensors", "model.json"} <= {p.name for p in folder.iterdir()}
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r and r.get("kind") != "valid"] == list(range(1, 17))
    assert rows[-1]["kind"] == "valid" and np.isfinite(rows[-1]["valid_loss"])
    # a fresh (untrained) teacher vs the trained one on the same full batch
    cfg = load_run_config(SMOKE_CONFIG)
    fresh = TeacherRecipe(cfg, data, env=DistEnv(), progress=False)
    before = _full_batch_loss(fresh)
    trained = load_teacher(folder)
    fresh.module.load_state_dict(trained.model.state_dict())
    after = _full_batch_loss(fresh)
    assert after < before - 0.05, (before, after)
    assert (out / "timings.jsonl").is_file()


def test_teacher_cli_refuses_to_overwrite_and_resumes_with_a_larger_budget(run):
    data, out = run
    args = ["teacher", "--config", str(SMOKE_CONFIG), "--data", str(data), "--out", str(out), "--quiet"]
    assert train_main([*args, "--max-steps", "16"]) == 2  # a run is there: needs --resume
    assert train_main([*args, "--max-steps", "18", "--resume"]) == 0
    rows = [json.loads(line) for line in (stage_dir(out, "teacher") / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r and r.get("kind") != "valid"]
    assert steps == list(range(1, 19))


@pytest.mark.parametrize("lam", [1.0, 0.0], ids=["distilled", "naive"])
def test_student_learns_and_dictation_head_fits(run, tmp_path, lam):
    torch.set_num_threads(1)
    data, out = run
    cfg = load_run_config(SMOKE_CONFIG)
    recipe = StudentRecipe(cfg, data, stage_dir(out, "teacher"), env=DistEnv(), distill_weight=lam,
                           progress=False, student=tiny_student())
    assert recipe.distill_weight == lam
    before = _full_batch_loss(recipe)
    trainer = Trainer(recipe, OptimConfig.from_dict({**cfg["student"], "max_steps": 16}), tmp_path / "student",
                      DistEnv(), seed=1, progress=False, stage="student")
    summary = trainer.fit()
    after = _full_batch_loss(recipe)
    assert after < before - 0.02, (before, after)
    assert set(summary["valid"]) >= {"valid_loss", "cos_to_teacher_text", "speech2ct_R@1"}
    head = train_dictation_head(recipe, tmp_path / "dictation", progress=False)
    assert (tmp_path / "dictation" / "head.safetensors").is_file()
    assert 0.0 <= head["valid_macro_f1"] <= 1.0
    assert head["history"][-1]["train_loss"] < head["history"][0]["train_loss"]


def test_frame_dictation_head_fits_on_the_students_frames(run, tmp_path):
    """``dictation.kind = "frames"``: the head reads the frozen student's encoder frames; the saved
    head reloads through the engine's kind-aware config and gives the same logits."""
    from safetensors.torch import load_file

    from engine.models.dictation import FrameDictationHead, build_head, head_config_from_dict, pad_utterances
    from train.recipes import student_frames

    torch.set_num_threads(1)
    data, out = run
    cfg = load_run_config(SMOKE_CONFIG)
    cfg["dictation"] = {"kind": "frames", "hidden": 16, "heads": 2, "kernel": 3, "dropout": 0.0, "lr": 3e-3,
                        "epochs": 4, "batch_size": 4}
    recipe = StudentRecipe(cfg, data, stage_dir(out, "teacher"), env=DistEnv(), progress=False,
                           student=tiny_student())
    head = train_dictation_head(recipe, tmp_path / "dictation", progress=False)
    assert head["config"]["kind"] == "frames" and head["config"]["dim"] == recipe.speech.encoder.config.d_model
    assert head["history"][-1]["train_loss"] < head["history"][0]["train_loss"]
    meta = json.loads((tmp_path / "dictation" / "head.json").read_text())
    again = build_head(head_config_from_dict(meta["config"]))
    assert isinstance(again, FrameDictationHead)
    again.load_state_dict(load_file(str(tmp_path / "dictation" / "head.safetensors")))
    frames = student_frames(recipe, recipe.valid_lower[:2])
    # the frames are the student's own: the same as a fresh full pass over each waveform
    from engine.audio import load_audio

    full = recipe.speech.eval().encode_waveforms([load_audio(s.audio_path) for s in recipe.valid[:2]],
                                                 keep_frames=True)[1]
    for cached, fresh in zip(frames, full):
        torch.testing.assert_close(cached.float(), fresh, atol=0.05, rtol=0.02)
    with torch.no_grad():
        logits = again.eval()(*pad_utterances(frames))
    assert logits.shape == (2, 18, 4) and torch.isfinite(logits).all()


def test_cached_frozen_work_is_reused(run):
    data, out = run
    cfg = load_run_config(SMOKE_CONFIG)
    StudentRecipe(cfg, data, stage_dir(out, "teacher"), env=DistEnv(), progress=False, student=tiny_student())
    again = StudentRecipe(cfg, data, stage_dir(out, "teacher"), env=DistEnv(), progress=False,
                          student=tiny_student())
    # every prepared volume, teacher embedding, text feature and Whisper lower output was a hit
    assert again.cache.misses == 0 and again.cache.hits > 0


def test_joint_dictation_loss_shapes_the_tuned_layers(run):
    """``student.dictation_weight``: the mentions' cross-entropy joins the loss and its gradient
    reaches the tuned Whisper layers (not only a head on frozen embeddings)."""
    torch.set_num_threads(1)
    data, out = run
    cfg = load_run_config(SMOKE_CONFIG)
    cfg["student"] = {**cfg["student"], "dictation_weight": 0.5}
    recipe = StudentRecipe(cfg, data, stage_dir(out, "teacher"), env=DistEnv(), distill_weight=0.0,
                           progress=False, student=tiny_student())
    head = recipe.module.dictation
    assert head is not None and {id(p) for p in head.parameters()} <= recipe.head_parameters()
    loss, parts = recipe.loss(list(range(4)), 0, DistEnv())
    assert float(loss.detach()) == pytest.approx(parts["info_nce"] + 0.5 * parts["dictation"], rel=1e-5)
    # the dictation term alone moves the tuned layers
    recipe.module.zero_grad()
    speech = recipe.embed([recipe.train_lower[i] for i in range(4)])
    mentions = torch.from_numpy(np.stack([recipe.train[i].mentions for i in range(4)]))
    dictation_loss(head(speech), mentions).backward()
    tuned = [p for n, p in recipe.speech.named_parameters() if p.requires_grad and "projection" not in n]
    assert tuned and any(p.grad is not None and p.grad.abs().sum() > 0 for p in tuned)
    plain = StudentRecipe(load_run_config(SMOKE_CONFIG), data, stage_dir(out, "teacher"), env=DistEnv(),
                          progress=False, student=tiny_student())
    assert plain.module.dictation is None and plain.dictation_weight == 0.0
