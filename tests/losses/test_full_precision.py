"""Every loss and its statistics run in float32 with autocast disabled, whatever the caller's
autocast: under bf16 autocast (CPU) a loss of bf16 activations equals the float32 loss of the
same values to 1e-5. Casting inputs with ``.float()`` alone would fail this for every loss with
a matrix product inside (similarities, cross-correlation, covariance): autocast runs ``@`` in
bf16 even on float32 tensors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from selfsup.heads.dino import DINOHead
from selfsup.losses import (
    barlow_twins_loss,
    cross_correlation,
    dino_loss,
    dino_teacher_probs,
    info_nce,
    negative_cosine,
    normalized_mse,
    nt_xent,
    vicreg_loss,
)
from selfsup.methods.base import embedding_spread
from selfsup.methods.colorization import regression_loss, soft_cross_entropy
from selfsup.methods.inpainting import (
    discriminator_loss,
    generator_adversarial_loss,
    inpainting_l2,
)
from selfsup.methods.mae import masked_mse
from selfsup.methods.monitor import effective_rank


def _bf16(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """Random values that are exactly representable in bf16, as a bf16 tensor (what a
    bf16-autocast network hands its loss)."""
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g)).bfloat16()


def _cases() -> dict[str, Callable[[], tuple[Callable[..., torch.Tensor], tuple]]]:
    z1, z2 = _bf16(64, 96, seed=1), _bf16(64, 96, seed=2)
    queue = _bf16(300, 96, seed=3)
    logits = [_bf16(16, 200, seed=s, scale=3) for s in range(4)]
    center = torch.zeros(1, 200)
    probs = [dino_teacher_probs(t.float(), center, 0.04) for t in logits[:2]]
    ab = _bf16(4, 30, 6, 6, seed=5)
    idx = torch.randint(0, 30, (4, 5, 6, 6), generator=torch.Generator().manual_seed(6))
    w = torch.rand(4, 5, 6, 6, generator=torch.Generator().manual_seed(7))
    mask = (torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(8)) > 0.5).float()
    return {
        "nt_xent": lambda: (nt_xent, (z1, z2, 0.2)),
        "info_nce_queue": lambda: (info_nce, (z1, z2, queue, 0.2)),
        "info_nce_in_batch": lambda: (info_nce, (z1, z2, None, 0.1)),
        "barlow_twins": lambda: (barlow_twins_loss, (z1, z2 + z1, 5e-3)),
        "cross_correlation": lambda: (cross_correlation, (z1, z2 + z1)),
        "vicreg": lambda: (vicreg_loss, (z1, z2)),
        "dino_teacher_probs": lambda: (dino_teacher_probs, (logits[0], center, 0.04)),
        "dino_loss": lambda: (dino_loss, (logits, probs, 0.1)),
        "negative_cosine": lambda: (negative_cosine, (z1, z2)),
        "normalized_mse": lambda: (normalized_mse, (z1, z2)),
        "soft_cross_entropy": lambda: (soft_cross_entropy, (ab, idx, w)),
        "regression_loss": lambda: (regression_loss, (ab, _bf16(4, 30, 6, 6, seed=9))),
        "masked_mse": lambda: (
            masked_mse,
            (_bf16(4, 16, 12, seed=10), _bf16(4, 16, 12, seed=11), (torch.arange(16) % 2).float()),
        ),
        "inpainting_l2": lambda: (
            inpainting_l2,
            (_bf16(4, 3, 8, 8, seed=12), _bf16(4, 3, 8, 8, seed=13), mask),
        ),
        "discriminator_loss": lambda: (discriminator_loss, (_bf16(8, seed=14), _bf16(8, seed=15))),
        "generator_adversarial_loss": lambda: (generator_adversarial_loss, (_bf16(8, seed=16),)),
        "effective_rank": lambda: (effective_rank, (z1,)),
        "embedding_spread": lambda: (embedding_spread, (z1,)),
    }


def _float_args(args: tuple) -> tuple:
    def cast(a):  # noqa: ANN001, ANN202
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.float()
        if isinstance(a, list):
            return [cast(x) for x in a]
        return a

    return tuple(cast(a) for a in args)


@pytest.mark.parametrize("name", sorted(_cases()))
def test_loss_under_bf16_autocast_equals_the_float32_loss(name):
    fn, args = _cases()[name]()
    reference = fn(*_float_args(args))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(*args)
    assert got.dtype == torch.float32, f"{name} returned {got.dtype} under autocast"
    assert torch.allclose(got, reference, rtol=1e-5, atol=1e-6), (
        f"{name}: {got.flatten()[:4]} under bf16 autocast vs {reference.flatten()[:4]}"
    )


def test_the_check_would_catch_a_matmul_left_to_autocast():
    """The property above is not vacuous: the same cross-correlation written without the
    full-precision guard differs from float32 by far more than the tolerance."""
    z1, z2 = _bf16(64, 96, seed=1).float(), _bf16(64, 96, seed=2).float()
    reference = cross_correlation(z1, z2 + z1)
    a = (z1 - z1.mean(0)) / z1.std(0, unbiased=False)
    b = (z2 + z1 - (z2 + z1).mean(0)) / (z2 + z1).std(0, unbiased=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        unguarded = a.T @ b / len(a)
    assert not torch.allclose(unguarded.float(), reference, rtol=1e-5, atol=1e-6)


def test_dino_prototype_logits_are_float32_under_autocast():
    head = DINOHead(32, out_dim=64, hidden_dim=48, bottleneck_dim=16)
    x = torch.randn(8, 32)
    z = head.bottleneck(x)
    reference = head.last_layer(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head.last_layer(z.bfloat16())
    assert got.dtype == torch.float32
    # only the bottleneck's rounding to bf16 differs; the product itself is not rounded
    assert torch.allclose(got, head.last_layer(z.bfloat16().float()), rtol=1e-5, atol=1e-6)
    assert (got - reference).abs().max() < 1e-2
