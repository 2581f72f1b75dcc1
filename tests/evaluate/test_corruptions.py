"""Tests for the CIFAR-10-C style corruptions in :mod:`selfsup.evaluate.corruptions`."""

from __future__ import annotations

import colorsys
import io
import math

import numpy as np
import pytest
import torch

from selfsup.evaluate.corruptions import (
    CORRUPTIONS,
    SEVERITY_PARAMS,
    corrupt,
    corruption_names,
    defocus_kernel,
    jpeg_quant_table,
)

SEVERITIES = (1, 2, 3, 4, 5)
REQUIRED = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "gaussian_blur",
    "contrast",
    "brightness",
    "saturate",
    "jpeg_compression",
    "pixelate",
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_images(n: int = 4, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), generator=_gen(seed), dtype=torch.uint8)


def _textured(n: int = 4, c: int = 3, size: int = 32) -> torch.Tensor:
    """Smooth, textured uint8 images in about [50, 205]: products of sinusoids."""
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float64),
        torch.arange(size, dtype=torch.float64),
        indexing="ij",
    )
    images = []
    for i in range(n):
        chans = []
        for k in range(c):
            v = (
                128
                + 50
                * torch.sin(2 * math.pi * (xx + 3 * i) / 7 + k)
                * torch.cos(2 * math.pi * yy / 9)
                + 25 * torch.sin(2 * math.pi * (xx + 2 * yy) / 5 + k + i)
            )
            chans.append(v)
        images.append(torch.stack(chans))
    return torch.stack(images).round().clamp(0, 255).to(torch.uint8)


def _constant(value: tuple[int, ...], n: int = 2, h: int = 32, w: int = 32) -> torch.Tensor:
    c = len(value)
    return torch.tensor(value, dtype=torch.uint8).view(1, c, 1, 1).expand(n, c, h, w).contiguous()


def _mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


# --------------------------------------------------------------------------- registry


def test_registry_names_and_published_parameters() -> None:
    names = corruption_names()
    assert names == list(CORRUPTIONS)
    assert set(REQUIRED) <= set(names)
    assert set(SEVERITY_PARAMS) == set(CORRUPTIONS)
    assert all(len(SEVERITY_PARAMS[name]) == 5 for name in names)
    # CIFAR-10-C (Hendrycks & Dietterich 2019, make_cifar_c.py).
    assert SEVERITY_PARAMS["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert SEVERITY_PARAMS["shot_noise"] == (500, 250, 100, 75, 50)
    assert SEVERITY_PARAMS["impulse_noise"] == (0.01, 0.02, 0.03, 0.05, 0.07)
    assert SEVERITY_PARAMS["contrast"] == (0.75, 0.5, 0.4, 0.3, 0.15)
    assert SEVERITY_PARAMS["brightness"] == (0.05, 0.1, 0.15, 0.2, 0.3)
    assert SEVERITY_PARAMS["jpeg_compression"] == (80, 65, 58, 50, 40)
    assert SEVERITY_PARAMS["pixelate"] == (0.95, 0.9, 0.85, 0.75, 0.65)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_uint8_shape_determinism_and_change(name: str) -> None:
    x = _random_images()
    for s in SEVERITIES:
        out = corrupt(x, name, s, _gen(7))
        assert out.dtype == torch.uint8
        assert out.shape == x.shape
        assert out.device == x.device
        assert torch.equal(out, corrupt(x, name, s, _gen(7)))
        assert torch.equal(corrupt(x, name, s), corrupt(x, name, s))  # default generator
        assert not torch.equal(out, x), f"{name} severity {s} left the images unchanged"
    assert torch.equal(x, _random_images())  # input untouched


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_grey_and_odd_sized_images(name: str) -> None:
    grey = _random_images(2, 1, 20, 27)
    tiny = _random_images(1, 3, 3, 5)
    for s in SEVERITIES:
        out = corrupt(grey, name, s)
        assert out.dtype == torch.uint8 and out.shape == grey.shape
        if name == "saturate":
            assert torch.equal(out, grey)  # no chroma: documented identity
        else:
            assert not torch.equal(out, grey)
        assert corrupt(tiny, name, s).shape == tiny.shape


def test_random_corruptions_depend_on_the_generator() -> None:
    x = _random_images()
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "motion_blur"):
        assert not torch.equal(corrupt(x, name, 3, _gen(1)), corrupt(x, name, 3, _gen(2)))


