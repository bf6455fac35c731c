"""export -> engine.weights.bundle.load_bundle round trip (schema, groups, modules load strictly)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from engine.labels import LABELS, prompt_pair
from engine.models.ct import CTEncoder
from engine.models.ct_config import CTEncoderConfig
from engine.models.dictation import CLASSES, DictationHead, DictationHeadConfig
from engine.weights.bundle import load_bundle
from train.distributed import DistEnv
from train.export import MAX_BUNDLE_BYTES, export_bundle
from train.recipes import (
    StudentRecipe,
    TeacherRecipe,
    load_run_config,
    stage_dir,
    train_dictation_head,
)
from train.trainer import OptimConfig, Trainer

from .training_fixtures import SMOKE_CONFIG, make_tiny_data, tiny_student


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    data = make_tiny_data(root / "data", n_train=8, n_valid=4)
    out = root / "run"
    cfg = load_run_config(SMOKE_CONFIG)
    # with the density path, whose fitted statistics are buffers that must travel in the bundle
    cfg["ct_encoder"] = {**cfg["ct_encoder"], "density_path": True, "density_pool": [4, 8, 8],
                         "density_thresholds": [-0.5, 0.3], "density_rank": 4}
    # and MiniLM's top layer tuned, as cpu-default does: the layer must travel in text_head
    cfg["text_tower"] = {**cfg["text_tower"], "tuned_layers": 1}
    env = DistEnv()
    teacher = TeacherRecipe(cfg, data, env=env, progress=False)
    summary = Trainer(teacher, OptimConfig.from_dict({**cfg["teacher"], "max_steps": 2}), stage_dir(out, "teacher"),
                      env, progress=False, stage="teacher").fit()
    teacher.save_final(stage_dir(out, "teacher"), summary)
    student = StudentRecipe(cfg, data, stage_dir(out, "teacher"), env=env, progress=False, student=tiny_student())
    folder = stage_dir(out, "student", 1.0)
    summary = Trainer(student, OptimConfig.from_dict({**cfg["student"], "max_steps": 2}), folder, env,
                      progress=False, stage="student").fit()
    student.save_final(folder, summary)
    train_dictation_head(student, out / "dictation", progress=False)
    path = export_bundle(out, root / "bundle", speech=tiny_student(), data=str(data))
    return path, student, teacher


def _resolver(sha):
    return lambda name: SimpleNamespace(sha256=sha)


def test_bundle_round_trip(bundle_dir):
    path, student, teacher = bundle_dir
    manifest = json.loads((path / "bundle.json").read_text())
    b = load_bundle(path, resolve_backbone=_resolver(manifest["speech"]["backbone_sha256"]))
    assert not b.warnings
    assert set(b.groups) == {"ct_encoder", "speech_head", "text_head", "prompts", "dictation_head"}
    assert b.labels == list(LABELS)
    # every group loads strictly into the module the engine will build from the manifest
    ct = CTEncoder(CTEncoderConfig.from_dict(manifest["ct_encoder"]))
    b.load_into(ct, "ct_encoder")
    ct.eval()
    trained = teacher.module.ct.eval()
    assert torch.any(ct.density.std != 1)  # the fitted standardisation, not a fresh module's
    x = torch.rand(2, 1, *ct.config.input_size) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ct(x), trained(x), atol=1e-5)
    head = DictationHead(DictationHeadConfig.from_dict(manifest["dictation_head"]["config"]))
    b.load_into(head, "dictation_head")
    assert manifest["dictation_head"]["classes"] == list(CLASSES)
    speech = tiny_student()
    speech.load_trainable_state_dict(b.load_group("speech_head"))
    for k, v in student.speech.trainable_state_dict().items():
        assert torch.equal(speech.trainable_state_dict()[k], v), k
    prompts = b.tensors["prompts"]["embeddings"]
    assert prompts.shape == (2 * len(LABELS), manifest["space"]["dim"])
    assert manifest["prompts"]["texts"][:2] == list(prompt_pair(LABELS[0]))
    assert manifest["prompts"]["kind"] == "text"
    assert "projection.weight" in b.tensors["text_head"]
    assert {k.split(".")[3] for k in b.tensors["text_head"] if k != "projection.weight"} == {"5"}  # layer 5 of 0-5
    from engine.models.text import TextTower, TextTowerConfig

    tower = TextTower(TextTowerConfig.from_dict(manifest["text"]["config"]))
    tower.load_trainable_state_dict(b.load_group("text_head"))
    with torch.no_grad():  # the engine's tower gives the trained teacher's prompt embeddings
        assert torch.allclose(tower.eval().encode(manifest["prompts"]["texts"][:4]), prompts[:4].float(), atol=1e-4)
    assert manifest["space"]["logit_scale"] > 0
    prov = manifest["provenance"]
    assert {"data", "seeds", "commit", "timings_s"} <= set(prov)
    assert "monitors" in manifest["evaluation"] or manifest.get("thresholds")
    assert sum(p.stat().st_size for p in path.iterdir()) < MAX_BUNDLE_BYTES
    card = (path / "README.md").read_text()  # the model card, written from this manifest
    for section in ("## Intended use", "**Not a medical device.**", "## Training data", "## Evaluation",
                    "## Limitations"):
        assert section in card, section
    assert f"{prov['n_train']} training" in card and str(prov["commit"]) in card


def test_export_refuses_a_student_of_another_teacher(bundle_dir, tmp_path):
    import shutil

    from engine.errors import DataError

    path, _, _ = bundle_dir
    run = tmp_path / "run"
    shutil.copytree(path.parent / "run", run)
    meta = json.loads((stage_dir(run, "student", 1.0) / "model.json").read_text())
    meta["teacher_sha256"] = "0" * 64
    (stage_dir(run, "student", 1.0) / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="different teacher"):
        export_bundle(run, tmp_path / "b", speech=tiny_student())


def test_export_of_a_frame_dictation_head(bundle_dir):
    """A frame head (``dictation.kind = "frames"``) exports with its kind, and the engine builds and
    feeds it from the bundle alone."""
    import numpy as np

    from engine.models.dictation import FrameDictationHead
    from engine.weights.factory import build_dictation_head

    path, student, _ = bundle_dir
    run = path.parent / "run"
    student.cfg = {**student.cfg, "dictation": {"kind": "frames", "hidden": 16, "heads": 2, "kernel": 3,
                                                "epochs": 1, "batch_size": 4}}
    train_dictation_head(student, run / "dictation-frames", progress=False)
    out = export_bundle(run, path.parent / "bundle-frames", speech=tiny_student(),
                        dictation_dir=run / "dictation-frames")
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["dictation_head"]["config"]["kind"] == "frames"
    assert "frames" in manifest["dictation_head"]["input"]
    b = load_bundle(out, resolve_backbone=_resolver(manifest["speech"]["backbone_sha256"]))
    head = build_dictation_head(b)
    assert isinstance(head, FrameDictationHead) and not head.training
    frames = student_frames_of(student, student.valid_lower[:1])
    with torch.no_grad():
        logits = head(frames[None], torch.tensor([frames.shape[0]]))
    assert logits.shape == (1, len(LABELS), len(CLASSES)) and np.isfinite(logits.numpy()).all()


def student_frames_of(recipe, keys):
    from train.recipes import student_frames

    return student_frames(recipe, keys)[0].float()


def test_export_refuses_an_oversized_bundle_before_writing_and_float16_halves_it(bundle_dir, tmp_path):
    from engine.errors import BundleError
    from engine.weights.bundle import load_bundle

    path, _, _ = bundle_dir
    run = path.parent / "run"
    full = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    with pytest.raises(BundleError, match="nothing was written"):
        export_bundle(run, tmp_path / "small", speech=tiny_student(), max_bytes=full // 4)
    assert not (tmp_path / "small").exists() and not list(tmp_path.glob(".small*"))
    half = export_bundle(run, tmp_path / "half", speech=tiny_student(), float16=True)
    size = sum(p.stat().st_size for p in half.iterdir() if p.is_file())
    assert size < 0.6 * full
    manifest = json.loads((half / "bundle.json").read_text())
    assert manifest["provenance"]["storage"] == "float16"
    b = load_bundle(half, resolve_backbone=_resolver(manifest["speech"]["backbone_sha256"]))
    ct = CTEncoder(CTEncoderConfig.from_dict(manifest["ct_encoder"]))
    b.load_into(ct, "ct_encoder")  # float16 weights into the engine's float32 module
    assert ct.pool.proj.weight.dtype == torch.float32
    x = torch.rand(1, 1, *ct.config.input_size) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ct.eval()(x), bundle_dir[2].module.ct.eval()(x), atol=2e-2)


def _evaluation_with_readers(run, speech, cascade, transcript, cascade_ci, transcript_ci):
    def pair(a, b, ci):
        return {"a": a, "b": b, "diff": a - b, "ci": list(ci), "n": 100}

    systems = {"ASR cascade": {"dictation_paired": {"distilled student − cascade": pair(speech, cascade, cascade_ci)},
                               "transcript_reader": {"paired": {"distilled student − transcript reader":
                                                                pair(speech, transcript, transcript_ci)}}}}
    (run / "evaluation").mkdir(parents=True, exist_ok=True)
    (run / "evaluation" / "evaluation.json").write_text(json.dumps(
        {"split": "valid", "groups": {"held-out voices": {"systems": systems}}}))


def test_reader_choice_among_speech_rules_and_transcript_reader(tmp_path):
    from train.export import choose_dictation_reader

    head = {"group": "transcript_reader", "config": {"dim": 384}}
    _evaluation_with_readers(tmp_path, 0.55, 0.45, 0.70, (-0.1, -0.05), (-0.3, -0.2))
    section = choose_dictation_reader(tmp_path, head)
    assert section["choice"] == "transcript" and section["transcript_head"] == head
    assert section["validation"]["transcript_macro_f1"] == 0.70 and "learned transcript reader" in section["why"]
    assert choose_dictation_reader(tmp_path)["choice"] == "cascade"  # without a transcript head: the rules
    # neither is surely better than the speech reader
    _evaluation_with_readers(tmp_path, 0.55, 0.45, 0.56, (0.01, 0.1), (-0.02, 0.05))
    assert choose_dictation_reader(tmp_path, head)["choice"] == "speech"


def test_export_carries_the_transcript_reader(bundle_dir, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from engine.models.dictation import FrameDictationHead, FrameDictationHeadConfig

    path, _, _ = bundle_dir
    run = tmp_path / "run"
    shutil.copytree(path.parent / "run", run)
    head = FrameDictationHead(FrameDictationHeadConfig(dim=384, hidden=8, stride=1, kernel=3, heads=2))
    (run / "text_reader").mkdir()
    save_file(head.state_dict(), str(run / "text_reader" / "head.safetensors"))
    (run / "text_reader" / "head.json").write_text(json.dumps({"config": head.config.to_dict()}))
    out = export_bundle(run, tmp_path / "bundle", speech=tiny_student())
    manifest = json.loads((out / "bundle.json").read_text())
    assert "transcript_reader.safetensors" in manifest["files"]
    assert manifest["dictation_reader"]["transcript_head"]["config"] == head.config.to_dict()
