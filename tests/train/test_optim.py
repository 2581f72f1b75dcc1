import math

import pytest
import torch
from torch import nn

from selfsup.config import OptimizerConfig, ScheduleConfig
from selfsup.train.optim import LARS, build_optimizer, lr_at, split_decay_groups


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


@pytest.mark.parametrize("name", ["sgd", "lars", "adamw"])
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


def test_warmup_then_cosine_schedule():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1, final_lr_fraction=0.0)
    values = [lr_at(s, 100, 10, cfg) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0)
    assert values[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert values[-1] < 0.01
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))
