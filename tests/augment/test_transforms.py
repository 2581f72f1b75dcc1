"""Random transforms: sampling statistics, determinism, DDP slicing, shapes, jitter order."""

import itertools
import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from selfsup.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CenterCrop,
    ColorJitter,
    Compose,
    GaussianBlur,
    MultiView,
    Normalize,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomSolarize,
    Resize,
    ToFloat,
    build_pipeline,
    list_pipelines,
    slice_params,
)
from selfsup.augment import functional as AF


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uint8_batch(n: int, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), generator=gen(seed), dtype=torch.uint8)


@pytest.mark.parametrize("hw", [(32, 32), (40, 24), (24, 100)])
def test_random_resized_crop_statistics_match_torchvision(hw):
    h, w = hw
    n = 4000
    t = RandomResizedCrop(16)
    boxes = t.boxes(t.sample_params(n, gen(1), "cpu"), h, w)
    assert boxes.shape == (n, 4)
    top, left, bh, bw = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + bh <= h).all() and (left + bw <= w).all()
    assert torch.equal(boxes, boxes.round())  # integer boxes, like torchvision
    torch.manual_seed(1)
    img = torch.zeros(3, h, w)
    tv = v2.RandomResizedCrop(16)
    ref = torch.tensor(
        [
            [p["top"], p["left"], p["height"], p["width"]]
            for p in (tv.make_params([img]) for _ in range(n))
        ],
        dtype=torch.float32,
    )

    def stats(b):
        area = b[:, 2] * b[:, 3] / (h * w)
        logr = torch.log(b[:, 3] / b[:, 2])
        cy = (b[:, 0] + b[:, 2] / 2) / h
        q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
        return torch.cat(
            [
                area.mean()[None],
                area.quantile(q),
                logr.mean()[None],
                logr.quantile(q),
                cy.mean()[None],
            ]
        )

    torch.testing.assert_close(stats(boxes), stats(ref), atol=0.04, rtol=0)


def test_random_resized_crop_fallback_is_centre_crop():
    t = RandomResizedCrop(8, scale=(0.99, 1.0))
    boxes = t.boxes(t.sample_params(50, gen(), "cpu"), 10, 100)  # 10:1 image never fits
    assert torch.equal(boxes, torch.tensor([[0.0, 43.0, 10.0, 13.0]]).expand(50, 4))


def test_params_differ_across_samples_and_have_leading_n():
    pipe = build_pipeline("simclr_imagenet", 32)
    params = pipe.sample_params(64, gen(), "cpu")
    for p in params:
        for v in p.values():
            assert v.shape[0] == 64
    rrc = pipe[1]
    boxes = rrc.boxes(params[1], 32, 32)
    assert len({tuple(b.tolist()) for b in boxes}) > 40
    assert params[3]["brightness"].unique().numel() == 64
    assert len({tuple(o.tolist()) for o in params[3]["order"]}) > 10


@pytest.mark.parametrize(
    "t,key,p",
    [
        (RandomHorizontalFlip(0.3), "flip", 0.3),
        (RandomGrayscale(0.2), "apply", 0.2),
        (ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), "apply", 0.8),
        (GaussianBlur(3, p=0.5), "apply", 0.5),
        (RandomSolarize(p=0.1), "apply", 0.1),
    ],
)
def test_probabilities(t, key, p):
    frac = t.sample_params(20000, gen(), "cpu")[key].float().mean().item()
    assert abs(frac - p) < 0.015


def test_jitter_factor_ranges_and_orders():
    t = ColorJitter(0.4, 0.3, 0.2, 0.1)
    prm = t.sample_params(5000, gen(), "cpu")
    for name, lo, hi in [
        ("brightness", 0.6, 1.4),
        ("contrast", 0.7, 1.3),
        ("saturation", 0.8, 1.2),
        ("hue", -0.1, 0.1),
    ]:
        v = prm[name]
        assert v.min() >= lo and v.max() <= hi
        assert abs(v.mean().item() - (lo + hi) / 2) < 0.01
    assert torch.equal(prm["order"].sort(dim=1).values, torch.arange(4).expand(5000, 4))
    assert torch.unique(prm["order"], dim=0).shape[0] == 24  # all permutations occur
    assert ColorJitter(brightness=(0.5, 0.9)).brightness == (0.5, 0.9)


def test_jitter_per_sample_order_matches_torchvision_sequence():
    x = AF.to_float(uint8_batch(24))
    t = ColorJitter(0.5, 0.5, 0.5, 0.2)
    prm = t.sample_params(24, gen(3), "cpu")
    perms = torch.tensor([list(p) for p in itertools.permutations(range(4))])
    prm["order"] = perms  # every permutation once
    prm["apply"][:] = True
    prm["apply"][5] = False
    y = t.apply(x, prm)
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    names = ["brightness", "contrast", "saturation", "hue"]
    for i in range(24):
        ref = x[i]
        if prm["apply"][i]:
            for k in prm["order"][i].tolist():
                ref = fns[k](ref, float(prm[names[k]][i]))
        torch.testing.assert_close(y[i], ref, atol=1e-5, rtol=0)
    # the input is not modified
    torch.testing.assert_close(x, AF.to_float(uint8_batch(24)))


