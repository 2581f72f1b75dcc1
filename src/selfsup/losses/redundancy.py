"""Redundancy-reduction losses (Barlow Twins, VICReg): batch statistics of two views'
embeddings, no negatives and no target network.

Both depend on statistics over the batch, so under data parallelism pass the embeddings of the
*global* batch (``selfsup.utils.distributed.gather_with_grad``): every process then computes
the single-process loss, and gradient averaging gives the single-process gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses.precision import full_precision


def off_diagonal(m: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix (D, D) as a flat (D * (D - 1),) tensor."""
    d = m.shape[0]
    if m.shape != (d, d):
        raise ValueError(f"expected a square matrix, got {tuple(m.shape)}")
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


@full_precision
def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5) -> Tensor:
    """Barlow Twins' cross-correlation (D, D) of two views' embeddings (N, D).

    Each dimension is standardised over the batch (mean 0, biased variance 1, as BatchNorm
    without affine does), then ``C_ij = sum_b z1_bi z2_bj / N``.
    """
    z1, z2 = z1.float(), z2.float()
    n = z1.shape[0]
    a = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + eps)
    b = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + eps)
    return a.T @ b / n


@full_precision
def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float = 5e-3, eps: float = 1e-5) -> Tensor:
    """Barlow Twins (Zbontar et al., 2021): ``sum_i (1 - C_ii)^2 + lambd * sum_{i!=j} C_ij^2``.

    Args:
        z1, z2: (N, D) embeddings of the two views (the global batch under DDP).
        lambd: off-diagonal weight (the paper's 5e-3).
        eps: added to the variance when standardising.

    Returns:
        Scalar loss.

    Example::

        loss = barlow_twins_loss(torch.randn(32, 64), torch.randn(32, 64))
    """
    c = cross_correlation(z1, z2, eps)
    on = (1 - torch.diagonal(c)).pow(2).sum()
    off = off_diagonal(c).pow(2).sum()
    return on + lambd * off


@full_precision
def vicreg_terms(z1: Tensor, z2: Tensor, eps: float = 1e-4) -> dict[str, Tensor]:
    """VICReg's three unweighted terms for embeddings (N, D) of two views.

    - ``invariance``: ``mean((z1 - z2)^2)`` over all N * D entries.
    - ``variance``: ``mean_j relu(1 - sqrt(Var_b z_bj + eps))``, averaged over the two views
      (unbiased variance; gamma = 1).
    - ``covariance``: ``sum_{i!=j} Cov(z)_ij^2 / D`` summed over the two views (unbiased
      covariance of the batch-centred embeddings).
    """
    z1, z2 = z1.float(), z2.float()
    n, d = z1.shape
    invariance = F.mse_loss(z1, z2)
    variance = z1.new_zeros(())
    covariance = z1.new_zeros(())
    for z in (z1, z2):
        std = torch.sqrt(z.var(0) + eps)
        variance = variance + F.relu(1 - std).mean() / 2
        zc = z - z.mean(0)
        cov = zc.T @ zc / (n - 1)
        covariance = covariance + off_diagonal(cov).pow(2).sum() / d
    return {"invariance": invariance, "variance": variance, "covariance": covariance}


@full_precision
def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    eps: float = 1e-4,
) -> Tensor:
    """VICReg (Bardes et al., 2022): weighted sum of :func:`vicreg_terms` with the paper's
    weights lambda = 25 (invariance), mu = 25 (variance), nu = 1 (covariance).

    Args:
        z1, z2: (N, D) expander outputs of the two views (the global batch under DDP).

    Returns:
        Scalar loss.
    """
    t = vicreg_terms(z1, z2, eps)
    return (
        invariance_weight * t["invariance"]
        + variance_weight * t["variance"]
        + covariance_weight * t["covariance"]
    )
