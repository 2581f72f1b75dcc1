"""Copying values from reference frames by attention (Vondrick et al. 2018, "Tracking Emerges by
Colorizing Videos").

For a target location ``j`` with embedding ``f_j`` and reference locations ``i`` with embeddings
``f_i`` and values ``c_i``, the attention is ``A_ji = softmax_i(f_i . f_j / T)`` and the copy is
``c^_j = sum_i A_ji c_i``. With one-hot colour labels as values, ``c^_j`` is a distribution over
colours; the training loss is its cross-entropy against the target's own colour label.

All functions take batches of flattened locations: targets ``(N, Q, D)``, references
``(N, R, D)`` (R = frames x locations of the reference frames), and compute in float32 whatever
the autocast dtype (an attention over hundreds of locations in bf16 loses the small weights).

Example:
    >>> import torch
    >>> f = torch.randn(2, 5, 8)
    >>> a = copy_attention(f, f, temperature=0.01)      # a target identical to its reference
    >>> bool(torch.allclose(a, torch.eye(5).expand(2, 5, 5), atol=1e-4))
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "colour_copy_loss",
    "colour_copy_loss_from_logits",
    "copy_attention",
    "copy_logits",
    "copy_values",
]


def copy_logits(target: Tensor, reference: Tensor, temperature: float) -> Tensor:
    """Attention logits ``f_j . f_i / T``: (N, Q, D), (N, R, D) -> (N, Q, R) float32."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with torch.autocast(target.device.type, enabled=False):
        return torch.bmm(target.float(), reference.float().transpose(1, 2)) / temperature


def copy_attention(
    target: Tensor, reference: Tensor, temperature: float, top_k: int | None = None
) -> Tensor:
    """``A_ji``: softmax over the reference locations (N, Q, R) float32.

    ``top_k`` keeps only the k most similar reference locations of each target location (the
    others get weight 0), as label propagation usually does."""
    logits = copy_logits(target, reference, temperature)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits, dim=-1)


def copy_values(attention: Tensor, values: Tensor) -> Tensor:
    """``c^_j = sum_i A_ji c_i``: (N, Q, R) attention, (N, R, C) values -> (N, Q, C) float32."""
    with torch.autocast(attention.device.type, enabled=False):
        return torch.bmm(attention.float(), values.float())


def colour_copy_loss(
    target: Tensor,
    reference: Tensor,
    reference_labels: Tensor,
    target_labels: Tensor,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy of the copied colour distribution against the target's colours.

    ``-log sum_{i: c_i = y_j} A_ji`` averaged over target locations, computed as a masked
    log-sum-exp of the log-attention (exact, no epsilon). A target location whose colour
    appears at no reference location cannot be copied (its loss would be infinite); it is left
    out, and the share of such locations is returned.

    Args:
        target: (N, Q, D) target embeddings.
        reference: (N, R, D) reference embeddings.
        reference_labels: (N, R) long colour labels of the reference locations.
        target_labels: (N, Q) long colour labels of the target locations.
        temperature: T of the softmax.

    Returns:
        ``(loss, copyable, uncopyable_share)``: the 0-d mean loss over copyable locations (0
        when there is none), the (N, Q) bool mask of copyable locations, and a 0-d float.
    """
    logits = copy_logits(target, reference, temperature)
    return colour_copy_loss_from_logits(logits, reference_labels, target_labels)


def colour_copy_loss_from_logits(
    logits: Tensor, reference_labels: Tensor, target_labels: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`colour_copy_loss` from attention logits (N, Q, R) (:func:`copy_logits`)."""
    log_attention = torch.log_softmax(logits.float(), dim=-1)
    same = reference_labels[:, None, :] == target_labels[:, :, None]  # (N, Q, R)
    log_p = log_attention.masked_fill(~same, float("-inf")).logsumexp(-1)  # (N, Q)
    copyable = same.any(-1)
    nll = -log_p.masked_fill(~copyable, 0.0)
    loss = nll.sum() / copyable.sum().clamp_min(1)
    return loss, copyable, 1.0 - copyable.float().mean()
