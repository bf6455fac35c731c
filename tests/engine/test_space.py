"""The shared space: logit scale as CT-CLIP has it, InfoNCE, distillation, student loss."""

from __future__ import annotations

import math

import pytest
import torch

from engine.models.space import (
    CTCLIP_LOG_SCALE_INIT,
    LogitScale,
    distillation_loss,
    info_nce,
    l2_normalize,
    similarity_logits,
    student_loss,
)

torch.set_num_threads(1)

# a = [[3, 4], [1, 0]] -> unit rows [[.6, .8], [1, 0]]; b = [[1, 0], [0, 2]] -> [[1, 0], [0, 1]].
A = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
B = torch.tensor([[1.0, 0.0], [0.0, 2.0]])


def _lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def _hand_info_nce(scale: float) -> float:
    # a->b logits: scale * [[.6, .8], [1, 0]], targets on the diagonal
    ab = ((-0.6 * scale + _lse(0.6 * scale, 0.8 * scale)) + (-0.0 + _lse(1.0 * scale, 0.0))) / 2
    # b->a logits: the transpose, scale * [[.6, 1], [.8, 0]]
    ba = ((-0.6 * scale + _lse(0.6 * scale, 1.0 * scale)) + (-0.0 + _lse(0.8 * scale, 0.0))) / 2
    return (ab + ba) / 2


def test_l2_normalize_rows_and_zero_vector():
    out = l2_normalize(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    assert torch.allclose(out, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


def test_logit_scale_starts_like_ctclip():
    scale = LogitScale()
    assert scale.log_scale.item() == CTCLIP_LOG_SCALE_INIT == 1.0  # CT-CLIP: nn.Parameter(torch.tensor(1.))
    assert scale().item() == pytest.approx(math.e)  # and multiplies by temperature.exp()
    assert scale.value == pytest.approx(math.e)
    assert LogitScale.from_multiplier(14.0).value == pytest.approx(14.0)
    clamped = LogitScale(init_log_scale=math.log(500.0), max_scale=100.0)
    assert clamped().item() == pytest.approx(100.0)
    with pytest.raises(ValueError):
        LogitScale.from_multiplier(0.0)


def test_logit_scale_learns_through_the_loss():
    scale = LogitScale()
    info_nce(A, B, scale).backward()
    assert scale.log_scale.grad is not None and scale.log_scale.grad.item() != 0.0


def test_similarity_logits_hand_values():
    logits = similarity_logits(A, B, 2.0)
    assert torch.allclose(logits, torch.tensor([[1.2, 1.6], [2.0, 0.0]]), atol=1e-6)
    assert logits.dtype == torch.float32


def test_info_nce_hand_value():
    for scale in (1.0, 2.0, math.e):
        assert info_nce(A, B, scale).item() == pytest.approx(_hand_info_nce(scale), abs=1e-6)
    # LogitScale module and tensor scale give the same value
    assert info_nce(A, B, LogitScale()).item() == pytest.approx(_hand_info_nce(math.e), abs=1e-6)
    assert info_nce(A, B, torch.tensor(2.0)).item() == pytest.approx(_hand_info_nce(2.0), abs=1e-6)


def test_info_nce_prefers_matched_pairs_and_is_symmetric():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, generator=g)
    y = x + 0.05 * torch.randn(6, 8, generator=g)
    matched = info_nce(x, y, 10.0)
    shuffled = info_nce(x, y[torch.tensor([1, 2, 3, 4, 5, 0])], 10.0)
    assert matched < shuffled
    assert info_nce(x, y, 10.0).item() == pytest.approx(info_nce(y, x, 10.0).item(), abs=1e-6)


def test_info_nce_low_precision_inputs_compute_in_float32():
    out = info_nce(A.to(torch.bfloat16), B.to(torch.bfloat16), 2.0)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(_hand_info_nce(2.0), abs=1e-2)


def test_info_nce_distributed_local_offsets_average_to_the_global_loss():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    world, n = 4, 2
    per_rank = [
        info_nce(a[r * n : (r + 1) * n], b[r * n : (r + 1) * n], 3.0, all_a=a, all_b=b, offset=r * n)
        for r in range(world)
    ]
    assert (sum(per_rank) / world).item() == pytest.approx(info_nce(a, b, 3.0).item(), abs=1e-6)
    with pytest.raises(ValueError):
        info_nce(a[:2], b[:2], 3.0, all_a=a, all_b=b, offset=7)


def test_distillation_loss_hand_value_and_teacher_is_fixed():
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 1.0], [2.0, 2.0]], requires_grad=True)
    loss = distillation_loss(student, teacher)  # cos = 0 and 1
    assert loss.item() == pytest.approx(0.5, abs=1e-7)
    loss.backward()
    assert student.grad is not None and teacher.grad is None
    with pytest.raises(ValueError):
        distillation_loss(student, teacher[:1])


def test_student_loss_is_info_nce_plus_weighted_distillation():
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # cos(A, teacher) = .6 and 0 -> distill = (0.4 + 1) / 2
    total, parts = student_loss(A, B, teacher, 2.0, distill_weight=0.5, return_parts=True)
    assert parts["distill"].item() == pytest.approx(0.7, abs=1e-6)
    assert parts["info_nce"].item() == pytest.approx(_hand_info_nce(2.0), abs=1e-6)
    assert total.item() == pytest.approx(_hand_info_nce(2.0) + 0.5 * 0.7, abs=1e-6)
    assert student_loss(A, B, teacher, 2.0, 0.0).item() == pytest.approx(_hand_info_nce(2.0), abs=1e-6)
