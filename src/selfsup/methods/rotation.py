"""Rotation prediction (Gidaris et al., 2018): which of 0, 90, 180, 270 degrees was applied?

Every image of the batch is lightly augmented (random resized crop with area ``crop_scale`` and
a horizontal flip), then shown at all four rotations, made on the device with ``torch.rot90``:
a batch of ``n`` images becomes ``4 n`` inputs, image-major (the 4 rotations of image 0, then of
image 1, ...), and the label of an input is its rotation ``k`` (``k * 90`` degrees
counter-clockwise, as :func:`torch.rot90` with ``dims=(-2, -1)``). Showing all four rotations
of each image in the same batch (which the paper found better than one random rotation per
image) balances every batch over the four classes, image by image. A head on the encoder's
pooled features (linear, or a small MLP by default) predicts ``k``; cross-entropy.

There is no per-image random choice beyond the augmentation, whose parameters are drawn for the
global batch and sliced at ``offset`` (so data-parallel processes see what one process would).

Shapes: a step takes uint8 ``(n, C, S, S)``; the encoder sees ``(4 n, C, S, S)``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from selfsup.augment import (
    build_pipeline,
    crop_flip_pipeline,
)
from selfsup.heads import ProjectionHead
from selfsup.methods.base import Method, MethodConfig, StepResult

__all__ = ["NUM_ROTATIONS", "Rotation", "RotationConfig", "rotate_all"]

NUM_ROTATIONS = 4


class RotationConfig(MethodConfig):
    head: Literal["linear", "mlp"] = "mlp"
    """``linear``: one Linear layer on the pooled features; ``mlp``: Linear-BN-ReLU-Linear."""
    head_hidden_dim: int = Field(default=512, gt=0)
    """Width of the MLP head's hidden layer."""
    crop_scale: tuple[float, float] = (0.5, 1.0)
    """Area range of the random resized crop before rotating."""

    @model_validator(mode="after")
    def _check_crop(self) -> RotationConfig:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        return self


def rotate_all(x: Tensor) -> tuple[Tensor, Tensor]:
    """Each image at the four rotations, image-major.

    Shapes: ``(n, C, S, S)`` -> ``((4 n, C, S, S), (4 n,) long)``; row ``4 i + k`` is image
    ``i`` rotated by ``k * 90`` degrees counter-clockwise, and its label is ``k``.
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(x.shape[-2:])}")
    rotated = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(NUM_ROTATIONS)], 1)
    labels = torch.arange(NUM_ROTATIONS, device=x.device).repeat(len(x))
    return rotated.flatten(0, 1), labels


class Rotation(Method):
    name = "rotation"
    family = "transformation"
    replicable = True
    description = "each image at 0/90/180/270 degrees; a head on pooled features predicts which"
    Config = RotationConfig
    default_augment = "eval"
    cfg: RotationConfig

    def __init__(self, encoder, cfg: RotationConfig, **kwargs) -> None:  # type: ignore[no-untyped-def]
        augment = kwargs.pop("augment", None)
        super().__init__(encoder, cfg, augment=augment or "eval", **kwargs)
        if augment is None:
            self.pipeline = crop_flip_pipeline(self.image_size, cfg.crop_scale, self.mean, self.std)
        self.eval_pipeline = build_pipeline("eval", self.image_size, self.mean, self.std)
        layers = 1 if cfg.head == "linear" else 2
        self.head = ProjectionHead(encoder.feature_dim, cfg.head_hidden_dim, NUM_ROTATIONS, layers)

    @torch.compiler.disable  # random draws and gathers: eager under train.compile
    def make_inputs(
        self,
        images: Tensor,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
        train: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """uint8 ``(n, C, H, W)`` -> rotated views ``(4 n, C, S, S)`` and labels ``(4 n,)``:
        augmented views when ``train``, the whole image (resized) otherwise."""
        if train:
            views = self.pipeline(images, generator, global_size=global_size, offset=offset)
        else:
            views = self.eval_pipeline(images, generator)
        rotated, labels = rotate_all(views)
        return rotated.contiguous(memory_format=self.memory_format), labels

    def logits(self, x: Tensor) -> Tensor:
        """Normalised images ``(m, C, S, S)`` -> rotation logits ``(m, 4)`` float."""
        return self.head(self.encoder(x)).float()

    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        labels: Tensor | None,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
    ) -> StepResult:
        x, targets = self.make_inputs(images, generator, global_size, offset)
        logits = self.logits(x)
        loss = F.cross_entropy(logits, targets)
        with torch.no_grad():
            accuracy = (logits.argmax(1) == targets).float().mean()
        return loss, {"rotation_accuracy": accuracy}

    @torch.no_grad()
    def pretext_metrics(self, images: Tensor, generator: torch.Generator) -> dict[str, float]:
        """Rotation prediction on held-out images, each at all 4 rotations, no random crop:

        * ``rotation_accuracy``: over the ``4 n`` rotated images (chance 0.25);
        * ``rotation_all_four``: fraction of images whose 4 rotations are all right.
        """
        x, targets = self.make_inputs(images, generator, train=False)
        correct = self.logits(x).argmax(1) == targets
        return {
            "rotation_accuracy": float(correct.float().mean()),
            "rotation_all_four": float(correct.view(-1, NUM_ROTATIONS).all(1).float().mean()),
        }

    @torch.no_grad()
    def pictures(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """``rotations``: one row per image (at most 8), its four rotations left to right, each
        framed green where the model names its rotation correctly and red where not."""
        from torchvision.utils import make_grid

        x, targets = self.make_inputs(images[:8], generator, train=False)
        correct = self.logits(x).argmax(1) == targets
        framed = _framed(self.unnormalize(x), correct, width=max(1, x.shape[-1] // 32))
        return {"rotations": make_grid(framed.cpu(), nrow=NUM_ROTATIONS, padding=2, pad_value=1.0)}


def _framed(x: Tensor, correct: Tensor, width: int) -> Tensor:
    """Images ``(m, C, S, S)`` in [0, 1] inside a green (correct) or red frame of ``width``
    pixels: ``(m, 3, S + 2 width, S + 2 width)``."""
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    green = torch.tensor([0.1, 0.75, 0.1], device=x.device)
    red = torch.tensor([0.9, 0.1, 0.1], device=x.device)
    colour = torch.where(correct[:, None], green, red)[:, :, None, None]
    m, _, s, _ = x.shape
    out = colour.expand(m, 3, s + 2 * width, s + 2 * width).clone()
    out[:, :, width:-width, width:-width] = x
    return out
