"""Export a trained run as a model bundle (docs/design.md §2, ``engine.weights.bundle``).

Tensor groups: ``ct_encoder`` (the teacher's CT encoder), ``speech_head`` (the student's tuned
top Whisper layers, final norm and projection: ``SpeechStudent.trainable_state_dict()``),
``text_head`` (the teacher text tower's projection, for typed-text search), ``dictation_head``
(``engine.models.dictation.DictationHead``), ``prompts`` (``embeddings`` ``[36, dim]``: for each of
the 18 labels in order, "{finding} is present." then "{finding} is not present.", embedded by the
teacher's text tower, kind ``text``).

Thresholds: from ``train.evaluate.bundle_thresholds`` (the ROC-corner threshold per label of the
text teacher, from the run's ``evaluation/evaluation.json`` or chosen on the valid split of
``data``); when that is unavailable the bundle has no ``thresholds`` section and the provenance
says why. Beside them, what the engine's reliability gate reads (``engine.findings.unchecked``):
``thresholds.auroc`` = each finding's *lower* bootstrap CI bound of its zero-shot AUROC
(``auroc_statistic: "ci_lower"``, the point estimates in ``auroc_point``, the draws in
``auroc_ci``; ``train.evaluate.gate_auroc``), so a finding is checked against the dictation only
when it clears ``engine.findings.RELIABLE_AUROC`` with 95 % confidence. An evaluation without a
bootstrap gives the point estimate, named ``"point"`` (as older bundles carry it, unnamed).

Every bundle carries its model card, ``README.md`` (:mod:`train.model_card`).
"""

from __future__ import annotations

import importlib
import json
import subprocess
from pathlib import Path
from typing import Any

import torch

from engine.errors import BundleError, DataError
from engine.labels import CLASS_SETS, LABELS
from engine.models.dictation import build_head, head_config_from_dict
from engine.weights.bundle import save_bundle
from engine.weights.manifest import speech_entry
from train.model_card import CARD_NAME, model_card
from train.recipes import load_student, load_teacher, prompt_texts, stage_dir

MAX_BUNDLE_BYTES = 60 * 1024 * 1024


def git_commit(repo: Path | None = None) -> str | None:
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def evaluation_hook(run: Path, bundle_tensors: dict, manifest: dict,
                    data: str | None = None) -> tuple[dict | None, dict | None, str]:
    """``(thresholds, evaluation, how)`` from ``train.evaluate.bundle_thresholds`` (W2b's protocol).

    It reads ``<run>/evaluation/evaluation.json`` when ``speechct-train evaluate`` has run, else
    chooses the thresholds on the valid split of ``data``. When it is unavailable or fails, the
    bundle gets no thresholds and ``how`` says why (the export itself still succeeds).
    """
    try:
        evaluate = importlib.import_module("train.evaluate")
        fn = evaluate.bundle_thresholds
    except (ImportError, AttributeError) as exc:
        return None, None, f"none: train.evaluate not available ({exc})"
    try:
        thresholds, evaluation = fn(run, bundle_tensors, manifest, data=data)
    except Exception as exc:  # noqa: BLE001 - an evaluation bug must not lose a trained bundle
        return None, None, f"none: train.evaluate.bundle_thresholds failed: {type(exc).__name__}: {exc}"
    if thresholds is None:
        return None, evaluation, "none: no evaluation.json in the run and no data folder given"
    return thresholds, evaluation, "train.evaluate.bundle_thresholds"


def _gate_provenance(thresholds: dict | None) -> str:
    """One line saying which AUROC statistic ``thresholds.auroc`` carries (for ``bundle-info``'s readers)."""
    if not thresholds or not thresholds.get("auroc"):
        return "none: no per-finding AUROC, every finding is checked against the dictation"
    if thresholds.get("auroc_statistic") == "ci_lower":
        ci = thresholds.get("auroc_ci", {})
        return (f"thresholds.auroc = lower bound of each finding's {100 * ci.get('level', 0.95):g} % bootstrap CI "
                f"of its zero-shot AUROC ({ci.get('n_boot')} draws); point estimates in thresholds.auroc_point")
    return "thresholds.auroc = the point estimate of each finding's zero-shot AUROC (no bootstrap CI available)"


