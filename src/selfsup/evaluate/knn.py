"""Weighted k-nearest-neighbour classification on frozen features (InstDisc protocol).

Features are L2-normalised; similarity is cosine; each of the k neighbours votes for its class
with weight ``exp(sim / temperature)``. This is the protocol lightly and solo-learn report
(k=200, temperature 0.1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    ks: Sequence[int] = (200, 20),
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict[int, Tensor]:
    """Predicted labels of ``test_features`` for each k in ``ks``.

    Args:
        train_features: (N, D) bank features.
        train_labels: (N,) int labels of the bank.
        test_features: (M, D) query features.
        ks: neighbour counts to evaluate (computed together from one top-k search).
        temperature: vote temperature.
        num_classes: number of classes C (default: ``max(label) + 1``).
        chunk_size: queries per matrix product (bounds memory to chunk x N).

    Returns:
        ``{k: (M,) predicted labels}``.
    """
    num_classes = num_classes or int(train_labels.max()) + 1
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.long()
    k_max = min(max(ks), len(bank))
    preds: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start in range(0, len(test_features), chunk_size):
        q = F.normalize(test_features[start : start + chunk_size].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k_max, dim=1)  # (m, k_max), sorted
        weights = (sim / temperature).exp()
        one_hot = F.one_hot(labels[idx], num_classes).float()  # (m, k_max, C)
        for k in ks:
            kk = min(k, k_max)
            scores = (weights[:, :kk, None] * one_hot[:, :kk]).sum(1)
            preds[k].append(scores.argmax(1))
    return {k: torch.cat(v) for k, v in preds.items()}


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    ks: Sequence[int] = (200, 20),
    temperature: float = 0.1,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Top-1 accuracy of the weighted kNN classifier, as ``{"knn@200": acc, "knn@20": acc}``."""
    preds = knn_predict(
        train_features,
        train_labels,
        test_features,
        ks=ks,
        temperature=temperature,
        num_classes=num_classes,
    )
    target = test_labels.long().to(next(iter(preds.values())).device)
    return {f"knn@{k}": (p == target).float().mean().item() for k, p in preds.items()}
