"""Out-of-distribution (OOD) detection on frozen features: kNN scores, AUROC, FPR@95TPR.

Score convention used throughout this module: a score is an **outlier score**, higher means
more OOD (e.g. the kNN distance). Only the ranking of scores matters to the metrics.

* ``auroc``: probability that a random OOD sample scores above a random in-distribution (ID)
  sample, ties counting half (Mann-Whitney U). It is the same number whichever class is called
  positive, as long as the score is oriented accordingly.
* ``fpr_at_tpr`` (default ``positive="in"``): the convention of Sun et al. 2022, "Out-of-
  distribution detection with deep nearest neighbors" (ICML), also used by ODIN (Liang et al.
  2018) and the energy score (Liu et al. 2020): ID samples are the positives, the threshold
  accepts (as ID) the fraction ``tpr`` of ID samples, and FPR is the fraction of OOD samples
  that are accepted as ID too. ``positive="out"`` gives the Outlier Exposure convention
  (Hendrycks et al. 2019): the threshold flags ``tpr`` of the OOD samples and FPR is the
  fraction of ID samples flagged.
* ``knn_ood_scores``: Sun et al. 2022 -- Euclidean distance from the L2-normalised query to
  its k-th nearest neighbour among the L2-normalised ID bank features.

``generated_ood_images`` makes synthetic OOD image sets (noise, blobs, constant colours) in the
spirit of the synthetic anomalies of Hendrycks et al. 2019.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ScoresLike = Tensor | np.ndarray | Sequence[float]

OOD_IMAGE_KINDS: tuple[str, ...] = ("uniform_noise", "gaussian_noise", "blobs", "constant")


def _scores(x: ScoresLike, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if len(arr) == 0:
        raise ValueError(f"{name} is empty")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    return arr


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` (ascending), tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # 0-based start of each tie group
    return (first + (counts + 1) / 2.0)[inverse.reshape(-1)]


def auroc(in_scores: ScoresLike, out_scores: ScoresLike) -> float:
    """Area under the ROC curve separating OOD (positive) from ID by outlier score.

    Computed as the Mann-Whitney U statistic with average ranks:
    ``P(s_out > s_in) + 0.5 * P(s_out == s_in)``; 1.0 means every OOD sample scores above
    every ID sample, 0.5 chance, 0.0 perfectly reversed.

    Args:
        in_scores: (N_in,) outlier scores of ID samples.
        out_scores: (N_out,) outlier scores of OOD samples.
    """
    s_in, s_out = _scores(in_scores, "in_scores"), _scores(out_scores, "out_scores")
    n_in, n_out = len(s_in), len(s_out)
    ranks = _average_ranks(np.concatenate([s_in, s_out]))
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2.0
    return float(u / (n_in * n_out))


def _min_count(n: int, rate: float) -> int:
    """Smallest m in 1..n with m / n >= rate (compared in float, as a ROC curve would)."""
    return int(np.searchsorted(np.arange(1, n + 1) / n, rate, side="left")) + 1


def fpr_at_tpr(
    in_scores: ScoresLike,
    out_scores: ScoresLike,
    tpr: float = 0.95,
    *,
    positive: Literal["in", "out"] = "in",
) -> float:
    """False positive rate at the first threshold reaching a true positive rate of ``tpr``.

    Scores are outlier scores (higher = more OOD). A sample is accepted as ID when its score
    is ``<= t`` and flagged as OOD when it is ``> t``; samples tied with the threshold always
    land on the positive side (the most pessimistic choice, as on a ROC curve).

    * ``positive="in"`` (default; Sun et al. 2022, ODIN, energy score): ``t`` is the smallest
      score such that at least ``tpr`` of the ID samples have score ``<= t``; the result is
      the fraction of OOD samples with score ``<= t`` (OOD wrongly accepted as ID).
    * ``positive="out"`` (Outlier Exposure, Hendrycks et al. 2019): ``t`` is the largest score
      such that at least ``tpr`` of the OOD samples have score ``>= t``; the result is the
      fraction of ID samples with score ``>= t`` (ID wrongly flagged as OOD).

    Args:
        in_scores: (N_in,) outlier scores of ID samples.
        out_scores: (N_out,) outlier scores of OOD samples.
        tpr: target true positive rate in (0, 1].
        positive: which set is the positive class.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    s_in, s_out = _scores(in_scores, "in_scores"), _scores(out_scores, "out_scores")
    if positive == "in":
        t = np.sort(s_in)[_min_count(len(s_in), tpr) - 1]
        return float((s_out <= t).mean())
    if positive == "out":
        t = np.sort(s_out)[::-1][_min_count(len(s_out), tpr) - 1]
        return float((s_in >= t).mean())
    raise ValueError(f"positive must be 'in' or 'out', got {positive!r}")


