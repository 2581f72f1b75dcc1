"""Depth losses: the scale-invariant log loss (Eigen, Puhrsch & Fergus 2014) and an L1 loss on
inverse depth.

Both take a prediction, the true metric depth and a validity mask (unknown depth, e.g. a
sensor hole stored as 0, is skipped), all ``(N, 1, H, W)``.

Example:
    >>> import torch
    >>> depth = torch.rand(2, 1, 4, 4) + 1
    >>> valid = torch.ones_like(depth, dtype=torch.bool)
    >>> float(scale_invariant_log_loss((3 * depth).log(), depth, valid, lam=1.0)) < 1e-6
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["inverse_depth_l1", "scale_invariant_log_loss"]


def scale_invariant_log_loss(
    log_pred: Tensor, depth: Tensor, valid: Tensor, lam: float = 0.5
) -> Tensor:
    """Eigen et al. (2014), eq. 4: with ``d_p = log_pred_p - log depth_p`` over the ``n`` valid
    pixels of an image, ``(1/n) sum d_p^2 - (lam / n^2) (sum d_p)^2``, averaged over the images
    that have a valid pixel.

    ``lam = 0`` is the L2 loss on log depth, ``lam = 1`` is fully scale invariant (a prediction
    off by a constant factor costs nothing); the paper trains with 0.5.

    Args:
        log_pred: (N, 1, H, W) predicted log depth (log metres).
        depth: (N, 1, H, W) true depth in metres (> 0 where valid).
        valid: (N, 1, H, W) bool.
        lam: the scale-invariance weight lambda in [0, 1].

    Returns:
        0-d float32 tensor (0 when no image has a valid pixel).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    with torch.autocast(log_pred.device.type, enabled=False):
        mask = valid.float()
        safe = torch.where(valid, depth.float(), torch.ones_like(depth, dtype=torch.float32))
        d = (log_pred.float() - safe.log()) * mask
        n = mask.flatten(1).sum(1)
        has = n > 0
        n_safe = n.clamp_min(1)
        per_image = d.pow(2).flatten(1).sum(1) / n_safe - lam * (d.flatten(1).sum(1) / n_safe) ** 2
        return per_image[has].sum() / has.sum().clamp_min(1)


def inverse_depth_l1(inv_pred: Tensor, depth: Tensor, valid: Tensor) -> Tensor:
    """Mean ``|inv_pred - 1 / depth|`` (1/m) over the valid pixels of the batch (0 when none)."""
    with torch.autocast(inv_pred.device.type, enabled=False):
        safe = torch.where(valid, depth.float(), torch.ones_like(depth, dtype=torch.float32))
        err = (inv_pred.float() - 1.0 / safe).abs() * valid.float()
        return err.sum() / valid.sum().clamp_min(1)
