"""Model bundles: bit-exact round trip, one clear error per corruption, bundle-info CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from engine.errors import BundleError, SpeechCTWarning, WeightsError
from engine.labels import LABELS
from engine.weights import bundle as bundle_mod
from engine.weights.bundle import load_bundle, save_bundle
from engine.weights.manifest import BUNDLE_SCHEMA, manifest_hash

torch.set_num_threads(1)

SHA = "ab" * 32
OTHER_SHA = "cd" * 32


def fake_resolver(sha: str = SHA):
    return lambda name: SimpleNamespace(name=name, sha256=sha, source="test")


def missing_resolver(name):
    raise WeightsError(f"unknown Whisper backbone {name!r}")


def make_manifest() -> dict:
    labels = list(LABELS)
    return {
        "name": "test-bundle",
        "labels": labels,
        "preprocess": {"spacing_mm": [1.5, 0.75, 0.75], "shape": [240, 480, 480], "hu_window": [-1000, 1000]},
        "ct_encoder": {"dim": 8, "depth": 1},
        "speech": {
            "backbone": "whisper-base",
            "backbone_sha256": SHA,
            "trainable_layers": 2,
            "window_s": 30.0,
            "overlap_s": 2.0,
            "pooling": "mean",
            "config": {"latent_dim": 4},
        },
        "text": {"backbone": "all-MiniLM-L6-v2", "frozen": True, "pooling": "mean"},
        "space": {"dim": 4, "logit_scale": 2.718281828459045},
        "prompts": {"kind": "text", "texts": ["a", "b", "c"], "group": "prompts"},
        "thresholds": {"method": "roc-corner on valid", "values": {labels[0]: 0.42}},
        "dictation_head": {
            "labels": labels,
            "classes": ["present", "absent", "not mentioned"],
            "group": "dictation_head",
        },
        "provenance": {"data": "synthetic", "seeds": [0], "commit": "deadbeef", "timings": {"train_s": 1.5}},
        "evaluation": {"auroc": 0.71, "f1": 0.70},
    }


def make_tensors() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 4, generator=g)
    return {
        "ct_encoder": {
            "proj.weight": torch.randn(4, 8, generator=g),
            "w_bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16),
            "w_fp16": torch.randn(2, 3, generator=g).to(torch.float16),
            "steps": torch.tensor([1, 2, 3], dtype=torch.int64),
            "mask": torch.tensor([True, False]),
            "non_contiguous": base.T,  # a transposed view: saved as its values
        },
        "speech_head": {"weight": torch.randn(4, 512, generator=g)},
        "prompts": {"embeddings": torch.randn(3, 4, generator=g)},
        "dictation_head": {"weight": torch.randn(54, 4, generator=g), "bias": torch.zeros(54)},
    }


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    return save_bundle(tmp_path / "model", manifest=make_manifest(), tensors=make_tensors())


def _error(folder, **kw) -> str:
    kw.setdefault("resolve_backbone", fake_resolver())
    with pytest.raises(BundleError) as info:
        load_bundle(folder, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "bundle.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# --- round trip ---------------------------------------------------------------------------


def test_round_trip_is_bit_exact(bundle_dir):
    tensors = make_tensors()
    bundle = load_bundle(bundle_dir, resolve_backbone=fake_resolver())
    assert bundle.path == bundle_dir and bundle.warnings == []
    assert set(bundle.groups) == set(tensors)
    for group, expected in tensors.items():
        got = bundle.tensors[group]
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert got[key].dtype == value.dtype, (group, key)
            assert torch.equal(got[key], value), (group, key)
    assert bundle.tensors["prompts"] is bundle.tensors["prompts"]  # lazy, cached
    fresh = bundle.load_group("prompts")
    assert fresh is not bundle.tensors["prompts"] and torch.equal(
        fresh["embeddings"], tensors["prompts"]["embeddings"]
    )
    manifest = make_manifest()
    assert {k: v for k, v in bundle.manifest.raw.items() if k not in ("files", "schema")} == manifest
    assert bundle.manifest.schema == BUNDLE_SCHEMA
    assert set(bundle.manifest.files) == {f"{g}.safetensors" for g in tensors}
    assert not any(p.name.startswith(".") for p in bundle_dir.parent.iterdir())  # no staging folder left
    assert not list(bundle_dir.glob("*.pt"))


def test_hash_is_stable_and_follows_content(tmp_path, bundle_dir):
    first = load_bundle(bundle_dir, resolve_backbone=fake_resolver()).hash
    again = save_bundle(tmp_path / "copy", manifest=make_manifest(), tensors=make_tensors())
    assert load_bundle(again, resolve_backbone=fake_resolver()).hash == first  # same content, other folder
    assert len(first) == 64
    tensors = make_tensors()
    tensors["prompts"]["embeddings"][0, 0] += 1
    changed = save_bundle(tmp_path / "changed", manifest=make_manifest(), tensors=tensors)
    assert load_bundle(changed, resolve_backbone=fake_resolver()).hash != first
    reordered = dict(reversed(list(json.loads((bundle_dir / "bundle.json").read_text()).items())))
    assert manifest_hash(reordered) == first


def test_parameter_counts(bundle_dir):
    counts = load_bundle(bundle_dir, resolve_backbone=fake_resolver()).parameter_counts()
    assert counts == {
        "ct_encoder": 32 + 15 + 6 + 3 + 2 + 24,
        "speech_head": 2048,
        "prompts": 12,
        "dictation_head": 270,
    }


def test_load_into_is_strict(bundle_dir):
    bundle = load_bundle(bundle_dir, resolve_backbone=fake_resolver())
    head = nn.Linear(4, 54)
    bundle.load_into(head, "dictation_head")
    assert torch.equal(head.weight, make_tensors()["dictation_head"]["weight"])

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 4, bias=False)

    with pytest.raises(
        BundleError,
        match=r"unexpected extra tensors for Holder: mask, non_contiguous, steps, w_bf16 \(\+1 more\)",
    ):
        bundle.load_into(Holder(), "ct_encoder")
    with pytest.raises(BundleError, match="tensors missing for Linear: bias"):
        bundle.load_into(nn.Linear(512, 4), "speech_head")
    with pytest.raises(BundleError, match="has shape"):
        bundle.load_into(nn.Linear(4, 53), "dictation_head")
    with pytest.raises(BundleError, match="no tensor group 'nope'"):
        bundle.load_into(head, "nope")
    proj = nn.Linear(8, 4, bias=False)
    bundle.load_into(proj, "ct_encoder", prefix="proj.")
    assert torch.equal(proj.weight, make_tensors()["ct_encoder"]["proj.weight"])


def test_save_refuses_existing_folder_unless_overwrite(bundle_dir):
    with pytest.raises(BundleError, match="already exists"):
        save_bundle(bundle_dir, manifest=make_manifest(), tensors=make_tensors())
    tensors = make_tensors()
    tensors["prompts"]["embeddings"] *= 2
    save_bundle(bundle_dir, manifest=make_manifest(), tensors=tensors, overwrite=True)
    bundle = load_bundle(bundle_dir, resolve_backbone=fake_resolver())
    assert torch.equal(bundle.tensors["prompts"]["embeddings"], tensors["prompts"]["embeddings"])
    assert sorted(p.name for p in bundle_dir.parent.iterdir()) == ["model"]


def test_save_validates_before_anything_appears(tmp_path):
    manifest = make_manifest()
    del manifest["space"]
    with pytest.raises(BundleError, match="missing required manifest field 'space'"):
        save_bundle(tmp_path / "bad", manifest=manifest, tensors=make_tensors())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BundleError, match="group name"):
        save_bundle(tmp_path / "bad", manifest=make_manifest(), tensors={"../evil": {}})
    with pytest.raises(BundleError, match="not a tensor"):
        save_bundle(tmp_path / "bad", manifest=make_manifest(), tensors={"prompts": {"embeddings": [1.0]}})
    with pytest.raises(BundleError, match="'prompts.group' 'prompts' has no file"):
        save_bundle(tmp_path / "bad", manifest=make_manifest(), tensors={"dictation_head": {}})
    assert list(tmp_path.iterdir()) == []


# --- one message per corruption -------------------------------------------------------------


def test_missing_folder(tmp_path):
    assert "bundle folder does not exist" in _error(tmp_path / "nope")


def test_path_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    assert "not a folder" in _error(tmp_path / "f")


def test_missing_manifest(bundle_dir):
    (bundle_dir / "bundle.json").unlink()
    assert "no bundle.json in bundle folder" in _error(bundle_dir)


def test_bad_json(bundle_dir):
    (bundle_dir / "bundle.json").write_text('{"schema": 1,,}')
    message = _error(bundle_dir)
    assert "bundle.json: not valid JSON" in message and "line 1" in message


def test_not_an_object(bundle_dir):
    (bundle_dir / "bundle.json").write_text("[1, 2]")
    assert "must hold a JSON object" in _error(bundle_dir)


def test_wrong_schema_version(bundle_dir):
    _edit_manifest(bundle_dir, lambda m: m.update(schema=2))
    assert "bundle schema version 2 is not supported (this engine reads schema 1)" in _error(bundle_dir)


def test_missing_schema(bundle_dir):
    _edit_manifest(bundle_dir, lambda m: m.pop("schema"))
    assert "missing required manifest field 'schema'" in _error(bundle_dir)


@pytest.mark.parametrize("field", ["labels", "preprocess", "ct_encoder", "space", "provenance", "files"])
def test_missing_required_top_level_field(bundle_dir, field):
    _edit_manifest(bundle_dir, lambda m: m.pop(field))
    assert f"missing required manifest field '{field}'" in _error(bundle_dir)


@pytest.mark.parametrize(
    "section,field",
    [("speech", "backbone"), ("speech", "backbone_sha256"), ("space", "logit_scale"), ("prompts", "kind")],
)
def test_missing_required_nested_field(bundle_dir, section, field):
    _edit_manifest(bundle_dir, lambda m: m[section].pop(field))
    assert f"missing required manifest field '{section}.{field}'" in _error(bundle_dir)


def test_wrong_field_type(bundle_dir):
    _edit_manifest(bundle_dir, lambda m: m["space"].update(dim="512"))
    assert "manifest field 'space.dim' must be an integer, got str" in _error(bundle_dir)


def test_bad_prompt_kind_and_unknown_threshold_label(bundle_dir):
    _edit_manifest(bundle_dir, lambda m: m["prompts"].update(kind="video"))
    assert "'prompts.kind' must be one of" in _error(bundle_dir)
    _edit_manifest(bundle_dir, lambda m: m["prompts"].update(kind="spoken"))
    _edit_manifest(bundle_dir, lambda m: m["thresholds"]["values"].update(Pneumothorax=0.5))
    assert "unknown label(s): Pneumothorax" in _error(bundle_dir)
    _edit_manifest(bundle_dir, lambda m: m["thresholds"].update(values={"Cardiomegaly": "high"}))
    assert "'thresholds.values' must map labels to numbers" in _error(bundle_dir)


def test_neither_speech_nor_text(bundle_dir):
    _edit_manifest(bundle_dir, lambda m: (m.pop("speech"), m.pop("text")))
    assert "neither a 'speech' nor a 'text' section" in _error(bundle_dir)


def test_missing_listed_file(bundle_dir):
    (bundle_dir / "prompts.safetensors").unlink()
    assert "file prompts.safetensors listed in bundle.json is missing" in _error(bundle_dir)


def test_wrong_sha256_names_the_file(bundle_dir):
    path = bundle_dir / "ct_encoder.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    assert "sha256 mismatch for ct_encoder.safetensors" in _error(bundle_dir)
    load_bundle(bundle_dir, check_hashes=False, resolve_backbone=fake_resolver())  # the fast path trusts it


def test_truncated_file(bundle_dir):
    path = bundle_dir / "speech_head.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    message = _error(bundle_dir, check_hashes=False)
    assert "speech_head.safetensors: file size" in message and "truncated" in message


def test_unexpected_extra_tensor_file(bundle_dir):
    shutil.copy(bundle_dir / "prompts.safetensors", bundle_dir / "extra.safetensors")
    assert "unexpected extra tensors: extra.safetensors is not listed" in _error(bundle_dir)


def test_pickle_refused(bundle_dir):
    torch.save({"w": torch.zeros(1)}, bundle_dir / "model.pt")
    assert "pickle file model.pt is not allowed" in _error(bundle_dir)


def test_missing_speech_backbone(bundle_dir):
    message = _error(bundle_dir, resolve_backbone=missing_resolver)
    assert "speech backbone 'whisper-base' is not available: unknown Whisper backbone" in message


def test_backbone_sha256_mismatch_warns(bundle_dir):
    with pytest.warns(SpeechCTWarning, match="speech backbone 'whisper-base' differs"):
        bundle = load_bundle(bundle_dir, resolve_backbone=fake_resolver(OTHER_SHA))
    assert len(bundle.warnings) == 1 and "differs" in bundle.warnings[0]
    assert bundle.speech_backbone.sha256 == OTHER_SHA


def test_text_only_bundle_needs_no_speech_backbone(tmp_path):
    manifest = make_manifest()
    del manifest["speech"]
    folder = save_bundle(tmp_path / "teacher", manifest=manifest, tensors=make_tensors())
    assert load_bundle(folder, resolve_backbone=missing_resolver).speech_backbone is None


def test_corrupt_tensor_file_without_hash_check_fails_clearly(bundle_dir):
    path = bundle_dir / "prompts.safetensors"
    size = path.stat().st_size
    path.write_bytes(b"\xff" * size)
    bundle = load_bundle(bundle_dir, check_hashes=False, resolve_backbone=fake_resolver())
    with pytest.raises(BundleError, match="prompts.safetensors: cannot read tensors"):
        bundle.tensors["prompts"]


# --- bundle-info -----------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch):
    """engine.cli.main with only our subcommand registered and a fake Whisper resolver."""
    from engine import cli as cli_mod

    monkeypatch.setattr(cli_mod, "COMMAND_MODULES", ("engine.commands.bundle_info",))
    monkeypatch.setattr(bundle_mod, "_default_backbone_resolver", fake_resolver())
    return cli_mod.main


def test_bundle_info_text(cli, bundle_dir, capsys):
    assert cli(["bundle-info", str(bundle_dir)]) == 0
    out = capsys.readouterr().out
    for expected in (
        "test-bundle",
        "ct_encoder.safetensors",
        "2,048 params",
        "whisper-base (ok)",
        "3 text prompts in group prompts",
        '"deadbeef"',
        "auroc",
        "0.71",
        "roc-corner on valid",
        "18 labels x 3 classes (present, absent, not mentioned) in group dictation_head",
    ):
        assert expected in out, expected


def test_bundle_info_json(cli, bundle_dir, capsys):
    assert cli(["bundle-info", str(bundle_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    bundle = load_bundle(bundle_dir, resolve_backbone=fake_resolver())
    assert info["hash"] == bundle.hash and info["schema"] == 1 and info["name"] == "test-bundle"
    assert info["parameters_total"] == sum(bundle.parameter_counts().values())
    assert info["files"]["speech_head.safetensors"]["parameters"] == 2048
    assert info["files"]["ct_encoder.safetensors"]["dtypes"] == ["BF16", "BOOL", "F16", "F32", "I64"]
    assert info["bytes_total"] == sum(p.stat().st_size for p in bundle_dir.glob("*.safetensors"))
    assert info["backbone"] == {"name": "whisper-base", "status": "ok"}
    assert info["configs"]["space"] == {"dim": 4, "logit_scale": 2.718281828459045}
    assert info["prompts"] == {"kind": "text", "count": 3, "group": "prompts"}
    assert info["evaluation"] == {"auroc": 0.71, "f1": 0.70}
    assert info["provenance"]["commit"] == "deadbeef" and info["warnings"] == []


def test_bundle_info_backbone_states(cli, bundle_dir, capsys, monkeypatch):
    assert cli(["bundle-info", str(bundle_dir), "--json", "--no-backbone", "--no-hashes"]) == 0
    assert json.loads(capsys.readouterr().out)["backbone"]["status"] == "not checked"
    monkeypatch.setattr(bundle_mod, "_default_backbone_resolver", fake_resolver(OTHER_SHA))
    with pytest.warns(SpeechCTWarning):
        assert cli(["bundle-info", str(bundle_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backbone"]["status"] == "sha256 differs" and len(info["warnings"]) == 1


def test_bundle_info_corrupt_bundle_exits_2_with_one_line(cli, bundle_dir, capsys):
    (bundle_dir / "prompts.safetensors").unlink()
    assert cli(["bundle-info", str(bundle_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("speechct: error: ") and "prompts.safetensors" in err and "\n" not in err


def test_real_whisper_backbone_resolution(tmp_path):
    """The default resolver (engine.weights.whisper): the packaged whisper-base matches its own sha256."""
    from engine.weights.whisper import resolve_whisper_backbone

    real = resolve_whisper_backbone("whisper-base")
    manifest = make_manifest()
    manifest["speech"]["backbone_sha256"] = real.sha256
    folder = save_bundle(tmp_path / "real", manifest=manifest, tensors=make_tensors())
    bundle = load_bundle(folder)
    assert bundle.warnings == [] and bundle.speech_backbone.sha256 == real.sha256
    manifest["speech"]["backbone"] = "whisper-nonexistent"
    folder = save_bundle(tmp_path / "missing", manifest=manifest, tensors=make_tensors())
    with pytest.raises(BundleError, match="speech backbone 'whisper-nonexistent' is not available"):
        load_bundle(folder)


def test_manifest_sections_from_the_real_configs(tmp_path):
    """The speech and text sections built from the engine's own config objects validate and round-trip."""
    from engine.models.speech import SpeechStudentConfig
    from engine.models.text import TextTowerConfig
    from engine.weights.manifest import speech_entry

    speech_cfg = SpeechStudentConfig()
    manifest = make_manifest()
    manifest["speech"] = speech_entry(speech_cfg.to_dict(), SHA)
    text_cfg = TextTowerConfig.named("minilm")
    manifest["text"] = {"backbone": text_cfg.backbone, "frozen": text_cfg.frozen, "pooling": text_cfg.pooling}
    manifest["text"]["config"] = text_cfg.to_dict()
    bundle = load_bundle(
        save_bundle(tmp_path / "b", manifest=manifest, tensors=make_tensors()),
        resolve_backbone=fake_resolver(),
    )
    assert SpeechStudentConfig.from_dict(bundle.manifest.speech.config) == speech_cfg
    assert TextTowerConfig.from_dict(bundle.manifest.text.config) == text_cfg
    with pytest.raises(BundleError, match="speech config lacks backbone"):
        speech_entry({}, SHA)
