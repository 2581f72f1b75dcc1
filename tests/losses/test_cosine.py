import math

import pytest
import torch

from selfsup.losses import negative_cosine, normalized_mse

P = [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
Z = [[2.0, 0.0, 0.0], [0.0, 3.0, 4.0]]


def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_negative_cosine_by_hand():
    expected = -(_cos(P[0], Z[0]) + _cos(P[1], Z[1])) / 2  # -(1 + 3/(sqrt(2)*5)) / 2
    got = negative_cosine(torch.tensor(P), torch.tensor(Z))
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_normalized_mse_by_hand_equals_two_minus_two_cos():
    expected = 0.0
    for p, z in zip(P, Z, strict=True):
        np_, nz = math.sqrt(sum(x * x for x in p)), math.sqrt(sum(x * x for x in z))
        expected += sum((a / np_ - b / nz) ** 2 for a, b in zip(p, z, strict=True)) / len(P)
    got = normalized_mse(torch.tensor(P), torch.tensor(Z))
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(2 - 2 * (_cos(P[0], Z[0]) + _cos(P[1], Z[1])) / 2)


@pytest.mark.parametrize("loss", [negative_cosine, normalized_mse])
def test_target_is_a_stop_gradient(loss):
    p = torch.tensor(P, requires_grad=True)
    z = torch.tensor(Z, requires_grad=True)
    loss(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None
