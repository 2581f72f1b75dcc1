import json
import math

import numpy as np
import pytest
import torch
from synthetic import make_pattern_images, train_briefly
from synthetic import pattern_batches as _pattern_batches

from selfsup.augment.color import rgb_to_lab
from selfsup.backbones import build_backbone
from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.methods import Colorization, get_method
from selfsup.methods.colorization import (
    SoftBins,
    ab_bins,
    annealed_mean,
    l_bins,
    rebalance_weights,
    regression_loss,
    soft_cross_entropy,
    soft_encode,
    soft_encode_dense,
)
from selfsup.methods.lab_pretext import (
    GridIndex,
    _nearest_all,
    _SoftCrossEntropy,
    soft_cross_entropy_and_hits,
    top1_hits,
)

MEAN, STD = (0.5,) * 3, (0.25,) * 3


def _method(**cfg):
    torch.manual_seed(0)
    enc = build_backbone("resnet_tiny", in_channels=1)
    return Colorization(
        enc, Colorization.Config(decoder_dim=32, **cfg), image_size=16, mean=MEAN, std=STD
    )


def _images(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)


# ----------------------------------------------------------------------------- ab bins
def _cube_ab(step: int) -> torch.Tensor:
    """ab (K, 2) of a lattice of the whole 8-bit RGB cube (every ``step``-th level + 255)."""
    levels = torch.tensor(sorted({*range(0, 256, step), 255}), dtype=torch.float64) / 255
    r, g, b = torch.meshgrid(levels, levels, levels, indexing="ij")
    rgb = torch.stack([r, g, b]).reshape(1, 3, 1, -1)
    return rgb_to_lab(rgb)[0, 1:, 0].T


def test_in_gamut_ab_bins():
    bins = ab_bins()
    # 261 grid points are the nearest bin of some 8-bit sRGB colour (Zhang et al.: 313 with an
    # unpublished, looser test; the extent is the same)
    assert bins.shape == (261, 2)
    assert torch.equal(bins, ab_bins())  # deterministic (and cached)
    assert bins[:, 0].min() == -90 and bins[:, 0].max() == 100
    assert bins[:, 1].min() == -110 and bins[:, 1].max() == 90
    assert torch.equal(bins, torch.round(bins / 10) * 10)
    # a lattice of the whole cube (not only its surface, which the bins come from) hits
    # exactly the kept bins: every colour falls into a kept bin, and every kept bin's 10x10
    # cell holds some sRGB colour (is in gamut)
    keys = {tuple(v) for v in bins.long().tolist()}
    nearest = (torch.round(_cube_ab(3) / 10) * 10).long().unique(dim=0)
    assert {tuple(v) for v in nearest.tolist()} == keys


def test_soft_encoding_sums_to_one_and_peaks_at_the_true_bin():
    bins = ab_bins()
    g = torch.Generator().manual_seed(0)
    lab = rgb_to_lab(torch.rand(4, 3, 6, 6, generator=g))
    idx, w = soft_encode(lab[:, 1:], bins, k=5, sigma=5.0)
    assert idx.shape == w.shape == (4, 5, 6, 6)
    assert torch.allclose(w.sum(1), torch.ones(4, 6, 6))
    assert (w >= 0).all() and (w[:, :1] >= w).all()  # nearest first, and heaviest
    d = (lab[:, 1:].permute(0, 2, 3, 1)[..., None, :] - bins).norm(dim=-1)
    assert torch.equal(idx[:, 0], d.argmin(-1))
    dense = soft_encode_dense(lab[:, 1:], bins)
    assert dense.shape == (4, 261, 6, 6)
    assert torch.allclose(dense.sum(1), torch.ones(4, 6, 6))
    assert torch.equal(dense.argmax(1), idx[:, 0])
    # hand-written: centres 0, 10, 20, 30 (1-D), value 12, k = 2, sigma 5
    centres = torch.tensor([[0.0], [10.0], [20.0], [30.0]])
    idx, w = soft_encode(torch.full((1, 1, 1, 1), 12.0), centres, k=2, sigma=5.0)
    e = torch.tensor([math.exp(-4 / 50), math.exp(-64 / 50)])
    assert idx.flatten().tolist() == [1, 2]
    assert torch.allclose(w.flatten(), e / e.sum())


