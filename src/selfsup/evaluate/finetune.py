"""Fine-tuning: an encoder plus a new linear head trained end to end on labeled images.

- **Full** fine-tuning trains every encoder parameter; **partial** fine-tuning freezes the first
  ``freeze_stages`` of :meth:`~selfsup.backbones.Backbone.stages` (ResNet: stem, layer1..4; ViT:
  patch embedding, then each block) — their weights get no gradient and their BatchNorm layers
  keep their running statistics (eval mode) — and trains the rest. ``freeze_stages`` equal to
  the number of stages is a linear probe trained on augmented images.
- **Low-label** runs train on :func:`class_balanced_subset` of the labels (the same number of
  images per class, drawn from a seed); the same subset with a random-init encoder of the same
  architecture is the from-scratch baseline.
- Training uses a light augmentation (random resized crop of ``crop_scale`` of the area, flip),
  SGD with momentum and Nesterov, linear warm-up then cosine decay, label smoothing optional;
  test accuracy is measured after every ``eval_every`` epochs without augmentation, so
  convergence speed can be compared between encoders (``curve``).

Example::

    loaded = load_encoder("runs/simclr_cifar10_cpu")
    result = finetune(loaded, data.train, data.test, FinetuneConfig(epochs=10, freeze_stages=2))
    result["top1"], [p["test_top1"] for p in result["curve"]]
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.augment import build_pipeline
from selfsup.augment.presets import crop_flip_pipeline
from selfsup.backbones import Backbone
from selfsup.data import ImageSource
from selfsup.evaluate.features import EVAL_PRECISION, encoder_inputs, precision_name
from selfsup.models import LoadedEncoder
from selfsup.utils.precision import autocast_dtype


@dataclass
class FinetuneConfig:
    """Fine-tuning hyperparameters (defaults: a short CIFAR-style schedule)."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.05
    """Peak learning rate for ``batch_size`` 256 (scaled linearly with the batch)."""
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    freeze_stages: int = 0
    """Freeze the first k encoder stages (0 = full fine-tuning)."""
    crop_scale: tuple[float, float] = (0.5, 1.0)
    eval_every: int = 1
    seed: int = 0
    device: str = "cpu"
    precision: str = EVAL_PRECISION
    """Autocast setting of training and testing (fp32 by default: the same number on every
    CPU; ``auto`` is bf16 on CPUs with native bf16)."""
    eval_batch_size: int = 512
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes recorded with the result."""


def class_balanced_subset(
    labels: np.ndarray | Tensor,
    *,
    fraction: float | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Indices (sorted int64) of a class-balanced labeled subset.

    Every class present in ``labels`` (N,) contributes ``per_class`` images, or
    ``round(fraction * N / num_classes)`` (at least 1) with ``fraction`` — so 1% of CIFAR-10's
    50,000 training images is 50 per class. Draws without replacement from a seeded generator;
    raises ValueError when a class has fewer images than asked for.
    """
    labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).reshape(-1)
    if (fraction is None) == (per_class is None):
        raise ValueError("give exactly one of fraction and per_class")
    classes = np.unique(labels)
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        per_class = max(1, round(fraction * len(labels) / len(classes)))
    assert per_class is not None
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} images, fewer than {per_class}")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def freeze_first_stages(encoder: Backbone, k: int) -> list[nn.Module]:
    """Freeze the first ``k`` of ``encoder.stages()`` (``requires_grad = False``) and return
    them (put them in eval mode while training: see :func:`finetune`). Raises ValueError for a
    ``k`` outside ``0..len(stages)``."""
    stages = encoder.stages()
    if not 0 <= k <= len(stages):
        raise ValueError(
            f"freeze_stages={k}, but {type(encoder).__name__} has {len(stages)} stages "
            f"(0 = full fine-tuning, {len(stages)} = everything frozen)"
        )
    for stage in stages[:k]:
        for p in stage.parameters():
            p.requires_grad_(False)
    return stages[:k]


