import itertools
import math

import numpy as np
import pytest
import torch

from selfsup.evaluate.clustering import (
    _lloyd,
    adjusted_rand_index,
    cluster_accuracy,
    clustering_metrics,
    contingency_matrix,
    kmeans,
    linear_assignment,
    normalized_mutual_info,
)


def _blobs(n_per: int = 60, k: int = 4, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * 10
    labels = torch.arange(k).repeat_interleave(n_per)
    x = centres[labels] + 0.5 * torch.randn(len(labels), dim, generator=g)
    return x, labels


# ---------------------------------------------------------------- metrics: hand-computed cases


def test_relabelled_perfect_clustering_scores_one():
    assert normalized_mutual_info([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert cluster_accuracy([0, 0, 1, 1], [1, 1, 0, 0]) == 1.0


def test_nontrivial_case_by_hand():
    # classes x clusters contingency [[2, 1, 0], [0, 1, 2]], n = 6.
    y = [0, 0, 0, 1, 1, 1]
    z = [0, 0, 1, 1, 2, 2]
    assert contingency_matrix(y, z).tolist() == [[2, 1, 0], [0, 1, 2]]
    # MI = 2 * (1/3) ln 2, H(Y) = ln 2, H(Z) = ln 3 -> NMI = (4/3) ln 2 / ln 6.
    assert normalized_mutual_info(y, z) == pytest.approx(4 / 3 * math.log(2) / math.log(6))
    assert normalized_mutual_info(y, z) == pytest.approx(0.5158037, abs=1e-7)
    # sum C(n_ij,2) = 2, sum C(a_i,2) = 6, sum C(b_j,2) = 3, C(6,2) = 15:
    # ARI = (2 - 6*3/15) / ((6+3)/2 - 6*3/15) = 0.8 / 3.3 = 8/33.
    assert adjusted_rand_index(y, z) == pytest.approx(8 / 33)
    # best map: cluster 0 -> class 0, cluster 2 -> class 1 -> 4 of 6 right.
    assert cluster_accuracy(y, z) == pytest.approx(4 / 6)


def test_degenerate_labelings():
    assert normalized_mutual_info([3, 3, 3], [7, 7, 7]) == 1.0
    assert adjusted_rand_index([3, 3, 3], [7, 7, 7]) == 1.0
    assert normalized_mutual_info([0, 1, 0, 1], [0, 0, 0, 0]) == 0.0
    assert adjusted_rand_index([0, 1, 0, 1], [0, 0, 0, 0]) == 0.0
    assert adjusted_rand_index([0, 1, 2], [2, 0, 1]) == 1.0  # all singletons, both sides


def test_cluster_accuracy_of_permuted_perfect_clustering():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, size=200)
    perm = rng.permutation(7) + 10  # arbitrary cluster ids
    assert cluster_accuracy(torch.as_tensor(y), torch.as_tensor(perm[y])) == 1.0


def test_cluster_accuracy_rectangular_by_hand():
    # 3 clusters, 2 classes: cluster 2 (2 samples of class 0) cannot be matched as well.
    y = [0, 0, 0, 0, 1, 1]
    z = [0, 0, 2, 2, 1, 1]
    assert cluster_accuracy(y, z) == pytest.approx(4 / 6)
    # 1 cluster, 2 classes: only the larger class is matched.
    assert cluster_accuracy([0, 0, 0, 1], [5, 5, 5, 5]) == pytest.approx(3 / 4)


def test_metrics_match_sklearn_on_random_labelings():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for trial in range(20):
        n = int(rng.integers(2, 300))
        y = rng.integers(0, int(rng.integers(1, 8)), size=n)
        z = rng.integers(0, int(rng.integers(1, 12)), size=n)
        if trial % 4 == 0:  # correlated labelings too, not only near-independent ones
            z = np.where(rng.random(n) < 0.7, y, z)
        assert normalized_mutual_info(y, z) == pytest.approx(
            metrics.normalized_mutual_info_score(y, z), abs=1e-10
        )
        assert adjusted_rand_index(y, z) == pytest.approx(
            metrics.adjusted_rand_score(y, z), abs=1e-10
        )


# ------------------------------------------------------------------------- Hungarian algorithm


def test_linear_assignment_hand_cases():
    rows, cols = linear_assignment(np.array([[4, 1, 3], [2, 0, 5], [3, 2, 2]]))
    assert rows.tolist() == [0, 1, 2]
    assert cols.tolist() == [1, 0, 2]  # cost 1 + 2 + 2 = 5
    # rectangular: 1+4=5, 3+2=5, 2+2=4 (best), ...
    wide = np.array([[1, 2, 3], [2, 4, 6]])
    rows, cols = linear_assignment(wide)
    assert (rows.tolist(), cols.tolist()) == ([0, 1], [1, 0])
    rows, cols = linear_assignment(wide.T)
    assert (rows.tolist(), cols.tolist()) == ([0, 1], [1, 0])
    rows, cols = linear_assignment(wide, maximize=True)  # 2 + 6 = 8 beats 3 + 4, 1 + 6
    assert (rows.tolist(), cols.tolist()) == ([0, 1], [1, 2])


def test_linear_assignment_is_optimal_by_brute_force():
    rng = np.random.default_rng(2)
    for n, m in [(4, 4), (3, 5), (5, 3), (1, 4), (5, 5)]:
        cost = rng.integers(0, 10, size=(n, m)).astype(float)  # many ties
        rows, cols = linear_assignment(cost)
        assert len(rows) == min(n, m)
        assert len(set(rows.tolist())) == len(set(cols.tolist())) == min(n, m)
        if n <= m:
            best = min(
                sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(m), n)
            )
        else:
            best = min(
                sum(cost[p[j], j] for j in range(m)) for p in itertools.permutations(range(n), m)
            )
        assert cost[rows, cols].sum() == pytest.approx(best)


def test_linear_assignment_matches_scipy():
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(3)
    shapes = [(1, 1), (2, 2), (10, 10), (30, 30), (7, 20), (20, 7), (25, 40), (3, 1)]
    for n, m in shapes:
        for maximize in (False, True):
            cost = rng.normal(size=(n, m)) * 100
            rows, cols = linear_assignment(cost, maximize=maximize)
            ref_r, ref_c = optimize.linear_sum_assignment(cost, maximize=maximize)
            assert cost[rows, cols].sum() == pytest.approx(cost[ref_r, ref_c].sum(), abs=1e-9)
            assert np.all(np.diff(rows) > 0)
            assert len(set(cols.tolist())) == len(cols) == min(n, m)


def test_linear_assignment_rejects_non_finite():
    with pytest.raises(ValueError):
        linear_assignment(np.array([[1.0, np.nan], [0.0, 1.0]]))


# -------------------------------------------------------------------------------------- k-means


def test_kmeans_recovers_separated_blobs_and_is_deterministic():
    x, y = _blobs()
    assign, centres = kmeans(x, 4, seed=0)
    assert assign.dtype == torch.long and assign.shape == (240,)
    assert centres.shape == (4, 8)
    assert adjusted_rand_index(y, assign) > 0.95
    # centres are the means of their clusters
    for c in range(4):
        torch.testing.assert_close(centres[c], x[assign == c].mean(0), rtol=1e-4, atol=1e-4)
    assign2, centres2 = kmeans(x, 4, seed=0)
    assert torch.equal(assign, assign2) and torch.equal(centres, centres2)


def test_kmeans_chunking_does_not_change_the_result():
    x, _ = _blobs(n_per=30, k=5, seed=4)
    a1, c1 = kmeans(x, 5, seed=3, chunk_size=7)
    a2, c2 = kmeans(x, 5, seed=3, chunk_size=4096)
    assert torch.equal(a1, a2)
    torch.testing.assert_close(c1, c2)


def test_kmeans_edge_k():
    x, _ = _blobs(n_per=5, k=2)
    assign, centres = kmeans(x, 1)
    assert assign.eq(0).all()
    torch.testing.assert_close(centres[0], x.mean(0), rtol=1e-5, atol=1e-5)
    assign, _ = kmeans(x, len(x))
    assert sorted(assign.tolist()) == list(range(len(x)))
    with pytest.raises(ValueError):
        kmeans(x, len(x) + 1)


def test_empty_cluster_is_reseeded_at_farthest_point():
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [1.0, 0.0], [1.1, 0.0], [5.0, 0.0]])
    start = torch.tensor([[0.0, 0.0], [1.0, 0.0], [100.0, 100.0]])  # third centre gets nothing
    assign, centres, inertia = _lloyd(x, start, iters=20, chunk_size=2)
    assert sorted(set(assign.tolist())) == [0, 1, 2]
    assert assign[4] == 2  # the outlier at x=5 owns the re-seeded centre
    torch.testing.assert_close(centres[2], x[4])
    assert inertia == pytest.approx(4 * 0.05**2, rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kmeans_runs_on_cuda():
    x, y = _blobs()
    a_gpu, c_gpu = kmeans(x.cuda(), 4, seed=0)
    assert a_gpu.is_cuda and c_gpu.is_cuda
    assert adjusted_rand_index(y, a_gpu) > 0.95


def test_clustering_metrics_on_blobs():
    x, y = _blobs(k=5, seed=5)
    x = x + 30 * torch.nn.functional.one_hot(y, 8).float()  # also separable in direction
    out = clustering_metrics(x, y)
    assert set(out) == {"nmi", "ari", "cluster_accuracy", "k"}
    assert out["k"] == 5
    assert out["nmi"] > 0.95 and out["ari"] > 0.95 and out["cluster_accuracy"] > 0.97
    assert clustering_metrics(x, y, k=2)["k"] == 2
