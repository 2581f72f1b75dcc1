import math

import pytest
import torch
from torch import nn

from selfsup.methods.momentum import EMA, cosine_momentum
from selfsup.methods.monitor import collapse_metrics, effective_rank


def _tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_schedule_endpoints_and_midpoint():
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(200, 100, 0.99) == pytest.approx(1.0)  # clamped past the end
    values = [cosine_momentum(k, 10, 0.9) for k in range(11)]
    assert values == sorted(values)
    ema = EMA({"net": _tiny()}, 0.9, schedule="constant")
    assert ema.momentum_at(7, 10) == 0.9


def test_update_equals_the_formula_and_copies_buffers():
    online = _tiny()
    ema = EMA({"net": online}, base_momentum=0.75)
    before = {k: v.clone() for k, v in ema["net"].state_dict().items()}
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.arange(p.numel(), dtype=p.dtype).view_as(p) + 1.0)
        online[1].running_mean.fill_(3.0)
        online[1].num_batches_tracked.fill_(5)
    m = ema.update({"net": online}, step=0, total_steps=4)
    assert m == 0.75 and float(ema.momentum) == 0.75
    for name, p_s in online.named_parameters():
        t0, ts = before[name].flatten().tolist(), p_s.detach().flatten().tolist()
        expected = [0.75 * a + 0.25 * b for a, b in zip(t0, ts, strict=True)]  # element by element
        got = dict(ema["net"].named_parameters())[name].flatten().tolist()
        assert got == pytest.approx(expected, abs=1e-6), name
    assert torch.equal(ema["net"][1].running_mean, torch.full((2,), 3.0))
    assert int(ema["net"][1].num_batches_tracked) == 5
    # half-way through a 4-step cosine schedule
    m2 = ema.update({"net": online}, step=2, total_steps=4)
    assert m2 == pytest.approx(1 - 0.25 * (math.cos(math.pi / 2) + 1) / 2)
    # at the end the target no longer moves
    frozen = {k: v.clone() for k, v in ema["net"].state_dict().items()}
    with torch.no_grad():
        online[0].weight.add_(10.0)
    ema.update({"net": online}, step=4, total_steps=4)
    assert torch.equal(ema["net"][0].weight, frozen["0.weight"])


def test_target_gets_no_gradients_and_is_a_separate_copy():
    online = _tiny()
    ema = EMA({"net": online}, 0.99)
    assert all(not p.requires_grad for p in ema.parameters())
    x = torch.randn(4, 3)
    (online(x).sum() + ema["net"](x).sum()).backward()
    assert all(p.grad is not None for p in online.parameters())
    assert all(p.grad is None for p in ema.parameters())
    assert all(
        a.data_ptr() != b.data_ptr()
        for a, b in zip(online.parameters(), ema["net"].parameters(), strict=True)
    )
    with pytest.raises(KeyError):
        ema.update({"other": online}, 0, 1)


def test_state_dict_round_trip_resumes_exactly():
    owner = nn.Module()
    owner.net = _tiny()
    owner.target = EMA({"net": owner.net}, 0.9)
    with torch.no_grad():
        owner.net[0].weight.mul_(2)
    owner.target.update({"net": owner.net}, 1, 10)
    state = owner.state_dict()
    assert {"target.copies.net.0.weight", "target.momentum"} <= set(state)
    fresh = nn.Module()
    fresh.net = _tiny(seed=1)
    fresh.target = EMA({"net": fresh.net}, 0.9)
    fresh.load_state_dict(state)
    for key, value in owner.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    # the next update is identical too
    owner.target.update({"net": owner.net}, 2, 10)
    fresh.target.update({"net": fresh.net}, 2, 10)
    for key, value in owner.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


# --- collapse monitor --------------------------------------------------------------------------
def test_effective_rank_full_for_identity_and_one_for_rank_one():
    assert float(effective_rank(torch.eye(8))) == pytest.approx(8.0, rel=1e-5)
    assert float(effective_rank(torch.eye(8)[:, :5].repeat(2, 1))) == pytest.approx(5.0, rel=1e-5)
    u = torch.randn(32, 1)
    v = torch.randn(1, 16)
    assert float(effective_rank(u @ v)) == pytest.approx(1.0, abs=1e-3)
    assert float(effective_rank(torch.zeros(4, 6))) == 1.0
    # two singular values 3 and 1: p = (3/4, 1/4), exp(H) by hand
    z = torch.diag(torch.tensor([3.0, 1.0]))
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(effective_rank(z)) == pytest.approx(math.exp(h), rel=1e-5)
    # wide and tall batches give the same value (Gram of the smaller side)
    w = torch.randn(6, 20)
    assert float(effective_rank(w)) == pytest.approx(float(effective_rank(w.T)), rel=1e-5)


def test_collapse_metrics_fall_when_embeddings_collapse():
    torch.manual_seed(0)
    healthy = collapse_metrics(torch.randn(256, 16))
    collapsed = collapse_metrics(torch.randn(1, 16) + 1e-3 * torch.randn(256, 16))
    assert float(healthy["embedding_spread"]) > 0.9
    assert float(healthy["effective_rank"]) > 14
    assert float(collapsed["embedding_spread"]) < 0.05
    assert float(collapsed["effective_rank"]) < 1.5


def test_effective_rank_of_a_non_finite_batch_is_nan_not_an_error():
    from selfsup.methods.monitor import effective_rank

    z = torch.randn(16, 8)
    z[3, 2] = float("nan")
    assert torch.isnan(effective_rank(z))
    z[3, 2] = float("inf")
    assert torch.isnan(effective_rank(z))