class _Classifier(nn.Module):
    def __init__(self, encoder: Backbone, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, num_classes)
        nn.init.zeros_(self.head.bias)
        nn.init.normal_(self.head.weight, std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


@torch.no_grad()
def _accuracy(
    model: nn.Module, source: ImageSource, prepare, device, dtype, batch_size: int
) -> float:  # type: ignore[no-untyped-def]
    model.eval()
    generator = torch.Generator(device=device).manual_seed(0)
    labels = torch.as_tensor(source.labels)
    correct = 0
    for start in range(0, len(source), batch_size):
        idx = np.arange(start, min(start + batch_size, len(source)))
        x = prepare(source.as_tensor_chw(idx).to(device), generator)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            pred = model(x).argmax(1).cpu()
        correct += int((pred == labels[idx]).sum())
    return correct / max(len(source), 1)


def finetune(
    loaded: LoadedEncoder,
    train: ImageSource,
    test: ImageSource,
    cfg: FinetuneConfig | None = None,
    *,
    num_classes: int | None = None,
    keep_model: bool = False,
) -> dict[str, Any]:
    """Fine-tune a copy of ``loaded.encoder`` with a new linear head on ``train``; report test
    top-1 after the last epoch and the per-epoch ``curve``.

    Returns ``{"top1", "best_top1", "curve": [{"epoch", "test_top1", "train_loss",
    "train_top1"}], "freeze_stages", "num_stages", "trainable_params", "train_images",
    "seconds", "config"}``, plus ``"model"`` (the fine-tuned encoder + head, an ``nn.Module``
    with ``.encoder`` and ``.head``) with ``keep_model``. ``loaded.encoder`` is not modified.
    """
    cfg = cfg or FinetuneConfig()
    if train.labels is None or test.labels is None:
        raise ValueError("fine-tuning needs labels on both the train and the test split")
    num_classes = num_classes or int(max(train.labels.max(), test.labels.max())) + 1
    device = torch.device(cfg.device)
    meta = loaded.meta
    torch.manual_seed(cfg.seed)
    encoder = copy.deepcopy(loaded.encoder)
    frozen = freeze_first_stages(encoder, cfg.freeze_stages)
    model = _Classifier(encoder, num_classes).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    inputs = dict(
        normalize=meta["normalize"],
        in_channels=meta["in_channels"],
        input_space=meta.get("input_space", "rgb"),
    )
    size = meta["image_size"]
    augment = encoder_inputs(
        lambda mean, std: crop_flip_pipeline(size, cfg.crop_scale, mean, std), **inputs
    )
    plain = encoder_inputs(lambda mean, std: build_pipeline("eval", size, mean, std), **inputs)
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    peak_lr = cfg.lr * cfg.batch_size / 256
    optimizer = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=peak_lr,
        momentum=cfg.momentum,
        nesterov=cfg.momentum > 0,
    )
    n = len(train)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    dtype = autocast_dtype(device, cfg.precision)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    order_rng = np.random.default_rng(cfg.seed)
    labels = torch.as_tensor(train.labels).long()
    curve: list[dict[str, float]] = []
    t0 = time.perf_counter()
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        for stage in frozen:
            stage.eval()  # frozen BatchNorm statistics stay as they are
        order = order_rng.permutation(n)
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(steps_per_epoch):
            idx = np.sort(order[i * batch : (i + 1) * batch])
            lr = peak_lr * (
                (step + 1) / max(warmup, 1)
                if step < warmup
                else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = augment(train.as_tensor_chw(idx).to(device), generator)
            y = labels[idx].to(device)
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tuning loss is {loss.item()} at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            step += 1
        point = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_top1": correct / seen}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            point["test_top1"] = _accuracy(model, test, plain, device, dtype, cfg.eval_batch_size)
        curve.append(point)
    tested = [p["test_top1"] for p in curve if "test_top1" in p]
    kept = {"model": model.eval()} if keep_model else {}
    return kept | {
        "top1": tested[-1],
        "best_top1": max(tested),
        "curve": curve,
        "freeze_stages": cfg.freeze_stages,
        "num_stages": len(encoder.stages()),
        "trainable_params": sum(p.numel() for p in params),
        "train_images": n,
        "precision": precision_name(device, cfg.precision),
        "seconds": time.perf_counter() - t0,
        "config": {k: v for k, v in asdict(cfg).items() if k != "extra"} | cfg.extra,
    }
