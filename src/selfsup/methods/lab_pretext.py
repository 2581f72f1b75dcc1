"""What the Lab pretexts share (colorization, split-brain): in-gamut ab bins and uniform L bins,
soft encoding with optional class rebalancing (:class:`SoftBins`), regression losses, colour
errors, the training views (RGB in [0, 1] -> CIE Lab) and :class:`LabMethod`, their base class.

The colour maths is :mod:`selfsup.augment.color`; see :mod:`selfsup.methods.colorization` for
the method that uses all of it and its references.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from selfsup.augment import Compose, RandomHorizontalFlip, RandomResizedCrop, Resize, ToFloat
from selfsup.augment import build_pipeline as _build_pipeline
from selfsup.augment.color import input_channels, lab_to_input, lab_to_rgb, rgb_to_lab
from selfsup.backbones import Backbone
from selfsup.errors import ConfigError
from selfsup.losses.precision import full_precision
from selfsup.methods.base import NORMALIZATION, Method, MethodConfig
from selfsup.utils.distributed import is_distributed

AB_GRID = 10.0
"""Side of the ab quantisation grid (Zhang et al.)."""


# ------------------------------------------------------------------------------ bins
@functools.lru_cache(maxsize=4)
def _gamut_bins(grid: float) -> tuple[tuple[float, float], ...]:
    v = torch.arange(256, dtype=torch.float64) / 255.0
    g, b = torch.meshgrid(v, v, indexing="ij")
    faces = []
    for fixed in (0.0, 1.0):
        f = torch.full_like(g, fixed)
        faces += [torch.stack([f, g, b]), torch.stack([g, f, b]), torch.stack([g, b, f])]
    ab = rgb_to_lab(torch.stack(faces))[:, 1:]
    q = torch.round(ab / grid).permute(0, 2, 3, 1).reshape(-1, 2).unique(dim=0)
    return tuple((float(a) * grid, float(b) * grid) for a, b in q.tolist())


def ab_bins(grid: float = AB_GRID) -> Tensor:
    """The in-gamut ab bin centres (Q, 2) float32, in ab units, sorted by a then b.

    A grid point ``(10 i, 10 j)`` is kept when it is the nearest grid point of the ab of some
    8-bit sRGB colour (D65), i.e. when its 10x10 cell holds a colour a uint8 image can have.
    Computed deterministically in float64 from the 6 faces of the 8-bit RGB cube (256^2 colours
    each): a colour inside the cube is a darker version of one on a face, and the interior adds
    no bin (the tests check a lattice of the whole cube). Result: **261 bins**, a in [-90, 100],
    b in [-110, 90]. Zhang et al. keep 313 ``pts_in_hull`` with the same extent but do not
    publish their gamut test; with the same extent, their 52 extra points can only be grid cells
    at the edge of the region that no sRGB colour reaches (a looser test). Other exact-ish tests
    give nearby counts: 262 sampling the cube faces at 1024 levels (one sliver cell), 233 grid
    points inside the convex hull of the sRGB ab region, 269 cells meeting that hull.
    """
    return torch.tensor(_gamut_bins(float(grid)), dtype=torch.float32)


def l_bins(n: int = 50) -> Tensor:
    """Centres (n, 1) of ``n`` uniform L bins over [0, 100] (width 100 / n)."""
    return ((torch.arange(n, dtype=torch.float32) + 0.5) * (100.0 / n)).unsqueeze(1)


# ---------------------------------------------------------------------- pure functions
@contextlib.contextmanager
def no_autocast(x: Tensor) -> Iterator[None]:
    """Disable autocast (targets, decoding and colour metrics are computed in float32)."""
    with torch.autocast(x.device.type, enabled=False):
        yield


def _nearest_all(v: Tensor, c: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact k nearest of points v (P, D) among centres c (Q, D): (squared distances, idx),
    both (P, k), nearest first."""
    d2 = sum((v[:, d : d + 1] - c[:, d]).pow(2) for d in range(c.shape[1]))
    return torch.topk(d2, k, dim=1, largest=False, sorted=True)  # type: ignore[arg-type]


