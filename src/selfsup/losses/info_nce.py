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


def _check_negatives(global_images: int) -> None:
    """The decoupled losses have only other images' views in their denominator."""
    if global_images < 2:
        raise ValueError(
            "the decoupled loss needs at least 2 images in the (global) batch: with one image "
            "there are no negatives to contrast with"
        )


@full_precision
def nt_xent(
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.5,
    *,
    all_z1: Tensor | None = None,
    all_z2: Tensor | None = None,
    offset: int = 0,
    decoupled: bool = False,
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
        decoupled: leave the positive out of the denominator (DCL, Yeh et al., 2022): each
            view's loss is ``-s_p / t + log sum_{k != self, positive} exp(s_k / t)``, which
            removes the factor that shrinks the gradient when the positive already dominates
            (small batches, early training).

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
    masked = F.one_hot(self_index, 2 * g).bool()
    if decoupled:
        _check_negatives(g)
        positive = logits.gather(1, positive_index[:, None]).squeeze(1)
        masked = masked | F.one_hot(positive_index, 2 * g).bool()
        negatives = logits.masked_fill(masked, torch.finfo(logits.dtype).min)
        return (torch.logsumexp(negatives, dim=1) - positive).mean()
    logits = logits.masked_fill(masked, torch.finfo(logits.dtype).min)
    return F.cross_entropy(logits, positive_index)


@full_precision
def multiview_nt_xent(
    views: Tensor,
    temperature: float = 0.5,
    *,
    all_views: Tensor | None = None,
    offset: int = 0,
    decoupled: bool = False,
) -> Tensor:
    """NT-Xent over V >= 2 views per image (multi-crop contrastive learning).

    Every view is an anchor; its positives are the V - 1 other views of the same image and its
    denominator runs over every other view of the global batch. The anchor's loss is the mean
    over its positives of ``-log(exp(s_ap / t) / sum_{k != a} exp(s_ak / t))`` (cosine
    similarities ``s``), and the result is the mean over anchors. With V = 2 this is exactly
    :func:`nt_xent`.

    Args:
        views: (V, n, D) embeddings of this process's n images, V views each.
        temperature: softmax temperature.
        all_views: (V, G, D) the views of the global batch (gathered with gradients under data
            parallelism); default ``views``.
        offset: index of this process's first image in ``all_views``.
        decoupled: the denominator runs over the other images' views only (DCL, see
            :func:`nt_xent`); with V = 2 this is ``nt_xent(..., decoupled=True)``.

    Returns:
        Scalar loss (mean over this process's V * n anchors).

    Example::

        z = torch.randn(4, 32, 128)      # 2 global + 2 local crops of 32 images
        loss = multiview_nt_xent(z, 0.2)
    """
    if all_views is None:
        all_views = views
    v, n, _ = views.shape
    g = all_views.shape[1]
    if v < 2:
        raise ValueError(f"multiview_nt_xent needs at least 2 views per image, got {v}")
    queries = F.normalize(views, dim=-1).reshape(v * n, -1)  # (V n, D), view-major
    keys = F.normalize(all_views, dim=-1).reshape(v * g, -1)  # (V G, D)
    logits = queries @ keys.T / temperature  # (V n, V G)
    image = (torch.arange(n, device=views.device) + offset).repeat(v)  # image of each query
    view = torch.arange(v, device=views.device).repeat_interleave(n)
    self_index = view * g + image
    # positives of query (view u, image i): columns (w, i) for every w != u
    positive_cols = torch.arange(v, device=views.device)[None, :] * g + image[:, None]  # (Vn, V)
    not_self = torch.arange(v, device=views.device)[None, :] != view[:, None]
    if decoupled:
        _check_negatives(g)
        same_image = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, positive_cols, True)
        negatives = logits.masked_fill(same_image, torch.finfo(logits.dtype).min)
        positive = logits.gather(1, positive_cols)  # (V n, V)
        log_prob = positive - torch.logsumexp(negatives, dim=1, keepdim=True)
        return -(log_prob * not_self).sum() / (v * n * (v - 1))
    logits = logits.masked_fill(F.one_hot(self_index, v * g).bool(), torch.finfo(logits.dtype).min)
    log_prob = F.log_softmax(logits, dim=1)  # (V n, V G)
    positive = log_prob.gather(1, positive_cols)  # (V n, V), includes the query itself
    return -(positive * not_self).sum() / (v * n * (v - 1))
