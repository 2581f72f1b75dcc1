import numpy as np
import pytest
import torch

from selfsup.losses import barlow_twins_loss, off_diagonal, vicreg_loss, vicreg_terms

RNG = np.random.default_rng(0)
A = RNG.normal(size=(6, 4))
B = A + 0.5 * RNG.normal(size=(6, 4))


def _barlow_by_hand(a, b, lambd, eps=1e-5):
    n, d = a.shape
    sa = [(a[:, j] - a[:, j].mean()) / np.sqrt(a[:, j].var() + eps) for j in range(d)]
    sb = [(b[:, j] - b[:, j].mean()) / np.sqrt(b[:, j].var() + eps) for j in range(d)]
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(sa[i][k] * sb[j][k] for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else lambd * c**2
    return total


def _vicreg_by_hand(a, b, eps=1e-4):
    n, d = a.shape
    inv = sum((a[k, j] - b[k, j]) ** 2 for k in range(n) for j in range(d)) / (n * d)
    var = cov = 0.0
    for z in (a, b):
        for j in range(d):
            std = np.sqrt(sum((z[k, j] - z[:, j].mean()) ** 2 for k in range(n)) / (n - 1) + eps)
            var += max(0.0, 1 - std) / d / 2
        for i in range(d):
            for j in range(d):
                if i != j:
                    c = sum(
                        (z[k, i] - z[:, i].mean()) * (z[k, j] - z[:, j].mean()) for k in range(n)
                    ) / (n - 1)
                    cov += c**2 / d
    return inv, var, cov


def test_off_diagonal():
    m = torch.arange(9.0).view(3, 3)
    assert off_diagonal(m).tolist() == [1.0, 2.0, 3.0, 5.0, 6.0, 7.0]


@pytest.mark.parametrize("lambd", [5e-3, 0.5])
def test_barlow_twins_by_hand(lambd):
    got = barlow_twins_loss(torch.tensor(A), torch.tensor(B), lambd)
    assert float(got) == pytest.approx(_barlow_by_hand(A, B, lambd), rel=1e-5)


def test_barlow_twins_is_near_zero_for_identical_decorrelated_views():
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert float(barlow_twins_loss(z, z)) == pytest.approx(0.0, abs=1e-4)


def test_vicreg_terms_and_weights_by_hand():
    inv, var, cov = _vicreg_by_hand(A, B)
    t = vicreg_terms(torch.tensor(A), torch.tensor(B))
    assert float(t["invariance"]) == pytest.approx(inv, rel=1e-6)
    assert float(t["variance"]) == pytest.approx(var, rel=1e-6)
    assert float(t["covariance"]) == pytest.approx(cov, rel=1e-6)
    assert var > 0 and cov > 0  # the test data exercise every term
    got = vicreg_loss(torch.tensor(A), torch.tensor(B))
    assert float(got) == pytest.approx(25 * inv + 25 * var + cov, rel=1e-6)
    got = vicreg_loss(torch.tensor(A), torch.tensor(B), 1.0, 2.0, 3.0)
    assert float(got) == pytest.approx(inv + 2 * var + 3 * cov, rel=1e-6)


@pytest.mark.parametrize("loss", [barlow_twins_loss, vicreg_loss])
def test_gathered_shards_give_the_single_process_loss_and_gradient(loss):
    """What a method does under 2-process DDP, without processes: each process concatenates
    the shards (gather_with_grad), computes the loss on the global batch, and gets back the
    gradient of its own rows summed over processes; averaging parameter gradients over the 2
    processes then yields the single-process gradient. Per-shard losses would not."""
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g) + 0.3
    full1, full2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    single = loss(full1, full2)
    single.backward()

    world, grads = 2, []
    for rank in range(world):
        rows = slice(4 * rank, 4 * rank + 4)
        own1, own2 = z1[rows].clone().requires_grad_(), z2[rows].clone().requires_grad_()
        parts1 = [own1 if r == rank else z1[4 * r : 4 * r + 4] for r in range(world)]
        parts2 = [own2 if r == rank else z2[4 * r : 4 * r + 4] for r in range(world)]
        value = loss(torch.cat(parts1), torch.cat(parts2))
        assert value.item() == pytest.approx(single.item(), rel=1e-6)
        value.backward()
        # gather's backward sums the identical gradients of the `world` processes, and DDP
        # divides the parameter gradients by `world`: the two factors cancel
        grads.append((own1.grad, own2.grad))
    assert torch.allclose(torch.cat([g1 for g1, _ in grads]), full1.grad, atol=1e-6)
    assert torch.allclose(torch.cat([g2 for _, g2 in grads]), full2.grad, atol=1e-6)
    # the naive alternative (statistics of each shard alone) is a different objective
    shard_mean = (loss(z1[:4], z2[:4]) + loss(z1[4:], z2[4:])) / 2
    assert shard_mean.item() != pytest.approx(single.item(), rel=1e-3)
