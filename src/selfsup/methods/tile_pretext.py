"""What jigsaw and relative patch location share: the puzzle view, its tiles and the
anti-shortcut treatment of every tile, and a siamese encoder over tiles.

One training step of a tile pretext, for a uint8 batch ``(n, C, H, W)``:

1. *puzzle view*: a random resized crop (scale ``crop_scale``) and a horizontal flip, resized to
   ``puzzle_size`` pixels, float in [0, 1] (held-out evaluation: the whole image resized);
2. *tiles*: a 3x3 :class:`~selfsup.augment.tiles.TileGrid` with a gap and per-tile jitter;
3. *per-tile colour* (training only): each tile independently greyed with probability
   ``tile_grayscale`` and colour-jittered with strength ``tile_color_jitter``;
4. *per-tile normalisation*: each tile standardised by its own mean and std (per channel by
   default), so that colour casts and brightness do not tell which tiles belong together;
5. the *same encoder* on every tile (all tiles of the batch in one ``(n * K, C, t, t)``
   forward), features concatenated per sample: ``(n, K * D)``.

Every random draw is made for the global batch and sliced at ``offset`` (see
:mod:`selfsup.augment.tiles`), so data-parallel processes see what one process would.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from selfsup.augment import (
    ColorJitter,
    Compose,
    Normalize,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToFloat,
    build_pipeline,
    slice_params,
)
from selfsup.augment.tiles import (
    TileGrid,
    default_puzzle_size,
    rows_of_global_batch,
    standardize_tiles,
)
from selfsup.backbones.patch_grid import patch_grid_view
from selfsup.backbones.vit import VisionTransformer
from selfsup.heads import ProjectionHead
from selfsup.methods.base import Method, MethodConfig

__all__ = ["TilePretextConfig", "TilePretextMethod"]


class TilePretextConfig(MethodConfig):
    """Options shared by the tile pretexts (``method_args``)."""

    puzzle_size: int | None = Field(default=None, ge=6)
    """Side of the image the 3x3 grid is cut from. None: the image size, at least 48 px and a
    multiple of 3 (CIFAR: 48 -> 16 px cells, 12 px tiles; see :func:`default_puzzle_size`)."""
    gap: int | None = Field(default=None, ge=0)
    """Minimum pixels between neighbouring tiles; None: ~1/8 of a cell (2 px at 48)."""
    jitter: int | None = Field(default=None, ge=0)
    """Largest random shift of a tile in its cell, per axis; None: ~1/8 of a cell."""
    crop_scale: tuple[float, float] = (0.6, 1.0)
    """Area range of the random resized crop the puzzle is made from."""
    tile_normalization: Literal["per_channel", "per_tile", "dataset"] = "per_channel"
    """``per_channel``: each channel of each tile standardised by its own mean/std;
    ``per_tile``: one mean/std per tile; ``dataset``: the run's normalisation only."""
    tile_grayscale: float = Field(default=0.3, ge=0, le=1)
    """Probability that a tile (each independently) is turned grey while training."""
    tile_color_jitter: float = Field(default=0.0, ge=0, le=1)
    """Per-tile colour jitter strength s: brightness/contrast/saturation s, hue s/4
    (brightness and contrast are mostly undone by per-tile standardisation)."""
    head_hidden_dim: int = Field(default=1024, gt=0)
    head_layers: int = Field(default=2, ge=1)
    """Linear layers of the MLP head over the concatenated tile features (1 = linear)."""

    @model_validator(mode="after")
    def _check_crop(self) -> TilePretextConfig:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        return self