@pytest.mark.parametrize("k", [1, 2, 5, 6, 9])
def test_the_grid_index_finds_the_nearest_bins_the_full_search_finds(k):
    """Six candidates per value (k <= 5), the 5 x 5 window (larger k, bins missing nearby)
    and the full search (values off the table) together give the full search's answer: the
    same distances, and bins at those distances (which of two equally near bins is kept may
    differ); on values without ties, the same bins and soft targets."""
    bins = ab_bins()
    g = torch.Generator().manual_seed(4)
    untied = torch.cat([
        rgb_to_lab(torch.rand(1, 3, 64, 64, generator=g))[0, 1:].reshape(2, -1).T,  # colours
        (torch.rand(20_000, 2, generator=g) - 0.5) * 280,  # in, at the edge of and off the gamut
        (torch.rand(500, 2, generator=g) - 0.5) * 2_000,  # far off the table
    ])  # fmt: skip
    tied = torch.randint(-11, 12, (500, 2), generator=g) * 10.0 + 1e-3  # by grid points
    values = torch.cat([untied, tied])
    index = GridIndex(bins, 10.0)
    d2, idx = index.nearest(values, bins, k)
    want_d2, want_idx = _nearest_all(values, bins, k)
    assert torch.equal(d2, want_d2)
    assert torch.equal((values[:, None, :] - bins[idx]).pow(2).sum(-1), d2)
    assert torch.equal(idx[: len(untied)], want_idx[: len(untied)])
    grid = untied.T.reshape(1, 2, -1, 1)
    for a, b in zip(soft_encode(grid, bins, k, 5.0, index), soft_encode(grid, bins, k, 5.0),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_rebalancing_weights_have_mean_one_under_the_prior_and_favour_rare_bins():
    prior = torch.tensor([0.5, 0.3, 0.2, 0.0])
    w = rebalance_weights(prior, mix=0.5)
    raw = 1 / (0.5 * prior.double() + 0.5 / 4)
    assert torch.allclose(w.double(), raw / (prior.double() * raw).sum(), atol=1e-6)
    assert math.isclose(float((prior * w).sum()), 1.0, rel_tol=1e-6)
    assert w[3] > w[2] > w[1] > w[0]
    assert torch.allclose(rebalance_weights(prior, mix=1.0), torch.ones(4))  # uniform: off
    assert torch.allclose(rebalance_weights(prior * 7, mix=0.5), w)  # masses, not probabilities
    with pytest.raises(ValueError):
        rebalance_weights(prior, mix=0.0)


def test_annealed_mean_goes_from_the_mode_to_the_mean():
    centres = torch.tensor([[0.0, 0.0], [10.0, -20.0], [30.0, 40.0]])
    logits = torch.tensor([0.0, 1.0, 0.5]).view(1, 3, 1, 1)
    p = torch.softmax(logits.flatten(), 0)
    mean = (p[:, None] * centres).sum(0)
    assert torch.allclose(annealed_mean(logits, centres, 1.0).flatten(), mean, atol=1e-5)
    assert torch.allclose(annealed_mean(logits, centres, 1e-3).flatten(), centres[1], atol=1e-4)
    # in between: T = 0.38 sharpens towards the mode
    mid = annealed_mean(logits, centres, 0.38).flatten()
    assert (mid - centres[1]).norm() < (mean - centres[1]).norm()


def test_losses_against_hand_written_values():
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]]).T.reshape(1, 3, 1, 2)
    idx = torch.tensor([[1, 0], [2, 1]]).T.reshape(1, 2, 1, 2)
    w = torch.tensor([[0.7, 0.3], [0.9, 0.1]]).T.reshape(1, 2, 1, 2)
    lp0 = torch.log_softmax(torch.tensor([1.0, 2.0, 0.0]), 0)
    lp1 = torch.log_softmax(torch.tensor([0.5, -1.0, 3.0]), 0)
    ce0 = -(0.7 * lp0[1] + 0.3 * lp0[0])
    ce1 = -(0.9 * lp1[2] + 0.1 * lp1[1])
    assert torch.allclose(soft_cross_entropy(logits, idx, w), (ce0 + ce1) / 2)
    pixel = torch.tensor([2.0, 0.5]).view(1, 1, 2)
    assert torch.allclose(soft_cross_entropy(logits, idx, w, pixel), (2 * ce0 + 0.5 * ce1) / 2)
    pred, target = torch.tensor([0.0, 0.1, 0.5]), torch.tensor([0.0, 0.0, 0.0])
    assert torch.isclose(regression_loss(pred, target, "l2"), torch.tensor((0.01 + 0.25) / 3))
    # smooth-L1, beta 0.2: 0.5 x^2 / beta below beta, |x| - beta / 2 above
    expected = (0.5 * 0.01 / 0.2 + (0.5 - 0.1)) / 3
    assert torch.isclose(regression_loss(pred, target, "smooth_l1", 0.2), torch.tensor(expected))


