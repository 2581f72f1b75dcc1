"""Prediction losses of the non-contrastive self-distillation methods (BYOL, SimSiam)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from selfsup.losses.precision import full_precision


@full_precision
def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's ``D(p, stopgrad(z))``: mean over rows of ``-cos(p_i, z_i)``.

    Args:
        p: (N, D) predictions (gradients flow).
        z: (N, D) targets; detached here (the stop-gradient).

    Returns:
        Scalar in ``[-1, 1]``; -1 when every prediction points along its target.

    Example::

        loss = 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)
    """
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()


@full_precision
def normalized_mse(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's loss: mean over rows of ``|| p_i/|p_i| - z_i/|z_i| ||^2 = 2 - 2 cos(p_i, z_i)``.

    Args:
        p: (N, D) online predictions (gradients flow).
        z: (N, D) target projections; detached here (the target network is not trained by
            gradients).

    Returns:
        Scalar in ``[0, 4]``.
    """
    pn = F.normalize(p.float(), dim=1)
    zn = F.normalize(z.detach().float(), dim=1)
    return (pn - zn).pow(2).sum(dim=1).mean()