def test_same_seed_same_output_and_different_seed_differs():
    x = uint8_batch(16)
    pipe = build_pipeline("simclr_imagenet", 24)
    a, b, c = pipe(x, gen(7)), pipe(x, gen(7)), pipe(x, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    g = gen(7)
    v1, v2 = MultiView([pipe, pipe])(x, g)
    assert torch.equal(v1, a) and not torch.equal(v1, v2)


def test_global_size_offset_equals_full_batch():
    x = uint8_batch(20)
    pipe = build_pipeline("simclr_imagenet", 16)
    full = pipe(x, gen(5))
    first = pipe(x[:10], gen(5), global_size=20, offset=0)
    second = pipe(x[10:], gen(5), global_size=20, offset=10)
    torch.testing.assert_close(torch.cat([first, second]), full, atol=1e-6, rtol=0)
    params = pipe.sample_params(20, gen(5), "cpu")
    part = slice_params(params, 10, 10)
    assert all(v.shape[0] == 10 for p in part for v in p.values())
    torch.testing.assert_close(pipe.apply(x[10:], part), second, atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        pipe(x, gen(), global_size=10, offset=5)


@pytest.mark.parametrize("name", ["simclr_cifar", "simclr_imagenet", "supervised_cifar", "eval"])
@pytest.mark.parametrize("n,c", [(1, 3), (7, 3), (5, 1)])
def test_presets_shapes_dtypes(name, n, c):
    x = uint8_batch(n, c=c, h=40, w=36)
    y = build_pipeline(name, 24)(x, gen())
    assert y.dtype == torch.float32
    assert y.shape == (n, c, 24, 24)
    assert torch.isfinite(y).all()


def test_registry_and_repr():
    assert set(list_pipelines()) >= {"simclr_cifar", "simclr_imagenet", "supervised_cifar", "eval"}
    with pytest.raises(KeyError):
        build_pipeline("nope", 32)
    p = build_pipeline("simclr_imagenet", 224)
    assert p[5].kernel_size == (23, 23)
    r = repr(build_pipeline("simclr_cifar", 32, CIFAR10_MEAN, CIFAR10_STD))
    assert "RandomResizedCrop(size=(32, 32)" in r and "ColorJitter(" in r and "p=0.8" in r
    assert "GaussianBlur" not in r


def test_simclr_cifar_values_stay_in_range_before_normalize():
    x = uint8_batch(64)
    pipe = build_pipeline("simclr_cifar", 32)
    y = Compose(pipe.transforms[:-1])(x, gen())
    assert y.min() >= 0 and y.max() <= 1


def test_deterministic_transforms():
    x = uint8_batch(3, h=30, w=20)
    xf = AF.to_float(x)
    torch.testing.assert_close(CenterCrop(16)(xf), TF.center_crop(xf, [16, 16]))
    torch.testing.assert_close(CenterCrop(34)(xf), TF.center_crop(xf, [34, 34]))
    torch.testing.assert_close(
        Resize((15, 10))(x), TF.resize(xf, [15, 10], antialias=True), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        Normalize((0.5,) * 3, (0.2,) * 3)(xf), TF.normalize(xf, [0.5] * 3, [0.2] * 3)
    )
    assert ToFloat()(x).dtype == torch.float32


def test_random_transform_apply_matches_functional():
    x = AF.to_float(uint8_batch(32))
    g = gen(11)
    t = GaussianBlur(5, (0.5, 1.5), p=0.5)
    prm = t.sample_params(32, g, "cpu")
    y = t.apply(x, prm)
    for i in range(32):
        ref = (
            TF.gaussian_blur(x[i : i + 1], [5, 5], [float(prm["sigma"][i])] * 2)[0]
            if prm["apply"][i]
            else x[i]
        )
        torch.testing.assert_close(y[i], ref, atol=1e-5, rtol=0)
    s = RandomSolarize(0.5, p=0.5)
    prm = s.sample_params(32, g, "cpu")
    y = s(x, gen(2))
    prm = s.sample_params(32, gen(2), "cpu")
    for i in range(32):
        torch.testing.assert_close(y[i], TF.solarize(x[i], 0.5) if prm["apply"][i] else x[i])
    gs = RandomGrayscale(0.5)
    prm = gs.sample_params(32, g, "cpu")
    y = gs.apply(x, prm)
    for i in range(32):
        torch.testing.assert_close(y[i], TF.rgb_to_grayscale(x[i], 3) if prm["apply"][i] else x[i])
    rrc = RandomResizedCrop(20)
    prm = rrc.sample_params(32, g, "cpu")
    boxes = rrc.boxes(prm, 32, 32)
    ref = torch.stack(
        [TF.resized_crop(x[i], *[int(v) for v in boxes[i]], [20, 20]) for i in range(32)]
    )
    torch.testing.assert_close(rrc.apply(x, prm), ref, atol=1e-5, rtol=0)


def test_requires_generator():
    with pytest.raises(TypeError):
        RandomHorizontalFlip()(uint8_batch(2), None)
    assert math.isclose(RandomHorizontalFlip(0.25).p, 0.25)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = uint8_batch(16)
    pipe = build_pipeline("simclr_imagenet", 24)
    params = pipe.sample_params(16, gen(), "cpu")
    cpu = pipe.apply(x, params)
    cuda_params = [{k: v.cuda() for k, v in p.items()} for p in params]
    gpu = pipe.apply(x.cuda(), cuda_params)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
    g = torch.Generator(device="cuda").manual_seed(0)
    assert pipe(x.cuda(), g).device.type == "cuda"