def test_running_prior_is_a_checkpointed_buffer():
    m = _method()
    assert "ab_bins.prior_mass" in m.state_dict()
    assert torch.equal(m.ab_bins.prior(), torch.full((261,), 1 / 261, dtype=torch.float64))
    images = _images()
    m(images, None, torch.Generator().manual_seed(0))
    mass = m.ab_bins.prior_mass.clone()
    pixels = 8 * 8 * 8  # 8 images, targets at 16 // 2
    assert math.isclose(float(mass.sum()), pixels, rel_tol=1e-9)  # soft targets sum to 1
    m(images, None, torch.Generator().manual_seed(1))
    assert math.isclose(float(m.ab_bins.prior_mass.sum()), 2 * pixels, rel_tol=1e-9)
    # held-out evaluation leaves the prior alone
    m.eval()
    before = m.ab_bins.prior_mass.clone()
    m.pretext_metrics(images, torch.Generator().manual_seed(0))
    m(images, None, torch.Generator().manual_seed(0))
    assert torch.equal(m.ab_bins.prior_mass, before)
    # a fresh method loading the state dict has the same prior and weights
    fresh = _method()
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.ab_bins.class_weights(), m.ab_bins.class_weights())
    # frequent bins get the smallest weights
    w, p = m.ab_bins.class_weights(), m.ab_bins.prior()
    assert float(w[p.argmax()]) == float(w.min())
    assert "ab_bins.prior_mass" not in _method(rebalance=False).state_dict()
    assert SoftBins(l_bins(50)).num_bins == 50


def test_encoder_sees_the_l_channel_only():
    assert Colorization.input_space == "lab_l" and Colorization.encoder_channels(3) == 1
    with pytest.raises(ConfigError, match="3-channel"):
        Colorization.encoder_channels(1)
    with pytest.raises(ValueError, match="1 input channel"):
        Colorization(
            build_backbone("resnet_tiny"), Colorization.Config(), image_size=16, mean=MEAN, std=STD
        )
    m = _method().eval()
    seen = []
    m.encoder.stem.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    images = _images(4)
    m.pretext_metrics(images, torch.Generator().manual_seed(0))
    expected = (rgb_to_lab(images.float() / 255)[:, :1] - 50) / 50
    assert torch.allclose(seen[0], expected, atol=1e-4)