class GridIndex:
    """Exact k-nearest-centre search for centres on a square grid (e.g. the ab bins).

    For ``k <= 5`` only six grid points per value are examined: with ``u`` the value in grid
    units, ``n`` its nearest grid point and ``f = u - n`` mirrored into ``[0, 1/2]^2``, the
    offsets (0, 0), (1, 0), (0, 1), (1, 1), (-1, 0), (0, -1) (mirrored back). Every other grid
    point is at least as far as the nearest of (-1, 1), (1, -1), (2, 0), (0, 2), so when the
    k-th nearest candidate is no farther than that the result is exact. Values where it is not
    (a bin missing from the table nearby, e.g. at the gamut's edge) and larger ``k`` search the
    ``(2 r + 1)^2`` grid points around ``n`` (5 x 5 for r = 2; a point outside that window is
    at least ``(r + 0.5) * grid`` away), and values that this does not settle either (or that
    lie off the table) search all Q centres.
    """

    NEAR = ((0, 0), (1, 0), (0, 1), (1, 1), (-1, 0), (0, -1))
    """The six candidate offsets, for a value whose offset from its nearest grid point is
    non-negative on both axes."""

    def __init__(self, centers: Tensor, grid: float, radius: int = 2) -> None:
        cells = torch.round(centers.double() / grid).long()
        if centers.shape[1] != 2 or not torch.equal(cells.double() * grid, centers.double()):
            raise ValueError("GridIndex needs 2-D centres on multiples of the grid step")
        self.grid, self.radius = float(grid), radius
        self.low = cells.min(0).values - radius
        size = cells.max(0).values + radius - self.low + 1
        table = torch.full((int(size[0]), int(size[1])), -1, dtype=torch.long)
        table[(cells - self.low).unbind(1)] = torch.arange(len(centers))
        self.table = table
        r = torch.arange(-radius, radius + 1)
        self.offsets = torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)
        self.near = torch.tensor(self.NEAR)

    def nearest(self, v: Tensor, c: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Like the full search: (squared distances, idx), both (P, k), nearest first."""
        if k >= len(self.NEAR):
            return self._nearest_in_window(v, c, k)
        u = v / self.grid
        n = torch.round(u)
        f = u - n
        mirror = torch.where(f < 0, -1.0, 1.0)  # (P, 2)
        cand = n[:, None, :] + self.near.to(v)[None] * mirror[:, None, :]  # (P, 6, 2)
        nd2, idx = self._candidates(v, c, cand.long(), k)
        a, b = f.abs().unbind(1)
        farther = torch.stack([(1 + a) ** 2 + (1 - b) ** 2, (1 - a) ** 2 + (1 + b) ** 2,
                               (2 - a) ** 2 + b**2, a**2 + (2 - b) ** 2]).amin(0)  # fmt: skip
        redo = (~(nd2[:, -1] <= farther * self.grid**2)).nonzero().squeeze(1)
        if redo.numel():
            nd2[redo], idx[redo] = self._nearest_in_window(v[redo], c, k)
        return nd2, idx

    def _candidates(self, v: Tensor, c: Tensor, cells: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The k nearest of the grid points ``cells`` (P, W, 2) (in grid units) that are bins:
        (squared distances, idx), both (P, k); inf and -1 where fewer than k are bins."""
        table, low = self.table.to(v.device), self.low.to(v.device)
        size = torch.tensor(table.shape, device=v.device)
        cells = cells - low
        on_table = ((cells >= 0) & (cells < size)).all(-1)
        cells = torch.minimum(cells.clamp_min(0), size - 1)
        idx = table[cells[..., 0], cells[..., 1]].masked_fill(~on_table, -1)  # (P, W)
        d2 = (v[:, None, :] - c[idx.clamp_min(0)]).pow(2).sum(-1)
        d2 = d2.masked_fill(idx < 0, float("inf"))
        nd2, j = torch.topk(d2, k, dim=1, largest=False, sorted=True)
        return nd2, idx.gather(1, j)

    def _nearest_in_window(self, v: Tensor, c: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The ``(2 r + 1)^2`` window around each value's nearest grid point, then the full
        search where that does not settle it."""
        n = torch.round(v / self.grid).long()  # (P, 2)
        nd2, idx = self._candidates(v, c, n[:, None, :] + self.offsets.to(v.device), k)
        bound = ((self.radius + 0.5) * self.grid) ** 2
        redo = (~(nd2[:, -1] <= bound)).nonzero().squeeze(1)
        if redo.numel():
            nd2[redo], idx[redo] = _nearest_all(v[redo], c, k)
        return nd2, idx


def soft_encode(
    values: Tensor,
    centers: Tensor,
    k: int = 5,
    sigma: float = 5.0,
    index: GridIndex | None = None,
) -> tuple[Tensor, Tensor]:
    """Soft-encode values on bins: the ``k`` nearest bin centres with Gaussian weights.

    Args:
        values: (N, D, H, W) e.g. ab (D = 2) or L (D = 1), in the units of ``centers``.
        centers: (Q, D) bin centres.
        k: neighbours kept (at most Q).
        sigma: Gaussian kernel width, in value units.
        index: a :class:`GridIndex` of ``centers`` to search only nearby grid points (same
            result, faster for many bins).

    Returns:
        ``(idx, weights)``, both (N, k, H, W): bin indices (long), nearest first, and weights
        ``exp(-d^2 / (2 sigma^2))`` normalised to sum 1 over dim 1.
    """
    with no_autocast(values):
        n, dims, h, w = values.shape
        v = values.float().permute(0, 2, 3, 1).reshape(-1, dims)
        c = centers.to(device=v.device, dtype=torch.float32)
        k = min(k, c.shape[0])
        nd2, idx = index.nearest(v, c, k) if index is not None else _nearest_all(v, c, k)
        wt = torch.exp(-(nd2 - nd2[:, :1]) / (2.0 * sigma**2))
        wt = wt / wt.sum(1, keepdim=True)
        back = (n, h, w, k)
        return (
            idx.view(back).permute(0, 3, 1, 2).contiguous(),
            wt.view(back).permute(0, 3, 1, 2).contiguous(),
        )


def soft_encode_dense(values: Tensor, centers: Tensor, k: int = 5, sigma: float = 5.0) -> Tensor:
    """:func:`soft_encode` as a dense distribution (N, Q, H, W) over the bins."""
    idx, w = soft_encode(values, centers, k, sigma)
    n, _, h, wd = values.shape
    out = torch.zeros(n, centers.shape[0], h, wd, device=values.device, dtype=w.dtype)
    return out.scatter_(1, idx, w)


def _pixel_rows(t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """(N, C, H, W) -> (N H W, C): one row per pixel. A view where ``t`` is channels-last and
    already of ``dtype``, else one copy that permutes and casts together."""
    n, c, h, w = t.shape
    rows = t.permute(0, 2, 3, 1)
    dtype = dtype or t.dtype
    if rows.is_contiguous() and t.dtype == dtype:
        return rows.view(n * h * w, c)
    return torch.empty((n, h, w, c), dtype=dtype, device=t.device).copy_(rows).view(-1, c)


class _SoftCrossEntropy(torch.autograd.Function):
    """Per-pixel ``-Σ_j w_j log softmax(x)[idx_j] = (Σ_j w_j) lse(x) - Σ_j w_j x[idx_j]`` over
    dim 1, fused: one pass makes the softmax and the log-sum-exp, and the backward is
    ``((Σ_j w_j) softmax(x) - scatter(w)) * grad``. Also returns, from the same max, the
    (N, H, W) bool :func:`top1_hits` of the first bin ``idx[:, 0]`` (no gradient), so the bin
    accuracy costs no second reduction over the Q bins.

    The work runs on one contiguous row of Q bins per pixel, in float32 (float64 stays
    float64): channels-last logits are read in place (one copy permutes NCHW ones), the softmax
    is torch's fused kernel, the log-sum-exp comes from its largest probability (``lse = max -
    log p_max``, with ``p_max >= 1 / Q``), and the gradient goes back in the logits' dtype as a
    channels-last view.

    Memory traffic, not arithmetic, is what these passes cost on a CPU (a (128, 261, 16, 16)
    batch has 34 MB of float32 rows per full-size temporary), so both passes go through the
    pixels :attr:`CHUNK` rows at a time: each chunk's float32 temporaries stay in cache, and
    the backward recomputes its chunk's softmax from the saved logits instead of keeping a
    softmax of the logits' size between the passes. Row by row the arithmetic is the
    unchunked one, so the values and gradients are too."""

    CHUNK = 8192
    """Pixel rows per chunk (8192 x 261 float32: 8.6 MB). Forward + backward on colorization's
    (128, 261, 16, 16) logits, 2 threads (``benchmarks/bench_lab_loss.py``): bf16 11.5 ms,
    fp32 9.0 ms; 1,024-16,384 rows are within 1.2 ms of that, one chunk of the whole batch
    takes 15-16 ms."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, idx: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        n, q, h, w = logits.shape
        work = torch.promote_types(logits.dtype, torch.float32)
        rows = _pixel_rows(logits)  # (P, Q): a view of channels-last logits
        idx_rows = _pixel_rows(idx)  # (P, k)
        w_rows = _pixel_rows(weights, work)
        mass = w_rows.sum(1, keepdim=True)
        ce = torch.empty_like(mass)
        hits = torch.empty(len(rows), dtype=torch.bool, device=rows.device)
        for part in _chunks(len(rows), _SoftCrossEntropy.CHUNK):
            r = rows[part]
            top = r.amax(1, keepdim=True).to(work)
            picked = r.gather(1, idx_rows[part]).to(work)
            hits[part] = picked[:, 0] >= top[:, 0]
            probs = torch.softmax(r, 1, dtype=work)
            # the largest probability is exp(top - lse) >= 1 / Q: its log is well conditioned
            lse = top - probs.amax(1, keepdim=True).log()
            ce[part] = lse * mass[part] - (picked * w_rows[part]).sum(1, keepdim=True)
        ctx.save_for_backward(rows, mass, idx_rows, w_rows)
        ctx.logits_shape, ctx.logits_dtype = (n, q, h, w), logits.dtype
        ctx.mark_non_differentiable(hits)
        return ce.view(n, h, w), hits.view(n, h, w)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor, _grad_hits: None) -> tuple[Tensor, None, None]:  # type: ignore[override]
        rows, mass, idx_rows, w_rows = ctx.saved_tensors
        g = grad.reshape(-1, 1).to(mass.dtype)
        n, q, h, w = ctx.logits_shape
        out = torch.empty((n, h, w, q), dtype=ctx.logits_dtype, device=rows.device)
        out_rows = out.view(-1, q)
        for part in _chunks(len(rows), _SoftCrossEntropy.CHUNK):
            probs = torch.softmax(rows[part], 1, dtype=mass.dtype)
            gp = g[part]
            probs.mul_(mass[part] * gp).scatter_add_(1, idx_rows[part], w_rows[part] * -gp)
            out_rows[part] = probs  # cast to the logits' dtype on the way
        return out.permute(0, 3, 1, 2), None, None


