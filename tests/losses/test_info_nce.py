import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses import info_nce, multiview_nt_xent, nt_xent


def _cos(a, b):
    return float(F.cosine_similarity(a[None], b[None]))


def test_info_nce_with_negative_bank_matches_formula():
    torch.manual_seed(0)
    q, k, neg = torch.randn(5, 8), torch.randn(5, 8), torch.randn(7, 8)
    t = 0.2
    expected = 0.0
    for i in range(5):
        pos = math.exp(_cos(q[i], k[i]) / t)
        den = pos + sum(math.exp(_cos(q[i], n) / t) for n in neg)
        expected += -math.log(pos / den)
    expected /= 5
    assert abs(info_nce(q, k, neg, temperature=t).item() - expected) < 1e-5


def test_info_nce_in_batch_negatives_matches_formula():
    torch.manual_seed(1)
    q, k = torch.randn(4, 6), torch.randn(4, 6)
    t = 0.5
    expected = 0.0
    for i in range(4):
        num = math.exp(_cos(q[i], k[i]) / t)
        den = sum(math.exp(_cos(q[i], k[j]) / t) for j in range(4))
        expected += -math.log(num / den)
    assert abs(info_nce(q, k, temperature=t).item() - expected / 4) < 1e-5


def _handwritten_nt_xent(z1, z2, t, decoupled=False):
    """SimCLR's loss over the 2N views by hand: view i's positive is j = i +- N; its
    denominator runs over every other view, the positive too unless ``decoupled`` (DCL)."""
    n = len(z1)
    views = torch.cat([z1, z2])
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        left_out = (i, j) if decoupled else (i,)
        den = sum(math.exp(_cos(views[i], views[m]) / t) for m in range(2 * n) if m not in left_out)
        total += -_cos(views[i], views[j]) / t + math.log(den)
    return total / (2 * n)


def test_nt_xent_matches_handwritten_simclr_loss():
    torch.manual_seed(2)
    z1, z2 = torch.randn(4, 3), torch.randn(4, 3)
    assert abs(nt_xent(z1, z2, 0.5).item() - _handwritten_nt_xent(z1, z2, 0.5)) < 1e-5


def test_nt_xent_sharded_mean_equals_global_loss():
    # What two data-parallel processes compute (each its own rows against the gathered batch)
    # must average to the single-process loss.
    torch.manual_seed(3)
    z1, z2 = torch.randn(8, 5), torch.randn(8, 5)
    full = nt_xent(z1, z2, 0.3)
    shard0 = nt_xent(z1[:4], z2[:4], 0.3, all_z1=z1, all_z2=z2, offset=0)
    shard1 = nt_xent(z1[4:], z2[4:], 0.3, all_z1=z1, all_z2=z2, offset=4)
    assert torch.allclose((shard0 + shard1) / 2, full, atol=1e-6)


def test_nt_xent_is_low_for_aligned_views_and_has_gradients():
    torch.manual_seed(4)
    z = torch.randn(16, 32, requires_grad=True)
    aligned = nt_xent(z, z + 0.01 * torch.randn(16, 32), 0.1)
    random = nt_xent(z, torch.randn(16, 32), 0.1)
    assert aligned < random
    aligned.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_multiview_nt_xent_with_two_views_is_nt_xent():
    torch.manual_seed(5)
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    assert torch.allclose(multiview_nt_xent(torch.stack([z1, z2]), 0.3), nt_xent(z1, z2, 0.3))


def test_multiview_nt_xent_matches_a_loop_over_anchors_and_positives():
    torch.manual_seed(6)
    v, n, t = 3, 4, 0.4
    z = torch.randn(v, n, 5)
    flat = [(a, i) for a in range(v) for i in range(n)]
    expected = 0.0
    for a, i in flat:
        den = sum(math.exp(_cos(z[a, i], z[b, j]) / t) for b, j in flat if (b, j) != (a, i))
        for b in range(v):
            if b != a:
                expected += -math.log(math.exp(_cos(z[a, i], z[b, i]) / t) / den) / (v - 1)
    expected /= v * n
    assert abs(multiview_nt_xent(z, t).item() - expected) < 1e-5


def test_multiview_nt_xent_sharded_mean_equals_global_loss():
    torch.manual_seed(7)
    z = torch.randn(4, 8, 5)
    full = multiview_nt_xent(z, 0.3)
    shards = [multiview_nt_xent(z[:, s : s + 4], 0.3, all_views=z, offset=s) for s in (0, 4)]
    assert torch.allclose(sum(shards) / 2, full, atol=1e-6)


def test_decoupled_nt_xent_matches_handwritten_dcl_loss():
    # DCL: the positive leaves the denominator; self stays out as before.
    torch.manual_seed(8)
    t = 0.2
    z1, z2 = torch.randn(4, 3), torch.randn(4, 3)
    expected = _handwritten_nt_xent(z1, z2, t, decoupled=True)
    assert abs(nt_xent(z1, z2, t, decoupled=True).item() - expected) < 1e-5
    assert abs(nt_xent(z1, z2, t).item() - expected) > 1e-3  # the flag changes the loss


def test_decoupled_nt_xent_sharded_mean_equals_global_loss():
    torch.manual_seed(9)
    z1, z2 = torch.randn(8, 5), torch.randn(8, 5)
    full = nt_xent(z1, z2, 0.3, decoupled=True)
    shards = [
        nt_xent(z1[s : s + 4], z2[s : s + 4], 0.3, all_z1=z1, all_z2=z2, offset=s, decoupled=True)
        for s in (0, 4)
    ]
    assert torch.allclose(sum(shards) / 2, full, atol=1e-6)


def test_decoupled_multiview_matches_a_loop_and_two_views_is_decoupled_nt_xent():
    torch.manual_seed(10)
    v, n, t = 3, 4, 0.4
    z = torch.randn(v, n, 5)
    flat = [(a, i) for a in range(v) for i in range(n)]
    expected = 0.0
    for a, i in flat:
        den = sum(math.exp(_cos(z[a, i], z[b, j]) / t) for b, j in flat if j != i)
        for b in range(v):
            if b != a:
                expected += (-_cos(z[a, i], z[b, i]) / t + math.log(den)) / (v - 1)
    expected /= v * n
    assert abs(multiview_nt_xent(z, t, decoupled=True).item() - expected) < 1e-5
    two = z[:2]
    assert torch.allclose(
        multiview_nt_xent(two, t, decoupled=True), nt_xent(two[0], two[1], t, decoupled=True)
    )
    shards = [
        multiview_nt_xent(z[:, s : s + 2], t, all_views=z, offset=s, decoupled=True) for s in (0, 2)
    ]
    assert torch.allclose(sum(shards) / 2, multiview_nt_xent(z, t, decoupled=True), atol=1e-6)


def test_decoupled_losses_refuse_a_batch_without_negatives():
    z = torch.randn(1, 4)
    assert torch.isfinite(nt_xent(z, z + 0.1, 0.1))  # coupled: the positive alone, loss 0
    with pytest.raises(ValueError, match="no negatives"):
        nt_xent(z, z + 0.1, 0.1, decoupled=True)
    with pytest.raises(ValueError, match="no negatives"):
        multiview_nt_xent(torch.randn(3, 1, 4), 0.1, decoupled=True)