@pytest.mark.parametrize("mode", ["classification", "regression"])
def test_step_is_deterministic_trains_everything_and_slices_the_global_batch(mode):
    m = _method(mode=mode)
    images = _images()
    loss, metrics = m(images, None, torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert {n for n, p in m.named_parameters() if p.grad is None} == set()
    assert ("bin_accuracy" if mode == "classification" else "ab_l2_error") in metrics
    m2 = _method(mode=mode)
    assert torch.equal(m2(images, None, torch.Generator().manual_seed(0))[0], loss)
    # the views of a process's rows are those rows of the global batch's views
    full = m.train_lab(images, torch.Generator().manual_seed(3), None, 0)
    half = m.train_lab(images[4:], torch.Generator().manual_seed(3), 8, 4)
    assert torch.equal(half, full[4:])


def test_pretext_metrics_and_pictures_of_an_untrained_model():
    images = _images(8)
    for mode in ("classification", "regression"):
        m = _method(mode=mode).eval()
        metrics = m.pretext_metrics(images, torch.Generator().manual_seed(0))
        assert set(metrics) == {
            "loss",
            "ab_abs_error",
            "ab_l2_error",
            "psnr",
            "grey_ab_l2_error",
            "grey_psnr",
        }
        assert all(math.isfinite(v) for v in metrics.values())
        grid = m.pictures(images, torch.Generator().manual_seed(0))["colorization"]
        # 3 rows (grey input, prediction, truth) of 8 columns, 1-pixel padding
        assert grid.shape == (3, 3 * 17 + 1, 8 * 17 + 1)
        assert 0 <= float(grid.min()) and float(grid.max()) <= 1
    # the grey input row is grey
    grid = m.pictures(images[:2], torch.Generator().manual_seed(0))["colorization"]
    grey_row = grid[:, 1:17, 1:17]
    assert (grey_row.max(0).values - grey_row.min(0).values).max() < 0.02


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["classification", "regression"])
def test_learns_to_colourise_pattern_images(mode):
    """Images whose colour follows their class (stripe orientation/frequency, brightness):
    a short training predicts ab far better than the untrained model and than grey."""
    train, test = _pattern_batches()
    m = _method(mode=mode)
    g = torch.Generator().manual_seed(0)
    before = m.eval().pretext_metrics(test, g)
    after = train_briefly(m, train).pretext_metrics(test, g)
    # measured: ab_l2_error 9.3 (classification) / 13.0 (regression) after 80 steps; grey
    # 41.7, untrained 45-56; the images' per-pixel colour noise alone leaves ~9
    assert after["ab_l2_error"] < 0.5 * after["grey_ab_l2_error"], (before, after)
    assert after["ab_l2_error"] < 0.5 * before["ab_l2_error"], (before, after)
    assert after["psnr"] > after["grey_psnr"] + 5, (before, after)


# ---------------------------------------------------------------------- end to end
def _train_cli(method, data, run, *extra):
    from selfsup.cli import main

    return main(
        [
            "train", method, f"out_dir={run}", f"data.source={data}",
            "backbone.name=resnet_tiny", "train.batch_size=16", "train.epochs=2",
            "train.precision=fp32", "train.progress=false", "train.tensorboard=false",
            "train.num_threads=1", "train.optimizer.name=adamw", "train.optimizer.lr=3e-3",
            "train.optimizer.weight_decay=0", "train.knn_monitor.every_epochs=1",
            f"eval_data.source={data}", "method_args.decoder_dim=32", *extra,
        ]
    )  # fmt: skip


