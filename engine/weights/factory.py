"""The one factory of bundle parts: every model, spec and table the engine, ``train.evaluate`` and
``speechct bundle-info`` take from a bundle is built here (open_clip's ``create_model`` habit), so the
evaluation stored in a bundle is measured through the code the product runs.

:func:`build_part` ``(bundle, name)`` builds one part by name (:data:`PARTS`); the builders are the
inverse of ``train.export``, which writes these tensor groups (:mod:`engine.weights.manifest` documents
the manifest):

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
``transcript_``    :class:`engine.models.dictation.                 ``dictation_reader.
``reader``         FrameDictationHead` over the text tower's tokens  transcript_head``
=================  =============================================  ==============================

Every mismatch (missing group, a config that does not parse, tensors that do not fit) is a
one-line :class:`BundleError` naming the bundle. Models are returned in eval mode on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
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

    return _config(bundle, "preprocess", lambda: PreprocessSpec.from_dict(bundle.manifest.preprocess))


def build_ct_encoder(bundle: Bundle):
    """The CT encoder with the bundle's ``ct_encoder`` weights, in eval mode on CPU."""
    from engine.models.ct import CTEncoder
    from engine.models.ct_config import CTEncoderConfig

    config = _config(bundle, "ct_encoder", lambda: CTEncoderConfig.from_dict(bundle.manifest.ct_encoder))
    model = CTEncoder(config)
    bundle.load_into(model, "ct_encoder")
    return model.eval()


def speech_config(bundle: Bundle):
    """The :class:`SpeechStudentConfig` of the bundle (``speech.config``, else the section's own fields)."""
    from engine.models.speech import SpeechStudentConfig

    section = bundle.manifest.speech
    if section is None:
        raise BundleError("bundle has no speech encoder ('speech' section missing)", bundle.path)
    where = "speech.config" if section.config is not None else "speech"
    return _config(bundle, where,
                   lambda: SpeechStudentConfig.from_dict(section.student_config(bundle.manifest.space_dim)))


def speech_student_from_backbone(config, cache_dir=None):
    """A fresh :class:`engine.models.speech.SpeechStudent` on the Whisper backbone ``config`` names (resolved
    and loaded here; training starts from it). ``cache_dir``: where the converted backbone is cached."""
    from engine.models.speech import SpeechStudent
    from engine.weights.whisper import load_whisper_encoder, resolve_whisper_backbone

    backbone = resolve_whisper_backbone(config.backbone, cache_dir=cache_dir)
    return SpeechStudent(config, load_whisper_encoder(backbone), backbone)


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

    section = bundle.manifest.text
    if section is None or "text_head" not in bundle.groups:
        raise BundleError("bundle has no text tower (typed-text queries need a 'text' section and text_head)",
                          bundle.path)
    config = _config(bundle, "text.config",
                     lambda: TextTowerConfig.from_dict(section.tower_config(bundle.manifest.space_dim)))
    try:
        tower = TextTower(config)
        tower.load_trainable_state_dict(bundle.load_group("text_head"))
    except SpeechCTError as exc:
        raise BundleError(f"text tower cannot be built: {exc.message}", bundle.path) from exc
    return tower.eval()


def build_dictation_head(bundle: Bundle):
    """The dictation head, or None when the bundle has none."""
    from engine.models.dictation import build_head, head_config_from_dict

    section = bundle.manifest.dictation_head
    if section is None:
        return None
    config = _config(bundle, "dictation_head.config",
                     lambda: head_config_from_dict(section.head_config(bundle.manifest.space_dim)))
    head = build_head(config)
    bundle.load_into(head, section.group)
    return head.eval()


def build_prompt_bank(bundle: Bundle):
    """The zero-shot :class:`PromptBank` from ``prompts`` (texts + the group's ``embeddings``)."""
    from engine.findings import PromptBank

    section = bundle.manifest.prompts
    if section is None:
        raise BundleError("bundle has no zero-shot prompts ('prompts' section missing)", bundle.path)
    group = bundle.tensors[section.group]
    if "embeddings" not in group:
        raise BundleError(f"prompt group {section.group!r} has no 'embeddings' tensor", bundle.path)
    try:
        return PromptBank.from_rows(section.texts, group["embeddings"], labels=tuple(bundle.labels),
                                    kind=section.kind)
    except ValueError as exc:
        raise BundleError(f"prompts do not fit the labels: {exc}", bundle.path) from exc


def finding_auroc(bundle: Bundle) -> dict[str, float]:
    """Per-label validation AUROC from the manifest (``thresholds.auroc``), empty when absent."""
    section = bundle.manifest.thresholds
    return {} if section is None else dict(section.auroc)


def thresholds(bundle: Bundle) -> dict[str, float] | None:
    """Per-label thresholds from the manifest, or None (then ``engine.findings`` uses 0.5)."""
    section = bundle.manifest.thresholds
    return None if section is None else dict(section.values)


def rule_lexicon(bundle: Bundle):
    """The cascade reader's :class:`engine.mention_rules.RuleLexicon` (``dictation_reader.lexicon``)."""
    from engine.mention_rules import RuleLexicon

    section = bundle.manifest.dictation_reader
    if section is None:
        raise BundleError("bundle has no rule lexicon ('dictation_reader' section missing)", bundle.path)
    return _config(bundle, "dictation_reader.lexicon", lambda: RuleLexicon.from_dict(section.lexicon))


def build_transcript_reader(bundle: Bundle):
    """The learned transcript reader's head (:class:`engine.models.dictation.FrameDictationHead` over the text
    tower's token states), from ``dictation_reader.transcript_head``, in eval mode."""
    from engine.models.dictation import FrameDictationHead, FrameDictationHeadConfig

    section = bundle.manifest.dictation_reader
    head = None if section is None else section.transcript_head
    if head is None:
        raise BundleError("bundle has no transcript reader ('dictation_reader.transcript_head' missing)", bundle.path)
    config = _config(bundle, "dictation_reader.transcript_head",
                     lambda: FrameDictationHeadConfig.from_dict(head["config"]))
    model = FrameDictationHead(config)
    bundle.load_into(model, head["group"])
    return model.eval()


#: Every part :func:`build_part` builds, by name.
PARTS: dict[str, Callable[[Bundle], Any]] = {
    "spec": preprocess_spec,
    "ct": build_ct_encoder,
    "speech": build_speech_student,
    "text": build_text_tower,
    "dictation": build_dictation_head,
    "prompts": build_prompt_bank,
    "thresholds": thresholds,
    "auroc": finding_auroc,
    "rule_lexicon": rule_lexicon,
    "transcript_reader": build_transcript_reader,
}


def build_part(bundle: Bundle, name: str, **options: Any) -> Any:
    """Build one part of ``bundle`` by its :data:`PARTS` name (``options`` go to its builder)."""
    if name not in PARTS:
        raise KeyError(f"no bundle part {name!r} (parts: {', '.join(PARTS)})")
    return PARTS[name](bundle, **options)
