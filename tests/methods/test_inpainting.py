import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from selfsup.backbones import build_backbone
from selfsup.config import OptimizerConfig, load_config
from selfsup.methods import Inpainting, get_method
from selfsup.methods.inpainting import (
    discriminator_loss,
    generator_adversarial_loss,
    inpainting_l2,
    laplacian,
    masked_psnr,
    sharpness_ratio,
)
from selfsup.train import Trainer
from selfsup.train.optim import build_optimizer, set_lr

MEAN, STD = (0.5,) * 3, (0.25,) * 3


pytestmark = pytest.mark.usefixtures("one_thread")


def _method(**cfg):
    torch.manual_seed(0)
    args = {"decoder_dim": 32, "decoder_min_dim": 16, "disc_dim": 8, **cfg}
    return Inpainting(
        build_backbone("resnet_tiny"),
        Inpainting.Config(**args),
        image_size=16,
        mean=MEAN,
        std=STD,
    )


def _images(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _pattern_images(n, seed):
    """uint8 (n, 3, 16, 16) from ``make_pattern_images`` of tests/conftest.py (loaded by path:
    ``conftest`` is not importable by name when several conftest files are collected)."""
    spec = importlib.util.spec_from_file_location(
        "_selfsup_tests_conftest", Path(__file__).resolve().parents[1] / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    images, _ = module.make_pattern_images(n, seed=seed)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def test_registered_with_validated_options():
    assert get_method("inpainting") is Inpainting
    assert Inpainting.family == "transformation"
    for bad in (
        {"adversarial_weight": 1.0},
        {"mask_fraction": 0.0},
        {"masking": "stripes"},
        {"block_size": (0.5, 0.2)},
        {"disc_lr_scale": 0.0},
    ):
        with pytest.raises(ValueError):
            Inpainting.Config(**bad)


# --- the reconstruction loss -----------------------------------------------------------------
def test_l2_loss_against_a_hand_computed_value():
    # one image, 2 channels, 2x2 pixels; the two diagonal pixels are masked
    pred = torch.tensor([[[[1.0, 5.0], [7.0, 2.0]], [[0.0, 9.0], [9.0, 3.0]]]])
    target = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    # masked squared errors: channel 0: 1, 4; channel 1: 1, 4 -> 10 over 2 pixels x 2 channels
    assert float(inpainting_l2(pred, target, mask)) == pytest.approx(10 / 4)
    # context errors 25 + 49 + 81 + 81 = 236, weighted 0.1, still normalised by the masked count
    assert float(inpainting_l2(pred, target, mask, context_weight=0.1)) == pytest.approx(
        (10 + 23.6) / 4
    )


def test_l2_loss_ignores_unmasked_pixels():
    g = _g()
    pred, target = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    mask = (torch.rand(3, 1, 8, 8, generator=g) < 0.3).float()
    base = inpainting_l2(pred, target, mask)
    outside = pred + 10.0 * (1 - mask)  # changes every context pixel
    assert torch.allclose(inpainting_l2(outside, target, mask), base)
    inside = pred.clone()
    idx = torch.nonzero(mask[0, 0])[0]
    inside[0, 1, idx[0], idx[1]] += 1.0  # one masked pixel of one channel
    assert not torch.allclose(inpainting_l2(inside, target, mask), base)
    manual = ((pred - target) ** 2 * mask).sum() / (mask.sum() * 3)
    assert torch.allclose(base, manual)


def test_encoder_sees_a_plain_image_with_the_hole_filled_and_nothing_of_its_content():
    m = _method(masking="center", fill_value=0.0).eval()
    seen = []
    m.encoder.stem[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    images = _images(4)
    changed = images.clone()
    changed[..., 4:12, 4:12] = 255 - changed[..., 4:12, 4:12]  # only the central 8x8 differs
    with torch.no_grad():
        pred_a = m._eval_batch(images, _g())[3]
        pred_b = m._eval_batch(changed, _g())[3]
    assert seen[0].shape == (4, 3, 16, 16)  # a plain 3-channel image, no mask channel
    assert torch.equal(seen[0], seen[1]) and torch.equal(pred_a, pred_b)
    assert torch.all(seen[0][..., 4:12, 4:12] == 0.0)
    context = (images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(seen[0][..., :4, :], context[..., :4, :], atol=1e-6)


# --- GAN wiring ------------------------------------------------------------------------------
def _groups(m):
    disc = list(m.discriminator.parameters())
    gen = list(m.encoder.parameters()) + list(m.decoder.parameters())
    return gen, disc


def _grads(loss, params):
    return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)


@pytest.mark.parametrize("masking", ["center", "region"])
def test_each_gan_term_only_reaches_its_own_player(masking):
    m = _method(masking=masking, adversarial_weight=0.001)
    gen, disc = _groups(m)
    terms = m.losses(_images(), _g())
    assert set(terms) == {"rec", "adv_g", "d", "d_acc"}
    # the generator's adversarial term: through D into the fill, never into D
    assert all(g is None for g in _grads(terms["adv_g"], disc))
    dec_grads = _grads(terms["adv_g"], list(m.decoder.parameters()))
    assert all(g is not None for g in dec_grads) and any(g.abs().sum() > 0 for g in dec_grads)
    # the discriminator's term: D only, nothing reaches the encoder or decoder
    assert all(g is None for g in _grads(terms["d"], gen))
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(terms["d"], disc))
    # the reconstruction term never touches D
    assert all(g is None for g in _grads(terms["rec"], disc))
    # the step's loss is their weighted sum, and every parameter gets a gradient (DDP-safe)
    loss, metrics = m(_images(), None, _g())
    expected = 0.999 * terms["rec"] + 0.001 * terms["adv_g"] + terms["d"]
    assert torch.allclose(loss, expected)
    assert set(metrics) == {"loss_rec", "loss_adv_g", "loss_d", "d_acc"}
    assert 0.0 <= float(metrics["d_acc"]) <= 1.0
    loss.backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []


def test_generator_term_is_the_non_saturating_gan_loss_through_the_real_discriminator():
    m = _method(masking="center", adversarial_weight=0.5).eval()
    with torch.no_grad():
        x, mask, _, _, composite = m._eval_batch(_images(), _g())
        logits_fake = m.discriminator(m.adversarial_view(composite))
        logits_real = m.discriminator(m.adversarial_view(x))
    assert m.adversarial_view(composite).shape == (8, 3, 8, 8)  # the filled centre only
    assert torch.allclose(generator_adversarial_loss(logits_fake), F.softplus(-logits_fake).mean())
    assert torch.allclose(
        discriminator_loss(logits_real, logits_fake),
        F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean(),
    )


def test_without_adversarial_loss_there_is_no_discriminator():
    m = _method(adversarial_weight=0.0)
    assert m.discriminator is None and m.lr_scales() == {}
    assert not any(k.startswith("discriminator") for k in m.state_dict())
    loss, metrics = m(_images(), None, _g())
    assert set(metrics) == {"loss_rec"} and torch.equal(loss, metrics["loss_rec"])
    loss.backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []


def test_discriminator_learning_rate_multiplier_reaches_the_optimizer():
    m = _method(adversarial_weight=0.001, disc_lr_scale=0.1)
    cfg = OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.05)
    opt = build_optimizer(m, cfg, 64)
    disc = {id(p) for p in m.discriminator.parameters()}
    seen = []
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        seen += list(ids)
        assert ids <= disc or not ids & disc  # no group mixes D with the rest
        expected = 0.1 if ids <= disc else 1.0
        assert group.get("lr_scale", 1.0) == expected
        assert group["lr"] == pytest.approx(1e-3 * expected)
    assert sorted(seen) == sorted(id(p) for p in m.parameters())  # each parameter once
    assert set_lr(opt, 1e-3, 0.5) == pytest.approx(5e-4)  # the schedule keeps the ratio
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(5e-4 * group.get("lr_scale", 1.0))
    # the weight-decay split still holds inside the discriminator's groups
    assert {g["weight_decay"] for g in opt.param_groups if g.get("lr_scale")} == {0.0, 0.05}


# --- data parallelism and determinism --------------------------------------------------------
@pytest.mark.parametrize("masking,adv", [("center", 0.001), ("block", 0.0), ("region", 0.001)])
def test_process_halves_reproduce_the_full_batch(masking, adv):
    m = _method(masking=masking, adversarial_weight=adv).eval()  # eval: per-sample BatchNorm
    full = m.sample_masks(8, _g(3), torch.device("cpu"))
    halves = [m.sample_masks(4, _g(3), torch.device("cpu"), 8, off) for off in (0, 4)]
    assert torch.equal(torch.cat(halves), full)
    images = _images(8)
    loss, metrics = m(images, None, _g(5))
    parts = [m(images[o : o + 4], None, _g(5), 8, o) for o in (0, 4)]
    assert torch.allclose((parts[0][0] + parts[1][0]) / 2, loss, atol=1e-5)
    for key in metrics:
        avg = (parts[0][1][key] + parts[1][1][key]) / 2
        assert torch.allclose(avg, metrics[key], atol=1e-5), key


def test_step_is_deterministic_for_a_generator():
    m = _method(masking="region", adversarial_weight=0.001)
    a, _ = m(_images(), None, _g(0))
    b, _ = m(_images(), None, _g(0))
    c, _ = m(_images(), None, _g(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- pretext metrics -------------------------------------------------------------------------
def test_masked_psnr_hand_checked():
    target = torch.rand(2, 3, 8, 8, generator=_g())
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    pred = target + 0.5 * (1 - mask)  # context errors must not count
    pred[0] += 0.1 * mask[0]  # MSE 0.01 -> 20 dB
    pred[1] -= 0.01 * mask[1]  # MSE 1e-4 -> 40 dB
    psnr = masked_psnr(pred, target, mask)
    assert torch.allclose(psnr, torch.tensor([20.0, 40.0]), atol=1e-3)


def _texture(n=4, size=32, seed=0):
    g = _g(seed)
    base = torch.rand(n, 3, size // 4, size // 4, generator=g)
    smooth = F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    return (0.6 * smooth + 0.4 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def test_sharpness_is_one_for_the_truth_and_lower_for_a_blurred_fill():
    truth = _texture()
    mask = torch.zeros(4, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    assert float(sharpness_ratio(truth, truth, mask)) == pytest.approx(1.0)
    blurred = F.avg_pool2d(F.pad(truth, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    fill = truth * (1 - mask) + blurred * mask
    blur_score = float(sharpness_ratio(fill, truth, mask))
    assert blur_score < 0.3
    flat = truth * (1 - mask) + truth.mean((2, 3), keepdim=True) * mask
    assert float(sharpness_ratio(flat, truth, mask)) < blur_score
    noisy = (truth + 0.2 * torch.randn(truth.shape, generator=_g(1)) * mask).clamp(0, 1)
    assert float(sharpness_ratio(noisy, truth, mask)) > 1.5
    # it measures the fill's texture, not the seam with the context: a constant fill of the
    # right colour has no energy at all in the eroded region
    assert float(sharpness_ratio(flat, truth, mask)) == pytest.approx(0.0, abs=1e-6)


def test_laplacian_of_a_hand_made_image():
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 1.0
    lap = laplacian(x)[0, 0]
    assert torch.equal(lap, torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]))
    ramp = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 5, 5)
    assert torch.all(laplacian(ramp)[..., 1:-1] == 0)  # linear inside (borders are replicated)


def test_pretext_metrics_and_pictures():
    m = _method(masking="center", adversarial_weight=0.001).eval()
    images = _images(8)
    metrics = m.pretext_metrics(images, _g())
    assert set(metrics) == {"masked_loss", "masked_psnr", "mean_fill_psnr", "sharpness", "d_acc"}
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics == m.pretext_metrics(images, _g())  # deterministic for a generator
    grid = m.pictures(images, _g())["inpainting"]
    pad = 1
    assert grid.shape == (3, 3 * 16 + 4 * pad, 8 * 16 + 9 * pad)  # 3 rows x 8 columns
    assert 0 <= float(grid.min()) and float(grid.max()) <= 1
    # row 1 is the masked input: its hole shows the fill value (0 = the mean colour, 0.5 here)
    hole = grid[:, pad + 4 : pad + 12, pad + 4 : pad + 12]
    assert torch.allclose(hole, torch.full_like(hole, 0.5))
    # row 3 is the truth, untouched
    truth = grid[:, 3 * pad + 32 : 3 * pad + 48, pad : pad + 16]
    assert torch.allclose(truth, images[0].float() / 255, atol=1e-6)


# --- learning --------------------------------------------------------------------------------
@pytest.mark.slow  # about 10 s on a 2-core CPU
def test_training_fills_holes_better_than_untrained_and_mean_colour():
    """A few seconds of training on pattern images (colour + stripes per class, noise) makes
    the masked-region PSNR on unseen images of the same kind clearly better than the untrained
    model's and than filling each hole with its image's mean context colour."""
    torch.manual_seed(0)
    images = _pattern_images(320, seed=0)
    train, held_out = images[:256], images[256:]
    m = _method(masking="center", decoder_dim=64)
    mean, std = tuple(float(v) for v in train.float().mean((0, 2, 3)) / 255), (0.25,) * 3
    from selfsup.augment import build_pipeline

    m.mean, m.std = mean, std
    m.pipeline = build_pipeline("eval", 16, mean, std)
    m.eval_pipeline = build_pipeline("eval", 16, mean, std)
    before = m.eval().pretext_metrics(held_out, _g())
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    m.train()
    for step in range(100):
        idx = torch.randperm(len(train), generator=_g(step))[:64]
        loss, _ = m(train[idx], None, _g(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = m.eval().pretext_metrics(held_out, _g())
    # measured: 13.2 dB untrained, 18.7 dB for the mean colour, 22.9 dB after training
    assert after["masked_psnr"] > before["masked_psnr"] + 5.0, (before, after)
    assert after["masked_psnr"] > after["mean_fill_psnr"] + 2.0, after
    assert after["masked_loss"] < 0.25 * before["masked_loss"], (before, after)


# --- end to end: train, resume, evaluate -----------------------------------------------------
def _cfg(data, out, *extra):
    return load_config(
        "inpainting",
        None,
        [
            f"data.source={data}",
            f"out_dir={out}",
            "backbone.name=resnet_tiny",
            "train.batch_size=16",
            "train.epochs=2",
            "train.precision=fp32",
            "train.progress=false",
            "train.tensorboard=false",
            "train.log_every_steps=1",
            "train.num_threads=1",
            "train.checkpoint_every_steps=2",
            "train.optimizer.name=adamw",
            "train.optimizer.lr=2e-3",
            "train.optimizer.betas=[0.5,0.999]",
            "method_args.decoder_dim=32",
            "method_args.disc_dim=8",
            *extra,
        ],
    )


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("adv", [0.0, 0.001])
def test_train_resume_and_evaluate_through_the_cli(tiny_npz, tmp_path, adv):
    extra = [f"method_args.adversarial_weight={adv}", "method_args.masking=region"]
    straight = Trainer(_cfg(tiny_npz, tmp_path / "a", *extra)).fit()
    assert straight.steps == 8
    first = Trainer(_cfg(tiny_npz, tmp_path / "b", *extra), stop_at_step=3).fit()
    assert first.steps == 3
    resumed = Trainer(_cfg(tiny_npz, tmp_path / "b", *extra), resume=True).fit()
    assert resumed.steps == 8
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step_00000008" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step_00000008" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert any(k.startswith("discriminator.") for k in a) == (adv > 0)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = [r for r in _rows(tmp_path / "a") if "loss" in r and "event" not in r]
    expected = {"loss_rec"} | ({"loss_adv_g", "loss_d", "d_acc"} if adv else set())
    assert expected <= set(rows[-1]) and all(math.isfinite(r["loss"]) for r in rows)

    from selfsup.cli import main

    run = tmp_path / "a"
    out = tmp_path / "pretext.json"
    assert main(["eval", "pretext", str(run), "--data", str(tiny_npz), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["method"] == "inpainting" and row["masked_psnr"] > 5
    assert ("d_acc" in row) == (adv > 0)
    (picture,) = row["pictures"]
    assert picture.rsplit("/", 1)[-1].startswith("inpainting_eval_")
    assert os.path.getsize(picture) > 0
    knn = tmp_path / "knn.json"
    assert main(["eval", "knn", str(run), "--data", str(tiny_npz), "--json", str(knn)]) == 0
    (row,) = json.loads(knn.read_text())
    assert 0.0 <= row["knn@20"] <= 1.0


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process(tiny_npz, tmp_path):
    """The adversarial variant under torchrun (2 CPU processes, gloo): same loss curve and
    weights as one process, so DDP's every-parameter-gets-a-gradient contract holds."""
    import subprocess
    import sys

    common = [
        f"data.source={tiny_npz}",
        "backbone.name=resnet_tiny",
        "train.batch_size=16",
        "train.max_steps=4",
        "train.precision=fp32",
        "train.progress=false",
        "train.tensorboard=false",
        "train.log_every_steps=1",
        "train.num_threads=1",
        "train.optimizer.name=adamw",
        "train.optimizer.lr=1e-3",
        "method_args.masking=region",
        "method_args.adversarial_weight=0.001",
        "method_args.decoder_dim=32",
        "method_args.disc_dim=8",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    cmd = [sys.executable, "-m", "selfsup", "train", "inpainting"]
    subprocess.run([*cmd, f"out_dir={single}", *common], check=True, env=env, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    proc = subprocess.run(
        [*torchrun, "--nproc_per_node", "2", "-m", "selfsup", "train", "inpainting"]
        + [f"out_dir={ddp}", *common],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    def curve(run, key):
        return [r[key] for r in _rows(run) if key in r and "event" not in r]

    # (the method's own metrics are logged from rank 0's half of the batch; loss and gradient
    # norm are global)
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(curve(ddp, key), curve(single, key), rtol=1e-4, atol=1e-5)
    a = load_file(str(single / "checkpoints" / "step_00000004" / "model.safetensors"))
    b = load_file(str(ddp / "checkpoints" / "step_00000004" / "model.safetensors"))
    for key in a:
        np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(
    "recipe", ["inpainting_default", "inpainting_cifar10_cpu", "inpainting_adv_cifar10_cpu"]
)
def test_recipes_load(recipe):
    cfg = load_config("inpainting", recipe)
    assert cfg.method == "inpainting"
    method_cfg = cfg.method_config()
    assert (method_cfg.adversarial_weight > 0) == ("adv" in recipe or recipe.endswith("default"))