@torch.no_grad()
def knn_ood_scores(bank: Tensor, queries: Tensor, k: int = 50, *, chunk_size: int = 1024) -> Tensor:
    """Deep nearest-neighbour outlier score of Sun et al. 2022 (higher = more OOD).

    Both sets are L2-normalised; the score of a query is its Euclidean distance to its k-th
    nearest bank feature (in [0, 2]). Neighbours are searched by cosine similarity
    ``chunk_size`` queries at a time; the distance to the selected neighbour is then computed
    directly (not as ``sqrt(2 - 2 cos)``, which loses precision for close pairs). A query that
    is itself in the bank counts itself as its first neighbour.

    Args:
        bank: (M, D) in-distribution (training) features.
        queries: (N, D) test features.
        k: neighbour rank, ``1 <= k <= M``.
        chunk_size: queries per similarity matrix (bounds memory to chunk x M).

    Returns:
        (N,) float32 distances, on the device of ``bank``.
    """
    if not 1 <= k <= len(bank):
        raise ValueError(f"k must be in [1, M={len(bank)}], got {k}")
    b = F.normalize(bank.float(), dim=1)
    out = []
    for start in range(0, len(queries), chunk_size):
        q = F.normalize(queries[start : start + chunk_size].float().to(b.device), dim=1)
        _, idx = (q @ b.T).topk(k, dim=1)  # (m, k), most similar first
        out.append((q - b[idx[:, -1]]).norm(dim=1))
    return torch.cat(out) if out else torch.zeros(0, device=b.device)


def ood_metrics(
    bank: Tensor, in_queries: Tensor, out_queries: Tensor, k: int = 50
) -> dict[str, float]:
    """kNN OOD detection (Sun et al. 2022) of ``out_queries`` against ``in_queries``.

    Args:
        bank: (M, D) ID training features.
        in_queries: (N_in, D) ID test features.
        out_queries: (N_out, D) OOD test features.
        k: neighbour rank of the kNN score.

    Returns:
        ``{"auroc", "fpr@95tpr"}`` (FPR of OOD samples at 95% TPR of ID samples).
    """
    s_in = knn_ood_scores(bank, in_queries, k)
    s_out = knn_ood_scores(bank, out_queries, k)
    return {"auroc": auroc(s_in, s_out), "fpr@95tpr": fpr_at_tpr(s_in, s_out, 0.95)}


def generated_ood_images(
    kind: str, n: int, size: int = 32, channels: int = 3, seed: int = 0
) -> Tensor:
    """A synthetic OOD image set, deterministic for ``seed``.

    Kinds:
        * ``"uniform_noise"``: i.i.d. pixels uniform over 0..255.
        * ``"gaussian_noise"``: i.i.d. pixels N(128, 64^2), rounded and clipped to 0..255.
        * ``"blobs"``: smooth random blobs: uniform noise on a ``size // 4`` grid, upsampled
          bicubically to ``size`` and thresholded at 0.5 per channel, giving amorphous shapes
          with sharp edges in up to 2^C colours (pixels are 0 or 255).
        * ``"constant"``: one random colour (uniform 0..255 per channel) per image.

    Args:
        kind: one of :data:`OOD_IMAGE_KINDS`.
        n: number of images.
        size: height and width.
        channels: number of channels C.
        seed: seed of the CPU generator.

    Returns:
        (n, C, size, size) uint8 tensor on the CPU.
    """
    if kind not in OOD_IMAGE_KINDS:
        raise ValueError(
            f"unknown OOD image kind {kind!r}; valid kinds: {', '.join(OOD_IMAGE_KINDS)}"
        )
    if n < 0 or size < 1 or channels < 1:
        raise ValueError(f"need n >= 0, size >= 1, channels >= 1; got {n}, {size}, {channels}")
    gen = torch.Generator().manual_seed(seed)
    shape = (n, channels, size, size)
    if n == 0:
        return torch.zeros(shape, dtype=torch.uint8)
    if kind == "uniform_noise":
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    if kind == "gaussian_noise":
        x = torch.randn(shape, generator=gen) * 64.0 + 128.0
        return x.round().clamp(0, 255).to(torch.uint8)
    if kind == "blobs":
        low = max(2, size // 4)
        noise = torch.rand((n, channels, low, low), generator=gen)
        smooth = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
        return (smooth > 0.5).to(torch.uint8) * 255
    colour = torch.randint(0, 256, (n, channels, 1, 1), generator=gen, dtype=torch.uint8)
    return colour.expand(shape).contiguous()
