"""The dictation heads: what the radiologist *said* about each finding.

For every one of the 18 findings a classifier over the mention states — present / uncertain (hedged) /
absent (negated) / not mentioned, as the CheXpert labeler has them (the paper's speech-classification
task had three) — output logits ``[B, n_labels, n_classes]`` in :data:`CLASSES` order. Heads shipped
before the fourth state have ``n_classes = 3`` (:data:`engine.labels.LEGACY_DICTATION_CLASSES`). Two kinds, named by ``kind`` in their config:

- ``embedding`` (:class:`DictationHead`): on the pooled speech embedding ``[B, dim]``. Cheap,
  but mean pooling over 30 s windows keeps little of "no X" against "X".
- ``frames`` (:class:`FrameDictationHead`): on the student's encoder frames before pooling
  (``SpeechStudent.upper_frames``), one learned query per finding attending over the whole
  dictation, with a learned "nothing here" slot so an unmentioned finding has somewhere to look.

Targets are class indices into :data:`CLASSES` (training reads them from the mentions file).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.labels import CLASS_SETS, DICTATION_CLASSES, LABELS
from engine.models.speech import padding_mask

#: Class order of the head's last axis.
CLASSES: tuple[str, ...] = DICTATION_CLASSES  # one spelling, defined beside the findings


class _HeadConfig:
    """What both head configs share: a ``kind`` fixed per class, and dict round trips."""

    KIND = ""

    def __post_init__(self):
        if self.kind != self.KIND:
            raise ValueError(f"{type(self).__name__}.kind must be {self.KIND!r}, got {self.kind!r}")
        if self.n_classes not in CLASS_SETS:
            raise ValueError(f"n_classes must be one of {sorted(CLASS_SETS)}, got {self.n_classes}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown {cls.KIND} dictation head config keys: {sorted(unknown)}")
        return cls(**data)


@dataclass
class DictationHeadConfig(_HeadConfig):
    """``hidden = 0``: one linear map per finding; else a shared hidden layer (GELU) first."""

    KIND = "embedding"

    dim: int = 512
    hidden: int = 256
    n_labels: int = len(LABELS)
    dropout: float = 0.1
    kind: str = "embedding"
    n_classes: int = len(CLASSES)


class DictationHead(nn.Module):
    """Speech embedding ``[B, dim]`` -> logits ``[B, n_labels, n_classes]``."""

    input = "embedding"

    def __init__(self, config: DictationHeadConfig | None = None):
        super().__init__()
        self.config = config or DictationHeadConfig()
        c = self.config
        out = c.n_labels * c.n_classes
        if c.hidden > 0:
            self.net = nn.Sequential(nn.Linear(c.dim, c.hidden), nn.GELU(), nn.Dropout(c.dropout),
                                     nn.Linear(c.hidden, out))
        else:
            self.net = nn.Sequential(nn.Linear(c.dim, out))

    def forward(self, speech: Tensor) -> Tensor:
        x = F.normalize(speech.float(), dim=-1)
        return self.net(x).view(speech.shape[0], self.config.n_labels, self.config.n_classes)

    @torch.no_grad()
    def probabilities(self, speech: Tensor) -> Tensor:
        """``[B, n_labels, n_classes]`` class probabilities (eval mode)."""
        was = self.training
        self.eval()
        try:
            return self(speech).softmax(dim=-1)
        finally:
            self.train(was)

    def predict(self, speech: Tensor) -> list[dict[str, str]]:
        """Per utterance ``{finding: class name}`` for the most probable class of each finding."""
        best = self.probabilities(speech).argmax(dim=-1)
        labels = LABELS[: self.config.n_labels]
        classes = CLASS_SETS[self.config.n_classes]
        return [{lab: classes[int(k)] for lab, k in zip(labels, row)} for row in best]


def dictation_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over utterances and findings; ``targets`` ``[B, n_labels]`` class indices
    (``-100`` ignored)."""
    targets = targets.to(logits.device).long()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)


# --------------------------------------------------------------------------- frame head


@dataclass
class FrameDictationHeadConfig(_HeadConfig):
    """``dim``: encoder frame width; frames are averaged in groups of ``stride`` (20 ms each), then
    projected to ``hidden``; a ``kernel``-wide convolution adds local context (a negation word and
    the finding it governs sit within a second of each other); ``heads`` attention heads per finding.
    ``shared_readout``: one state read-out for every finding (each keeps its queries, null slot and bias),
    so that "not seen" after *effusion* teaches "not seen" after *nodule* (docs/reader-experiments.md)."""

    dim: int = 512
    hidden: int = 128
    n_labels: int = len(LABELS)
    stride: int = 2
    kernel: int = 9
    heads: int = 4
    dropout: float = 0.1
    kind: str = "frames"
    n_classes: int = len(CLASSES)
    shared_readout: bool = False

    KIND = "frames"

    def __post_init__(self):
        super().__post_init__()
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.stride < 1 or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"need stride >= 1 and an odd kernel, got {self.stride}, {self.kernel}")


def head_config_from_dict(data: dict) -> DictationHeadConfig | FrameDictationHeadConfig:
    """Either head's config by its ``kind`` (bundles written before ``kind`` existed hold ``embedding`` heads)."""
    return head_config_class(data.get("kind", DictationHeadConfig.KIND)).from_dict(data)


