"""The dictation head: what the radiologist *said* about each finding, from the speech embedding.

For every one of the 18 findings a 3-way classifier — present / absent (negated) / not
mentioned — on the student's speech embedding (the paper's speech-classification task). Input
``[B, dim]`` speech embeddings (unnormalised; the head L2-normalises, as the shared space
does); output logits ``[B, n_labels, 3]`` in :data:`CLASSES` order.

Targets come from the synthetic mentions CSV (1 = reported present, 0 = reported absent,
−1 = not mentioned); :func:`mention_to_class` maps them to class indices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.findings import DICTATION_CLASSES, LABELS

#: Class order of the head's last axis.
CLASSES: tuple[str, ...] = DICTATION_CLASSES  # one spelling, defined beside the findings
#: mentions CSV value -> class index.
_MENTION_TO_CLASS = {1: 0, 0: 1, -1: 2}


@dataclass
class DictationHeadConfig:
    """``hidden = 0``: one linear map per finding; else a shared hidden layer (GELU) first."""

    dim: int = 512
    hidden: int = 256
    n_labels: int = len(LABELS)
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DictationHeadConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown dictation head config keys: {sorted(unknown)}")
        return cls(**data)


def mention_to_class(mentions: Tensor) -> Tensor:
    """Mentions (1 / 0 / −1, any integer tensor) -> class indices (0 present, 1 absent, 2 not mentioned)."""
    mentions = mentions.long()
    out = torch.full_like(mentions, -100)  # ignore_index for anything unexpected
    for value, cls in _MENTION_TO_CLASS.items():
        out[mentions == value] = cls
    return out


class DictationHead(nn.Module):
    """Speech embedding ``[B, dim]`` -> logits ``[B, n_labels, 3]``."""

    def __init__(self, config: DictationHeadConfig | None = None):
        super().__init__()
        self.config = config or DictationHeadConfig()
        c = self.config
        out = c.n_labels * len(CLASSES)
        if c.hidden > 0:
            self.net = nn.Sequential(nn.Linear(c.dim, c.hidden), nn.GELU(), nn.Dropout(c.dropout),
                                     nn.Linear(c.hidden, out))
        else:
            self.net = nn.Sequential(nn.Linear(c.dim, out))

    def forward(self, speech: Tensor) -> Tensor:
        x = F.normalize(speech.float(), dim=-1)
        return self.net(x).view(speech.shape[0], self.config.n_labels, len(CLASSES))

    @torch.no_grad()
    def probabilities(self, speech: Tensor) -> Tensor:
        """``[B, n_labels, 3]`` class probabilities (eval mode)."""
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
        return [{lab: CLASSES[int(k)] for lab, k in zip(labels, row)} for row in best]


def dictation_loss(logits: Tensor, mentions: Tensor) -> Tensor:
    """Mean cross-entropy over utterances and findings; ``mentions`` ``[B, n_labels]`` in 1/0/−1."""
    targets = mention_to_class(mentions.to(logits.device))
    return F.cross_entropy(logits.reshape(-1, len(CLASSES)).float(), targets.reshape(-1), ignore_index=-100)