@pytest.mark.parametrize("name", [n for n in CORRUPTIONS if n != "saturate"])
def test_damage_grows_with_severity(name: str) -> None:
    x = _textured()
    damage = [_mad(corrupt(x, name, s, _gen(3)), x) for s in SEVERITIES]
    assert all(b >= a for a, b in zip(damage, damage[1:], strict=False)), damage
    assert damage[-1] > damage[0]


def test_saturate_desaturates_then_oversaturates() -> None:
    # The published saturate list is not monotone: factors 0.3, 0.1, then 1.5, 2, 2.5.
    x = _textured()

    def chroma(t: torch.Tensor) -> float:
        t = t.float()
        return (t.amax(dim=1) - t.amin(dim=1)).mean().item()

    c0 = chroma(x)
    c = [chroma(corrupt(x, "saturate", s)) for s in SEVERITIES]
    assert c[1] < c[0] < c0 < c[2] < c[3] < c[4]


# --------------------------------------------------------------------------- documented amounts


def test_gaussian_noise_std_matches_parameters() -> None:
    x = _constant((128, 128, 128), n=8)
    for s in SEVERITIES:
        noise = (corrupt(x, "gaussian_noise", s, _gen(s)).double() - 128) / 255
        std = SEVERITY_PARAMS["gaussian_noise"][s - 1]
        assert noise.std().item() == pytest.approx(std, rel=0.03)
        assert abs(noise.mean().item()) < 0.1 * std


def test_shot_noise_variance_matches_photon_count() -> None:
    x = _constant((128, 128, 128), n=8)
    for s in SEVERITIES:
        photons = SEVERITY_PARAMS["shot_noise"][s - 1]
        noise = (corrupt(x, "shot_noise", s, _gen(s)).double() - 128) / 255
        assert noise.std().item() == pytest.approx(math.sqrt(128 / 255 / photons), rel=0.05)


def test_impulse_noise_changes_the_documented_fraction() -> None:
    x = _constant((128, 128, 128), n=8)
    total = x.numel()
    for s in SEVERITIES:
        amount = SEVERITY_PARAMS["impulse_noise"][s - 1]
        out = corrupt(x, "impulse_noise", s, _gen(s))
        changed = out != x
        assert set(out[changed].unique().tolist()) == {0, 255}
        tol = 4 * math.sqrt(amount * (1 - amount) / total) + 1e-3
        assert changed.double().mean().item() == pytest.approx(amount, abs=tol)
        salt = (out == 255).sum().item() / changed.sum().item()
        assert 0.35 < salt < 0.65


def test_contrast_is_the_exact_affine_map() -> None:
    x = _random_images()
    xf = x.double() / 255
    mean = xf.mean(dim=(2, 3), keepdim=True)
    for s in SEVERITIES:
        c = SEVERITY_PARAMS["contrast"][s - 1]
        expected = (((xf - mean) * c + mean).clamp(0, 1) * 255).round()
        diff = (corrupt(x, "contrast", s).double() - expected).abs()
        assert diff.max().item() <= 1
        assert (diff == 0).double().mean().item() > 0.99


def test_brightness_raises_value_and_keeps_hue() -> None:
    x = _textured()
    means = [x.float().mean().item()] + [
        corrupt(x, "brightness", s).float().mean().item() for s in SEVERITIES
    ]
    assert all(b > a for a, b in zip(means, means[1:], strict=False)), means
    grey = _constant((100, 100, 100))
    for s in SEVERITIES:
        c = SEVERITY_PARAMS["brightness"][s - 1]
        out = corrupt(grey, "brightness", s).double()
        assert (out - (100 + 255 * c)).abs().max().item() <= 1


