"""Clustering evaluation of frozen features: k-means, NMI, ARI and Hungarian cluster accuracy.

The protocol (as in DeepCluster / SCAN-style reports): L2-normalise the features, run k-means
with k = number of classes, and compare the clusters with the labels by normalised mutual
information (arithmetic-mean normalisation, the scikit-learn default), adjusted Rand index and
cluster accuracy (best one-to-one mapping of clusters to classes, found by the Hungarian
algorithm). Everything here is torch + numpy; the assignment solver is a Kuhn-Munkres
implementation with dual potentials (shortest augmenting paths, O(n^2 m)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

LabelsLike = Tensor | np.ndarray | Sequence[int]


# --------------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------------


def _nearest_centre(x: Tensor, centres: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Index of and squared distance to the nearest centre, ``chunk_size`` rows at a time.

    Args:
        x: (N, D) points.
        centres: (k, D) centres.
        chunk_size: rows per distance matrix (bounds memory to chunk x k).

    Returns:
        ``((N,) long indices, (N,) squared distances)``.
    """
    c_sq = (centres * centres).sum(1)  # (k,)
    idx, dist = [], []
    for start in range(0, len(x), chunk_size):
        xc = x[start : start + chunk_size]
        d = (xc * xc).sum(1, keepdim=True) - 2.0 * (xc @ centres.T) + c_sq  # (m, k)
        m, i = d.min(1)
        idx.append(i)
        dist.append(m.clamp_min(0.0))
    return torch.cat(idx), torch.cat(dist)


def _sq_dist_to(x: Tensor, points: Tensor, chunk_size: int) -> Tensor:
    """(N, P) squared distances from every row of ``x`` to a few ``points`` (P, D)."""
    p_sq = (points * points).sum(1)
    out = []
    for start in range(0, len(x), chunk_size):
        xc = x[start : start + chunk_size]
        d = (xc * xc).sum(1, keepdim=True) - 2.0 * (xc @ points.T) + p_sq
        out.append(d.clamp_min(0.0))
    return torch.cat(out)


def _kmeans_pp(x: Tensor, k: int, gen: torch.Generator, chunk_size: int) -> Tensor:
    """Greedy k-means++ seeding (D^2 sampling, best of ``2 + log k`` candidates per centre).

    Random numbers come from the CPU generator ``gen``, so the seeding is reproducible for a
    seed whatever the device of ``x``.

    Returns:
        (k, D) initial centres.
    """
    n = len(x)
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=gen))
    centres = [x[first]]
    closest = _sq_dist_to(x, x[first : first + 1], chunk_size)[:, 0]  # (N,)
    for _ in range(1, k):
        cum = closest.double().cumsum(0)
        total = float(cum[-1])
        u = torch.rand(trials, generator=gen, dtype=torch.float64)
        if total > 0:
            cand = torch.searchsorted(cum, (u * total).to(x.device), right=True).clamp_max(n - 1)
        else:  # every point already coincides with a centre: any point will do
            cand = (u * n).long().clamp_max(n - 1).to(x.device)
        d = torch.minimum(closest[:, None], _sq_dist_to(x, x[cand], chunk_size))  # (N, trials)
        best = int(d.sum(0).argmin())
        centres.append(x[cand[best]])
        closest = d[:, best]
    return torch.stack(centres)


def _lloyd(x: Tensor, centres: Tensor, iters: int, chunk_size: int) -> tuple[Tensor, Tensor, float]:
    """Lloyd iterations from ``centres`` until the assignments stop changing.

    An empty cluster is re-seeded at the point farthest from its own centre (distinct points
    for several empty clusters). The returned assignments are the nearest returned centre of
    every point, so ``inertia`` is consistent with both.

    Returns:
        ``((N,) assignments, (k, D) centres, inertia)``.
    """
    k = len(centres)
    prev: Tensor | None = None
    reseeded = False
    for _ in range(iters):
        assign, dist = _nearest_centre(x, centres, chunk_size)
        if prev is not None and not reseeded and torch.equal(assign, prev):
            break
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        centres = sums / counts.clamp_min(1)[:, None].to(x.dtype)
        empty = (counts == 0).nonzero().flatten()
        reseeded = len(empty) > 0
        if reseeded:
            far = dist.argsort(descending=True)[: len(empty)]
            centres[empty] = x[far]
        prev = assign
    else:
        assign, dist = _nearest_centre(x, centres, chunk_size)
    return assign, centres, float(dist.double().sum())