def test_trains_and_evaluates_end_to_end_on_rgb_data(tiny_npz, tmp_path):
    from selfsup.cli import main
    from selfsup.evaluate import load_encoder

    run = tmp_path / "run"
    assert _train_cli("colorization", tiny_npz, run) == 0
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["input_space"] == "lab_l"
    assert meta["in_channels"] == 1 and meta["data_channels"] == 3
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("online_knn@200" in r for r in rows)  # the kNN monitor fed it Lab L
    assert list((run / "pictures").glob("colorization_step*.png"))
    loaded = load_encoder(str(run))
    assert loaded.encoder.in_channels == 1

    out = tmp_path / "knn.json"
    assert (
        main(
            ["eval", "knn", str(run), f"random:{run}", "--data", str(tiny_npz), "--json", str(out)]
        )
        == 0
    )
    trained, rand = json.loads(out.read_text())
    assert trained["input_space"] == rand["input_space"] == "lab_l"
    assert 0 <= trained["knn@20"] <= 1 and trained["feature_dim"] == 128

    out = tmp_path / "pretext.json"
    assert main(["eval", "pretext", str(run), "--data", str(tiny_npz), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["method"] == "colorization" and row["images"] == 64
    assert {"ab_l2_error", "psnr", "grey_psnr"} <= set(row)
    assert row["pictures"] and row["pictures"][0].endswith("_test.png")


def test_grey_training_data_is_refused(tmp_path):
    images, labels = make_pattern_images(32)
    path = tmp_path / "grey.npz"
    np.savez(path, images=images[..., :1], labels=labels)
    cfg = load_config(
        "colorization",
        None,
        [
            f"data.source={path}",
            f"out_dir={tmp_path / 'r'}",
            "backbone.name=resnet_tiny",
            "train.batch_size=8",
        ],
    )
    from selfsup.train import Trainer

    with pytest.raises(ConfigError, match="3-channel"):
        Trainer(cfg).fit()


@pytest.mark.parametrize("recipe", ["colorization_default", "colorization_cifar10_cpu"])
def test_recipes_load(recipe):
    cfg = load_config("colorization", recipe)
    assert cfg.method == "colorization" and get_method(cfg.method) is Colorization
    assert cfg.method_config().mode == "classification"


@pytest.mark.parametrize("with_pixel_weights", [False, True])
def test_fused_soft_cross_entropy_matches_log_softmax_in_value_and_gradient(with_pixel_weights):
    """The fused loss equals the textbook ``-Σ w log_softmax[idx]`` (value and gradient), also
    for weights that do not sum to 1 and repeated bins, in float64."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 4, 5, generator=g, dtype=torch.float64) * 3
    idx = torch.randint(0, 7, (3, 3, 4, 5), generator=g)
    w = torch.rand(3, 3, 4, 5, generator=g, dtype=torch.float64)
    pixel = torch.rand(3, 4, 5, generator=g, dtype=torch.float64) if with_pixel_weights else None
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    reference = -(torch.log_softmax(b, 1).gather(1, idx) * w).sum(1)
    reference = (reference * pixel if pixel is not None else reference).mean()
    reference.backward()
    fused, hits = _SoftCrossEntropy.apply(a, idx, w)
    assert torch.equal(hits, top1_hits(logits, idx[:, 0])) and not hits.requires_grad
    fused = (fused * pixel if pixel is not None else fused).mean()
    fused.backward()
    assert torch.allclose(fused, reference, rtol=1e-12, atol=1e-12)
    assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: _SoftCrossEntropy.apply(x, idx, w)[0], (x,))


@pytest.mark.parametrize(
    "dtype,channels_last",
    [(dt, cl) for dt in (torch.float32, torch.bfloat16) for cl in (False, True)],
)
def test_fused_soft_cross_entropy_in_any_layout_and_half_dtype(dtype, channels_last):
    """NCHW or channels-last, float32 or bf16 logits: the loss and hits are those of the
    float64 reference on the same values, the gradient comes back in the logits' dtype and
    shape, and the logits themselves are left untouched (the float32 channels-last path works
    on a view of them)."""
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(2, 11, 3, 5, generator=g) * 3).to(dtype)
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    idx = torch.randint(0, 11, (2, 4, 3, 5), generator=g)
    w = torch.rand(2, 4, 3, 5, generator=g)
    before = logits.clone()
    x = logits.clone().requires_grad_(True)
    ref = logits.double().requires_grad_(True)
    ce, hits = _SoftCrossEntropy.apply(x, idx, w)
    ref_ce, ref_hits = _SoftCrossEntropy.apply(ref, idx, w.double())
    (ce * torch.arange(30.0).view(2, 3, 5)).sum().backward()
    (ref_ce * torch.arange(30.0, dtype=torch.float64).view(2, 3, 5)).sum().backward()
    assert ce.dtype == torch.float32 and torch.equal(hits, ref_hits)
    assert torch.allclose(ce.double(), ref_ce, rtol=1e-5, atol=1e-5)
    assert x.grad.dtype == dtype and x.grad.shape == logits.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(x.grad.double(), ref.grad, rtol=tol, atol=tol)
    assert torch.equal(x.detach(), before)


def test_top1_hits_agrees_with_argmax_without_ties():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 9, 6, 6, generator=g)
    idx = torch.randint(0, 9, (4, 6, 6), generator=g)
    idx[0] = logits[0].argmax(0)  # some hits for sure
    assert torch.equal(top1_hits(logits, idx), logits.argmax(1) == idx)


def test_top1_hits_counts_a_tie_for_the_top_as_a_hit():
    logits = torch.tensor([[2.0, 2.0, 1.0], [0.0, 3.0, 3.0]]).view(2, 3, 1, 1)
    idx = torch.tensor([1, 1]).view(2, 1, 1)  # bin 1 ties for the top in both pixels
    assert top1_hits(logits, idx).view(-1).tolist() == [True, True]
    assert top1_hits(logits, torch.tensor([2, 0]).view(2, 1, 1)).view(-1).tolist() == [False, False]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_soft_cross_entropy_in_chunks_equals_one_pass_over_the_batch(monkeypatch, dtype):
    """Chunks of pixel rows (with a shorter last one) give bit-equal losses, hits and
    gradients to a single chunk over the whole batch: each row's arithmetic is the same."""
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(3, 17, 5, 7, generator=g) * 3).to(dtype)
    logits = logits.contiguous(memory_format=torch.channels_last)
    idx = torch.randint(0, 17, (3, 4, 5, 7), generator=g)
    w = torch.rand(3, 4, 5, 7, generator=g)
    pixel = torch.rand(3, 5, 7, generator=g)

    def run(chunk: int) -> tuple[torch.Tensor, ...]:
        monkeypatch.setattr(_SoftCrossEntropy, "CHUNK", chunk)
        x = logits.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss, hits = soft_cross_entropy_and_hits(x, idx, w, pixel)
        loss.backward()
        return loss.detach(), hits, x.grad

    whole, chunked = run(10_000), run(8)  # 105 pixel rows: 13 chunks of 8 and one of 1
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked, strict=True))


