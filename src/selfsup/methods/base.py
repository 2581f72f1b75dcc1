"""The Method base class: an ``nn.Module`` that owns its encoder and whatever trains it."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from selfsup.augment import build_pipeline, recrop_pipeline
from selfsup.augment.color import input_channels
from selfsup.backbones import Backbone
from selfsup.heads import ProjectionHead
from selfsup.losses.precision import full_precision

NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def normalization(name: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) for a named normalisation, reduced to 1 channel for grey data."""
    mean, std = NORMALIZATION[name]
    if channels == 1:
        return (sum(mean) / 3,), (sum(std) / 3,)
    return mean, std


@full_precision
def embedding_spread(z: Tensor) -> Tensor:
    """Collapse indicator of embeddings (N, D): mean per-dimension std of the L2-normalised
    rows, times sqrt(D). About 1 when embeddings spread over the sphere, 0 when collapsed."""
    zn = torch.nn.functional.normalize(z.detach().float(), dim=1)
    return zn.std(0).mean() * zn.shape[1] ** 0.5


class MethodConfig(BaseModel):
    """Base for method-specific options (``method_args`` in a run config)."""

    model_config = ConfigDict(extra="forbid")


StepResult = tuple[Tensor, dict[str, Any]]
"""What a training step returns: the scalar loss and a dict of metrics (floats or 0-d tensors)."""