@pytest.mark.parametrize("name", ["brightness", "saturate"])
def test_hsv_corruptions_match_colorsys(name: str) -> None:
    x = _random_images(2, 3, 6, 6, seed=5)
    x[0, :, 0, 0] = 0  # black
    x[0, :, 0, 1] = 90  # grey: hue 0 by convention
    x[0, :, 0, 2] = torch.tensor([255, 0, 0], dtype=torch.uint8)
    for s in SEVERITIES:
        p = SEVERITY_PARAMS[name][s - 1]
        out = corrupt(x, name, s)
        pixels = x.permute(0, 2, 3, 1).reshape(-1, 3).double() / 255
        expected = []
        for r, g, b in pixels.tolist():
            h, sat, v = colorsys.rgb_to_hsv(r, g, b)
            if name == "brightness":
                v = min(max(v + p, 0.0), 1.0)
            else:
                sat = min(max(sat * p[0] + p[1], 0.0), 1.0)
            expected.append(
                [round(min(max(ch, 0.0), 1.0) * 255) for ch in colorsys.hsv_to_rgb(h, sat, v)]
            )
        ref = torch.tensor(expected).view(2, 6, 6, 3).permute(0, 3, 1, 2)
        assert (out.int() - ref.int()).abs().max().item() <= 1


def test_pixelate_is_constant_over_blocks() -> None:
    x = _random_images()
    for s in SEVERITIES:
        m = int(32 * SEVERITY_PARAMS["pixelate"][s - 1])
        out = corrupt(x, "pixelate", s)
        block = ((torch.arange(32) + 0.5) * m / 32).floor().long()  # nearest source per pixel
        first = torch.tensor([int((block == b).nonzero()[0]) for b in range(m)])
        representative = out[..., first, :][..., first]  # (N, C, m, m)
        assert torch.equal(out, representative[..., block, :][..., block])
        # each block holds the average of the pixels it covers: the image mean is kept
        assert _mad(out.float().mean(dim=(2, 3)), x.float().mean(dim=(2, 3))) < 3


def test_pixelate_matches_pil_box_resize() -> None:
    image_mod = pytest.importorskip("PIL.Image")
    x = _textured(2)
    for s in (1, 5):
        c = SEVERITY_PARAMS["pixelate"][s - 1]
        refs = []
        for img in x:
            pil = image_mod.fromarray(img.permute(1, 2, 0).numpy())
            pil = pil.resize((int(32 * c),) * 2, image_mod.BOX).resize((32, 32), image_mod.BOX)
            refs.append(torch.from_numpy(np.array(pil)))
        ref = torch.stack(refs).permute(0, 3, 1, 2)
        assert (corrupt(x, "pixelate", s).int() - ref.int()).abs().max().item() <= 1


def test_blur_kernels() -> None:
    for radius, alias in SEVERITY_PARAMS["defocus_blur"]:
        k = defocus_kernel(radius, alias)
        assert k.sum().item() == pytest.approx(1.0)
        assert torch.allclose(k, k.flip(0)) and torch.allclose(k, k.T)
    # radii below 1 give a single-pixel disk: a 3x3 Gaussian of sigma alias_blur
    g = torch.exp(-torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64) / (2 * 0.4**2))
    assert torch.allclose(defocus_kernel(0.3, 0.4), torch.outer(g, g) / g.sum() ** 2)
    assert defocus_kernel(1.5, 0.1).shape == (5, 5)
    flat = _constant((90, 160, 30))
    for name in ("defocus_blur", "gaussian_blur", "motion_blur", "pixelate"):
        for s in SEVERITIES:
            assert torch.equal(corrupt(flat, name, s), flat), (name, s)


def test_motion_blur_smears_a_point_along_a_line() -> None:
    x = torch.zeros(3, 1, 41, 41, dtype=torch.uint8)
    x[..., 20, 20] = 255
    radius, _ = SEVERITY_PARAMS["motion_blur"][4]
    out = corrupt(x, "motion_blur", 5, _gen(0)).float()
    assert out.sum(dim=(1, 2, 3)).sub(255).abs().max().item() <= 10  # mass kept
    for img in out[:, 0]:
        ys, xs = img.nonzero(as_tuple=True)
        assert 3 <= len(ys) <= 2 * radius + 1
        assert (xs <= 20).all()  # one-sided, angle in [-45, 45] degrees: smeared to the left
        assert ((ys - 20).abs() <= (20 - xs)).all()


# --------------------------------------------------------------------------- JPEG


