"""sRGB <-> CIE Lab against an independent float64 implementation, published values and
(when installed) scikit-image."""

import numpy as np
import pytest
import torch

from selfsup.augment.color import (
    input_channels,
    input_to_lab,
    lab_to_input,
    lab_to_rgb,
    rgb_to_input,
    rgb_to_lab,
)


def reference_rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB in [0, 1] -> (..., 3) Lab, float64, straight from the CIE / IEC formulas
    (sRGB matrix and D65 white as in scikit-image)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array(
        [
            [0.412453, 0.357580, 0.180423],
            [0.212671, 0.715160, 0.072169],
            [0.019334, 0.119193, 0.950227],
        ]
    )
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    eps, kappa = 216 / 24389, 24389 / 27  # CIE's exact (6/29)^3 and (29/3)^3
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], axis=-1)


def _to_image(colours: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    """(K, 3) colours -> a (1, 3, 1, K) image."""
    return torch.tensor(colours, dtype=dtype).T.reshape(1, 3, 1, -1)


def _from_image(img: torch.Tensor) -> np.ndarray:
    return img.reshape(3, -1).T.double().numpy()


# Published CIELAB values of the sRGB primaries, secondaries and greys (D65).
PUBLISHED = [
    ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((1.0, 0.0, 0.0), (53.24, 80.09, 67.20)),
    ((0.0, 1.0, 0.0), (87.73, -86.18, 83.18)),
    ((0.0, 0.0, 1.0), (32.30, 79.19, -107.86)),
    ((1.0, 1.0, 0.0), (97.14, -21.55, 94.48)),
    ((0.0, 1.0, 1.0), (91.11, -48.09, -14.13)),
    ((1.0, 0.0, 1.0), (60.32, 98.23, -60.82)),
    ((128 / 255,) * 3, (53.59, 0.0, 0.0)),
]


def test_published_reference_values():
    rgb = np.array([c for c, _ in PUBLISHED])
    lab = _from_image(rgb_to_lab(_to_image(rgb)))
    expected = np.array([v for _, v in PUBLISHED])
    np.testing.assert_allclose(lab, expected, atol=0.01)


def test_matches_an_independent_float64_implementation_on_random_colours():
    rng = np.random.default_rng(0)
    colours = np.concatenate([rng.random((5000, 3)), rng.random((500, 3)) * 0.05])  # + darks
    expected = reference_rgb_to_lab(colours)
    got64 = _from_image(rgb_to_lab(_to_image(colours)))
    np.testing.assert_allclose(got64, expected, atol=1e-9)
    got32 = _from_image(rgb_to_lab(_to_image(colours, torch.float32)))
    np.testing.assert_allclose(got32, expected, atol=2e-3)


def test_matches_scikit_image_when_installed():
    color = pytest.importorskip("skimage.color")
    rng = np.random.default_rng(1)
    colours = rng.random((64, 64, 3))
    expected = color.rgb2lab(colours)
    got = rgb_to_lab(torch.tensor(colours).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    back = color.lab2rgb(expected)
    got_back = lab_to_rgb(torch.tensor(expected).permute(2, 0, 1)[None])[0].permute(1, 2, 0)
    np.testing.assert_allclose(got_back.numpy(), back, atol=1e-6)


def test_round_trip_is_tight():
    g = torch.Generator().manual_seed(0)
    x32 = torch.rand(4, 3, 16, 16, generator=g)
    assert (lab_to_rgb(rgb_to_lab(x32)) - x32).abs().max() < 1e-4
    x64 = x32.double()
    assert (lab_to_rgb(rgb_to_lab(x64)) - x64).abs().max() < 1e-10
    # every 8-bit level on the grey axis and on the three primaries
    v = np.arange(256) / 255
    zero = np.zeros(256)
    ramps = np.concatenate(
        [np.stack(c, 1) for c in [(v, v, v), (v, zero, zero), (zero, v, zero), (zero, zero, v)]]
    )
    x = _to_image(ramps)
    assert (lab_to_rgb(rgb_to_lab(x)) - x).abs().max() < 1e-10


def test_any_float_dtype_and_autocast():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=g)
    ref = rgb_to_lab(x.double())
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        lab = rgb_to_lab(x.to(dtype))
        assert lab.dtype == dtype
        tol = 0.05 if dtype == torch.float32 else 1.0  # half types round the *output*
        assert (lab.double() - ref).abs().max() < tol
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lab = rgb_to_lab(x)  # elementwise ops: autocast leaves them in float32
    assert lab.dtype == torch.float32 and torch.allclose(lab, rgb_to_lab(x))
    with pytest.raises(TypeError):
        rgb_to_lab(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError):
        rgb_to_lab(torch.zeros(1, 4, 2, 2))


def test_gradients_are_finite_everywhere_including_black():
    x = torch.cat([torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.02), torch.ones(1, 3, 2, 2)])
    x.requires_grad_(True)
    rgb_to_lab(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    lab = rgb_to_lab(x.detach()).requires_grad_(True)
    lab_to_rgb(lab, clip=False).sum().backward()
    assert torch.isfinite(lab.grad).all()


def test_out_of_gamut_lab_is_clipped_on_request():
    lab = torch.tensor([50.0, 120.0, -120.0]).view(1, 3, 1, 1)  # far outside sRGB
    raw = lab_to_rgb(lab, clip=False)
    assert raw.min() < 0 or raw.max() > 1
    clipped = lab_to_rgb(lab)
    assert clipped.min() >= 0 and clipped.max() <= 1


def test_input_spaces():
    assert input_channels("rgb", 1) == 1 and input_channels("rgb", 3) == 3
    assert input_channels("lab_l") == 1 and input_channels("lab") == 3
    with pytest.raises(ValueError):
        input_channels("hsv")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 8, 8, generator=g)
    lab = rgb_to_lab(x)
    l_in = rgb_to_input(x, "lab_l")
    assert l_in.shape == (3, 1, 8, 8)
    assert torch.allclose(l_in, (lab[:, :1] - 50) / 50)
    full = rgb_to_input(x, "lab")
    assert torch.allclose(full[:, 1:], lab[:, 1:] / 110)
    assert torch.allclose(input_to_lab(full), lab, atol=1e-4)
    assert torch.allclose(input_to_lab(lab_to_input(lab, "lab_l")), lab[:, :1], atol=1e-4)
    # grey images are grey RGB: L = Lab of (v, v, v), a = b = 0
    grey = x[:, :1]
    expected = rgb_to_input(grey.expand(-1, 3, -1, -1), "lab")
    assert torch.equal(rgb_to_input(grey, "lab"), expected)
    assert expected[:, 1:].abs().max() < 1e-3
    # resampling overshoot is clamped before the conversion
    assert torch.equal(
        rgb_to_input(x * 1.2 - 0.1, "lab_l"), rgb_to_input((x * 1.2 - 0.1).clamp(0, 1), "lab_l")
    )
    with pytest.raises(ValueError):
        lab_to_input(lab, "rgb")