def test_bf16_logits_reach_the_bin_loss_without_a_float32_copy(monkeypatch):
    """Under bf16 autocast the decoder's bf16 logits go into the loss as they are (each chunk
    is converted in cache) and their gradient comes back in bf16, with the same loss, hits and
    gradient as a float32 copy of them would give (bf16 -> float32 is exact; the float32
    gradient is rounded to bf16 once either way). A float32 copy of the whole logits tensor,
    as ``full_precision`` made, would show as a 4-byte allocation of its size (chunks of 16
    rows keep the loss's own float32 temporaries far smaller)."""
    monkeypatch.setattr(_SoftCrossEntropy, "CHUNK", 16)
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(4, 37, 6, 6, generator=g) * 3).to(torch.bfloat16)
    logits = logits.contiguous(memory_format=torch.channels_last)
    idx = torch.randint(0, 37, (4, 5, 6, 6), generator=g)
    w = torch.rand(4, 5, 6, 6, generator=g)
    pixel = torch.rand(4, 6, 6, generator=g)

    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, hits = soft_cross_entropy_and_hits(x, idx, w, pixel)
        loss.backward()
        return loss.detach(), hits, x.grad

    as_is, via_float = run(logits), run(logits.float())
    assert as_is[2].dtype == torch.bfloat16 and via_float[2].dtype == torch.float32
    assert torch.equal(as_is[0], via_float[0]) and torch.equal(as_is[1], via_float[1])
    assert torch.equal(as_is[2], via_float[2].to(torch.bfloat16))

    with torch.profiler.profile(profile_memory=True) as prof:
        run(logits)
    allocated = [e.cpu_memory_usage for e in prof.events() if e.name.startswith("aten::empty")]
    assert logits.numel() * 2 in allocated  # the bf16 gradient: the check sees allocations
    assert logits.numel() * 4 not in allocated
