"""Collapse monitor: cheap statistics of a batch of embeddings that fall when a
representation collapses (every image mapped to nearly the same point, or to a low-dimensional
subspace: "dimensional collapse").

- ``embedding_spread``: mean per-dimension std of the L2-normalised embeddings, times
  ``sqrt(D)`` (about 1 when spread over the sphere, 0 when collapsed; SimSiam, sec. 4.1, uses
  the unscaled std, which is about ``1/sqrt(D)`` when healthy).
- ``effective_rank``: ``exp(H(p))`` with ``p`` the singular values normalised to sum 1 (Roy &
  Vetterli 2007; RankMe, Garrido et al. 2023). Between 1 (rank-1 embeddings) and
  ``min(N, D)`` (singular values all equal).
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.losses.precision import full_precision
from selfsup.methods.base import embedding_spread


@full_precision
def singular_values(z: Tensor) -> Tensor:
    """Singular values of (N, D) embeddings, from the eigenvalues of the smaller Gram matrix
    (``min(N, D)`` square), which is cheaper than an SVD of a wide batch. Returns
    (min(N, D),) float64, largest first; values under float32 rounding noise are set to 0."""
    z = z.detach().float()
    gram = z @ z.T if z.shape[0] <= z.shape[1] else z.T @ z
    eig = torch.linalg.eigvalsh(gram.double()).flip(0)
    # eigenvalues below float32 rounding noise of the Gram matrix are zero (as in matrix_rank)
    tol = eig[0].clamp_min(0) * max(z.shape) * torch.finfo(torch.float32).eps
    return torch.where(eig > tol, eig, torch.zeros_like(eig)).sqrt()


def effective_rank(z: Tensor, eps: float = 1e-12) -> Tensor:
    """Effective rank of (N, D) embeddings: ``exp(-sum p_i log p_i)``, ``p = s / sum(s)`` over
    the singular values ``s`` (rows are not centred, as in RankMe). Returns a 0-d float tensor
    in ``[1, min(N, D)]``; 1 for rank-1 (or all-zero) embeddings."""
    finite = torch.isfinite(z).all()
    # a non-finite batch (the trainer stops on it) must not crash the eigensolver: NaN rank
    s = singular_values(torch.where(torch.isfinite(z), z, torch.zeros_like(z)))
    total = s.sum()
    p = s / total.clamp_min(eps)
    entropy = -(p * torch.log(p.clamp_min(eps))).sum()
    # no host sync (this runs every training step): all-zero embeddings give rank 1
    rank = torch.where(total > eps, entropy.exp(), torch.ones_like(entropy))
    return torch.where(finite, rank, torch.full_like(rank, float("nan"))).float()


@torch.compiler.disable  # monitoring only: keeps eigvalsh out of a compiled training step
def collapse_metrics(z: Tensor) -> dict[str, Tensor | float]:
    """Both collapse indicators of embeddings (N, D) for a method's metrics:
    ``{"embedding_spread": ..., "effective_rank": ..., "effective_rank_max": min(N, D)}`` (0-d
    tensors, and the largest rank the batch could show, which the collapse monitor compares
    the rank with)."""
    return {
        "embedding_spread": embedding_spread(z),
        "effective_rank": effective_rank(z),
        "effective_rank_max": float(min(z.shape)),
    }
