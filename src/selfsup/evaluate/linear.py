"""Linear probe: a linear classifier trained on frozen, cached features."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.heads import LinearClassifier


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    batch_norm: bool = True,
    num_classes: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    return_head: bool = False,
) -> dict[str, Any]:
    """Train ``LinearClassifier`` on (N, D) features with SGD + cosine LR; report top-1.

    ``batch_norm=True`` puts BatchNorm without affine parameters before the linear layer (the
    MAE protocol): at test time it is a fixed affine map, so the classifier stays linear in the
    features while being insensitive to their scale.

    Returns:
        ``{"linear_top1": test accuracy, "linear_train_top1": train accuracy}``, plus
        ``"head"`` (the trained classifier, eval mode) with ``return_head``.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    num_classes = num_classes or int(train_labels.max()) + 1
    xtr = train_features.float().to(device)
    ytr = train_labels.long().to(device)
    head = LinearClassifier(xtr.shape[1], num_classes, batch_norm=batch_norm).to(device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = max(1, (len(xtr) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    head.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=gen).to(device)
        for start in range(0, len(xtr), batch_size):
            idx = perm[start : start + batch_size]
            if len(idx) < 2 and batch_norm:
                continue
            loss = F.cross_entropy(head(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    head.eval()
    with torch.no_grad():
        train_acc = _accuracy(head, xtr, ytr)
        test_acc = _accuracy(head, test_features.float().to(device), test_labels.long().to(device))
    result: dict[str, Any] = {"linear_top1": test_acc, "linear_train_top1": train_acc}
    if return_head:
        result["head"] = head
    return result


def _accuracy(head: torch.nn.Module, x: Tensor, y: Tensor, chunk: int = 4096) -> float:
    correct = 0
    for start in range(0, len(x), chunk):
        correct += (head(x[start : start + chunk]).argmax(1) == y[start : start + chunk]).sum()
    return float(correct) / max(1, len(x))