def _chunks(total: int, size: int) -> Iterator[slice]:
    """Slices of ``range(total)`` of ``size`` (the last one shorter)."""
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def soft_cross_entropy_and_hits(
    logits: Tensor, idx: Tensor, weights: Tensor, pixel_weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`soft_cross_entropy` and, from the same pass, the (N, H, W) bool
    :func:`top1_hits` of the first target bin ``idx[:, 0]`` (the nearest one).

    In float32 with autocast off, as :func:`~selfsup.losses.precision.full_precision` runs a
    loss, except that bf16 / fp16 logits (a decoder's output under autocast) are not copied to
    float32 first: :class:`_SoftCrossEntropy` converts them chunk by chunk, in cache, and hands
    their gradient back in their dtype. The float32 copy of the logits, the largest tensor of
    the step, and its cast back in the backward were two full passes over memory; the values
    and gradients are the same (bf16 -> float32 is exact, and the gradient is rounded to bf16
    once either way)."""
    if logits.dtype not in (torch.bfloat16, torch.float16):
        logits = logits.float()
    with torch.autocast(logits.device.type, enabled=False):
        ce, hits = _SoftCrossEntropy.apply(logits, idx, weights.float())
        if pixel_weights is not None:
            ce = ce * pixel_weights.float()
        return ce.mean(), hits


def soft_cross_entropy(
    logits: Tensor, idx: Tensor, weights: Tensor, pixel_weights: Tensor | None = None
) -> Tensor:
    """Mean over pixels of ``v_p * -Σ_j weights_pj log softmax(logits_p)[idx_pj]``.

    Args:
        logits: (N, Q, H, W).
        idx, weights: (N, k, H, W) sparse soft targets (:func:`soft_encode`).
        pixel_weights: (N, H, W) per-pixel weights ``v_p`` (class rebalancing), or None for 1.

    Returns:
        0-d tensor (the mean over N * H * W pixels, not normalised by the weights, as in
        Zhang et al.), in float32 whatever the autocast.
    """
    return soft_cross_entropy_and_hits(logits, idx, weights, pixel_weights)[0]


def top1_hits(logits: Tensor, idx: Tensor) -> Tensor:
    """(N, H, W) bool: where the bin ``idx`` (N, H, W) has the highest logit of (N, Q, H, W)
    (a tie with another bin counts as a hit). Several times faster than ``argmax(1) == idx``
    on CPU, where the arg-max along the strided channel dim is slow."""
    return logits.gather(1, idx.unsqueeze(1)).squeeze(1) >= logits.amax(1)


def rebalance_weights(prior: Tensor, mix: float = 0.5) -> Tensor:
    """Class-rebalancing weights (Q,) from a prior over Q bins (any non-negative masses).

    ``w_q ∝ 1 / ((1 - mix) p_q + mix / Q)``, normalised so that ``Σ_q p_q w_q = 1``: the
    expected weight of a pixel drawn from the prior is 1, and rare bins weigh more.
    """
    if not 0.0 < mix <= 1.0:
        raise ValueError(f"mix must be in (0, 1], got {mix}")
    p = prior.double()
    p = p / p.sum()
    w = 1.0 / ((1.0 - mix) * p + mix / p.numel())
    return (w / (p * w).sum()).float()


def annealed_mean(logits: Tensor, centers: Tensor, temperature: float = 0.38) -> Tensor:
    """Annealed mean of bin distributions: ``Σ_q softmax(logits / T)_q c_q``.

    ``softmax(logits / T)`` is the re-normalised ``z^(1/T)`` of the predicted distribution
    ``z = softmax(logits)``; T -> 0 gives the mode's centre, T = 1 the mean.

    Args:
        logits: (N, Q, H, W).
        centers: (Q, D).

    Returns:
        (N, D, H, W) decoded values.
    """
    with no_autocast(logits):
        p = torch.softmax(logits.float() / temperature, dim=1)
        return torch.einsum("nqhw,qd->ndhw", p, centers.to(p))


@full_precision
def regression_loss(
    pred: Tensor, target: Tensor, kind: Literal["l2", "smooth_l1"] = "l2", beta: float = 0.05
) -> Tensor:
    """``l2``: mean squared error; ``smooth_l1``: Huber-like with threshold ``beta`` (mean over
    every element of (N, C, H, W))."""
    pred, target = pred.float(), target.float()
    if kind == "l2":
        return (pred - target).pow(2).mean()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=beta)
    raise ValueError(f"unknown regression loss {kind!r}")


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR (N,) in dB of (N, C, H, W) images in [0, 1]."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def colorization_errors(lab: Tensor, ab_pred: Tensor, rgb: Tensor) -> dict[str, float]:
    """Colour errors of a predicted ab (N, 2, H, W) for images with Lab ``lab`` (N, 3, H, W)
    and RGB ``rgb`` (N, 3, H, W) in [0, 1]: ``ab_abs_error``, ``ab_l2_error`` (ab units),
    ``psnr`` (dB, RGB of true L + predicted ab), and the grey prediction's ``grey_ab_l2_error``
    and ``grey_psnr``."""
    with no_autocast(lab):
        true_ab, light = lab[:, 1:].float(), lab[:, :1].float()
        diff = ab_pred.float() - true_ab
        colour = lab_to_rgb(torch.cat([light, ab_pred.float()], 1))
        grey = lab_to_rgb(torch.cat([light, torch.zeros_like(true_ab)], 1))
        return {
            "ab_abs_error": float(diff.abs().mean()),
            "ab_l2_error": float(diff.norm(dim=1).mean()),
            "psnr": float(psnr(colour, rgb).mean()),
            "grey_ab_l2_error": float(true_ab.norm(dim=1).mean()),
            "grey_psnr": float(psnr(grey, rgb).mean()),
        }


# ---------------------------------------------------------------------- binned targets
class SoftBins(nn.Module):
    """Classification over fixed bin centres: soft-encoded targets, optional class rebalancing
    with a running prior, annealed-mean decoding. Used for ab (colorization, split-brain) and
    for L (split-brain).

    Args:
        centers: (Q, D) bin centres in value units.
        neighbors, sigma: soft encoding (:func:`soft_encode`).
        rebalance: weight pixels by :func:`rebalance_weights` of the running prior.
        mix: λ of the rebalancing (uniform share of the mixed prior).
        temperature: annealed-mean temperature of :meth:`decode`.
        grid: the spacing when the centres lie on a 2-D square grid (ab bins): the soft
            encoding then searches nearby grid points only (:class:`GridIndex`).

    Buffers: ``centers`` (not saved: it is recomputed), ``prior_mass`` (Q,) float64 when
    rebalancing — the summed soft targets of every training batch (all processes), saved with
    the method so that a resumed run keeps its prior.
    """

    prior_mass: Tensor
    centers: Tensor

    def __init__(
        self,
        centers: Tensor,
        *,
        neighbors: int = 5,
        sigma: float = 5.0,
        rebalance: bool = False,
        mix: float = 0.5,
        temperature: float = 0.38,
        grid: float | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("centers", centers.float().clone(), persistent=False)
        self.neighbors, self.sigma = neighbors, sigma
        self.index: GridIndex | None = None
        if grid is not None:
            self.index = GridIndex(centers, grid)
        self.rebalance, self.mix, self.temperature = rebalance, mix, temperature
        if rebalance:
            self.register_buffer("prior_mass", torch.zeros(len(centers), dtype=torch.float64))

    @property
    def num_bins(self) -> int:
        return int(self.centers.shape[0])

    def encode(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """(N, D, H, W) values -> sparse soft targets ``(idx, weights)``, each (N, k, H, W)."""
        return soft_encode(values, self.centers, self.neighbors, self.sigma, self.index)

    def prior(self) -> Tensor:
        """The running prior (Q,) float64 (uniform before any data)."""
        if not self.rebalance or float(self.prior_mass.sum()) <= 0:
            return torch.full((self.num_bins,), 1.0 / self.num_bins, dtype=torch.float64)
        return self.prior_mass / self.prior_mass.sum()

    def class_weights(self) -> Tensor:
        """Per-bin loss weights (Q,) float32: :func:`rebalance_weights` of the prior."""
        return rebalance_weights(self.prior(), self.mix).to(self.centers.device)

    @torch.no_grad()
    def update_prior(self, idx: Tensor, weights: Tensor) -> None:
        """Add a batch's soft targets to the prior (summed over processes under DDP)."""
        mass = torch.bincount(
            idx.flatten(), weights=weights.flatten().double(), minlength=self.num_bins
        )
        if is_distributed():
            torch.distributed.all_reduce(mass)
        self.prior_mass += mass.to(self.prior_mass)

    def loss(self, logits: Tensor, values: Tensor, update_prior: bool) -> tuple[Tensor, Tensor]:
        """Soft cross-entropy of logits (N, Q, H, W) against values (N, D, H, W); the prior is
        updated first when ``update_prior`` (training). Returns ``(loss, bin_accuracy)``, the
        latter the share of pixels whose nearest bin has the highest logit."""
        with torch.no_grad():
            idx, w = self.encode(values)
            pixel_weights = None
            if self.rebalance:
                if update_prior:
                    self.update_prior(idx, w)
                pixel_weights = self.class_weights()[idx[:, 0]]
        loss, hits = soft_cross_entropy_and_hits(logits, idx, w, pixel_weights)
        return loss, hits.float().mean()

    def decode(self, logits: Tensor) -> Tensor:
        """Annealed mean (N, D, H, W) of logits (N, Q, H, W)."""
        return annealed_mean(logits, self.centers, self.temperature)


# ------------------------------------------------------------------------ Lab methods
def lab_train_pipeline(size: int, augment: str | None) -> Compose:
    """The training view of the Lab methods, RGB floats in [0, 1] (no normalisation): random
    resized crop (scale 0.35-1) + flip, or the named preset without normalisation."""
    if augment is None:
        return Compose(
            [ToFloat(), RandomResizedCrop(size, scale=(0.35, 1.0)), RandomHorizontalFlip()]
        )
    mean, std = NORMALIZATION["none"]
    return _build_pipeline(augment, size, mean, std)


def _as_rgb(images: Tensor) -> Tensor:
    if images.shape[1] == 3:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    raise ValueError(f"expected RGB or grey images (N, 3 or 1, H, W), got {tuple(images.shape)}")


class LabPretextConfig(MethodConfig):
    """Options every Lab pretext has (``method_args``)."""

    mode: Literal["classification", "regression"] = "classification"
    """``classification`` over soft-encoded bins (the papers) or ``regression``."""
    decoder_dim: int = Field(default=256, gt=0)
    """Width of the ConvDecoder's first stage."""
    decoder_min_dim: int = Field(default=32, gt=0)
    target_downsample: int = Field(default=2, ge=1)
    """Predict (and compare) at ``image_size // target_downsample`` (Zhang et al.: 4)."""
    neighbors: int = Field(default=5, ge=1)
    """Soft encoding: nearest bins per pixel."""
    sigma: float = Field(default=5.0, gt=0)
    """Soft encoding of ab: Gaussian kernel width in ab units."""
    rebalance: bool = True
    """Class rebalancing of the ab bins by a running prior."""
    rebalance_mix: float = Field(default=0.5, gt=0, le=1)
    """λ: weight of the uniform distribution mixed into the prior."""
    temperature: float = Field(default=0.38, gt=0)
    """Annealed-mean temperature for pictures and metrics."""
    regression_loss: Literal["l2", "smooth_l1"] = "l2"
    smooth_l1_beta: float = Field(default=0.05, gt=0)
    """smooth-L1 threshold in the regression units (ab / 110; split-brain's L: (L - 50) / 50)."""


class LabMethod(Method):
    """Shared plumbing of the Lab pretexts: RGB views in [0, 1] -> Lab, pooled targets,
    full-precision colour maths, picture grids."""

    default_augment = "eval"
    out_size: int
    cfg: LabPretextConfig

    @classmethod
    def encoder_channels(cls, data_channels: int) -> int:
        """1 (the L channel) for ``lab_l``, 3 for ``lab``; colour training data only."""
        if data_channels != 3:
            raise ConfigError(
                f"{cls.name} needs colour (3-channel) training data: {data_channels}-channel "
                "images have no ab channels"
            )
        return input_channels(cls.input_space)

    def __init__(self, encoder: Backbone, cfg: LabPretextConfig, **kwargs) -> None:  # type: ignore[no-untyped-def]
        """RGB training views in [0, 1] (a named ``augment`` preset, or crop + flip), the whole
        image resized for evaluation, predictions at ``image_size // target_downsample``."""
        augment = kwargs.pop("augment", None)
        super().__init__(encoder, cfg, augment=augment or self.default_augment, **kwargs)
        self.pipeline = lab_train_pipeline(self.image_size, augment)
        self.eval_pipeline = Compose([ToFloat(), Resize(self.image_size)])
        self.out_size = max(1, self.image_size // cfg.target_downsample)

    def soft_ab_bins(self) -> SoftBins:
        """Soft-encoded in-gamut ab bins (:func:`ab_bins`) with the config's neighbours, width,
        rebalancing and decoding temperature."""
        cfg = self.cfg
        return SoftBins(
            ab_bins(),
            neighbors=cfg.neighbors,
            sigma=cfg.sigma,
            rebalance=cfg.rebalance,
            mix=cfg.rebalance_mix,
            temperature=cfg.temperature,
            grid=AB_GRID,
        )

    def to_lab(self, x: Tensor) -> Tensor:
        """RGB views (N, 3, S, S) in [0, 1] -> Lab float32 (clamped to [0, 1] first)."""
        with no_autocast(x):
            return rgb_to_lab(x.float().clamp(0.0, 1.0))

    def encoder_input(self, lab: Tensor) -> Tensor:
        """Lab (N, 3, S, S) -> the encoder's input space, in the training memory layout."""
        return lab_to_input(lab, self.input_space).contiguous(memory_format=self.memory_format)

    def pool(self, t: Tensor) -> Tensor:
        """Full-resolution targets (N, C, S, S) -> the prediction resolution (average)."""
        return F.adaptive_avg_pool2d(t.float(), self.out_size)

    def upsample(self, t: Tensor) -> Tensor:
        """Predictions (N, C, h, h) -> (N, C, S, S), bilinear."""
        if t.shape[-1] == self.image_size:
            return t
        return F.interpolate(t, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)

    def train_lab(
        self, images: Tensor, generator: torch.Generator, global_size: int | None, offset: int
    ) -> Tensor:
        """Augmented Lab views (N, 3, S, S) of a uint8 batch."""
        return self.to_lab(self.views(_as_rgb(images), generator, global_size, offset))

    def eval_lab(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(Lab, RGB in [0, 1]) of held-out images: resize only, no random crop."""
        rgb = self.eval_pipeline(_as_rgb(images), generator).float().clamp(0.0, 1.0)
        return self.to_lab(rgb), rgb

    @staticmethod
    def grid(rows: list[Tensor]) -> Tensor:
        """Rows of (n, 3, H, W) pictures -> one (3, H', W') grid, one column per image."""
        from torchvision.utils import make_grid

        n, size = rows[0].shape[0], rows[0].shape[-1]
        pad = max(1, math.ceil(size / 32))
        stacked = torch.cat([r.float().cpu() for r in rows])
        return make_grid(stacked, nrow=n, padding=pad, pad_value=1.0).clamp(0, 1)
