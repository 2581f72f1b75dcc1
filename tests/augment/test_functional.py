"""Batched functional ops vs torchvision.transforms.v2.functional on the same parameters."""

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from selfsup.augment import functional as AF


@pytest.fixture
def x() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 20, 24, generator=g)
    x[0] = 0.5  # grey pixels: max == min in HSV
    x[1, 0] = x[1, 1]  # ties between channels
    x[2] = torch.round(x[2] * 255) / 255  # uint8-representable values
    return x


BOXES = torch.tensor(
    [[0, 0, 20, 24], [3, 5, 10, 12], [10, 2, 9, 7], [0, 0, 5, 5], [1, 1, 19, 23], [7, 9, 13, 15]],
    dtype=torch.float32,
)


def _tv_resized_crop(x, boxes, size):
    return torch.stack(
        [
            TF.resized_crop(x[i], *[int(v) for v in boxes[i]], list(size), antialias=True)
            for i in range(len(x))
        ]
    )


def test_resized_crop_upscale_exact(x):
    y = AF.resized_crop(x, BOXES, 32)
    assert y.shape == (6, 3, 32, 32)
    torch.testing.assert_close(y, _tv_resized_crop(x, BOXES, (32, 32)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(8, 8), (5, 11), (16, 16)])
def test_resized_crop_downscale_matches_antialias(x, size):
    # Same triangle (antialias) filter as torch's interpolate(antialias=True): ~1e-6, not ~1e-2.
    y = AF.resized_crop(x, BOXES, size)
    torch.testing.assert_close(y, _tv_resized_crop(x, BOXES, size), atol=1e-5, rtol=0)


def test_resize_whole_image(x):
    torch.testing.assert_close(
        AF.resize(x, (10, 7)), TF.resize(x, [10, 7], antialias=True), atol=1e-5, rtol=0
    )
    assert AF.resize(x, (20, 24)) is x


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
def test_blend_ops_match_torchvision(x, name):
    factors = torch.tensor([0.0, 0.3, 0.8, 1.0, 1.4, 2.5])
    y = getattr(AF, f"adjust_{name}")(x, factors)
    ref = torch.stack(
        [getattr(TF, f"adjust_{name}")(x[i], float(f)) for i, f in enumerate(factors)]
    )
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=0)
    # scalar factor and input left untouched
    x0 = x.clone()
    torch.testing.assert_close(
        getattr(AF, f"adjust_{name}")(x, 0.7),
        getattr(TF, f"adjust_{name}")(x, 0.7),
        atol=1e-5,
        rtol=0,
    )
    torch.testing.assert_close(x, x0, atol=0, rtol=0)


def test_hue_matches_torchvision(x):
    factors = torch.tensor([-0.5, -0.27, 0.0, 0.05, 0.31, 0.5])
    y = AF.adjust_hue(x, factors)
    ref = torch.stack([TF.adjust_hue(x[i], float(f)) for i, f in enumerate(factors)])
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=0)


def test_hsv_roundtrip(x):
    hsv = AF.rgb_to_hsv(x)
    torch.testing.assert_close(AF.hsv_to_rgb(hsv), x, atol=1e-5, rtol=0)


def test_grayscale(x):
    torch.testing.assert_close(AF.rgb_to_grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)
    g3 = AF.rgb_to_grayscale(x, 3)
    assert g3.shape == x.shape
    torch.testing.assert_close(g3, TF.rgb_to_grayscale(x, 3), atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [3, 5, 9])
def test_gaussian_blur_matches_torchvision(x, k):
    sigmas = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 3.0])
    y = AF.gaussian_blur(x, sigmas, k)
    ref = torch.stack(
        [
            TF.gaussian_blur(x[i : i + 1], [k, k], [float(s), float(s)])[0]
            for i, s in enumerate(sigmas)
        ]
    )
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=0)


def test_gaussian_blur_rectangular_kernel(x):
    y = AF.gaussian_blur(x, 1.2, (5, 3))
    torch.testing.assert_close(y, TF.gaussian_blur(x, [5, 3], [1.2, 1.2]), atol=1e-5, rtol=0)


def test_solarize_hflip_normalize(x):
    torch.testing.assert_close(AF.solarize(x, 0.4), TF.solarize(x, 0.4))
    thr = torch.tensor([0.1, 0.2, 0.5, 0.6, 0.9, 1.0])
    ref = torch.stack([TF.solarize(x[i], float(t)) for i, t in enumerate(thr)])
    torch.testing.assert_close(AF.solarize(x, thr), ref)
    mask = torch.tensor([True, False, True, True, False, False])
    y = AF.hflip(x, mask)
    for i in range(6):
        torch.testing.assert_close(y[i], TF.horizontal_flip(x[i]) if mask[i] else x[i])
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    torch.testing.assert_close(AF.normalize(x, mean, std), TF.normalize(x, mean, std))


def test_grey_inputs_are_supported():
    g = torch.rand(4, 1, 16, 16)
    assert torch.equal(AF.adjust_saturation(g, 0.3), g)
    assert torch.equal(AF.adjust_hue(g, 0.3), g)
    torch.testing.assert_close(AF.adjust_contrast(g, 0.5), TF.adjust_contrast(g, 0.5))
    assert AF.rgb_to_grayscale(g, 3).shape == (4, 3, 16, 16)
    assert AF.normalize(g, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).shape == g.shape
    assert AF.resized_crop(g, BOXES[:4], 8).shape == (4, 1, 8, 8)
    assert AF.gaussian_blur(g, 1.0, 3).shape == g.shape


def test_to_float():
    u = torch.tensor([0, 128, 255], dtype=torch.uint8).reshape(1, 3, 1, 1)
    f = AF.to_float(u)
    assert f.dtype == torch.float32
    torch.testing.assert_close(f.flatten(), torch.tensor([0.0, 128 / 255, 1.0]))