def head_config_class(kind: str) -> type[DictationHeadConfig] | type[FrameDictationHeadConfig]:
    """The config class of a head ``kind``."""
    for cls in (DictationHeadConfig, FrameDictationHeadConfig):
        if kind == cls.KIND:
            return cls
    raise ValueError(f"unknown dictation head kind {kind!r} (known: embedding, frames)")


def build_head(config: DictationHeadConfig | FrameDictationHeadConfig) -> nn.Module:
    return FrameDictationHead(config) if isinstance(config, FrameDictationHeadConfig) else DictationHead(config)


def pad_utterances(frames: list[Tensor]) -> tuple[Tensor, Tensor]:
    """``[T_i, D]`` frame sequences -> zero-padded ``[U, max T, D]`` and ``lengths [U]``."""
    if not frames:
        raise ValueError("no utterances")
    lengths = torch.tensor([f.shape[0] for f in frames], dtype=torch.long)
    if int(lengths.min()) < 1:
        raise ValueError("every utterance needs at least one frame")
    out = torch.zeros(len(frames), int(lengths.max()), frames[0].shape[-1], dtype=torch.float32)
    for i, f in enumerate(frames):
        out[i, : f.shape[0]] = torch.as_tensor(f).float()
    return out, lengths


class FrameDictationHead(nn.Module):
    """Encoder frames ``[U, T, dim]`` + ``lengths [U]`` -> logits ``[U, n_labels, n_classes]``.

    One utterance = all frames of its windows, in order (``SpeechStudent.speech_frames``).
    Padding past each length never reaches a real frame's output.
    """

    input = "frames"

    def __init__(self, config: FrameDictationHeadConfig | None = None):
        super().__init__()
        self.config = c = config or FrameDictationHeadConfig()
        self.norm_in = nn.LayerNorm(c.dim)
        self.proj = nn.Linear(c.dim, c.hidden)
        self.context = nn.Conv1d(c.hidden, c.hidden, c.kernel, padding=c.kernel // 2)
        self.keys = nn.Linear(c.hidden, c.hidden)
        self.values = nn.Linear(c.hidden, c.hidden)
        dh = c.hidden // c.heads
        self.queries = nn.Parameter(torch.randn(c.n_labels, c.heads, dh) * dh**-0.5)
        # the "nothing about this finding here" slot: a learned score and value per finding and head
        self.null_score = nn.Parameter(torch.zeros(c.n_labels, c.heads))
        self.null_value = nn.Parameter(torch.zeros(c.n_labels, c.heads, dh))
        self.drop = nn.Dropout(c.dropout)
        self.norm_out = nn.LayerNorm(c.hidden)
        self.mix = nn.Linear(c.hidden, c.hidden)
        readouts = 1 if c.shared_readout else c.n_labels
        self.out_weight = nn.Parameter(torch.randn(readouts, c.hidden, c.n_classes) * c.hidden**-0.5)
        self.out_bias = nn.Parameter(torch.zeros(c.n_labels, c.n_classes))

    def downsample(self, frames: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Average real frames in groups of ``stride`` (a partial last group averages what it has)."""
        s = self.config.stride
        if s == 1:
            return frames, lengths
        u, t, d = frames.shape
        pad = (-t) % s
        mask = padding_mask(lengths, t).to(frames.dtype)
        x = F.pad(frames * mask[..., None], (0, 0, 0, pad)).view(u, (t + pad) // s, s, d).sum(2)
        n = F.pad(mask, (0, pad)).view(u, (t + pad) // s, s).sum(2)
        return x / n.clamp(min=1)[..., None], (lengths + s - 1) // s

    def forward(self, frames: Tensor, lengths: Tensor) -> Tensor:
        c = self.config
        if frames.dim() != 3 or frames.shape[-1] != c.dim or lengths.shape != frames.shape[:1]:
            raise ValueError(f"frame dictation head needs frames [U, T, {c.dim}] and lengths [U], "
                             f"got {tuple(frames.shape)}, {tuple(lengths.shape)}")
        lengths = lengths.to(frames.device)
        x, lengths = self.downsample(frames.float(), lengths)
        u, t, _ = x.shape
        mask = padding_mask(lengths, t)
        x = self.drop(F.gelu(self.proj(self.norm_in(x)))) * mask[..., None]
        x = x + F.gelu(self.context(x.transpose(1, 2))).transpose(1, 2)
        x = x * mask[..., None]
        dh = c.hidden // c.heads
        k = self.keys(x).view(u, t, c.heads, dh)
        v = self.values(x).view(u, t, c.heads, dh)
        scores = torch.einsum("lhd,uthd->ulht", self.queries, k) * dh**-0.5
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        null = self.null_score[None, :, :, None].expand(u, -1, -1, 1)
        weights = torch.cat([scores, null], dim=-1).softmax(dim=-1)
        pooled = torch.einsum("ulht,uthd->ulhd", weights[..., :t], v) + weights[..., t:] * self.null_value[None]
        h = self.norm_out(pooled.reshape(u, c.n_labels, c.hidden))
        h = self.drop(F.gelu(self.mix(h))) + h
        weight = self.out_weight.expand(c.n_labels, -1, -1)
        return torch.einsum("ulh,lhc->ulc", h, weight) + self.out_bias

    @torch.no_grad()
    def probabilities(self, frames: Tensor, lengths: Tensor) -> Tensor:
        """``[U, n_labels, n_classes]`` class probabilities (eval mode)."""
        was = self.training
        self.eval()
        try:
            return self(frames, lengths).softmax(dim=-1)
        finally:
            self.train(was)
