"""engine.weights.manifest: every bundle.json schema shipped so far parses into the typed manifest, and
the factory builds the same parts from each; broken values are one-line BundleErrors at load."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from engine.errors import BundleError
from engine.labels import DICTATION_CLASSES, LEGACY_DICTATION_CLASSES
from engine.weights.manifest import BundleManifest

DEFAULT = Path(__file__).resolve().parents[2] / "assets" / "models" / "default" / "bundle.json"


@pytest.fixture
def raw() -> dict:
    return json.loads(DEFAULT.read_text())


def test_the_shipped_default_bundle(raw):
    m = BundleManifest.parse(raw)
    assert m.schema == 1 and m.name == "default" and len(m.labels) == 18
    assert m.space_dim == raw["space"]["dim"] and m.logit_scale == raw["space"]["logit_scale"]
    assert m.speech.student_config(m.space_dim) == raw["speech"]["config"]
    assert m.dictation_head.classes in (DICTATION_CLASSES, LEGACY_DICTATION_CLASSES)
    assert m.dictation_head.reads_frames == (raw["dictation_head"]["config"]["kind"] == "frames")
    assert m.thresholds.values == raw["thresholds"]["values"]
    assert m.reader_choice == "speech"  # a bundle made before the reader choice: the speech reader
    assert m.groups == tuple(n.removesuffix(".safetensors") for n in raw["files"])


def test_four_state_head_with_reader_choice_and_gate_statistic(raw):
    raw["dictation_head"]["classes"] = list(DICTATION_CLASSES)
    raw["dictation_head"]["config"]["n_classes"] = 4
    raw["dictation_reader"] = {"choice": "cascade", "why": "higher macro F1", "lexicon": {"present": ["seen"]}}
    raw["thresholds"]["auroc_statistic"] = "ci_lower"
    raw["thresholds"]["auroc"] = {"Emphysema": 0.8}
    m = BundleManifest.parse(raw)
    assert m.dictation_head.head_config(m.space_dim)["n_classes"] == 4
    assert m.reader_choice == "cascade" and m.dictation_reader.lexicon == {"present": ["seen"]}
    assert m.thresholds.auroc == {"Emphysema": 0.8} and m.auroc_statistic == "ci_lower"


def test_legacy_sections_without_configs(raw):
    """The first bundles: speech, text and dictation head without ``config``, three states without
    ``n_classes``, thresholds without AUROC."""
    for section in ("speech", "text", "dictation_head"):
        del raw[section]["config"]
    raw["dictation_head"]["classes"] = list(LEGACY_DICTATION_CLASSES)
    del raw["thresholds"]["auroc"]
    m = BundleManifest.parse(raw)
    assert m.speech.student_config(512) == {"latent_dim": 512, "backbone": "whisper-base", "trainable_layers": 2,
                                            "window_s": 30.0, "overlap_s": 2.0, "pooling": "mean"}
    assert m.text.tower_config(512) == {"backbone": raw["text"]["backbone"], "pooling": "mean", "frozen": True,
                                        "latent_dim": 512}
    assert m.dictation_head.head_config(512) == {"dim": 512, "n_labels": 18, "n_classes": 3}
    assert not m.dictation_head.reads_frames
    assert m.thresholds.auroc == {} and m.auroc_statistic is None


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.__setitem__("schema", 2), "schema version 2 is not supported"),
    (lambda r: r["dictation_head"].__setitem__("classes", ["yes", "no"]), "are none the engine knows"),
    (lambda r: r.__setitem__("dictation_reader", {"choice": "oracle", "lexicon": {}}),
     "'dictation_reader.choice' must be one of"),
    (lambda r: r["space"].__setitem__("dim", "512"), "'space.dim' must be an integer"),
])
def test_broken_values_are_one_line_errors(raw, edit, message):
    raw = copy.deepcopy(raw)
    edit(raw)
    with pytest.raises(BundleError, match=message) as info:
        BundleManifest.parse(raw, "x/bundle.json")
    assert "\n" not in str(info.value) and "x/bundle.json" in str(info.value)
