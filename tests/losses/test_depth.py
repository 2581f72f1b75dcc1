"""Depth losses against slow reference implementations."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.losses import inverse_depth_l1, scale_invariant_log_loss


def _slow_si(log_pred, depth, valid, lam):
    per_image = []
    for b in range(depth.shape[0]):
        d = [float(log_pred[b].flatten()[p]) - math.log(float(depth[b].flatten()[p]))
             for p in range(depth[b].numel()) if bool(valid[b].flatten()[p])]  # fmt: skip
        if not d:
            continue
        n = len(d)
        per_image.append(sum(x * x for x in d) / n - lam * (sum(d) / n) ** 2)
    return sum(per_image) / max(len(per_image), 1)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_scale_invariant_loss_matches_the_slow_reference(lam: float) -> None:
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(3, 1, 4, 5, generator=g) * 5 + 0.5
    log_pred = torch.randn(3, 1, 4, 5, generator=g)
    valid = torch.rand(3, 1, 4, 5, generator=g) > 0.3
    valid[2] = False  # an image without valid pixels is left out
    depth[~valid] = 0.0  # unknown depth is stored as 0
    got = scale_invariant_log_loss(log_pred, depth, valid, lam)
    assert float(got) == pytest.approx(_slow_si(log_pred, depth, valid, lam), rel=1e-5)


def test_scale_invariance() -> None:
    depth = torch.rand(2, 1, 6, 6) + 1
    valid = torch.ones_like(depth, dtype=torch.bool)
    scaled = (depth * 2.5).log()
    assert float(scale_invariant_log_loss(scaled, depth, valid, lam=1.0)) < 1e-6
    assert float(scale_invariant_log_loss(scaled, depth, valid, lam=0.0)) == pytest.approx(
        math.log(2.5) ** 2, rel=1e-5
    )
    assert float(scale_invariant_log_loss(depth.log(), depth, valid, lam=0.5)) < 1e-10
    with pytest.raises(ValueError, match="lam"):
        scale_invariant_log_loss(scaled, depth, valid, lam=2.0)


def test_inverse_depth_l1() -> None:
    depth = torch.tensor([[[[2.0, 4.0], [0.0, 1.0]]]])
    valid = depth > 0
    pred = torch.tensor([[[[0.5, 0.5], [9.0, 0.0]]]])
    # |0.5 - 0.5| + |0.5 - 0.25| + |0 - 1| over 3 valid pixels
    assert float(inverse_depth_l1(pred, depth, valid)) == pytest.approx(1.25 / 3)
