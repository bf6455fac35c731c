"""Build the inference models from a loaded bundle: the inverse of ``train.export``.

``train.export.export_bundle`` writes these tensor groups (``engine.weights.bundle`` documents the
manifest); each builder here reads one back into the module that produced it:

=================  =============================================  ==============================
group              module                                          manifest section
=================  =============================================  ==============================
``ct_encoder``     :class:`engine.models.ct.CTEncoder`              ``ct_encoder`` (its config)
``speech_head``    :class:`engine.models.speech.SpeechStudent`      ``speech.config`` + backbone
                   (tuned top layers, final norm, projection;
                   the frozen rest comes from the Whisper backbone)
``text_head``      :class:`engine.models.text.TextTower` projection ``text.config``
``dictation_head`` :class:`engine.models.dictation.DictationHead`   ``dictation_head.config``
                   or ``FrameDictationHead`` (``config.kind``)
``prompts``        :class:`engine.findings.PromptBank`              ``prompts.texts`` / ``kind``
=================  =============================================  ==============================

Every mismatch (missing group, a config that does not parse, tensors that do not fit) is a
one-line :class:`BundleError` naming the bundle.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.errors import BundleError, SpeechCTError
from engine.weights.bundle import Bundle


def _config(bundle: Bundle, section: str, parse) -> Any:
    """Parse one manifest config dict, turning ``ValueError``/``TypeError`` into a BundleError."""
    try:
        return parse()
    except (ValueError, TypeError, KeyError) as exc:
        raise BundleError(f"manifest section '{section}' does not describe a model: {exc}", bundle.path) from exc


def preprocess_spec(bundle: Bundle):
    """The bundle's :class:`engine.preprocess.PreprocessSpec` (how a HU volume becomes the CT input)."""
    from engine.preprocess import PreprocessSpec

    return _config(bundle, "preprocess", lambda: PreprocessSpec.from_dict(bundle.manifest["preprocess"]))


def build_ct_encoder(bundle: Bundle):
    """The CT encoder with the bundle's ``ct_encoder`` weights, in eval mode on CPU."""
    from engine.models.ct import CTEncoder
    from engine.models.ct_config import CTEncoderConfig

    config = _config(bundle, "ct_encoder", lambda: CTEncoderConfig.from_dict(bundle.manifest["ct_encoder"]))
    model = CTEncoder(config)
    bundle.load_into(model, "ct_encoder")
    return model.eval()


def speech_config(bundle: Bundle):
    """The :class:`SpeechStudentConfig` of the bundle (``speech.config``, else the section's own fields)."""
    from engine.models.speech import SpeechStudentConfig

    section = bundle.manifest.get("speech")
    if section is None:
        raise BundleError("bundle has no speech encoder ('speech' section missing)", bundle.path)
    if "config" in section:
        return _config(bundle, "speech.config", lambda: SpeechStudentConfig.from_dict(section["config"]))
    keys = ("backbone", "trainable_layers", "window_s", "overlap_s", "pooling")
    return _config(
        bundle,
        "speech",
        lambda: SpeechStudentConfig(latent_dim=bundle.manifest["space"]["dim"], **{k: section[k] for k in keys}),
    )


def build_speech_student(bundle: Bundle, encoder: torch.nn.Module | None = None):
    """The speech student: the resolved Whisper backbone + the bundle's ``speech_head`` tensors.

    ``encoder`` replaces the backbone (tests pass a tiny random ``WhisperEncoder``); by default the
    backbone the bundle names is used, the one :func:`load_bundle` resolved when it did.
    """
    from engine.models.speech import SpeechStudent

    config = speech_config(bundle)
    backbone = bundle.speech_backbone
    if encoder is None:
        from engine.weights.whisper import load_whisper_encoder, resolve_whisper_backbone

        try:
            backbone = backbone or resolve_whisper_backbone(config.backbone)
            encoder = load_whisper_encoder(backbone)
        except SpeechCTError as exc:
            raise BundleError(f"speech backbone {config.backbone!r} is not usable: {exc.message}", bundle.path) from exc
    try:
        student = SpeechStudent(config, encoder, backbone)
        student.load_trainable_state_dict(bundle.load_group("speech_head"))
    except SpeechCTError as exc:
        raise BundleError(f"speech_head does not fit the speech config: {exc.message}", bundle.path) from exc
    return student.eval()


def build_text_tower(bundle: Bundle):
    """The teacher's text tower (backbone from its installed package + the bundle's projection)."""
    from engine.models.text import TextTower, TextTowerConfig

    section = bundle.manifest.get("text")
    if section is None or "text_head" not in bundle.groups:
        raise BundleError("bundle has no text tower (typed-text queries need a 'text' section and text_head)",
                          bundle.path)
    data = dict(section.get("config") or {"backbone": section["backbone"], "pooling": section["pooling"],
                                           "frozen": section["frozen"]})
    data.setdefault("latent_dim", bundle.manifest["space"]["dim"])
    config = _config(bundle, "text.config", lambda: TextTowerConfig.from_dict(data))
    try:
        tower = TextTower(config)
        tower.load_trainable_state_dict(bundle.load_group("text_head"))
    except SpeechCTError as exc:
        raise BundleError(f"text tower cannot be built: {exc.message}", bundle.path) from exc
    return tower.eval()


def build_dictation_head(bundle: Bundle):
    """The dictation head, or None when the bundle has none."""
    from engine.labels import CLASS_SETS
    from engine.models.dictation import build_head, head_config_from_dict

    section = bundle.manifest.get("dictation_head")
    if section is None:
        return None
    classes = tuple(section["classes"])
    if classes not in CLASS_SETS.values():
        raise BundleError(f"dictation head classes {list(classes)} are none the engine knows "
                          f"({' or '.join(str(list(c)) for c in CLASS_SETS.values())})", bundle.path)
    data = dict(section.get("config") or {"dim": bundle.manifest["space"]["dim"], "n_labels": len(section["labels"])})
    data.setdefault("n_classes", len(classes))  # heads shipped before the fourth state do not say
    config = _config(bundle, "dictation_head.config", lambda: head_config_from_dict(data))
    head = build_head(config)
    bundle.load_into(head, section["group"])
    return head.eval()


def build_prompt_bank(bundle: Bundle):
    """The zero-shot :class:`PromptBank` from ``prompts`` (texts + the group's ``embeddings``)."""
    from engine.findings import PromptBank

    section = bundle.manifest.get("prompts")
    if section is None:
        raise BundleError("bundle has no zero-shot prompts ('prompts' section missing)", bundle.path)
    group = bundle.tensors[section["group"]]
    if "embeddings" not in group:
        raise BundleError(f"prompt group {section['group']!r} has no 'embeddings' tensor", bundle.path)
    try:
        return PromptBank.from_rows(section["texts"], group["embeddings"], labels=tuple(bundle.labels),
                                    kind=section["kind"])
    except ValueError as exc:
        raise BundleError(f"prompts do not fit the labels: {exc}", bundle.path) from exc


def finding_auroc(bundle: Bundle) -> dict[str, float]:
    """Per-label validation AUROC from the manifest (``thresholds.auroc``), empty when absent."""
    section = bundle.manifest.get("thresholds") or {}
    return {k: float(v) for k, v in (section.get("auroc") or {}).items()}


def thresholds(bundle: Bundle) -> dict[str, float] | None:
    """Per-label thresholds from the manifest, or None (then ``engine.findings`` uses 0.5)."""
    section = bundle.manifest.get("thresholds")
    return None if section is None else {k: float(v) for k, v in section["values"].items()}
