"""Jigsaw puzzles (Noroozi & Favaro, 2016): shuffle a 3x3 grid of tiles, predict the order.

Each image becomes a puzzle view (random resized crop + flip) of ``puzzle_size`` pixels cut into
3x3 tiles with a gap and random per-tile jitter (so continuing edges and exact spacing do not
give the answer away). The tiles are shuffled by one of ``num_permutations`` permutations, and
the task is to say which one: a classification over the permutation set.

**Permutation set.** Chosen once, deterministically for ``permutation_seed``, by the greedy
maximal-minimum-Hamming-distance procedure over all 9! orderings
(:func:`~selfsup.augment.tiles.maximal_hamming_permutations`): any two classes differ in at least
``min_hamming`` tile positions (7 for the default 64 classes; 5 for 1000). That minimum is the
attribute :attr:`Jigsaw.min_hamming` and is logged as ``permutation_min_hamming`` with the
training and pretext metrics. The set is a buffer of the checkpoint, so evaluation always uses
the set the model was trained on.

**Shortcuts.** Besides the gap and jitter, every tile is standardised by its own per-channel
mean and std, and independently turned grey with probability 0.3 while training (chromatic
aberration and colour continuity are otherwise cheap cues to a tile's neighbours);
see :class:`~selfsup.methods.tile_pretext.TilePretextConfig`.

**Model.** One encoder shared by the 9 tiles (siamese; the ``n * 9`` tiles of a batch go through
it as one batch), the 9 feature vectors concatenated in shuffled order, ``(n, 9 * D)``, and an
MLP head ``9 * D -> head_hidden_dim -> num_permutations``; cross-entropy.

**Tile size on CIFAR.** A 32 px image has ~10 px cells, so tiles at native resolution would be
8 px once gap and jitter are taken: too few pixels for a ResNet to read a part of an object.
By default the crop is resized to a 48 px puzzle (16 px cells, gap 2, jitter 2, 12 px tiles):
9 tiles of 12 x 12 are 1.3x the pixels of one 32 x 32 image, so a jigsaw step costs about as
much as 1.3 plain image forwards; 64 px puzzles (15 px tiles) would cost 2x for pixels that
upsampling does not make sharper. Larger images keep their size (96 px -> 24 px tiles).

Shapes: a step takes uint8 ``(n, C, H, W)``; the encoder sees ``(n * 9, C, t, t)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from selfsup.augment.tiles import (
    lay_out_tiles,
    maximal_hamming_permutations,
    min_hamming_distance,
    randint_rows,
    shuffle_tiles,
)
from selfsup.methods.base import StepResult
from selfsup.methods.tile_pretext import TilePretextConfig, TilePretextMethod

__all__ = ["Jigsaw", "JigsawConfig"]


class JigsawConfig(TilePretextConfig):
    num_permutations: int = Field(default=64, ge=9, le=1000)
    """Size of the permutation set (the number of classes)."""
    permutation_seed: int = 0
    """Seed of the greedy maximal-minimum-Hamming selection (same seed, same set)."""


class Jigsaw(TilePretextMethod):
    name = "jigsaw"
    family = "transformation"
    description = (
        "3x3 tiles with gap and jitter, shuffled by one of 64 max-min-Hamming permutations; "
        "siamese encoder + MLP classifies the permutation"
    )
    Config = JigsawConfig
    tiles_per_sample = 9
    cfg: JigsawConfig
    permutations: Tensor

    def __init__(self, encoder, cfg: JigsawConfig, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(encoder, cfg, num_outputs=cfg.num_permutations, **kwargs)
        perms = maximal_hamming_permutations(cfg.num_permutations, 9, cfg.permutation_seed)
        # (P, 9) long: row c is class c, ``shuffled[:, i] = tiles[:, permutations[c, i]]``
        self.register_buffer("permutations", torch.from_numpy(perms.copy()))
        self.min_hamming = min_hamming_distance(perms)
        """Smallest number of tile positions in which two classes differ."""
        self.register_load_state_dict_post_hook(_refresh_min_hamming)

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
        """Shuffled puzzles of a uint8 batch ``(n, C, H, W)``.

        Returns ``(tiles, labels, coloured)``: normalised tiles ``(n, 9, C, t, t)`` in shuffled
        order (position ``i`` holds the tile of cell ``permutations[label, i]``), the
        permutation classes ``(n,)`` long, and the same tiles in [0, 1] before normalisation.
        Draws (for the global batch, sliced at ``offset``): crop, jitter, class, tile colour.
        """
        n, device = len(images), images.device
        views = self.puzzle_views(images, generator, global_size, offset, train)
        jitter = self.grid.sample_jitter(n, generator, device, global_size, offset)
        labels = randint_rows(len(self.permutations), (n,), generator, device, global_size, offset)
        tiles = shuffle_tiles(self.grid.cut(views, jitter), self.permutations[labels])
        normalised, coloured = self.finish_tiles(tiles, generator, global_size, offset, train)
        return normalised, labels, coloured

    def logits(self, tiles: Tensor) -> Tensor:
        """``(n, 9, C, t, t)`` normalised tiles -> ``(n, num_permutations)`` float logits."""
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
        return loss, {
            "permutation_accuracy": accuracy,
            "permutation_min_hamming": float(self.min_hamming),
        }

    # --- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def pretext_metrics(self, images: Tensor, generator: torch.Generator) -> dict[str, float]:
        """Puzzles of held-out images (whole image resized, random jitter and class, no colour
        augmentation):

        * ``permutation_accuracy``: the permutation class is right (chance ``1 / P``);
        * ``tile_position_accuracy``: fraction of tiles the predicted permutation puts back in
          their own cell (a wrong class still places many tiles right);
        * ``permutation_min_hamming``: the set's minimum pairwise Hamming distance.
        """
        tiles, targets, _ = self.make_inputs(images, generator, train=False)
        predicted = self.logits(tiles).argmax(1)
        placed = self.permutations[predicted] == self.permutations[targets]
        return {
            "permutation_accuracy": float((predicted == targets).float().mean()),
            "tile_position_accuracy": float(placed.float().mean()),
            "permutation_min_hamming": float(self.min_hamming),
        }

    @torch.no_grad()
    def pictures(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """``puzzles``: one row per image (at most 8): the shuffled tiles as the encoder gets
        them (before normalisation), the tiles put back by the predicted permutation, and put
        back by the true one."""
        from torchvision.utils import make_grid

        tiles, targets, coloured = self.make_inputs(images[:8], generator, train=False)
        predicted = self.logits(tiles).argmax(1)
        n = len(targets)
        in_order = torch.arange(9, device=tiles.device).expand(n, 9)
        boards = [
            lay_out_tiles(coloured, cells, self.grid.grid)
            for cells in (in_order, self.permutations[predicted], self.permutations[targets])
        ]
        rows = torch.stack(boards, dim=1).flatten(0, 1).cpu()  # image-major: 3 boards each
        grid = make_grid(rows, nrow=3, padding=2, pad_value=1.0)
        return {"puzzles": grid.clamp(0, 1)}


def _refresh_min_hamming(module: torch.nn.Module, incompatible_keys: object) -> None:
    """After loading a checkpoint, report the loaded permutation set's minimum distance."""
    assert isinstance(module, Jigsaw)
    module.min_hamming = min_hamming_distance(module.permutations)
