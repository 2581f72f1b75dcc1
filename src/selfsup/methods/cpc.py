"""Contrastive Predictive Coding for images (van den Oord et al., 2018; Hénaff et al., 2019).

One training step, for a uint8 batch ``(n, C, H, W)``:

1. *view*: a light augmentation (random resized crop with area ``crop_scale`` and a horizontal
   flip) to ``view_size`` pixels, float in [0, 1] (held-out evaluation: the image resized);
2. *patch grid*: an overlapping ``G x G`` grid of ``patch_size`` patches every ``stride`` pixels
   (:func:`~selfsup.augment.tiles.cut_patch_grid`; 32 px CIFAR: 8 px patches, stride 4,
   ``G = 7``; by default ``patch_size = view_size // 4``, ``stride = patch_size // 2``);
3. *per-patch treatment* against low-level shortcuts: each patch independently greyed with
   probability ``patch_grayscale`` (training only), then normalised with the dataset statistics
   or standardised on its own (``patch_normalization``);
4. *embeddings*: the shared encoder on every patch, all ``n * G * G`` patches in one
   ``(n G^2, C, p, p)`` pass, pooled features laid out as a map ``z``: ``(n, D, G, G)``;
5. *context*: a masked (row-causal) convolutional ResNet over ``z`` gives ``c``:
   ``(n, context_dim, G, G)``; ``c[:, :, i, j]`` depends on patches in rows ``<= i`` only
   (:class:`RowCausalContext`);
6. *prediction*: for ``k`` in ``first_step .. prediction_steps``, a linear map ``W_k`` (a 1x1
   convolution) of ``c[:, :, i, j]`` predicts ``z[:, :, i + k, j]``, the embedding of the patch
   ``k`` rows below, for every position with ``i + k < G``;
7. *loss*: per ``k``, InfoNCE (:func:`~selfsup.losses.info_nce`, in-batch form) of each
   prediction against its own target, the negatives being the targets of every other valid
   position of every image of the *global* batch (other positions of the same image and all
   positions of other images); the mean over positions, then over ``k``.

**Directions.** van den Oord et al. (2018) predict downwards only; CPC v2 (Hénaff et al.,
2020) also predicts from the other directions, which its ablation finds helps. With
``directions`` 2 (down, up) or 4 (down, up, left, right), steps 5-7 are repeated on the
embedding map turned by 180, 90 and 270 degrees (``torch.rot90``: "rows below" in the turned
map are rows above, or columns beside, in the image), each direction with its own context
network and predictors; the loss is the mean over directions and offsets. The encoder's pass
over the patches, the costly part, is shared, so each direction adds learning signal at the
cost of a context network (cheap with a small ``context_dim``). Our choice, not the papers':
one context network per direction, so that none has to infer which way it is predicting.

**Candidates.** Per ``k`` there are ``N (G - k) G`` queries and as many candidates (CIFAR batch
256, ``k = 1``: 10752), so the logits are ``(N (G - k) G)^2``. ``max_queries`` caps this: a random
subset of that many positions of the global batch (one draw per ``k`` from the step's
generator) is kept, each scored against the targets of the others; ``None`` keeps all.

**Distributed.** Embeddings and predictions are gathered from every process with gradients
(:func:`~selfsup.utils.distributed.gather_with_grad`) and every process computes the same
global loss; the gather's backward sums the gradients and data parallelism averages them, so
the update equals the single-process one (the loss itself is computed once per process, a small
cost next to the encoder's ``n G^2`` patches). Crop, flip and per-patch draws are made for the
global batch and sliced at ``offset``.

**Representation.** What CPC trains is the encoder's pooled features of a patch. Evaluation
sees a whole image through the same patch grid, the patch features averaged
(:meth:`CPC.eval_view`, as CPC's own evaluation pools over the grid).

Shapes: a step takes uint8 ``(n, C, H, W)``; the encoder sees ``(n G^2, C, p, p)``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from selfsup.augment import (
    Compose,
    Normalize,
    RandomGrayscale,
    Resize,
    ToFloat,
    build_pipeline,
    crop_flip_pipeline,
    slice_params,
)
from selfsup.augment.tiles import (
    cut_patch_grid,
    patch_grid_size,
    rows_of_global_batch,
    standardize_tiles,
)
from selfsup.backbones.patch_grid import patch_grid_view
from selfsup.backbones.vit import VisionTransformer
from selfsup.losses import info_nce
from selfsup.methods.base import Method, MethodConfig, StepResult, embedding_spread
from selfsup.utils.distributed import gather_with_grad

__all__ = ["CPC", "CPCConfig", "RowCausalContext", "cpc_pairs", "turn"]


class CPCConfig(MethodConfig):
    """Options of CPC (``method_args``)."""

    view_size: int | None = Field(default=None, ge=4)
    """Side of the augmented view the grid is cut from; None: the image size."""
    patch_size: int | None = Field(default=None, ge=2)
    """Patch side in pixels; None: ``view_size // 4`` (32 px -> 8 px)."""
    stride: int | None = Field(default=None, ge=1)
    """Pixels between neighbouring patches; None: ``patch_size // 2`` (50% overlap)."""
    crop_scale: tuple[float, float] = (0.5, 1.0)
    """Area range of the random resized crop the view is made from."""
    patch_grayscale: float = Field(default=0.0, ge=0, le=1)
    """Probability that a patch (each independently) is turned grey while training."""
    patch_normalization: Literal["dataset", "per_channel", "per_patch"] = "dataset"
    """``dataset``: the run's normalisation (what the encoder sees at evaluation);
    ``per_channel``/``per_patch``: each patch standardised by its own statistics."""
    prediction_steps: int = Field(default=3, ge=1)
    """Largest offset ``K``: rows ``first_step .. K`` below are predicted."""
    first_step: int = Field(default=1, ge=1)
    """Smallest offset predicted. With 50% overlap the patch 1 row below shares half its
    pixels with the context's own row; 2 predicts only non-overlapping patches."""
    context_dim: int | None = Field(default=None, gt=0)
    """Channels of the context network; None: the encoder's feature size."""
    directions: Literal[1, 2, 4] = 1
    """Prediction directions: 1 downwards (CPC v1), 2 down and up, 4 down, up, left and right
    (CPC v2), each with its own context network and predictors."""
    context_layers: int = Field(default=2, ge=1)
    """Masked residual blocks in the context network."""
    context_kernel: int = Field(default=3, ge=1)
    """Kernel size of the masked convolutions (odd): rows ``i - kernel + 1 .. i`` are seen."""
    temperature: float = Field(default=0.1, gt=0)
    normalize: bool = True
    """Cosine similarity (L2-normalised predictions and targets); False: dot products."""
    max_queries: int | None = Field(default=4096, ge=2)
    """Positions per offset scored against each other per step; None: every valid position."""

    @model_validator(mode="after")
    def _check(self) -> CPCConfig:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if self.first_step > self.prediction_steps:
            raise ValueError(
                f"first_step {self.first_step} exceeds prediction_steps {self.prediction_steps}"
            )
        if self.context_kernel % 2 == 0:
            raise ValueError(f"context_kernel must be odd, got {self.context_kernel}")
        return self


