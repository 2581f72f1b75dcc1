"""MoCo v2 (Chen et al., 2020) and MoCo v3 (Chen, Xie & He, 2021): momentum contrast.

Both train a *query* network (the encoder and its heads) by InfoNCE against *keys* made by a
*key* network, the query encoder and projector's exponential moving average (:class:`EMA`,
frozen, updated after every optimizer step in :meth:`on_after_step`).

**MoCo v2** (``moco_v2``): query ``q = g(f(x1))`` with a 2-layer MLP projector ``g``, key
``k = g_m(f_m(x2))`` from the momentum copies, and negatives from a FIFO *queue* of the
``queue_size`` most recent keys (not in the graph, so the number of negatives is decoupled from
the batch). The loss is ``info_nce(q, k, queue, temperature)``. After the step the keys of the
*global* batch (gathered from every process without gradients) replace the oldest rows of the
queue, so every process holds the same queue, equal to what one process on the global batch
would hold. ``queue_size`` must be a multiple of the keys enqueued per step (the global batch,
twice that with ``symmetric``): it is checked at the first forward, where the global batch
size is known (``ConfigError`` naming both numbers). The queue (K, D) and its pointer are
buffers, so they are in the state dict and a resumed run continues with the same negatives.

**MoCo v3** (``moco_v3``): no queue. A 3-layer projector and a 2-layer predictor on the query
side (BatchNorm everywhere, the projector ending in BN without affine); keys of both views from
the momentum network; the negatives of a query are the keys of the other images of the global
batch (gathered across processes without gradients). The loss is symmetric and scaled by
``2 * temperature`` as in the paper: ``2t * (ctr(q1, k2) + ctr(q2, k1))``. The momentum follows
a cosine schedule from ``base_momentum`` (0.99) to 1 by default. ``freeze_patch_embed`` keeps a
ViT's random patch projection fixed (the paper's trick against training instability): its
parameters get ``requires_grad = False``, so neither the optimizer nor DDP sees them.

BatchNorm and information leakage: the original MoCo shuffles the key batch across GPUs
("shuffled BN") so that a query and its positive key are not normalised with the same
statistics. Here, as in MoCo v3, the trainer's ``train.sync_batchnorm`` (on by default) turns
every BatchNorm -- including the key network's -- into one over the global batch under DDP. In a
single process each view goes through the networks in its own forward pass (BN statistics per
view), which is what one GPU of the original implementation does.

Example::

    method = MoCoV2(build_backbone("resnet_tiny"), MoCoV2Config(queue_size=64),
                    image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    loss, metrics = method(images_uint8, None, torch.Generator().manual_seed(0))
    loss.backward(); optimizer.step(); method.on_after_step(step, total_steps)  # EMA + enqueue
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from selfsup.errors import ConfigError
from selfsup.heads import ProjectionHead
from selfsup.losses import info_nce
from selfsup.methods.base import (
    Method,
    StepResult,
    TwoViewConfig,
    contrastive_accuracy,
)
from selfsup.methods.momentum import EMA
from selfsup.methods.monitor import collapse_metrics
from selfsup.utils.distributed import gather_no_grad, get_rank, get_world_size


class MoCoV2Config(TwoViewConfig):
    temperature: float = Field(default=0.2, gt=0)
    """Softmax temperature (v2: 0.2; MoCo v1: 0.07)."""
    queue_size: int = Field(default=4096, gt=0)
    """K, the number of queued negative keys: a multiple of the global batch (4096 for CIFAR;
    65536 for ImageNet)."""
    proj_hidden_dim: int = Field(default=2048, gt=0)
    proj_out_dim: int = Field(default=128, gt=0)
    proj_batch_norm: bool = False
    """BatchNorm in the projector's hidden layer (v2's MLP head has none)."""
    base_momentum: float = Field(default=0.99, ge=0, le=1)
    """Key-network momentum (0.99 for CIFAR; the paper's ImageNet value is 0.999)."""
    momentum_schedule: str = Field(default="constant", pattern="^(cosine|constant)$")
    symmetric: bool = False
    """Symmetrised loss (each view is a query for the other's key; both views' keys are
    enqueued, so K must be a multiple of twice the global batch). Off in v2."""


class MoCoV3Config(TwoViewConfig):
    temperature: float = Field(default=0.2, gt=0)
    """Softmax temperature (0.2 for ViT and for CIFAR; the official ResNet-50 ImageNet
    runs use 1.0)."""
    proj_hidden_dim: int = Field(default=4096, gt=0)
    proj_out_dim: int = Field(default=256, gt=0)
    proj_layers: int = Field(default=3, ge=1)
    pred_hidden_dim: int = Field(default=4096, gt=0)
    base_momentum: float = Field(default=0.99, ge=0, le=1)
    momentum_schedule: str = Field(default="cosine", pattern="^(cosine|constant)$")
    freeze_patch_embed: bool = False
    """Freeze a ViT's (random) patch projection, the paper's stability trick."""


class _MoCo(Method):
    """What MoCo v2 and v3 share: the momentum key network, key computation, metrics."""

    family = "contrastive"
    default_augment = "simclr_cifar"
    cfg: Any

    def __init__(self, encoder, cfg: TwoViewConfig, **kwargs: Any) -> None:  # type: ignore[no-untyped-def]
        super().__init__(encoder, cfg, **kwargs)
        self.projector = self._build_projector(encoder.feature_dim)
        self.key = EMA(self._online(), cfg.base_momentum, cfg.momentum_schedule)  # type: ignore[attr-defined]

    def _build_projector(self, in_dim: int) -> nn.Module:
        raise NotImplementedError

    def _online(self) -> dict[str, nn.Module]:
        """The modules the key network follows."""
        return {"encoder": self.encoder, "projector": self.projector}

    def query(self, x: Tensor) -> Tensor:
        """Query embeddings (N, proj_out_dim) of views (N, C, S, S) (v3: after the predictor)."""
        return self.projector(self.encoder(x))

    @torch.no_grad()
    def keys(self, x: Tensor) -> Tensor:
        """Key embeddings (N, proj_out_dim) float, L2-normalised, from the momentum network."""
        return F.normalize(self.key["projector"](self.key["encoder"](x)).float(), dim=1)

    def on_after_step(self, step: int, total_steps: int) -> None:
        self.key.update(self._online(), step, total_steps)

    @torch.no_grad()
    def pretext_metrics(self, images: Tensor, generator: torch.Generator) -> dict[str, float]:
        """Positive retrieval: how often the key of the other view of the same image is the
        nearest (cosine) to a query among the keys of the batch."""
        x1, x2 = self.two_views(images, generator, None, 0)
        q, k = self.query(x1), self.keys(x2)
        target = torch.arange(len(images), device=q.device)
        return {"positive_retrieval_top1": float(contrastive_accuracy(q, k, target))}


class MoCoV2(_MoCo):
    name = "moco_v2"
    description = (
        "momentum key encoder and a FIFO queue of negative keys (gathered across processes), "
        "InfoNCE"
    )
    Config = MoCoV2Config
    cfg: MoCoV2Config

    def __init__(self, encoder, cfg: MoCoV2Config, **kwargs: Any) -> None:  # type: ignore[no-untyped-def]
        super().__init__(encoder, cfg, **kwargs)
        queue = F.normalize(torch.randn(cfg.queue_size, cfg.proj_out_dim), dim=1)
        self.queue: Tensor
        self.queue_ptr: Tensor
        self.register_buffer("queue", queue)  # (K, D), L2-normalised keys, oldest at queue_ptr
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending_keys: Tensor | None = None

    def _build_projector(self, in_dim: int) -> nn.Module:
        c = self.cfg
        return ProjectionHead(
            in_dim, c.proj_hidden_dim, c.proj_out_dim, num_layers=2, batch_norm=c.proj_batch_norm
        )

    def check_global_batch(self, global_batch: int) -> None:
        """Raise :class:`ConfigError` unless the queue holds a whole number of steps' keys."""
        per_step = global_batch * (2 if self.cfg.symmetric else 1)
        if self.cfg.queue_size % per_step:
            what = "twice the global batch" if self.cfg.symmetric else "the global batch"
            raise ConfigError(
                f"moco_v2: method_args.queue_size={self.cfg.queue_size} must be a multiple of "
                f"{what} (train.batch_size={global_batch}"
                + (f", {per_step} keys per step" if self.cfg.symmetric else "")
                + ")"
            )

    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        labels: Tensor | None,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
    ) -> StepResult:
        self.check_global_batch(global_size or len(images))
        x1, x2 = self.two_views(images, generator, global_size, offset)
        q1 = self.query(x1).float()
        k2 = self.keys(x2)
        negatives = self.queue.clone()  # (K, D); the enqueue after the step must not touch it
        t = self.cfg.temperature
        if self.cfg.symmetric:
            q2 = self.query(x2).float()
            k1 = self.keys(x1)
            loss = info_nce(q1, k2, negatives, t) + info_nce(q2, k1, negatives, t)
            new_keys = torch.cat([gather_no_grad(k1), gather_no_grad(k2)])
        else:
            loss = info_nce(q1, k2, negatives, t)
            new_keys = gather_no_grad(k2)
        if self.training:
            self._pending_keys = new_keys  # enqueued by on_after_step, once the step is applied
        with torch.no_grad():
            # candidates of query i: its own key, then the queue
            qn = F.normalize(q1, dim=1)
            positive = (qn * k2).sum(1)
            positive_cos = positive.mean()
            top1 = (positive > (qn @ negatives.T).max(1).values).float().mean()
        return loss, {
            "positive_cosine": positive_cos,
            "positive_top1": top1,
            "target_momentum": self.key.momentum.clone(),
            **collapse_metrics(q1),
        }

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` (B, D) over the oldest rows of the queue and advance the pointer.

        ``B`` must divide ``queue_size`` (so a batch never straddles the end of the queue)."""
        size, b = len(self.queue), len(keys)
        if size % b:
            raise ConfigError(
                f"moco_v2: method_args.queue_size={size} is not a multiple of the {b} keys "
                "enqueued per step"
            )
        ptr = int(self.queue_ptr)
        self.queue[ptr : ptr + b] = F.normalize(keys.detach().float(), dim=1)
        self.queue_ptr.fill_((ptr + b) % size)

    def on_after_step(self, step: int, total_steps: int) -> None:
        if self._pending_keys is not None:
            self.enqueue(self._pending_keys)
            self._pending_keys = None
        super().on_after_step(step, total_steps)


def moco_v3_loss(
    q1: Tensor,
    q2: Tensor,
    all_k1: Tensor,
    all_k2: Tensor,
    temperature: float,
    start: int = 0,
) -> Tensor:
    """MoCo v3's symmetric loss ``2t * (ctr(q1, k2) + ctr(q2, k1))``.

    Args:
        q1, q2: (n, D) queries (predictor outputs) of the two views of this process's images.
        all_k1, all_k2: (G, D) keys of the two views of the global batch (gathered, no grad).
        temperature: ``t``.
        start: row of this process's first image in ``all_k*``.

    ``ctr(q, k)`` is InfoNCE with the key of the same image as positive and the other ``G - 1``
    keys as negatives. :func:`info_nce` with in-batch negatives takes the positive of query i at
    candidate row i; rolling the gathered keys by ``-start`` puts it there and keeps every key a
    candidate (the order of candidates does not change the loss).
    """

    def ctr(q: Tensor, all_k: Tensor) -> Tensor:
        return info_nce(q, torch.roll(all_k, -start, dims=0), None, temperature)

    return 2 * temperature * (ctr(q1, all_k2) + ctr(q2, all_k1))


class MoCoV3(_MoCo):
    name = "moco_v3"
    description = (
        "momentum key encoder, query-side predictor, symmetric InfoNCE against the keys of the "
        "global batch"
    )
    Config = MoCoV3Config
    cfg: MoCoV3Config

    def __init__(self, encoder, cfg: MoCoV3Config, **kwargs: Any) -> None:  # type: ignore[no-untyped-def]
        if cfg.freeze_patch_embed:
            patch_embed = getattr(encoder, "patch_embed", None)
            proj = getattr(patch_embed, "proj", None)
            if not isinstance(proj, nn.Module):
                raise ConfigError(
                    "moco_v3: method_args.freeze_patch_embed=true needs a ViT backbone with a "
                    f"patch projection (patch_embed.proj); {type(encoder).__name__} has none"
                )
            proj.requires_grad_(False)
        super().__init__(encoder, cfg, **kwargs)
        self.predictor = ProjectionHead(
            cfg.proj_out_dim, cfg.pred_hidden_dim, cfg.proj_out_dim, num_layers=2
        )

    def _build_projector(self, in_dim: int) -> nn.Module:
        c = self.cfg
        return ProjectionHead(
            in_dim, c.proj_hidden_dim, c.proj_out_dim, c.proj_layers, last_batch_norm=True
        )

    def query(self, x: Tensor) -> Tensor:
        return self.predictor(self.projector(self.encoder(x)))

    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        labels: Tensor | None,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
    ) -> StepResult:
        n = len(images)
        x1, x2 = self.two_views(images, generator, global_size, offset)
        z1 = self.projector(self.encoder(x1))
        z2 = self.projector(self.encoder(x2))
        q1, q2 = self.predictor(z1).float(), self.predictor(z2).float()
        all_k1, all_k2 = gather_no_grad(self.keys(x1)), gather_no_grad(self.keys(x2))
        # rows of process r sit at [r * n, (r + 1) * n) of the gathered keys
        start = get_rank() * n if len(all_k1) == get_world_size() * n > n else 0
        loss = moco_v3_loss(q1, q2, all_k1, all_k2, self.cfg.temperature, start)
        with torch.no_grad():
            target = torch.arange(n, device=q1.device) + start
            k2 = all_k2[start : start + n]
            positive_cos = (F.normalize(q1, dim=1) * k2).sum(1).mean()
            top1 = contrastive_accuracy(q1, all_k2, target)
        return loss, {
            "positive_cosine": positive_cos,
            "positive_top1": top1,
            "target_momentum": self.key.momentum.clone(),
            **collapse_metrics(torch.cat([z1, z2]).float()),
        }
