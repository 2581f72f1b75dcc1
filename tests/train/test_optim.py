import math

import pytest
import torch
from torch import nn

from selfsup.config import OptimizerConfig, ScheduleConfig
from selfsup.train.optim import (
    LAMB,
    LARS,
    build_optimizer,
    lr_at,
    norm_ratio,
    split_decay_groups,
)


def _model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def test_norms_and_biases_get_no_weight_decay():
    m = _model()
    groups = split_decay_groups(m, True)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert id(m[0].weight) in decay and id(m[3].weight) in decay
    assert {id(m[0].bias), id(m[1].weight), id(m[1].bias), id(m[3].bias)} == no_decay
    assert groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize("name", ["sgd", "lars", "adamw", "lamb"])
def test_optimizers_build_with_scaled_lr_and_step(name):
    m = _model()
    opt = build_optimizer(m, OptimizerConfig(name=name, base_lr=0.1), global_batch_size=512)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
    before = m[3].weight.detach().clone()
    m(torch.randn(2, 3, 3, 3)).sum().backward()
    opt.step()
    assert not torch.equal(before, m[3].weight)


def test_lars_update_uses_trust_ratio():
    w = nn.Parameter(torch.full((4,), 2.0))
    w.grad = torch.full((4,), 0.5)
    opt = LARS([w], lr=1.0, momentum=0.0, weight_decay=0.0, trust_coefficient=0.01)
    opt.step()
    trust = 0.01 * 4.0 / 1.0  # ||w|| = 4, ||g|| = 1
    assert torch.allclose(w.detach(), torch.full((4,), 2.0 - trust * 0.5))


def test_lamb_step_is_lr_times_the_weight_norm_along_adams_direction():
    w = nn.Parameter(torch.full((4,), 2.0))
    w.grad = torch.full((4,), 0.5)
    opt = LAMB([w], lr=0.1, weight_decay=0.0)
    opt.step()
    # first step: Adam's direction is g / |g| = 1 per entry (||u|| = 2), ||w|| = 4, so the
    # trust ratio is 2 and each entry moves by 0.1 * 2 * 1
    assert torch.allclose(w.detach(), torch.full((4,), 1.8), atol=1e-5)


def test_lamb_adds_decoupled_weight_decay_to_adams_direction():
    w = nn.Parameter(torch.tensor([1.0, 3.0]))
    w.grad = torch.tensor([0.5, 0.5])
    LAMB([w], lr=0.1, weight_decay=1.0).step()
    # Adam's direction r = [1, 1]; u = r + 1.0 * w = [2, 4]; trust ||w|| / ||u|| = sqrt(10 / 20)
    expected = torch.tensor([1.0, 3.0]) - 0.1 * (10 / 20) ** 0.5 * torch.tensor([2.0, 4.0])
    assert torch.allclose(w.detach(), expected, atol=1e-5)


def test_trust_ratio_falls_back_to_one_where_a_norm_is_zero():
    p, u = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0])
    assert norm_ratio(p, u, coefficient=0.5).item() == pytest.approx(0.5 * 5.0 / 2.0)
    assert norm_ratio(torch.zeros(2), u).item() == 1.0
    assert norm_ratio(p, torch.zeros(2)).item() == 1.0
    # so a zero-initialised layer still moves, by the plain step, and never turns NaN
    w = nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([0.5, -0.5])
    LAMB([w], lr=0.1).step()
    assert torch.allclose(w.detach(), torch.tensor([-0.1, 0.1]), atol=1e-5)


def test_lamb_step_scales_with_the_weights_not_the_gradient():
    torch.manual_seed(0)
    moved = []
    for w_scale, g_scale in [(1.0, 1.0), (10.0, 1.0), (1.0, 1000.0)]:
        w = nn.Parameter(torch.linspace(-1, 1, 8) * w_scale)
        opt = LAMB([w], lr=0.01, weight_decay=0.0)
        start = w.detach().clone()
        for k in range(3):
            w.grad = torch.sin(torch.arange(8.0) + k) * g_scale
            opt.step()
        moved.append(torch.linalg.vector_norm(w.detach() - start).item())
    assert moved[1] == pytest.approx(10 * moved[0], rel=1e-4)  # 10x the weights: 10x the step
    assert moved[2] == pytest.approx(moved[0], rel=1e-4)  # 1000x the gradient: the same step


def test_lamb_excluded_group_matches_adam():
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(5))
    b = nn.Parameter(a.detach().clone())
    lamb = LAMB([{"params": [a], "lars_exclude": True}], lr=0.05)
    adam = torch.optim.Adam([b], lr=0.05, eps=1e-6)
    for _ in range(4):
        g = torch.randn(5)
        a.grad, b.grad = g.clone(), g.clone()
        lamb.step()
        adam.step()
    assert torch.allclose(a.detach(), b.detach(), atol=1e-6)


def test_warmup_then_cosine_schedule():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1, final_lr_fraction=0.0)
    values = [lr_at(s, 100, 10, cfg) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0)
    assert values[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert values[-1] < 0.01
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))