class _RowCausalConv(nn.Conv2d):
    """A ``kernel x kernel`` convolution whose output at row ``i`` sees input rows
    ``i - kernel + 1 .. i`` only: padded above and at the sides, never below.
    Shapes: ``(n, C_in, G, G) -> (n, C_out, G, G)``."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int) -> None:
        super().__init__(in_dim, out_dim, kernel)
        self.pad = (kernel // 2, kernel // 2, kernel - 1, 0)  # left, right, top, bottom

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(F.pad(x, self.pad))


class _CausalBlock(nn.Module):
    """Pre-activation residual block ``x + W_1x1 relu(causal_conv(relu(x)))``."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.conv = _RowCausalConv(dim, dim, kernel)
        self.mix = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mix(F.relu(self.conv(F.relu(x))))


class RowCausalContext(nn.Module):
    """CPC's context network: a small masked ResNet over a map of patch embeddings.

    A 1x1 input projection, ``layers`` residual blocks of row-causal convolutions, so the
    context at row ``i`` summarises every patch in rows ``<= i`` within the receptive field
    (``layers * (kernel - 1)`` rows up) and nothing below.

    Shapes: ``(n, in_dim, G, G) -> (n, dim, G, G)``.
    """

    def __init__(self, in_dim: int, dim: int, layers: int = 2, kernel: int = 3) -> None:
        super().__init__()
        self.input = nn.Conv2d(in_dim, dim, 1)
        self.blocks = nn.Sequential(*[_CausalBlock(dim, kernel) for _ in range(layers)])

    def forward(self, z: Tensor) -> Tensor:
        return F.relu(self.blocks(self.input(z)))