@torch.no_grad()
def kmeans(
    features: Tensor,
    k: int,
    *,
    iters: int = 100,
    seed: int = 0,
    n_init: int = 3,
    chunk_size: int = 4096,
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding; the best of ``n_init`` runs by inertia.

    Runs on the device of ``features`` (CPU or CUDA). Distances are computed ``chunk_size``
    rows at a time, so memory stays O(N D + chunk_size k).

    Args:
        features: (N, D) points (computed in float32, or float64 if given float64).
        k: number of clusters, ``1 <= k <= N``.
        iters: maximum Lloyd iterations per run (stops early when assignments are stable).
        seed: seed of the CPU generator driving the k-means++ seeding of all runs.
        n_init: number of seeded runs; the one with the lowest inertia is returned.
        chunk_size: rows per distance matrix.

    Returns:
        ``((N,) long cluster index of each point, (k, D) centres)``.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
    n = len(features)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N={n}], got {k}")
    if n_init < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init}")
    x = features if features.dtype == torch.float64 else features.float()
    gen = torch.Generator().manual_seed(seed)
    best: tuple[Tensor, Tensor, float] | None = None
    for _ in range(n_init):
        centres = _kmeans_pp(x, k, gen, chunk_size)
        run = _lloyd(x, centres, iters, chunk_size)
        if best is None or run[2] < best[2]:
            best = run
    assert best is not None
    return best[0], best[1]


# --------------------------------------------------------------------------------------------
# Assignment problem (Hungarian / Kuhn-Munkres)
# --------------------------------------------------------------------------------------------


