"""Zero-shot scoring of the findings, prompt banks, dictation findings and image/dictation discrepancies.

The labels, mention states and prompt pairs themselves are in :mod:`engine.labels`.
Zero-shot scoring here is the one implementation (``train.metrics`` and the runtime call it):
CT-CLIP's protocol, P(present) = softmax over the pair of scaled cosines of the CT embedding
with "{finding} is present." and "{finding} is not present." (docs/design.md §3).

Spoken prompts: several voices read each prompt; their embeddings are L2-normalised and averaged
per (label, polarity) into one prompt direction (:func:`average_prompt_voices`).

numpy and torch only (no scikit-learn in the engine).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from engine.labels import DICTATION_CLASSES, LABELS, prompt_pair
from engine.models.space import l2_normalize, similarity_logits

#: Threshold used when a bundle gives none for a label.
DEFAULT_THRESHOLD = 0.5


# --------------------------------------------------------------------------- zero-shot scoring


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def average_prompt_voices(embeddings) -> torch.Tensor:
    """One embedding per prompt from several spoken versions: ``[L, V, D]`` → ``[L, D]``.

    Each voice's embedding is L2-normalised first and the unit vectors are averaged (a mean
    direction: no voice weighs more because its embedding happens to be longer). The result is
    not re-normalised; every cosine downstream normalises it. ``[L, D]`` passes through.
    """
    emb = _as_tensor(embeddings).float()
    if emb.ndim == 2:
        return emb
    if emb.ndim != 3:
        raise ValueError(f"prompt embeddings must be [L, D] or [L, voices, D], got {tuple(emb.shape)}")
    return l2_normalize(emb).mean(dim=1)


def zero_shot_probabilities(image_emb, prompt_emb_present, prompt_emb_absent, logit_scale):
    """CT-CLIP's zero-shot P(present) per image and finding, ``[N, L]``.

    ``image_emb`` ``[N, D]`` (or ``[D]``); ``prompt_emb_present`` / ``prompt_emb_absent`` ``[L, D]``
    — the embeddings of ``"{finding} is present."`` / ``"{finding} is not present."`` — or
    ``[L, V, D]`` for spoken prompts read by V voices (averaged by :func:`average_prompt_voices`).
    ``logit_scale`` is the multiplier of cosines (a float, 0-d tensor or ``LogitScale``).

    For finding l: ``softmax([s·cos(x, p_l), s·cos(x, a_l)])[0]``, exactly CT-CLIP's
    ``apply_softmax`` over its model's two scaled similarities (``temperature.exp()·cos``).
    Returns a numpy float32 array when ``image_emb`` is numpy, else a float32 tensor.
    """
    as_numpy = not isinstance(image_emb, torch.Tensor)
    image = _as_tensor(image_emb).float()
    if image.ndim == 1:
        image = image[None]
    present = average_prompt_voices(prompt_emb_present).to(image.device)
    absent = average_prompt_voices(prompt_emb_absent).to(image.device)
    if present.shape != absent.shape:
        raise ValueError(f"present and absent prompts differ in shape: {tuple(present.shape)} vs {tuple(absent.shape)}")
    with torch.no_grad():
        pair = torch.stack(
            [similarity_logits(image, present, logit_scale), similarity_logits(image, absent, logit_scale)], dim=-1
        )
        prob = torch.softmax(pair, dim=-1)[..., 0]
    return prob.cpu().numpy() if as_numpy else prob


@dataclass
class PromptBank:
    """Embedded zero-shot prompts of one model: ``present`` / ``absent`` ``[L, D]`` in ``labels`` order.

    ``kind`` is ``"text"`` (the text tower embedded the prompt texts) or ``"spoken"`` (the speech
    encoder embedded recordings of them; several voices already averaged).
    """

    labels: tuple[str, ...]
    present: torch.Tensor
    absent: torch.Tensor
    kind: str = "text"

    def __post_init__(self):
        self.labels = tuple(self.labels)
        self.present = average_prompt_voices(self.present)
        self.absent = average_prompt_voices(self.absent)
        if self.present.shape != self.absent.shape or self.present.shape[0] != len(self.labels):
            raise ValueError(
                f"prompt bank for {len(self.labels)} labels has present {tuple(self.present.shape)} "
                f"and absent {tuple(self.absent.shape)}"
            )

    @classmethod
    def from_rows(cls, texts: list[str], embeddings, labels=LABELS, kind: str = "text") -> PromptBank:
        """Build from rows named by their prompt text (a bundle's ``prompts.texts`` + ``embeddings``).

        Each text must be one of ``prompt_pair(label)``; rows that repeat a text (spoken prompts
        in several voices) are averaged as in :func:`average_prompt_voices`. Every label needs
        both polarities.
        """
        emb = _as_tensor(embeddings).float()
        if emb.ndim != 2 or emb.shape[0] != len(texts):
            raise ValueError(f"{len(texts)} prompt texts but embeddings of shape {tuple(emb.shape)}")
        lookup = {}
        for label in labels:
            p, a = prompt_pair(label)
            lookup[p], lookup[a] = (label, 0), (label, 1)
        rows: dict[tuple[str, int], list[torch.Tensor]] = {}
        for text, row in zip(texts, emb):
            key = lookup.get(text.strip())
            if key is None:
                raise ValueError(f"prompt text {text!r} is not a zero-shot prompt of a known label")
            rows.setdefault(key, []).append(row)
        missing = [f"{lab} ({'present' if pol == 0 else 'absent'})" for lab in labels for pol in (0, 1)
                   if (lab, pol) not in rows]
        if missing:
            raise ValueError(f"prompts missing for {', '.join(missing[:3])}" + (" …" if len(missing) > 3 else ""))

        def mean_dir(key):
            stack = torch.stack(rows[key])
            return stack[0] if len(stack) == 1 else l2_normalize(stack).mean(dim=0)

        present = torch.stack([mean_dir((lab, 0)) for lab in labels])
        absent = torch.stack([mean_dir((lab, 1)) for lab in labels])
        return cls(tuple(labels), present, absent, kind)

    def to_rows(self) -> tuple[list[str], torch.Tensor]:
        """(texts, embeddings ``[2L, D]``) in the order present, absent per label — for a bundle."""
        texts = [t for label in self.labels for t in prompt_pair(label)]
        emb = torch.stack([self.present, self.absent], dim=1).reshape(2 * len(self.labels), -1)
        return texts, emb

    def probabilities(self, image_emb, logit_scale):
        """:func:`zero_shot_probabilities` with this bank."""
        return zero_shot_probabilities(image_emb, self.present, self.absent, logit_scale)


#: Validation AUROC below which the image model's call on a finding is not checked against the
#: dictation: a weak score would flag the radiologist far more often wrongly than rightly. It is
#: compared with the lower bound of the AUROC's bootstrap CI (a bundle's ``thresholds.auroc``, see
#: :data:`engine.weights.manifest.AUROC_STATISTICS`): a finding passes when it is reliable with 95 % confidence, not when a
#: few hundred validation studies happened to rank it well.
RELIABLE_AUROC = 0.75

@dataclass(frozen=True)
class FindingScore:
    """One finding for one CT: P(present), the threshold it is compared with, and the decision.

    ``auroc``: the bundle's validation AUROC for this finding (how much to trust the call), as the
    reliability gate reads it: the lower CI bound, or the point estimate in older bundles
    (:data:`engine.weights.manifest.AUROC_STATISTICS`); None when the bundle does not say."""

    label: str
    probability: float
    threshold: float
    positive: bool  # probability > threshold (CT-CLIP's strict comparison)
    auroc: float | None = None


def _threshold_list(thresholds, labels) -> list[float]:
    if thresholds is None:
        return [DEFAULT_THRESHOLD] * len(labels)
    if isinstance(thresholds, Mapping):
        return [float(thresholds.get(label, DEFAULT_THRESHOLD)) for label in labels]
    values = [float(t) for t in np.asarray(thresholds, dtype=float).reshape(-1)]
    if len(values) != len(labels):
        raise ValueError(f"{len(values)} thresholds for {len(labels)} labels")
    return values


def rank_findings(ct_embedding, prompts: PromptBank, logit_scale, thresholds=None,
                  auroc: Mapping[str, float] | None = None) -> list[FindingScore]:
    """The findings of one CT, most probable first.

    ``ct_embedding`` ``[D]`` or ``[1, D]``; ``thresholds`` maps label → threshold (a bundle's
    ``thresholds.values``), or is a sequence in ``prompts.labels`` order, or None (0.5 each);
    ``auroc`` maps label → validation AUROC (a bundle's ``thresholds.auroc``: the lower CI bound, or
    the point estimate in older bundles), carried along.
    Ties in probability keep label order.
    """
    prob = _as_tensor(ct_embedding).float().reshape(1, -1)
    p = prompts.probabilities(prob, logit_scale)[0].tolist()
    thr = _threshold_list(thresholds, prompts.labels)
    auroc = auroc or {}
    scores = [FindingScore(label, float(pi), t, bool(pi > t),
                           None if auroc.get(label) is None else float(auroc[label]))
              for label, pi, t in zip(prompts.labels, p, thr)]
    return sorted(scores, key=lambda s: -s.probability)


# --------------------------------------------------------------------------- dictation


@dataclass(frozen=True)
class DictationFinding:
    """What the dictation says about one finding: ``status`` in :data:`DICTATION_CLASSES`,
    ``confidence`` = the softmax probability of that status, ``probabilities`` per class."""

    label: str
    status: str
    confidence: float
    probabilities: dict[str, float]


def dictation_findings(head_logits, labels=LABELS, classes=DICTATION_CLASSES) -> list[DictationFinding]:
    """Per-finding status from the dictation head's logits ``[L, C]`` (``classes`` order), label order kept."""
    logits = _as_tensor(head_logits).float()
    if logits.ndim == 3 and logits.shape[0] == 1:
        logits = logits[0]
    if logits.shape != (len(labels), len(classes)):
        raise ValueError(f"dictation logits must be [{len(labels)}, {len(classes)}], got {tuple(logits.shape)}")
    prob = torch.softmax(logits, dim=-1)
    out = []
    for label, row in zip(labels, prob.tolist()):
        k = int(np.argmax(row))
        out.append(DictationFinding(label, classes[k], float(row[k]), dict(zip(classes, map(float, row)))))
    return out


@dataclass(frozen=True)
class Discrepancy:
    """Image and dictation disagree about one finding.

    ``kind``: ``"omitted"`` (image positive, dictation silent), ``"negated"`` (image positive,
    dictation says absent) or ``"unsupported"`` (dictated present, image below threshold).
    ``margin`` = ``probability − threshold`` (how far the image is from the decision).
    """

    label: str
    kind: str
    probability: float
    threshold: float
    margin: float
    dictation_status: str
    dictation_confidence: float


DISCREPANCY_KINDS = ("negated", "omitted", "unsupported")


def discrepancies(
    findings: list[FindingScore], dictation: list[DictationFinding], *, min_dictation_confidence: float = 0.0,
    min_auroc: float = 0.0,
) -> list[Discrepancy]:
    """Where the image and the dictation disagree, most serious first.

    Image positive (P > threshold) but the dictation negates it → ``negated``; or does not
    mention it → ``omitted``; dictated present but the image is not positive → ``unsupported``.
    An ``uncertain`` (hedged) mention is a mention and commits to nothing: it is never a discrepancy.
    Dictation statuses less confident than ``min_dictation_confidence`` are not acted on, nor
    findings whose validation AUROC is known and below ``min_auroc`` (:func:`unchecked`).
    Order: by kind (:data:`DISCREPANCY_KINDS`), then by how far the image is from its threshold.
    """
    said = {d.label: d for d in dictation}
    skip = set(unchecked(findings, min_auroc))
    out = []
    for f in findings:
        d = said.get(f.label)
        if d is None or d.confidence < min_dictation_confidence or f.label in skip:
            continue
        kind = None
        if f.positive and d.status == "absent":
            kind = "negated"
        elif f.positive and d.status == "not mentioned":
            kind = "omitted"
        elif not f.positive and d.status == "present":
            kind = "unsupported"
        if kind is not None:
            out.append(Discrepancy(f.label, kind, f.probability, f.threshold, f.probability - f.threshold,
                                   d.status, d.confidence))
    return sorted(out, key=lambda x: (DISCREPANCY_KINDS.index(x.kind), -abs(x.margin)))


def unchecked(findings: list[FindingScore], min_auroc: float) -> list[str]:
    """Labels whose image call is too weak (known validation AUROC below ``min_auroc``) to be
    checked against the dictation, in ``findings`` order. ``FindingScore.auroc`` is what the bundle's
    ``thresholds.auroc`` holds: in bundles exported now the lower bound of the AUROC's bootstrap CI,
    so a finding is checked only when its AUROC is at least ``min_auroc`` with 95 % confidence."""
    return [f.label for f in findings if f.auroc is not None and f.auroc < min_auroc]
