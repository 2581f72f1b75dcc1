"""Attention copying against a slow, loop-by-loop reference implementation."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.losses import colour_copy_loss, copy_attention, copy_values


def _slow_attention(t: torch.Tensor, r: torch.Tensor, temp: float) -> torch.Tensor:
    n, q, _ = t.shape
    out = torch.zeros(n, q, r.shape[1], dtype=torch.float64)
    for b in range(n):
        for j in range(q):
            logits = [float(t[b, j].double() @ r[b, i].double()) / temp for i in range(r.shape[1])]
            top = max(logits)
            weights = [math.exp(v - top) for v in logits]
            total = sum(weights)
            for i, w in enumerate(weights):
                out[b, j, i] = w / total
    return out


def _slow_loss(t, r, ref_labels, tgt_labels, temp):
    a = _slow_attention(t, r, temp)
    total, count = 0.0, 0
    for b in range(t.shape[0]):
        for j in range(t.shape[1]):
            mass = sum(float(a[b, j, i]) for i in range(r.shape[1])
                       if int(ref_labels[b, i]) == int(tgt_labels[b, j]))  # fmt: skip
            if mass > 0:
                total -= math.log(mass)
                count += 1
    return total / max(count, 1), count


def test_attention_and_copy_match_the_slow_reference() -> None:
    g = torch.Generator().manual_seed(0)
    t, r = torch.randn(2, 5, 4, generator=g), torch.randn(2, 7, 4, generator=g)
    values = torch.randn(2, 7, 3, generator=g)
    a = copy_attention(t, r, temperature=0.7)
    slow = _slow_attention(t, r, 0.7)
    assert torch.allclose(a.double(), slow, atol=1e-6)
    copied = copy_values(a, values)
    assert torch.allclose(copied.double(), slow @ values.double(), atol=1e-5)


def test_top_k_keeps_the_k_most_similar() -> None:
    g = torch.Generator().manual_seed(1)
    t, r = torch.randn(1, 3, 4, generator=g), torch.randn(1, 9, 4, generator=g)
    a = copy_attention(t, r, temperature=1.0, top_k=2)
    assert ((a > 0).sum(-1) == 2).all()
    full = _slow_attention(t, r, 1.0)
    for j in range(3):
        keep = full[0, j].topk(2).indices
        expected = full[0, j, keep] / full[0, j, keep].sum()
        assert torch.allclose(a[0, j, keep].double(), expected, atol=1e-6)


def test_identical_reference_copies_its_colours_exactly_at_low_temperature() -> None:
    g = torch.Generator().manual_seed(2)
    feats = torch.nn.functional.normalize(torch.randn(3, 16, 8, generator=g), dim=-1)
    colours = torch.rand(3, 16, 2, generator=g) * 200 - 100  # ab values
    a = copy_attention(feats, feats, temperature=1e-3)
    assert torch.allclose(copy_values(a, colours), colours, atol=1e-4)
    labels = torch.randint(0, 16, (3, 16), generator=g)
    loss, copyable, uncopyable = colour_copy_loss(feats, feats, labels, labels, temperature=1e-3)
    assert copyable.all() and float(uncopyable) == 0.0
    assert float(loss) < 1e-5


def test_colour_copy_loss_matches_the_slow_reference_and_skips_uncopyable() -> None:
    g = torch.Generator().manual_seed(3)
    t, r = torch.randn(2, 6, 5, generator=g), torch.randn(2, 10, 5, generator=g)
    ref_labels = torch.randint(0, 3, (2, 10), generator=g)
    tgt_labels = torch.randint(0, 4, (2, 6), generator=g)  # colour 3 is never in a reference
    tgt_labels[0, 0] = 3
    loss, copyable, uncopyable = colour_copy_loss(t, r, ref_labels, tgt_labels, temperature=0.5)
    slow, count = _slow_loss(t, r, ref_labels, tgt_labels, 0.5)
    assert int(copyable.sum()) == count < 12
    assert float(uncopyable) == pytest.approx(1 - count / 12)
    assert float(loss) == pytest.approx(slow, rel=1e-5)
    # gradients flow to both sides
    t.requires_grad_(True)
    r.requires_grad_(True)
    colour_copy_loss(t, r, ref_labels, tgt_labels, 0.5)[0].backward()
    assert t.grad.abs().sum() > 0 and r.grad.abs().sum() > 0


def test_colour_copy_loss_is_stable_for_peaked_attention() -> None:
    # logits differ by thousands: a naive softmax-then-log would give log(0)
    t = torch.tensor([[[1.0, 0.0]]])
    r = torch.tensor([[[100.0, 0.0], [-100.0, 0.0]]])
    labels_r = torch.tensor([[0, 1]])
    loss, _, _ = colour_copy_loss(t, r, labels_r, torch.tensor([[1]]), temperature=0.1)
    assert torch.isfinite(loss) and float(loss) == pytest.approx(2000.0, rel=1e-4)
