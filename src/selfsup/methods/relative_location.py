"""Relative patch location (Doersch et al., 2015): where is this patch, relative to the centre?

Each image becomes a puzzle view (random resized crop + flip) cut into a 3x3 grid with a gap
and per-tile jitter (the same :class:`~selfsup.augment.tiles.TileGrid` as jigsaw). Two tiles
are taken: the centre one and one of its 8 neighbours, chosen at random per image; the task is
the 8-way classification of the neighbour's position. Labels follow
:data:`NEIGHBOUR_OFFSETS`, row-major around the centre::

    0 1 2
    3 . 4
    5 6 7

Shortcuts are fought as in jigsaw: gap and jitter (no continuing edges, no fixed spacing),
per-tile standardisation and random per-tile greyscale (Doersch et al. found networks reading
the chromatic aberration of the lens to locate patches).

**Model.** One encoder shared by both tiles (the ``2n`` tiles of a batch in one forward), the
centre and neighbour features concatenated, ``(n, 2 * D)``, and an MLP head to 8 logits;
cross-entropy. The puzzle geometry is jigsaw's: CIFAR images become 48 px puzzles with 12 px
tiles (see :mod:`selfsup.methods.jigsaw` for why), so a step costs about 2 x 144 / 1024 = 0.3
plain image forwards per image.

Shapes: a step takes uint8 ``(n, C, H, W)``; the encoder sees ``(n * 2, C, t, t)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from selfsup.augment.tiles import lay_out_tiles, randint_rows
from selfsup.methods.base import StepResult
from selfsup.methods.tile_pretext import TilePretextConfig, TilePretextMethod

__all__ = [
    "CENTRE_CELL",
    "NEIGHBOUR_CELLS",
    "NEIGHBOUR_OFFSETS",
    "RelativeLocation",
    "RelativeLocationConfig",
]

NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = (
    (-1, -1),
    (-1, 0),
    (-1, 1),
    (0, -1),
    (0, 1),
    (1, -1),
    (1, 0),
    (1, 1),
)
"""(rows down, columns right) from the centre tile to the neighbour of each label 0..7."""
CENTRE_CELL = 4
"""The centre of the 3x3 grid in row-major cell numbering."""
NEIGHBOUR_CELLS: tuple[int, ...] = tuple((1 + dy) * 3 + (1 + dx) for dy, dx in NEIGHBOUR_OFFSETS)
"""Row-major cell of the neighbour of each label: (0, 1, 2, 3, 5, 6, 7, 8)."""


class RelativeLocationConfig(TilePretextConfig):
    head_hidden_dim: int = Field(default=512, gt=0)


class RelativeLocation(TilePretextMethod):
    name = "relative_location"
    family = "transformation"
    description = (
        "centre tile + one of its 8 neighbours (gap, jitter); siamese encoder + MLP "
        "classifies the neighbour's position"
    )
    Config = RelativeLocationConfig
    tiles_per_sample = 2
    cfg: RelativeLocationConfig
    neighbour_cells: Tensor

    def __init__(self, encoder, cfg: RelativeLocationConfig, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(encoder, cfg, num_outputs=len(NEIGHBOUR_OFFSETS), **kwargs)
        cells = torch.tensor(NEIGHBOUR_CELLS, dtype=torch.long)
        self.register_buffer("neighbour_cells", cells, persistent=False)

    # --- inputs ----------------------------------------------------------------------------
    @torch.compiler.disable  # random draws and gathers: eager under train.compile
    def make_inputs(
        self,
        images: Tensor,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
        train: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Patch pairs of a uint8 batch ``(n, C, H, W)``.

        Returns ``(tiles, labels, coloured)``: normalised ``(n, 2, C, t, t)`` tiles (centre,
        neighbour), the neighbour labels ``(n,)`` long in ``[0, 8)``, and the same tiles in
        [0, 1] before normalisation. Draws (for the global batch, sliced at ``offset``): crop,
        jitter, neighbour, tile colour.
        """
        n, device = len(images), images.device
        views = self.puzzle_views(images, generator, global_size, offset, train)
        jitter = self.grid.sample_jitter(n, generator, device, global_size, offset)
        labels = randint_rows(len(NEIGHBOUR_OFFSETS), (n,), generator, device, global_size, offset)
        centre = torch.full_like(labels, CENTRE_CELL)
        cells = torch.stack([centre, self.neighbour_cells[labels]], dim=1)
        tiles = self.grid.cut(views, jitter, cells)
        normalised, coloured = self.finish_tiles(tiles, generator, global_size, offset, train)
        return normalised, labels, coloured

    def logits(self, tiles: Tensor) -> Tensor:
        """``(n, 2, C, t, t)`` normalised (centre, neighbour) tiles -> ``(n, 8)`` float logits."""
        return self.head(self.encode_tiles(tiles)).float()

    # --- training --------------------------------------------------------------------------
    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        labels: Tensor | None,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
    ) -> StepResult:
        tiles, targets, _ = self.make_inputs(images, generator, global_size, offset)
        logits = self.logits(tiles)
        loss = F.cross_entropy(logits, targets)
        with torch.no_grad():
            accuracy = (logits.argmax(1) == targets).float().mean()
        return loss, {"location_accuracy": accuracy}

    # --- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def pretext_metrics(self, images: Tensor, generator: torch.Generator) -> dict[str, float]:
        """``location_accuracy``: the 8-way position of a random neighbour of the centre tile
        of held-out images (whole image resized, random jitter, no colour augmentation);
        chance 1/8."""
        tiles, targets, _ = self.make_inputs(images, generator, train=False)
        predicted = self.logits(tiles).argmax(1)
        return {"location_accuracy": float((predicted == targets).float().mean())}

    @torch.no_grad()
    def pictures(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """``patch_pairs``: for each image (at most 8), the centre tile with its neighbour at
        the true position, then at the position the model predicts (two boards per image)."""
        from torchvision.utils import make_grid

        tiles, targets, coloured = self.make_inputs(images[:8], generator, train=False)
        predicted = self.logits(tiles).argmax(1)
        centre = torch.full_like(targets, CENTRE_CELL)
        boards = [
            lay_out_tiles(coloured, torch.stack([centre, self.neighbour_cells[k]], 1), 3)
            for k in (targets, predicted)
        ]
        rows = torch.stack(boards, dim=1).flatten(0, 1).cpu()
        grid = make_grid(rows, nrow=4, padding=2, pad_value=1.0)
        return {"patch_pairs": grid.clamp(0, 1)}
