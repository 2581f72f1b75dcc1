import math

import numpy as np
import pytest
import torch

from selfsup.evaluate.ood import (
    OOD_IMAGE_KINDS,
    auroc,
    fpr_at_tpr,
    generated_ood_images,
    knn_ood_scores,
    ood_metrics,
)

# ------------------------------------------------------------------------------------- AUROC


def test_auroc_separable_reversed_and_tied():
    assert auroc([0.0, 1.0, 2.0], [3.0, 4.0]) == 1.0  # every OOD above every ID
    assert auroc([3.0, 4.0], [0.0, 1.0, 2.0]) == 0.0
    assert auroc([1.0, 1.0], [1.0, 1.0, 1.0]) == 0.5
    # pairs (out, in): 2>1 win, 2=2 half, 2<3 loss; 4 beats all three -> (1 + 0.5 + 3) / 6
    assert auroc([1.0, 2.0, 3.0], [2.0, 4.0]) == pytest.approx(4.5 / 6)


def test_auroc_identical_distributions_is_half():
    g = torch.Generator().manual_seed(0)
    s_in, s_out = torch.randn(4000, generator=g), torch.randn(4000, generator=g)
    assert abs(auroc(s_in, s_out) - 0.5) < 0.03


def test_auroc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for trial in range(10):
        n_in, n_out = int(rng.integers(1, 200)), int(rng.integers(1, 200))
        if trial % 2:  # integer scores: lots of ties
            s_in, s_out = rng.integers(0, 10, n_in), rng.integers(2, 12, n_out)
        else:
            s_in, s_out = rng.normal(size=n_in), rng.normal(0.5, 1.0, size=n_out)
        ref = metrics.roc_auc_score(
            np.r_[np.zeros(n_in), np.ones(n_out)], np.r_[s_in, s_out].astype(float)
        )
        assert auroc(s_in, s_out) == pytest.approx(ref, abs=1e-12)


# ------------------------------------------------------------------------------------ FPR@TPR


def test_fpr_at_95_tpr_by_hand():
    s_in = np.arange(20.0)  # 0..19
    s_out = [10.0, 18.0, 18.5, 19.0, 30.0]
    # ID positive (Sun et al. 2022): 19 of 20 ID (95%) accepted at t = 18; OOD <= 18: {10, 18}
    assert fpr_at_tpr(s_in, s_out) == pytest.approx(2 / 5)
    # OOD positive: catching all 5 OOD (>= 95%) needs t = 10; ID >= 10: 10 of 20
    assert fpr_at_tpr(s_in, s_out, positive="out") == pytest.approx(10 / 20)
    # 80% of OOD (4 of 5) at t = 18; ID >= 18: {18, 19}
    assert fpr_at_tpr(s_in, s_out, 0.8, positive="out") == pytest.approx(2 / 20)
    # perfectly separated: no OOD accepted
    assert fpr_at_tpr([0.0, 1.0, 2.0], [5.0, 6.0]) == 0.0
    assert fpr_at_tpr([0.0, 1.0, 2.0], [5.0, 6.0], tpr=1.0, positive="out") == 0.0
    with pytest.raises(ValueError):
        fpr_at_tpr(s_in, s_out, tpr=0.0)


def test_fpr_at_tpr_matches_roc_curve():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    for trial in range(10):
        s_in = rng.integers(0, 15, 100).astype(float) if trial % 2 else rng.normal(size=100)
        s_out = rng.integers(5, 20, 60).astype(float) if trial % 2 else rng.normal(1, 1, 60)
        for tpr in (0.95, 0.9, 0.5):
            # ID positive: ID "confidence" is the negated outlier score.
            fpr, tp, _ = metrics.roc_curve(
                np.r_[np.ones(100), np.zeros(60)], -np.r_[s_in, s_out], drop_intermediate=False
            )
            ref = fpr[np.searchsorted(tp, tpr, side="left")]
            assert fpr_at_tpr(s_in, s_out, tpr) == pytest.approx(ref)
            fpr, tp, _ = metrics.roc_curve(
                np.r_[np.zeros(100), np.ones(60)], np.r_[s_in, s_out], drop_intermediate=False
            )
            ref = fpr[np.searchsorted(tp, tpr, side="left")]
            assert fpr_at_tpr(s_in, s_out, tpr, positive="out") == pytest.approx(ref)


# -------------------------------------------------------------------------------- kNN scores