def check_training_batch(method: Method, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse a batch :meth:`Method.forward` cannot take with a ``ValueError`` that says what is
    wrong, before it fails deep inside a network: it must be a uint8 tensor (N, C, H, W) with
    at least 2 images (batch statistics, negatives) and, for RGB-space encoders, the encoder's
    channel count (single-image layouts). Any H, W >= 1 is fine: the views are cropped and
    resized. Runs as a forward
    pre-hook of every method."""
    images = args[0] if args else kwargs.get("images")
    where = f"{method.name or type(method).__name__}: a training batch"
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = (f"{images.dtype} of shape {tuple(images.shape)}" if isinstance(images, Tensor)
               else type(images).__name__)  # fmt: skip
        raise ValueError(f"{where} is a uint8 tensor (N, C, H, W); got {got}")
    if images.shape[0] < 2:
        raise ValueError(f"{where} needs at least 2 images; got {tuple(images.shape)}")
    expected = getattr(method.encoder, "in_channels", None)
    single = method.data_layout == "image"  # clips and RGB-D items stack pictures in C
    if (
        single
        and method.input_space == "rgb"
        and expected is not None
        and images.shape[1] != expected
    ):
        raise ValueError(
            f"{where} must have the {expected} channel(s) the encoder was built for (the "
            f"training data's); got {tuple(images.shape)}"
        )


class Method(nn.Module):
    """A self-supervised (or supervised-baseline) training objective around an encoder.

    Subclasses set ``name``, ``family``, ``Config`` and implement :meth:`forward`, which maps a
    uint8 batch (N, C, H, W) on the training device to ``(loss, metrics)``. Augmentation happens
    inside, in batches, from the ``generator`` the trainer passes (one per step, so runs are
    reproducible and resumable). Under data parallelism the batch is this process's share of a
    global batch of ``global_size`` images starting at row ``offset``; random parameters are
    drawn for the global batch so that every process sees what one process would.

    Per-step state updates (EMA teachers, queues, centres) belong in :meth:`on_after_step`.

    ``input_space`` says what the encoder sees, and is recorded in ``encoder.json`` so that
    evaluation (kNN, linear probe, the kNN monitor) converts downstream images the same way:
    ``"rgb"`` (the data's channels normalised with the run's ``normalize`` statistics; every
    method so far), ``"lab_l"`` (the scaled L channel of CIE Lab, 1 channel: colorization) or
    ``"lab"`` (scaled L, a, b: split-brain); see :mod:`selfsup.augment.color`. The trainer
    builds the encoder with :meth:`encoder_channels` input channels, split into
    ``channel_groups`` sub-backbones when set (:mod:`selfsup.backbones.channel_split`). For the
    Lab spaces the pipeline gets no normalisation (mean 0, std 1): the method converts its
    [0, 1] RGB views itself.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    uses_labels: ClassVar[bool] = False
    default_augment: ClassVar[str] = "simclr_cifar"
    input_space: ClassVar[str] = "rgb"
    """What the encoder sees: "rgb", "lab_l" or "lab" (see the class docstring)."""
    channel_groups: ClassVar[tuple[int, ...] | None] = None
    """Consecutive input-channel groups encoded by separate sub-backbones (split-brain: (1, 2)),
    or None for one backbone."""
    global_pool: ClassVar[Literal["cls", "avg"] | None] = None
    """How a ViT encoder of this method pools its tokens into the feature when the run leaves
    ``backbone.global_pool`` unset (recorded in ``encoder.json``, so evaluation, export and
    fine-tuning read it the same way). None: the backbone's default, the cls token. MAE sets
    ``avg``: its loss never trains the cls token's output."""
    replicable: ClassVar[bool] = False
    """Whether ``train.cpu_replicas`` may run this method as parallel shards
    (:mod:`selfsup.train.replicas`): true only where all its state is parameters and BatchNorm
    statistics (no EMA teacher, queue, centre or buffer that forward or a step hook updates)."""
    keep_eager_on_cpu: ClassVar[str | None] = None
    """Why ``train.compile=auto`` leaves this method eager on the CPU, where its compiled fp32
    step measured slower than its eager one, or too little faster to repay compiling
    (``benchmarks/bench_compile.py --methods``); None where compiling pays. The reason goes into
    the run's ``summary.json``."""
    data_layout: ClassVar[str] = "image"
    """What one training item is (:data:`selfsup.data.sources.LAYOUTS`): ``"image"``, ``"clip"``
    (T stacked RGB frames, ``(N, 3 T, H, W)``) or ``"rgbd"`` (RGB + packed depth, ``(N, 5, H,
    W)``). The trainer refuses data of another layout before any work."""

    @classmethod
    def encoder_channels(cls, data_channels: int) -> int:
        """Input channels of this method's encoder for training data of ``data_channels``
        channels (the data's own for "rgb"; 1 for "lab_l"; 3 for "lab")."""
        return input_channels(cls.input_space, data_channels)

    def __init__(
        self,
        encoder: Backbone,
        cfg: MethodConfig,
        *,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: str | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg
        self.image_size = image_size
        if self.input_space != "rgb":
            mean, std = NORMALIZATION["none"]
        self.mean, self.std = mean, std
        self.num_classes = num_classes
        self.pipeline = build_pipeline(augment or self.default_augment, image_size, mean, std)
        if isinstance(cfg, TwoViewConfig) and cfg.crop_scale is not None:
            # every two-view method's ``crop_scale``: the area range of its views' crop
            self.pipeline = recrop_pipeline(self.pipeline, image_size, cfg.crop_scale)
        self.memory_format = torch.contiguous_format
        self.register_forward_pre_hook(check_training_batch, with_kwargs=True)
        self.steps_per_epoch = 1
        """Optimizer steps per epoch; the trainer sets it through :meth:`on_train_start`."""

    def set_view_size(self, size: int) -> None:
        """Make the training views ``size`` pixels from now on (progressive resizing,
        ``train.view_size_schedule``): the pipeline's random crop keeps its area range and
        outputs ``size`` x ``size``. Methods with other view pipelines (multi-crop, tiles) resize
        those in an override, or refuse with a :class:`~selfsup.errors.ConfigError`."""
        self.pipeline = recrop_pipeline(self.pipeline, size)

    def views(
        self, images: Tensor, generator: torch.Generator, global_size: int | None, offset: int
    ) -> Tensor:
        """One augmented view (N, C, S, S) float of a uint8 batch, in the training layout."""
        out = self.pipeline(images, generator, global_size=global_size, offset=offset)
        return out.contiguous(memory_format=self.memory_format)

    def two_views(
        self, images: Tensor, generator: torch.Generator, global_size: int | None, offset: int
    ) -> tuple[Tensor, Tensor]:
        """Two independently augmented views (N, C, S, S) of a uint8 batch, the first drawn
        first: what every two-view method (SimCLR, MoCo, BYOL, SimSiam, Barlow Twins, VICReg)
        compares."""
        first = self.views(images, generator, global_size, offset)
        return first, self.views(images, generator, global_size, offset)

    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        labels: Tensor | None,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
    ) -> StepResult:
        raise NotImplementedError

    def on_train_start(self, steps_per_epoch: int, total_steps: int) -> None:
        """Hook called once by the trainer before the first (or resumed) step, for schedules
        given in epochs (DINO's teacher-temperature warm-up). Sets ``self.steps_per_epoch``."""
        self.steps_per_epoch = steps_per_epoch

    def before_optimizer_step(self, step: int, total_steps: int) -> None:
        """Hook after backward, gradient unscaling and clipping, before the optimizer step:
        may edit gradients (e.g. set ``p.grad = None`` so the optimizer skips ``p``)."""

    def check_global_batch(self, global_batch: int) -> None:
        """Refuse a global batch size the method cannot use (e.g. MoCo's queue must hold a whole
        number of batches) with a :class:`~selfsup.errors.ConfigError`. The trainer calls it
        before anything is written."""

    def on_after_step(self, step: int, total_steps: int) -> None:
        """Hook after each optimizer step (momentum encoders, queues, ...)."""

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multipliers by parameter-name prefix, e.g. ``{"discriminator.": 0.1}``
        (longest matching prefix wins; unlisted parameters: 1). The optimizer builder puts each
        scale in its own parameter groups and the schedule keeps ``lr = scale * scheduled lr``."""
        return {}

    def fixed_lr(self) -> tuple[str, ...]:
        """Parameter-name prefixes whose learning rate stays at the peak (times its
        ``lr_scales`` multiplier) for the whole run instead of following the warm-up and decay,
        e.g. SimSiam's predictor (``("predictor.",)``). Empty: every parameter is scheduled."""
        return ()

    def eval_view(self) -> dict[str, Any] | None:
        """How evaluation should show a whole image to the trained encoder, when not as the
        image itself: a :func:`~selfsup.backbones.patch_grid.patch_grid_view` for methods that
        train the encoder on patches or tiles (CPC, jigsaw, relative location). Recorded as
        ``view`` in ``encoder.json`` and applied by :func:`selfsup.models.load_encoder` to the
        trained encoder and its random-init baseline alike. None: the whole image."""
        return None

    @torch.no_grad()
    def pretext_metrics(self, images: Tensor, generator: torch.Generator) -> dict[str, float]:
        """How well the pretext task is solved on a held-out uint8 batch (N, C, H, W).

        Called in eval mode; the caller averages the values over batches weighted by N.
        """
        return {}

    @torch.no_grad()
    def pictures(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Named pictures (3, H, W) float in [0, 1] of what the method does with a uint8 batch
        (reconstructions, colourisations, ...); written to ``RUN/pictures/`` during training."""
        return {}

    def unnormalize(self, x: Tensor) -> Tensor:
        """Undo the pipeline's normalisation: (N, C, H, W) -> [0, 1]."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() * std + mean).clamp(0, 1)


def contrastive_accuracy(query: Tensor, candidates: Tensor, target: Tensor) -> Tensor:
    """Top-1 accuracy of InfoNCE: how often the positive has the highest similarity.

    Args:
        query: (N, D); candidates: (M, D); target: (N,) index of each query's positive.

    Returns:
        0-d float tensor in [0, 1] (cosine similarities; no gradient).
    """
    with torch.no_grad():
        q, c = (
            nn.functional.normalize(query.float(), dim=1),
            nn.functional.normalize(candidates.float(), dim=1),
        )
        sim = q @ c.T
        return (sim.argmax(1) == target).float().mean()


class PositiveRetrieval:
    """Mixin giving two-view methods with an ``encoder`` and a ``projector`` (SimCLR, BYOL,
    SimSiam, Barlow Twins, VICReg) their pretext metric: ``positive_retrieval_top1``, how often
    the nearest projection (cosine, among the batch's second views) of an image's first view is
    its own second view. Put it before :class:`Method` in the bases."""

    encoder: nn.Module
    projector: nn.Module

    @torch.no_grad()
    def pretext_metrics(self, images: Tensor, generator: torch.Generator) -> dict[str, float]:
        x1, x2 = self.two_views(images, generator, None, 0)  # type: ignore[attr-defined]
        z1, z2 = self.projector(self.encoder(x1)), self.projector(self.encoder(x2))
        target = torch.arange(len(images), device=z1.device)
        return {"positive_retrieval_top1": float(contrastive_accuracy(z1, z2, target))}


class TwoViewConfig(MethodConfig):
    """``method_args`` every two-view method shares (SimCLR, Barlow Twins, VICReg, MoCo v2 /
    v3, BYOL, SimSiam): the area range of its views' random crop."""

    crop_scale: tuple[float, float] | None = None
    """Area range of the two views' random crop; None keeps the pipeline's own (0.08-1 for
    the SimCLR presets). Progressive resizing keeps it. :class:`Method` applies it to
    any method whose config is a ``TwoViewConfig``."""

    @field_validator("crop_scale")
    @classmethod
    def _check_crop_scale(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0.0 < value[0] <= value[1] <= 1.0:
            raise ValueError(f"must be (min, max) areas with 0 < min <= max <= 1, got {value}")
        return value


class ProjectorConfig(TwoViewConfig):
    """``method_args`` of a method with one projection MLP on the encoder; each method sets its
    published defaults."""

    proj_hidden_dim: int = Field(default=2048, gt=0)
    proj_out_dim: int = Field(default=128, gt=0)
    proj_layers: int = Field(default=2, ge=1)


class ProjectorMethod(PositiveRetrieval, Method):
    """A two-view method whose ``projector`` is ``ProjectionHead(feature_dim, proj_hidden_dim,
    proj_out_dim, proj_layers)``, (N, D) -> (N, proj_out_dim): SimCLR, Barlow Twins, VICReg.
    ``crop_scale`` narrows its views' crop area. Its pretext metric is
    :class:`PositiveRetrieval`'s."""

    default_augment = "simclr_cifar"
    cfg: ProjectorConfig

    def __init__(self, encoder: Backbone, cfg: ProjectorConfig, **kwargs: Any) -> None:
        super().__init__(encoder, cfg, **kwargs)
        self.projector = ProjectionHead(
            encoder.feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim, cfg.proj_layers
        )