class TilePretextMethod(Method):
    """Base of jigsaw and relative location: builds the puzzle views and tiles, encodes them.

    Subclasses define the head's output size and the task; ``self.grid`` is the
    :class:`~selfsup.augment.tiles.TileGrid`, ``self.head`` takes ``tiles_per_sample * D``
    features.
    """

    default_augment = "eval"
    tiles_per_sample: ClassVar[int] = 9
    cfg: TilePretextConfig

    def __init__(  # type: ignore[no-untyped-def]
        self, encoder, cfg: TilePretextConfig, *, num_outputs: int, **kwargs
    ) -> None:
        if isinstance(encoder, VisionTransformer):
            raise ValueError(
                f"{self.name} encodes small tiles one at a time and needs an encoder that takes "
                f"any input size (a ResNet); a ViT is built for {encoder.image_size}px images"
            )
        augment = kwargs.pop("augment", None)
        super().__init__(encoder, cfg, augment="eval", **kwargs)
        channels = len(self.mean)
        puzzle = cfg.puzzle_size or default_puzzle_size(self.image_size)
        self.grid = TileGrid.for_puzzle(puzzle, 3, cfg.gap, cfg.jitter)
        if augment is None:
            self.pipeline = Compose(
                [
                    ToFloat(),
                    RandomResizedCrop(puzzle, scale=cfg.crop_scale),
                    RandomHorizontalFlip(),
                ]
            )
        else:  # a named preset at puzzle size, left in [0, 1] (tiles are normalised later)
            self.pipeline = build_pipeline(augment, puzzle, (0.0,) * channels, (1.0,) * channels)
        self.eval_pipeline = Compose([ToFloat(), Resize(puzzle)])
        self.tile_color: list[Any] = []
        if cfg.tile_color_jitter > 0:
            s = cfg.tile_color_jitter
            self.tile_color.append(ColorJitter(s, s, s, s / 4))
        if cfg.tile_grayscale > 0:
            self.tile_color.append(RandomGrayscale(cfg.tile_grayscale))
        self.dataset_normalize = Normalize(self.mean, self.std)
        self.head = ProjectionHead(
            self.tiles_per_sample * encoder.feature_dim,
            cfg.head_hidden_dim,
            num_outputs,
            cfg.head_layers,
        )

    # --- inputs ----------------------------------------------------------------------------
    def puzzle_views(
        self,
        images: Tensor,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
        train: bool = True,
    ) -> Tensor:
        """uint8 ``(n, C, H, W)`` -> float ``(n, C, P, P)`` in [0, 1], P = ``puzzle_size``:
        random crop + flip when ``train``, the whole image resized otherwise."""
        if not train:
            return self.eval_pipeline(images, generator)
        return self.pipeline(images, generator, global_size=global_size, offset=offset)

    def finish_tiles(
        self,
        tiles: Tensor,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
        train: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Per-tile colour (``train`` only) and normalisation of ``(n, K, C, t, t)`` tiles.

        Colour parameters are drawn for the ``global_size * K`` tiles of the global batch and
        sliced at ``offset * K``. Returns ``(normalised, coloured)``, both ``(n, K, C, t, t)``;
        ``coloured`` is what the encoder sees before normalisation, in [0, 1] (for pictures).
        """
        n, k = tiles.shape[:2]
        total = rows_of_global_batch(n, global_size, offset)
        flat = tiles.flatten(0, 1).float()
        if train:
            for transform in self.tile_color:
                params = transform.sample_params(total * k, generator, flat.device)
                flat = transform.apply(flat, slice_params(params, offset * k, n * k))
        mode = self.cfg.tile_normalization
        if mode == "dataset":
            normalised = self.dataset_normalize.apply(flat, {})
        else:
            normalised = standardize_tiles(flat, per_channel=mode == "per_channel")
        return normalised.view_as(tiles), flat.view_as(tiles)

    def eval_view(self) -> dict[str, Any]:
        """The encoder sees a whole image as it saw the puzzles: resized to the puzzle size,
        cut into the 3x3 grid of tiles (each at its cell's mean jitter), each tile normalised
        as in training; the tile features averaged
        (:class:`~selfsup.backbones.PatchGridEncoder`)."""
        g, mode = self.grid, self.cfg.tile_normalization
        return patch_grid_view(
            image_size=g.puzzle_size,
            window=g.tile_size,
            stride=g.cell_size,
            offset=g.border + (g.gap + 1) // 2 + g.jitter // 2,
            standardize=None if mode == "dataset" else mode,
        )

    # --- model -----------------------------------------------------------------------------
    def encode_tiles(self, tiles: Tensor) -> Tensor:
        """The shared encoder on every tile: ``(n, K, C, t, t)`` -> ``(n, K * D)``, each
        sample's tile features concatenated in tile order."""
        n, k = tiles.shape[:2]
        flat = tiles.flatten(0, 1).contiguous(memory_format=self.memory_format)
        return self.encoder(flat).reshape(n, k * self.encoder.feature_dim)
