"""DINO's self-distillation loss (Caron et al., 2021), a pure function of logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from selfsup.losses.precision import full_precision


@full_precision
def dino_teacher_probs(logits: Tensor, center: Tensor, temperature: float | Tensor) -> Tensor:
    """Centred, sharpened teacher distribution: ``softmax((logits - center) / T)``.

    Shapes: logits (N, K), center (1, K) or (K,) -> (N, K) float32, detached.
    """
    return torch.softmax((logits.detach().float() - center) / temperature, dim=-1)


@full_precision
def dino_loss(
    student_logits: Sequence[Tensor], teacher_probs: Sequence[Tensor], student_temp: float = 0.1
) -> Tensor:
    """Cross-entropy between teacher and student over all cross-view pairs, averaged.

    Args:
        student_logits: one (N, K) tensor per student view; the first ``len(teacher_probs)``
            views are the same crops the teacher saw (the global crops), in the same order.
        teacher_probs: one (N, K) distribution per teacher view (see :func:`dino_teacher_probs`).
        student_temp: the student's softmax temperature.

    Returns:
        0-d tensor: mean over pairs ``(t, s)`` with ``s != t`` of
        ``mean_n sum_k -P_t[n, k] log softmax(S_s / student_temp)[n, k]``.

    Example::

        # 4 pairs (teacher, student): (g1, g2), (g1, l1), (g2, g1), (g2, l1)
        loss = dino_loss([s_g1, s_g2, s_l1], [p_g1, p_g2])
    """
    if len(student_logits) < len(teacher_probs):
        raise ValueError("the student must see at least the teacher's views")
    log_p = [torch.log_softmax(s.float() / student_temp, dim=-1) for s in student_logits]
    total, pairs = student_logits[0].new_zeros((), dtype=torch.float32), 0
    for t, q in enumerate(teacher_probs):
        for s, lp in enumerate(log_p):
            if s == t:
                continue
            total = total + (-(q * lp).sum(dim=-1)).mean()
            pairs += 1
    if pairs == 0:
        raise ValueError("no cross-view pairs: give at least two views")
    return total / pairs
