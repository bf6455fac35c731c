"""The shared CT / speech / text space: normalisation, logit scale and the losses.

One place that training and inference share, so the scaling of similarities can never drift
between the trainer, zero-shot scoring and retrieval.

Conventions (all functions):
- embeddings are float tensors ``[batch, dim]``; they need not be normalised on input, every
  similarity here L2-normalises first (normalising a unit vector again changes nothing);
- ``logit_scale`` is the *multiplier* applied to cosines (CT-CLIP's ``temperature.exp()``), given
  as a float, a 0-d tensor, or a :class:`LogitScale` module;
- losses are computed in float32 whatever the input dtype (bf16/fp16 logits lose the softmax).

CT-CLIP's logit scale, reproduced exactly: ``self.temperature = nn.Parameter(torch.tensor(1.))``
and every similarity is multiplied by ``self.temperature.exp()`` — so the stored parameter is
the *log* of the multiplier (despite its name it is not a temperature), it starts at 1.0, the
multiplier starts at e ≈ 2.718, and CT-CLIP never clamps it. :class:`LogitScale` stores the same
log value (``log_scale``; import CT-CLIP's ``temperature`` into it unchanged) and clamps only
when ``max_scale`` is given (open_clip clamps the multiplier at 100).

CT-CLIP's contrastive loss (``CTCLIP.forward`` with ``return_loss``) is the symmetric InfoNCE:
text→image cross-entropy and image→text cross-entropy over the scaled cosine matrix, with the
matching pair on the diagonal, each averaged over the batch, then ``(t2i + i2t) / 2``.
:func:`info_nce` computes exactly that (via ``F.cross_entropy``, which is the same
``-log(exp(s_ii) / Σ_j exp(s_ij))`` but numerically stable).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: CT-CLIP's initial value of its ``temperature`` parameter (the log of the multiplier).
CTCLIP_LOG_SCALE_INIT = 1.0


def l2_normalize(x: Tensor, dim: int = -1, eps: float = 1e-12) -> Tensor:
    """``x / ||x||`` along ``dim`` (a zero vector stays zero instead of becoming NaN)."""
    return F.normalize(x, p=2.0, dim=dim, eps=eps)


class LogitScale(nn.Module):
    """Learnable multiplier of cosine similarities, stored as its log (CT-CLIP's ``temperature``).

    ``forward()`` returns ``exp(log_scale)``, clamped to ``max_scale`` when one is set (the clamp
    is on the returned multiplier only, so the parameter and its gradient stay CT-CLIP's when the
    clamp is inactive).
    """

    def __init__(self, init_log_scale: float = CTCLIP_LOG_SCALE_INIT, max_scale: float | None = None):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(float(init_log_scale)))
        self.max_scale = max_scale

    @classmethod
    def from_multiplier(cls, scale: float, max_scale: float | None = None) -> LogitScale:
        """A module whose multiplier is ``scale`` (e.g. the ``space.logit_scale`` of a bundle)."""
        if not scale > 0:
            raise ValueError(f"logit scale must be > 0, got {scale}")
        return cls(math.log(scale), max_scale=max_scale)

    def forward(self) -> Tensor:
        scale = self.log_scale.exp()
        if self.max_scale is not None:
            scale = scale.clamp(max=self.max_scale)
        return scale

    @property
    def value(self) -> float:
        """The current multiplier as a Python float (what a bundle's ``space.logit_scale`` stores)."""
        return float(self.forward().detach())

    def extra_repr(self) -> str:
        return f"scale={self.value:.4f}, max_scale={self.max_scale}"


def _scale_tensor(logit_scale: float | Tensor | LogitScale) -> Tensor | float:
    if isinstance(logit_scale, LogitScale):
        return logit_scale()
    return logit_scale


def similarity_logits(a: Tensor, b: Tensor, logit_scale: float | Tensor | LogitScale) -> Tensor:
    """Scaled cosine similarities ``scale · â @ b̂ᵀ`` as float32 ``[len(a), len(b)]``."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected [n, d] and [m, d] embeddings, got {tuple(a.shape)} and {tuple(b.shape)}")
    a32 = l2_normalize(a.float())
    b32 = l2_normalize(b.float())
    return _scale_tensor(logit_scale) * (a32 @ b32.T)


def info_nce(
    a: Tensor,
    b: Tensor,
    logit_scale: float | Tensor | LogitScale,
    *,
    all_a: Tensor | None = None,
    all_b: Tensor | None = None,
    offset: int = 0,
) -> Tensor:
    """Symmetric InfoNCE between paired rows of ``a`` and ``b`` (row i of a matches row i of b).

    ``loss = (CE(s·â b̂ᵀ, labels) + CE(s·b̂ âᵀ, labels)) / 2`` with ``labels = offset + arange(n)``,
    each cross-entropy a mean over the local rows.

    Single process: pass ``a`` and ``b`` only (``all_* = None``, ``offset = 0``).

    Distributed (DDP): every rank passes its local rows as ``a``/``b``, the all-gathered rows of
    every rank as ``all_a``/``all_b`` (``[world · n, d]``, rank order, where this rank's slice is
    its *own* local tensors so gradients flow through them — e.g. ``torch.cat`` of the gathered
    list with ``gathered[rank] = a``), and ``offset = rank · n``, the index of its first row in the
    gathered batch. Each rank then scores its local rows against the global batch; DDP's gradient
    average over ranks makes that the mean over the global batch (open_clip's "local loss").
    """
    if a.shape != b.shape:
        raise ValueError(
            f"paired embeddings must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    all_a = a if all_a is None else all_a
    all_b = b if all_b is None else all_b
    n = a.shape[0]
    if offset < 0 or offset + n > all_a.shape[0] or all_a.shape[0] != all_b.shape[0]:
        raise ValueError(
            f"offset {offset} with {n} local rows does not fit gathered batches {all_a.shape[0]}/{all_b.shape[0]}"
        )
    labels = torch.arange(offset, offset + n, device=a.device)
    loss_ab = F.cross_entropy(similarity_logits(a, all_b, logit_scale), labels)
    loss_ba = F.cross_entropy(similarity_logits(b, all_a, logit_scale), labels)
    return (loss_ab + loss_ba) / 2


def distillation_loss(student: Tensor, teacher_text: Tensor) -> Tensor:
    """``mean_i(1 − cos(student_i, teacher_i))`` in float32; the teacher is a fixed target (detached)."""
    if student.shape != teacher_text.shape:
        raise ValueError(
            f"student and teacher embeddings differ in shape: {tuple(student.shape)} vs {tuple(teacher_text.shape)}"
        )
    cos = F.cosine_similarity(student.float(), teacher_text.detach().float(), dim=-1, eps=1e-12)
    return (1.0 - cos).mean()


def student_loss(
    speech: Tensor,
    ct: Tensor,
    teacher_text: Tensor,
    logit_scale: float | Tensor | LogitScale,
    distill_weight: float = 1.0,
    *,
    all_speech: Tensor | None = None,
    all_ct: Tensor | None = None,
    offset: int = 0,
    return_parts: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """SpeechCT-CLIP's student objective: ``InfoNCE(speech, CT) + λ · distill(speech, teacher text)``.

    ``teacher_text`` is the frozen teacher's embedding of the text that was read aloud (local
    rows only: distillation is per pair, no gathering needed). ``all_speech``/``all_ct``/``offset``
    as in :func:`info_nce`. With ``return_parts`` also returns ``{"info_nce", "distill"}`` (detached)
    for logging.
    """
    contrastive = info_nce(speech, ct, logit_scale, all_a=all_speech, all_b=all_ct, offset=offset)
    distill = distillation_loss(speech, teacher_text)
    total = contrastive + distill_weight * distill
    if return_parts:
        return total, {"info_nce": contrastive.detach(), "distill": distill.detach()}
    return total
