"""The accelerator path of the augmentation: per-sample random choices as masked arithmetic
(no ``nonzero`` row selection, so no host sync). On the CPU it is forced and must give exactly
what the row-selecting CPU path gives; on CUDA the whole SimCLR pipeline must run under
``torch.cuda.set_sync_debug_mode("error")``."""

from __future__ import annotations

import pytest
import torch

from selfsup.augment import (
    ColorJitter,
    GaussianBlur,
    RandomHorizontalFlip,
    build_pipeline,
    functional,
)


@pytest.fixture
def force_masked(monkeypatch):
    """Make the CPU take the accelerator's masked path."""
    return lambda: monkeypatch.setattr(functional, "sync_free", lambda x: True)


def _images(n: int = 64, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize(
    "transform",
    [
        ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        ColorJitter(0.4, 0.4, 0.0, 0.0, p=0.5),
        GaussianBlur(3, sigma=(0.1, 2.0), p=0.5),
        RandomHorizontalFlip(0.5),
    ],
    ids=["jitter", "jitter-bc", "blur", "flip"],
)
def test_masked_path_equals_the_row_selecting_path(transform, force_masked):
    x = _images().float() / 255
    params = transform.sample_params(len(x), torch.Generator().manual_seed(1))
    expected = transform.apply(x.clone(), params)
    force_masked()
    got = transform.apply(x.clone(), params)
    assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()
    assert not torch.equal(got, x)  # something happened


def test_whole_simclr_pipeline_is_the_same_on_the_masked_path(force_masked):
    pipe = build_pipeline("simclr_imagenet", 16)
    x = _images()
    expected = pipe(x, torch.Generator().manual_seed(3))
    force_masked()
    got = pipe(x, torch.Generator().manual_seed(3))
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["simclr_cifar", "simclr_imagenet"])
def test_pipeline_makes_no_host_sync_on_cuda(name):
    pipe = build_pipeline(name, 32)
    x = _images(256, 32).cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    pipe(x, g)  # warm-up (lazy initialisation may sync once)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = pipe(x, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == (256, 3, 32, 32)