TURNS = (0, 2, 1, 3)
"""Quarter turns of the embedding map for directions 0..3: down, up, and the two sides."""


def turn(z: Tensor, direction: int) -> Tensor:
    """The map ``(N, D, G, G)`` turned so that "rows below" point in ``direction``: ``z`` for
    0 (down), turned 180 degrees for 1 (up), 90 and 270 degrees for 2 and 3 (the sides)."""
    return torch.rot90(z, TURNS[direction], dims=(2, 3)) if direction else z


def _one_direction_layout(state: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load-time rename of a checkpoint made before ``directions`` (one context network
    ``context.*`` and predictors ``predictors.<s>.*``) into direction 0 of the per-direction
    layout (``context.0.*``, ``predictors.0.<s>.*``)."""
    for key in [k for k in state if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        parts = rest.split(".")
        if parts[0] == "context" and not parts[1].isdigit():
            state[f"{prefix}context.0.{'.'.join(parts[1:])}"] = state.pop(key)
        elif parts[0] == "predictors" and len(parts) == 3:  # predictors.<s>.<weight|bias>
            state[f"{prefix}predictors.0.{'.'.join(parts[1:])}"] = state.pop(key)


def cpc_pairs(z: Tensor, predictions: Tensor, step: int) -> tuple[Tensor, Tensor]:
    """Queries and positive keys of offset ``step``, position-major.

    Args:
        z: ``(N, D, G, G)`` patch embeddings (the targets).
        predictions: ``(N, D, G, G)``; ``predictions[:, :, i, j]`` predicts
            ``z[:, :, i + step, j]``.
        step: rows ahead, ``1 <= step < G``.

    Returns:
        ``(queries, keys)``, both ``(N * (G - step) * G, D)``, row ``(b, i, j)`` (row-major)
        holding ``predictions[b, :, i, j]`` and ``z[b, :, i + step, j]``.
    """
    g = z.shape[2]
    if not 1 <= step < g:
        raise ValueError(f"offset {step} leaves no target in a {g}-row grid")
    queries = predictions[:, :, : g - step].permute(0, 2, 3, 1).flatten(0, 2)
    keys = z[:, :, step:].permute(0, 2, 3, 1).flatten(0, 2)
    return queries, keys


class CPC(Method):
    name = "cpc"
    family = "contrastive"
    description = (
        "overlapping patch grid, masked-conv context predicts embeddings k rows below "
        "(and above / beside); "
        "InfoNCE against other positions and images"
    )
    Config = CPCConfig
    default_augment = "eval"
    cfg: CPCConfig

    def __init__(self, encoder, cfg: CPCConfig, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if isinstance(encoder, VisionTransformer):
            raise ValueError(
                f"{self.name} encodes small patches one at a time and needs an encoder that "
                f"takes any input size (a ResNet); a ViT is built for {encoder.image_size}px images"
            )
        augment = kwargs.pop("augment", None)
        super().__init__(encoder, cfg, augment="eval", **kwargs)
        channels = len(self.mean)
        self.view_size = cfg.view_size or self.image_size
        self.patch_size = cfg.patch_size or max(2, self.view_size // 4)
        self.stride = cfg.stride or max(1, self.patch_size // 2)
        self.grid_size = patch_grid_size(self.view_size, self.patch_size, self.stride)
        if cfg.prediction_steps >= self.grid_size:
            raise ValueError(
                f"prediction_steps {cfg.prediction_steps} needs more than the "
                f"{self.grid_size} rows of the patch grid"
            )
        if augment is None:
            self.pipeline = crop_flip_pipeline(self.view_size, cfg.crop_scale)
        else:  # a named preset at view size, left in [0, 1] (patches are normalised later)
            zeros, ones = (0.0,) * channels, (1.0,) * channels
            self.pipeline = build_pipeline(augment, self.view_size, zeros, ones)
        self.eval_pipeline = Compose([ToFloat(), Resize(self.view_size)])
        self.patch_color: list[Any] = []
        if cfg.patch_grayscale > 0:
            self.patch_color.append(RandomGrayscale(cfg.patch_grayscale))
        self.dataset_normalize = Normalize(self.mean, self.std)
        dim, context_dim = encoder.feature_dim, cfg.context_dim or encoder.feature_dim
        # per direction (index r, the map turned by TURNS[r] quarter turns): a context network
        # and one linear predictor per offset
        self.context = nn.ModuleList(
            RowCausalContext(dim, context_dim, cfg.context_layers, cfg.context_kernel)
            for _ in range(cfg.directions)
        )
        self.predictors = nn.ModuleList(
            nn.ModuleList(nn.Conv2d(context_dim, dim, 1) for _ in self.steps)
            for _ in range(cfg.directions)
        )
        self._register_load_state_dict_pre_hook(_one_direction_layout)

    @property
    def steps(self) -> range:
        """The offsets ``k`` predicted: ``first_step .. prediction_steps``."""
        return range(self.cfg.first_step, self.cfg.prediction_steps + 1)

    # --- inputs ----------------------------------------------------------------------------
    @torch.compiler.disable  # random draws: eager under train.compile
    def make_patches(
        self,
        images: Tensor,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
        train: bool = True,
    ) -> Tensor:
        """uint8 ``(n, C, H, W)`` -> normalised patches ``(n, G, G, C, p, p)`` float.

        Draws (for the global batch of ``global_size`` images, sliced at ``offset``): crop and
        flip, then per-patch greyscale for the ``global_size * G^2`` patches sliced at
        ``offset * G^2`` (``train`` only; otherwise the image is resized, nothing is drawn).
        """
        n = len(images)
        total = rows_of_global_batch(n, global_size, offset)
        if train:
            views = self.pipeline(images, generator, global_size=global_size, offset=offset)
        else:
            views = self.eval_pipeline(images, generator)
        grid = cut_patch_grid(views.float(), self.patch_size, self.stride)  # (n, G, G, C, p, p)
        flat = grid.flatten(0, 2)
        per_image = self.grid_size**2
        if train:
            for transform in self.patch_color:
                params = transform.sample_params(total * per_image, generator, flat.device)
                flat = transform.apply(flat, slice_params(params, offset * per_image, len(flat)))
        mode = self.cfg.patch_normalization
        if mode == "dataset":
            flat = self.dataset_normalize.apply(flat, {})
        else:
            flat = standardize_tiles(flat, per_channel=mode == "per_channel")
        return flat.view_as(grid)

    @torch.compiler.disable
    def query_subset(
        self, total: int, generator: torch.Generator | None, device: Any
    ) -> Tensor | None:
        """Indices of the ``max_queries`` positions kept among ``total`` (one draw from the
        step's generator, the same in every process); None when all are kept."""
        cap = self.cfg.max_queries
        if cap is None or total <= cap:
            return None
        if generator is None:
            raise TypeError("a torch.Generator is required to subsample CPC queries")
        draw = torch.randperm(total, generator=generator, device=generator.device)
        return draw[:cap].to(device)

    # --- model -----------------------------------------------------------------------------
    def embed(self, patches: Tensor) -> Tensor:
        """The encoder on every patch: ``(n, G, G, C, p, p)`` -> ``(n, D, G, G)`` float."""
        n, g = patches.shape[:2]
        flat = patches.flatten(0, 2).contiguous(memory_format=self.memory_format)
        features = self.encoder(flat).float()
        return features.view(n, g, g, -1).permute(0, 3, 1, 2)

    def predict(self, z: Tensor) -> Tensor:
        """Context and linear predictions: ``(n, D, G, G)`` -> ``(n, R S, D, G, G)`` for the
        ``R`` directions and the ``S`` offsets in :attr:`steps`, direction-major:
        ``[:, r S + s, :, i, j]`` predicts ``turn(z, r)[:, :, i + k_s, j]``
        (:func:`turn`; direction 0 is ``z`` itself)."""
        out = []
        for r, (context_net, heads) in enumerate(zip(self.context, self.predictors, strict=True)):
            context = context_net(turn(z, r))
            out.extend(head(context).float() for head in heads)
        return torch.stack(out, dim=1)

    def contrast(
        self, z: Tensor, predictions: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, list[Tensor], list[int]]:
        """InfoNCE per offset over the batch given (already gathered, if distributed).

        Args:
            z: ``(N, D, G, G)`` embeddings; predictions: ``(N, R S, D, G, G)`` from
            :meth:`predict`; generator: for the query subset (``max_queries``).

        Returns:
            ``(loss, accuracies, candidates)``: the mean over directions and offsets of the
            per-offset mean InfoNCE, and per (direction, offset), direction-major, the top-1
            accuracy (0-d, no gradient: the true target scores highest among the candidates)
            and the number of candidates.
        """
        losses, accuracies, candidates = [], [], []
        turned = [turn(z, r) for r in range(self.cfg.directions)]  # each map turned once
        pairs = [(zr, step) for zr in turned for step in self.steps]  # direction-major
        for index, (zr, step) in enumerate(pairs):
            queries, keys = cpc_pairs(zr, predictions[:, index], step)
            keep = self.query_subset(len(queries), generator, queries.device)
            if keep is not None:
                queries, keys = queries[keep], keys[keep]
            losses.append(info_nce(queries, keys, None, self.cfg.temperature, self.cfg.normalize))
            with torch.no_grad():
                q, k = queries.detach(), keys.detach()
                if self.cfg.normalize:
                    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
                hits = (q @ k.T).argmax(1) == torch.arange(len(q), device=q.device)
                accuracies.append(hits.float().mean())
            candidates.append(len(queries))
        return torch.stack(losses).mean(), accuracies, candidates

    def per_offset(self, accuracies: list[Tensor]) -> dict[int, Tensor]:
        """Accuracies per (direction, offset) from :meth:`contrast` -> per offset ``k``, the
        mean over directions."""
        per_direction = torch.stack(accuracies).view(self.cfg.directions, len(self.steps))
        return dict(zip(self.steps, per_direction.mean(0), strict=True))

    # --- training --------------------------------------------------------------------------
    def eval_view(self) -> dict[str, Any]:
        """The encoder sees a whole image as it saw the training views: resized to the view
        size, cut into the same overlapping patch grid, each patch normalised as in training,
        the patch features averaged (CPC's own evaluation pools over the grid)."""
        mode = self.cfg.patch_normalization
        return patch_grid_view(
            image_size=self.view_size,
            window=self.patch_size,
            stride=self.stride,
            standardize={"dataset": None, "per_channel": "per_channel", "per_patch": "per_tile"}[
                mode
            ],
        )

    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        labels: Tensor | None,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
    ) -> StepResult:
        patches = self.make_patches(images, generator, global_size, offset)
        z = self.embed(patches)
        predictions = self.predict(z)
        all_z, all_predictions = gather_with_grad(z), gather_with_grad(predictions)
        loss, accuracies, _ = self.contrast(all_z, all_predictions, generator)
        metrics: dict[str, Any] = {
            "prediction_accuracy": torch.stack(accuracies).mean(),
            "embedding_spread": embedding_spread(z.permute(0, 2, 3, 1).flatten(0, 2)),
        }
        for step, accuracy in self.per_offset(accuracies).items():
            metrics[f"prediction_accuracy_k{step}"] = accuracy
        return loss, metrics

    # --- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def pretext_metrics(self, images: Tensor, generator: torch.Generator) -> dict[str, float]:
        """CPC's task on held-out images (each resized to the view, no per-patch colour):

        * ``cpc_loss``: the InfoNCE loss;
        * ``prediction_accuracy``: how often the true patch embedding scores highest among the
          candidates, averaged over offsets (``prediction_accuracy_k{k}`` per offset); chance
          is ``1 / prediction_candidates``, which grows with the batch
          (``(n (G - k) G)`` per offset, at most ``max_queries``).
        """
        z = self.embed(self.make_patches(images, generator, train=False))
        loss, accuracies, candidates = self.contrast(z, self.predict(z), generator)
        out = {
            "cpc_loss": float(loss),
            "prediction_accuracy": float(torch.stack(accuracies).mean()),
        }
        for step, accuracy in self.per_offset(accuracies).items():
            out[f"prediction_accuracy_k{step}"] = float(accuracy)
        out["prediction_candidates"] = float(sum(candidates) / len(candidates))
        return out