def linear_assignment(cost: np.ndarray, *, maximize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one assignment of rows to columns (Kuhn-Munkres / Hungarian).

    For an (n, m) matrix, ``min(n, m)`` pairs are returned, every row (if n <= m) or every
    column (if n > m) being matched; the same contract as ``scipy.optimize.linear_sum_assignment``.
    Implemented with dual potentials and shortest augmenting paths, O(min^2 * max).

    Args:
        cost: (n, m) finite cost matrix.
        maximize: find the maximum-weight assignment instead.

    Returns:
        ``(row_ind, col_ind)``: int arrays of length ``min(n, m)``, ``row_ind`` increasing;
        the optimum is ``cost[row_ind, col_ind].sum()``.
    """
    a = np.asarray(cost, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"cost must be a 2-D matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("cost matrix must contain only finite values")
    if maximize:
        a = -a
    transposed = a.shape[0] > a.shape[1]
    if transposed:
        a = a.T
    n, m = a.shape
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()

    # 1-based potentials; column 0 is a virtual column that holds the row being inserted.
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    owner = np.zeros(m + 1, dtype=np.int64)  # owner[j]: row (1-based) matched to column j, 0=none
    way = np.zeros(m + 1, dtype=np.int64)  # previous column on the shortest alternating path
    for i in range(1, n + 1):
        owner[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)  # slack: shortest reduced path length to each column
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = owner[j0]
            free = ~used[1:]
            reduced = a[i0 - 1] - u[i0] - v[1:]
            better = free & (reduced < minv[1:])
            minv[1:][better] = reduced[better]
            way[1:][better] = j0
            slack = np.where(free, minv[1:], np.inf)
            j1 = int(slack.argmin()) + 1
            delta = slack[j1 - 1]
            u[owner[used]] += delta  # the owners of used columns are distinct rows
            v[used] -= delta
            minv[~used] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:  # flip the alternating path ending at the free column j0
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1

    cols = np.nonzero(owner[1:])[0]
    rows = owner[1:][cols] - 1
    if transposed:
        rows, cols = cols, rows
    order = np.argsort(rows)
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


# --------------------------------------------------------------------------------------------
# External clustering metrics
# --------------------------------------------------------------------------------------------


def _as_numpy(x: LabelsLike) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x).reshape(-1)
    return arr


def contingency_matrix(labels: LabelsLike, clusters: LabelsLike) -> np.ndarray:
    """(C, K) int64 counts of samples with class c (row, sorted unique labels) in cluster k."""
    y, z = _as_numpy(labels), _as_numpy(clusters)
    if len(y) != len(z):
        raise ValueError(f"labels and clusters differ in length: {len(y)} vs {len(z)}")
    _, yi = np.unique(y, return_inverse=True)
    _, zi = np.unique(z, return_inverse=True)
    n_y = int(yi.max()) + 1 if len(yi) else 0
    n_z = int(zi.max()) + 1 if len(zi) else 0
    flat = np.bincount(yi.reshape(-1) * n_z + zi.reshape(-1), minlength=n_y * n_z)
    return flat.reshape(n_y, n_z).astype(np.int64)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_info(labels: LabelsLike, clusters: LabelsLike) -> float:
    """NMI = I(Y; Z) / ((H(Y) + H(Z)) / 2), natural log (the scikit-learn default).

    Conventions: two labelings with a single group each score 1.0 (perfect, nothing to split),
    and zero mutual information scores 0.0.

    Args:
        labels: (N,) ground-truth classes (any hashable ints).
        clusters: (N,) cluster indices.
    """
    cont = contingency_matrix(labels, clusters)
    if cont.shape[0] == cont.shape[1] <= 1:
        return 1.0
    n = cont.sum()
    rows, cols = cont.sum(1), cont.sum(0)
    nz = cont > 0
    pij = cont[nz] / n
    outer = np.outer(rows, cols)[nz] / float(n) ** 2
    mi = max(float((pij * np.log(pij / outer)).sum()), 0.0)
    if mi == 0.0:
        return 0.0
    denom = (_entropy(rows) + _entropy(cols)) / 2.0
    return float(min(mi / denom, 1.0))


def adjusted_rand_index(labels: LabelsLike, clusters: LabelsLike) -> float:
    """Hubert-Arabie adjusted Rand index (pair counting; chance level 0, identical = 1).

    ``ARI = (sum_ij C(n_ij, 2) - E) / ((sum_i C(a_i, 2) + sum_j C(b_j, 2)) / 2 - E)`` with
    ``E = sum_i C(a_i, 2) * sum_j C(b_j, 2) / C(n, 2)``; computed in exact integers. Identical
    partitions where the expression is 0/0 (one group each, or all singletons) score 1.0.
    """
    cont = contingency_matrix(labels, clusters)
    n = int(cont.sum())

    def pairs(c: np.ndarray) -> int:
        return sum(int(v) * (int(v) - 1) // 2 for v in c.ravel())

    index = pairs(cont)
    a = pairs(cont.sum(1))
    b = pairs(cont.sum(0))
    total = n * (n - 1) // 2
    num = 2 * (total * index - a * b)
    den = total * (a + b) - 2 * a * b
    if den == 0:
        return 1.0
    return num / den


def cluster_accuracy(labels: LabelsLike, clusters: LabelsLike) -> float:
    """Accuracy under the best one-to-one mapping of clusters to classes (Hungarian).

    With more clusters than classes the unmatched clusters count as errors; with fewer, the
    unmatched classes do.
    """
    cont = contingency_matrix(labels, clusters)  # (C, K)
    n = int(cont.sum())
    if n == 0:
        raise ValueError("cluster_accuracy of an empty labeling")
    rows, cols = linear_assignment(cont, maximize=True)
    return float(cont[rows, cols].sum()) / n


@torch.no_grad()
def clustering_metrics(
    features: Tensor,
    labels: LabelsLike,
    k: int | None = None,
    seed: int = 0,
    *,
    iters: int = 100,
    n_init: int = 3,
) -> dict[str, float]:
    """k-means on L2-normalised ``features`` scored against ``labels``.

    Args:
        features: (N, D) frozen features.
        labels: (N,) ground-truth classes.
        k: number of clusters (default: number of distinct labels).
        seed: k-means seed.
        iters: maximum Lloyd iterations per run.
        n_init: k-means restarts.

    Returns:
        ``{"nmi", "ari", "cluster_accuracy", "k"}``.
    """
    y = _as_numpy(labels)
    if len(y) != len(features):
        raise ValueError(f"{len(features)} features but {len(y)} labels")
    k = k or len(np.unique(y))
    assign, _ = kmeans(
        F.normalize(features.float(), dim=1), k, iters=iters, seed=seed, n_init=n_init
    )
    z = assign.cpu().numpy()
    return {
        "nmi": normalized_mutual_info(y, z),
        "ari": adjusted_rand_index(y, z),
        "cluster_accuracy": cluster_accuracy(y, z),
        "k": k,
    }