def test_jpeg_quant_tables_follow_the_ijg_formula() -> None:
    assert jpeg_quant_table(50)[0, 0].item() == 16
    assert jpeg_quant_table(50, chroma=True)[7, 7].item() == 99
    assert jpeg_quant_table(80)[0, 0].item() == 6  # (16 * 40 + 50) // 100
    assert jpeg_quant_table(40)[0, 0].item() == 20  # 16 * 125 / 100
    assert jpeg_quant_table(1).max().item() == 255  # baseline clamp
    assert jpeg_quant_table(100).min().item() == 1


def _luma_dct_energy(t: torch.Tensor, min_order: int = 4) -> float:
    """Energy of the 8x8 block DCT coefficients with u + v >= min_order of the luma."""
    t = t.double()
    y = (0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2])[:, None]
    k = torch.arange(8, dtype=torch.float64)[:, None]
    d = torch.cos((2 * k.T + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    d[0] = math.sqrt(1 / 8)
    n, _, h, w = y.shape
    coef = d @ y.view(n, 1, h // 8, 8, w // 8, 8).transpose(3, 4) @ d.T
    return (coef[..., (k + k.T) >= min_order] ** 2).sum().item()


def test_jpeg_removes_more_high_frequency_energy_at_lower_quality() -> None:
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    smooth = 128 + 40 * torch.sin(2 * math.pi * xx / 16) * torch.cos(2 * math.pi * yy / 11)
    noise = 10 * torch.randn(4, 3, 32, 32, generator=_gen(0))
    x = (smooth + noise).round().clamp(0, 255).to(torch.uint8)
    assert SEVERITY_PARAMS["jpeg_compression"][0] == 80
    assert SEVERITY_PARAMS["jpeg_compression"][4] == 40
    clean = _luma_dct_energy(x)
    q80 = _luma_dct_energy(corrupt(x, "jpeg_compression", 1))
    q40 = _luma_dct_energy(corrupt(x, "jpeg_compression", 5))
    assert q40 < 0.8 * q80 < 0.8 * clean


def test_jpeg_keeps_constant_images() -> None:
    for level in (0, 37, 128, 200, 255):
        for value in ((level,), (level,) * 3):
            x = _constant(value, h=24, w=40)
            for s in SEVERITIES:
                assert (corrupt(x, "jpeg_compression", s).int() - x.int()).abs().max() <= 2
    x = _constant((150, 100, 60))
    assert (corrupt(x, "jpeg_compression", 1).int() - x.int()).abs().max() <= 2


def test_jpeg_matches_pil() -> None:
    image_mod = pytest.importorskip("PIL.Image")
    x = _textured(2)
    for s in (1, 5):
        quality = SEVERITY_PARAMS["jpeg_compression"][s - 1]
        refs = []
        for img in x:
            buf = io.BytesIO()
            image_mod.fromarray(img.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=quality)
            decoded = image_mod.open(buf).convert("RGB")
            refs.append(torch.from_numpy(np.array(decoded)))
        ref = torch.stack(refs).permute(0, 3, 1, 2)
        ours = corrupt(x, "jpeg_compression", s)
        assert _mad(ours, ref) < 1.5  # float vs libjpeg's integer DCT
        assert _mad(ours, x) == pytest.approx(_mad(ref, x), rel=0.05)


# --------------------------------------------------------------------------- errors, devices


def test_unknown_name_and_bad_severity_raise() -> None:
    x = _random_images(1)
    with pytest.raises(ValueError, match="unknown corruption 'fog'.*gaussian_noise"):
        corrupt(x, "fog", 1)
    for bad in (0, 6, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="severity"):
            corrupt(x, "contrast", bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="uint8"):
        corrupt(x.float(), "contrast", 1)
    with pytest.raises(ValueError, match="C in"):
        corrupt(_random_images(1, 4), "contrast", 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_cuda_matches_cpu(name: str) -> None:
    x = _textured(2)
    for s in SEVERITIES:
        cpu = corrupt(x, name, s)
        gpu = corrupt(x.cuda(), name, s)  # CPU default generator: same draws
        assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8
        assert (gpu.cpu().int() - cpu.int()).abs().float().mean().item() < 0.05
        cuda_gen = torch.Generator(device="cuda").manual_seed(0)
        assert corrupt(x.cuda(), name, s, cuda_gen).shape == x.shape
