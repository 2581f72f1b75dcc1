import math

import torch

from selfsup.evaluate import knn_accuracy, knn_predict, linear_probe


def test_knn_weighted_vote_matches_handwritten():
    torch.manual_seed(0)
    bank = torch.randn(30, 5)
    labels = torch.randint(0, 3, (30,))
    queries = torch.randn(7, 5)
    t, k = 0.1, 4
    got = knn_predict(bank, labels, queries, ks=(k,), temperature=t, num_classes=3, chunk_size=3)[k]
    b = torch.nn.functional.normalize(bank, dim=1)
    for i, q in enumerate(torch.nn.functional.normalize(queries, dim=1)):
        sims = (b @ q).tolist()
        top = sorted(range(30), key=lambda j: -sims[j])[:k]
        scores = [0.0, 0.0, 0.0]
        for j in top:
            scores[int(labels[j])] += math.exp(sims[j] / t)
        assert int(got[i]) == max(range(3), key=lambda c: scores[c])


def test_knn_accuracy_separable_and_k_larger_than_bank():
    torch.manual_seed(1)
    centers = torch.randn(4, 16) * 5
    ytr = torch.arange(40) % 4
    yte = torch.arange(12) % 4
    xtr = centers[ytr] + torch.randn(40, 16)
    xte = centers[yte] + torch.randn(12, 16)
    acc = knn_accuracy(xtr, ytr, xte, yte, ks=(200, 5))
    assert acc["knn@5"] == 1.0 and acc["knn@200"] == 1.0  # k clipped to the bank size
    shuffled = knn_accuracy(xtr, ytr[torch.randperm(40)], xte, yte, ks=(5,))
    assert shuffled["knn@5"] < 0.8


def test_linear_probe_learns_linearly_separable_features():
    torch.manual_seed(2)
    w = torch.randn(10, 3)
    xtr, xte = torch.randn(600, 10), torch.randn(200, 10)
    ytr, yte = (xtr @ w).argmax(1), (xte @ w).argmax(1)
    for bn in (True, False):
        out = linear_probe(xtr, ytr, xte, yte, epochs=30, batch_norm=bn)
        assert out["linear_top1"] > 0.9
    chance = linear_probe(xtr, ytr[torch.randperm(600)], xte, yte, epochs=10)
    assert chance["linear_top1"] < 0.6