def choose_dictation_reader(run: Path, transcript_head: dict | None = None) -> dict:
    """The ``dictation_reader`` section: the speech-native reader unless a transcript reader scored higher
    on the validation split's held-out voices (paired bootstrap CI of speech − that reader below 0, from
    ``<run>/evaluation/evaluation.json``): the ASR + rule cascade (``cascade``) or, when the run has one
    (``transcript_head``), the learned transcript reader (``transcript``); of two such, the higher macro F1.
    The rule lexicon always travels, and so does the transcript head, so the choice is visible and
    reversible."""
    from train.labeler import training_lexicon

    section: dict[str, Any] = {"choice": "speech", "lexicon": training_lexicon().to_dict()}
    if transcript_head is not None:
        section["transcript_head"] = transcript_head
    path = run / "evaluation" / "evaluation.json"
    if not path.is_file():
        section["why"] = "no evaluation.json in the run: the speech-native reader by default"
        return section
    result = json.loads(path.read_text())
    groups = result.get("groups", {})
    group = next((g for name, g in groups.items() if "held-out" in name), next(iter(groups.values()), {}))
    cascade = group.get("systems", {}).get("ASR cascade", {})
    pairs = {"cascade": cascade.get("dictation_paired", {}).get("distilled student − cascade")}
    if transcript_head is not None:
        pairs["transcript"] = cascade.get("transcript_reader", {}).get("paired", {}).get(
            "distilled student − transcript reader")
    pairs = {k: p for k, p in pairs.items() if p is not None}
    if not pairs:
        section["why"] = "the evaluation has no paired reader comparison: the speech-native reader by default"
        return section
    section["validation"] = {"split": result.get("split"), "n": next(iter(pairs.values()))["n"],
                             "speech_macro_f1": next(iter(pairs.values()))["a"],
                             **{f"{k}_macro_f1": p["b"] for k, p in pairs.items()},
                             **{f"speech_minus_{k}": {"difference": p["diff"], "ci": p["ci"]} for k, p in pairs.items()}}
    better = {k: p for k, p in pairs.items() if p["ci"][1] < 0}
    names = {"cascade": "the ASR + rule cascade", "transcript": "the ASR + learned transcript reader"}
    if better:
        choice = max(better, key=lambda k: better[k]["b"])
        section["choice"] = choice
        section["why"] = f"{names[choice]} scored higher than the speech-native reader on the validation split (paired bootstrap)"
    else:
        section["why"] = ("the speech-native reader scored at least as high as "
                          + " and ".join(names[k] for k in pairs)
                          + " on the validation split (paired bootstrap), and needs no transcription")
    return section


def tensor_bytes(tensors: dict[str, dict[str, torch.Tensor]]) -> int:
    """The bytes the tensor groups take in safetensors files (their headers add a few KiB)."""
    return sum(t.numel() * t.element_size() for group in tensors.values() for t in group.values())


