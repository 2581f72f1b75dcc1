"""Our losses against lightly's implementations of the same published losses, on the same
tensors (skipped when lightly, a test extra, is not installed)."""

from __future__ import annotations

import pytest
import torch

from selfsup.losses import (
    barlow_twins_loss,
    dino_loss,
    dino_teacher_probs,
    negative_cosine,
    normalized_mse,
    nt_xent,
    vicreg_loss,
)

lightly_loss = pytest.importorskip("lightly.loss")


def _z(seed: int, n: int = 32, d: int = 24) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_equals_lightly_ntxent(temperature):
    z1, z2 = _z(0), _z(1)
    ours = nt_xent(z1, z2, temperature)
    theirs = lightly_loss.NTXentLoss(temperature=temperature)(z1, z2)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_decoupled_nt_xent_equals_lightly_dcl(temperature):
    z1, z2 = _z(0), _z(1)
    ours = nt_xent(z1, z2, temperature, decoupled=True)
    theirs = lightly_loss.DCLLoss(temperature=temperature)(z1, z2)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


@pytest.mark.parametrize("lambd", [5e-3, 0.05])
def test_barlow_twins_equals_lightly(lambd):
    z1, z2 = _z(2), _z(3) + _z(2)
    ours = barlow_twins_loss(z1, z2, lambd)
    theirs = lightly_loss.BarlowTwinsLoss(lambda_param=lambd)(z1, z2)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_vicreg_equals_lightly():
    z1, z2 = _z(4), 0.5 * _z(5) + _z(4)
    ours = vicreg_loss(z1, z2, 25.0, 25.0, 1.0)
    theirs = lightly_loss.VICRegLoss(lambda_param=25.0, mu_param=25.0, nu_param=1.0)(z1, z2)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_negative_cosine_and_byol_loss_equal_lightly_negative_cosine():
    p, z = _z(6), _z(7)
    theirs = lightly_loss.NegativeCosineSimilarity()(p, z)
    assert negative_cosine(p, z).item() == pytest.approx(theirs.item(), rel=1e-5)
    # BYOL's normalised MSE is 2 - 2 cos
    assert normalized_mse(p, z).item() == pytest.approx(2 + 2 * theirs.item(), rel=1e-5)


def test_dino_loss_with_centre_equals_lightly_dino_loss():
    k, n = 64, 8
    g = torch.Generator().manual_seed(8)
    teacher = [torch.randn(n, k, generator=g) for _ in range(2)]
    student = [torch.randn(n, k, generator=g) for _ in range(4)]  # 2 global + 2 local
    center = 0.1 * torch.randn(1, k, generator=g)
    theirs_fn = lightly_loss.DINOLoss(output_dim=k, teacher_temp=0.04, student_temp=0.1)
    theirs_fn.center.copy_(center)
    theirs = theirs_fn(teacher, student, teacher_temp=0.04)
    probs = [dino_teacher_probs(t, center, 0.04) for t in teacher]
    ours = dino_loss(student, probs, student_temp=0.1)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
