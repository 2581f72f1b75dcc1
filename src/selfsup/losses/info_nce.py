"""InfoNCE-family contrastive losses, as pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses.precision import full_precision


@full_precision
def info_nce(
    query: Tensor,
    positive_key: Tensor,
    negative_keys: Tensor | None = None,
    temperature: float = 0.1,
    normalize: bool = True,
) -> Tensor:
    """InfoNCE of each query against its positive key and a set of negatives.

    Args:
        query: (N, D) queries.
        positive_key: (N, D); row i is the positive for query i.
        negative_keys: (M, D) negatives shared by every query (a MoCo queue, say). When None,
            the other rows of ``positive_key`` are the negatives (in-batch negatives).
        temperature: softmax temperature.
        normalize: L2-normalise all embeddings first (cosine similarity).

    Returns:
        Scalar mean loss ``-log(exp(q.k+/t) / sum_k exp(q.k/t))``.

    Example::

        loss = info_nce(torch.randn(8, 16), torch.randn(8, 16), torch.randn(64, 16))
    """
    if normalize:
        query = F.normalize(query, dim=1)
        positive_key = F.normalize(positive_key, dim=1)
        negative_keys = F.normalize(negative_keys, dim=1) if negative_keys is not None else None
    if negative_keys is None:
        logits = query @ positive_key.T
        targets = torch.arange(len(query), device=query.device)
    else:
        positive = (query * positive_key).sum(dim=1, keepdim=True)
        logits = torch.cat([positive, query @ negative_keys.T], dim=1)
        targets = torch.zeros(len(query), dtype=torch.long, device=query.device)
    return F.cross_entropy(logits / temperature, targets)


@full_precision
def nt_xent(
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.5,
    *,
    all_z1: Tensor | None = None,
    all_z2: Tensor | None = None,
    offset: int = 0,
) -> Tensor:
    """SimCLR's normalised-temperature cross entropy over 2N views.

    Each of the 2N views has one positive (the other view of its image) and 2N - 2 negatives
    (every other view in the global batch). Under data parallelism, ``all_z1``/``all_z2`` hold
    the views of the *global* batch (gathered with gradients) and ``offset`` is where this
    process's rows start in them; the loss is the mean over this process's 2n queries, so the
    average over processes equals the single-process loss on the global batch.

    Args:
        z1, z2: (n, D) embeddings of the two views of this process's images.
        temperature: softmax temperature (SimCLR: 0.5 for CIFAR-10, 0.1 at large batch).
        all_z1, all_z2: (G, D) embeddings of the global batch; default ``z1``/``z2``.
        offset: index of this process's first row in ``all_z1``.

    Returns:
        Scalar loss.
    """
    if all_z1 is None or all_z2 is None:
        all_z1, all_z2 = z1, z2
    n, g = len(z1), len(all_z1)
    queries = F.normalize(torch.cat([z1, z2]), dim=1)  # (2n, D)
    keys = F.normalize(torch.cat([all_z1, all_z2]), dim=1)  # (2G, D)
    logits = queries @ keys.T / temperature  # (2n, 2G)
    rows = torch.arange(n, device=z1.device) + offset
    self_index = torch.cat([rows, rows + g])
    positive_index = torch.cat([rows + g, rows])
    logits = logits.masked_fill(F.one_hot(self_index, 2 * g).bool(), torch.finfo(logits.dtype).min)
    return F.cross_entropy(logits, positive_index)