def as_float16(tensors: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    """Floating-point tensors stored as float16 (the engine casts them back when it loads them into its
    float32 modules); integer buffers unchanged."""
    return {g: {k: (v.half() if v.is_floating_point() else v) for k, v in group.items()}
            for g, group in tensors.items()}


def export_bundle(run: str | Path, bundle: str | Path, *, student_dir: str | Path | None = None,
                  dictation_dir: str | Path | None = None, name: str = "default", data: str | None = None,
                  overwrite: bool = True, extra_provenance: dict | None = None, speech=None,
                  max_bytes: int = MAX_BUNDLE_BYTES, float16: bool = False) -> Path:
    """Write the bundle of the run folder ``run`` (teacher/, student/, dictation/) to ``bundle``.

    ``speech``: an untrained ``SpeechStudent`` to load the student's weights into (tests use a
    tiny one); by default it is built from the student's config and the installed backbone.
    ``max_bytes``: a bundle whose tensors would exceed it is refused before anything is written.
    ``float16``: store floating-point weights in half precision (half the size).
    """
    run = Path(run)
    teacher = load_teacher(run / "teacher")
    student_dir = Path(student_dir) if student_dir else stage_dir(run, "student", 1.0)
    dictation_dir = Path(dictation_dir) if dictation_dir else run / "dictation"
    speech, smeta = load_student(student_dir, student=speech)
    if smeta.get("teacher_sha256") != teacher.weights_hash:
        raise DataError("the student was trained with a different teacher than the one in this run", student_dir)

    with torch.no_grad():
        prompts = teacher.text.encode(prompt_texts()).float().cpu()
    tensors: dict[str, dict[str, torch.Tensor]] = {
        "ct_encoder": {k: v.detach().float() for k, v in teacher.model.ct.state_dict().items()},
        "speech_head": speech.trainable_state_dict(),
        "text_head": teacher.text.trainable_state_dict(),
        "prompts": {"embeddings": prompts},
    }
    if not tensors["speech_head"]:
        raise DataError("the student has no trained tensors to export", student_dir)
    head_meta = _read_json(dictation_dir / "head.json")
    if (dictation_dir / "head.safetensors").is_file():
        from safetensors.torch import load_file

        head = build_head(head_config_from_dict(head_meta["config"]))
        head.load_state_dict(load_file(str(dictation_dir / "head.safetensors")))
        tensors["dictation_head"] = head.state_dict()

    backbone_sha = smeta["backbone_sha256"]
    tmeta = teacher.meta
    manifest: dict[str, Any] = {
        "name": name,
        "labels": list(LABELS),
        "preprocess": teacher.spec.to_dict(),
        "ct_encoder": teacher.model.ct.config.to_dict(),
        "speech": speech_entry(speech.config.to_dict(), backbone_sha),
        "text": teacher.text.manifest_entry(),
        "space": {"dim": int(prompts.shape[1]), "logit_scale": float(teacher.logit_scale)},
        "prompts": {"kind": "text", "texts": prompt_texts(), "group": "prompts",
                    "layout": "for each label: present, not present"},
    }
    if "dictation_head" in tensors:
        manifest["dictation_head"] = {"labels": list(LABELS), "classes": list(CLASS_SETS[head.config.n_classes]),
                                      "group": "dictation_head",
                                      "config": head_meta["config"],
                                      "input": ("the speech student's encoder frames before pooling, all windows "
                                                "in order" if head.input == "frames" else
                                                "speech embedding (L2-normalised inside the head)")}
    transcript_head = None
    reader_dir = run / "text_reader"
    if "dictation_head" in tensors and (reader_dir / "head.safetensors").is_file():
        from safetensors.torch import load_file

        tensors["transcript_reader"] = load_file(str(reader_dir / "head.safetensors"))
        transcript_head = {"group": "transcript_reader", "config": _read_json(reader_dir / "head.json")["config"],
                           "input": "the text tower's token states of the dictation's transcript"}
    if float16:
        tensors = as_float16(tensors)
    if tensor_bytes(tensors) > max_bytes:
        raise BundleError(f"its weights take {tensor_bytes(tensors) / 2**20:.1f} MiB, over the "
                          f"{max_bytes / 2**20:.0f} MiB limit (store them as float16, or raise the limit); "
                          "nothing was written", bundle)
    thresholds, evaluation, thresholds_how = evaluation_hook(run, tensors, manifest, data)
    if thresholds is not None:
        manifest["thresholds"] = thresholds
    monitors = {
        "note": "training monitors on the validation split (not the evaluation protocol)",
        "teacher": tmeta.get("summary", {}).get("valid", {}),
        "student": smeta.get("summary", {}).get("valid", {}),
        "dictation_head": {k: head_meta[k] for k in ("valid_macro_f1", "valid_f1_per_class", "valid_accuracy")
                           if k in head_meta},
    }
    manifest["evaluation"] = {**(evaluation or {}), "monitors": monitors}
    if "dictation_head" in manifest:
        manifest["dictation_reader"] = choose_dictation_reader(run, transcript_head)
    cfg = tmeta["config"]
    manifest["provenance"] = {
        "data": data or cfg.get("data"),
        "config": cfg.get("name"),
        "seeds": {"teacher": cfg.get("seed", 0), "student": smeta["config"].get("seed", 0) + 1,
                  "dictation_head": smeta["config"].get("seed", 0) + 2},
        "commit": git_commit(),
        "n_train": tmeta.get("n_train"), "n_valid": tmeta.get("n_valid"),
        "teacher": {"steps": tmeta.get("summary", {}).get("steps"), "epochs": tmeta.get("summary", {}).get("epochs"),
                    "optim": cfg.get("teacher"), "weights_sha256": teacher.weights_hash},
        "student": {"steps": smeta.get("summary", {}).get("steps"), "epochs": smeta.get("summary", {}).get("epochs"),
                    "distill_weight": smeta.get("distill_weight"), "optim": smeta["config"].get("student"),
                    "weights_sha256": smeta.get("weights_sha256")},
        "dictation_head": {"epochs": head_meta.get("epochs"), "config": head_meta.get("config")},
        "timings_s": {"teacher_prep": tmeta.get("prep_seconds"), "teacher_train": tmeta.get("summary", {}).get("seconds"),
                      "student_prep": smeta.get("prep_seconds"), "student_train": smeta.get("summary", {}).get("seconds"),
                      "dictation_head": head_meta.get("seconds")},
        "thresholds": thresholds_how,
        "reliability_gate": _gate_provenance(thresholds),
        **(extra_provenance or {}),
    }
    manifest["provenance"]["storage"] = "float16" if float16 else "float32"
    return save_bundle(bundle, manifest=manifest, tensors=tensors, overwrite=overwrite,
                       documents={CARD_NAME: model_card(manifest)})