def test_knn_ood_scores_hand_case():
    # bank directions 0, 90, 180 degrees (lengths differ: they are normalised away)
    bank = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-0.5, 0.0]])
    queries = torch.tensor([[5.0, 0.0], [0.0, -1.0]])
    # query 0 at 0 deg: distances 0, sqrt2, 2; query 1 at 270 deg: sqrt2, 2, sqrt2
    r2 = math.sqrt(2)
    expect = {1: [0.0, r2], 2: [r2, r2], 3: [2.0, 2.0]}
    for k, ref in expect.items():
        for chunk in (1, 1024):
            got = knn_ood_scores(bank, queries, k=k, chunk_size=chunk)
            torch.testing.assert_close(got, torch.tensor(ref), atol=1e-6, rtol=0)
    # 1-D features normalise to +-1: distance 0 to the same sign, 2 to the other
    got = knn_ood_scores(torch.tensor([[1.0], [4.0], [-2.0]]), torch.tensor([[3.0], [-1.0]]), k=2)
    torch.testing.assert_close(got, torch.tensor([0.0, 2.0]))
    with pytest.raises(ValueError):
        knn_ood_scores(bank, queries, k=4)


def test_knn_ood_scores_match_brute_force():
    g = torch.Generator().manual_seed(3)
    bank, queries = torch.randn(300, 16, generator=g), torch.randn(50, 16, generator=g)
    got = knn_ood_scores(bank, queries, k=7, chunk_size=16)
    nb = torch.nn.functional.normalize(bank.double(), dim=1)
    nq = torch.nn.functional.normalize(queries.double(), dim=1)
    ref = torch.cdist(nq, nb).sort(dim=1).values[:, 6]
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=0)


def test_ood_metrics_on_separated_features():
    g = torch.Generator().manual_seed(4)
    d = 32
    ind = torch.randn(1, d, generator=g)
    bank = ind + 0.3 * torch.randn(500, d, generator=g)
    in_q = ind + 0.3 * torch.randn(100, d, generator=g)
    out_q = torch.randn(100, d, generator=g)  # random directions
    out = ood_metrics(bank, in_q, out_q, k=10)
    assert set(out) == {"auroc", "fpr@95tpr"}
    assert out["auroc"] > 0.99 and out["fpr@95tpr"] < 0.05
    swapped = ood_metrics(bank, out_q, in_q, k=10)
    assert swapped["auroc"] < 0.01 and swapped["fpr@95tpr"] > 0.95


# ------------------------------------------------------------------------ generated OOD images


@pytest.mark.parametrize("kind", OOD_IMAGE_KINDS)
def test_generated_images_shape_dtype_determinism(kind):
    x = generated_ood_images(kind, 16, size=24, channels=3, seed=1)
    assert x.dtype == torch.uint8 and x.shape == (16, 3, 24, 24)
    assert torch.equal(x, generated_ood_images(kind, 16, size=24, channels=3, seed=1))
    assert not torch.equal(x, generated_ood_images(kind, 16, size=24, channels=3, seed=2))
    assert generated_ood_images(kind, 2, size=8, channels=1).shape == (2, 1, 8, 8)
    assert generated_ood_images(kind, 0).shape == (0, 3, 32, 32)


def test_generated_image_statistics():
    u = generated_ood_images("uniform_noise", 64).float()
    assert u.min() == 0 and u.max() == 255 and abs(u.mean().item() - 127.5) < 2
    gn = generated_ood_images("gaussian_noise", 64).float()
    assert abs(gn.mean().item() - 128) < 2 and 55 < gn.std().item() < 66
    assert gn.min() == 0 and gn.max() == 255  # clipped tails
    c = generated_ood_images("constant", 64)
    flat = c.flatten(2)
    assert (flat == flat[:, :, :1]).all()  # one colour per image and channel
    assert len(torch.unique(flat[:, 0, 0])) > 30  # but colours differ across images
    b = generated_ood_images("blobs", 64)
    assert set(torch.unique(b).tolist()) == {0, 255}
    assert 0.3 < (b > 0).float().mean().item() < 0.7
    # smooth: horizontal neighbours agree far more often than in noise (~50%)
    agree = (b[..., 1:] == b[..., :-1]).float().mean().item()
    assert agree > 0.85


def test_unknown_kind_lists_valid_ones():
    with pytest.raises(ValueError, match="uniform_noise.*gaussian_noise.*blobs.*constant"):
        generated_ood_images("stripes", 4)
