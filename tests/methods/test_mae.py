import json
import math
import os

import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.config import load_config
from selfsup.methods import MAE, get_method
from selfsup.methods.mae import masked_mse
from selfsup.train import Trainer

MEAN, STD = (0.5,) * 3, (0.25,) * 3


def _mae(**cfg):
    enc = build_backbone("vit_micro", image_size=16, patch_size=4)
    return MAE(
        enc,
        MAE.Config(decoder_dim=32, decoder_heads=2, decoder_depth=1, **cfg),
        image_size=16,
        mean=MEAN,
        std=STD,
    )


def _images(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)


def test_registered_and_needs_a_vit():
    assert get_method("mae") is MAE
    with pytest.raises(ValueError, match="ViT"):
        MAE(build_backbone("resnet_tiny"), MAE.Config(), image_size=16, mean=MEAN, std=STD)
    with pytest.raises(ValueError):
        MAE.Config(mask_ratio=1.0)
    with pytest.raises(ValueError, match="grid"):
        MAE.Config(masking="grid", mask_ratio=0.5)


def test_loss_ignores_visible_patches():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    for norm_pix in (False, True):
        base = masked_mse(pred, target, mask, norm_pix)
        bumped = pred.clone()
        bumped[mask == 0] += 10.0  # visible patches only
        assert torch.allclose(masked_mse(bumped, target, mask, norm_pix), base)
        bumped = pred.clone()
        bumped[0, 0] += 1.0  # a masked patch
        assert not torch.allclose(masked_mse(bumped, target, mask, norm_pix), base)
    # raw target, masked rows 0/2 of sample 0 and 2/3 of sample 1
    manual = torch.stack([(pred - target)[0, [0, 2]], (pred - target)[1, [2, 3]]]).pow(2).mean()
    assert torch.allclose(masked_mse(pred, target, mask), manual)
    # predicting the per-patch mean of normalised targets costs 1 (unbiased variance: (D-1)/D)
    assert math.isclose(
        float(masked_mse(torch.zeros_like(pred), target, mask, True)), 5 / 6, rel_tol=1e-4
    )


@pytest.mark.parametrize("masking", ["random", "block", "grid"])
def test_global_batch_halves_match_full_batch(masking):
    m = _mae(masking=masking)
    full = m.sample_masks(8, torch.Generator().manual_seed(3), torch.device("cpu"))
    halves = [
        m.sample_masks(4, torch.Generator().manual_seed(3), torch.device("cpu"), 8, off)
        for off in (0, 4)
    ]
    for i in range(3):
        assert torch.equal(torch.cat([halves[0][i], halves[1][i]]), full[i])
    # and the whole step: loss of each half averages to the full loss
    images = _images(8)
    loss, _ = m(images, None, torch.Generator().manual_seed(5))
    parts = [m(images[o : o + 4], None, torch.Generator().manual_seed(5), 8, o)[0] for o in (0, 4)]
    assert torch.allclose((parts[0] + parts[1]) / 2, loss, atol=1e-5)


@pytest.mark.parametrize("visible_only", [True, False])
def test_encoder_sees_only_visible_tokens(visible_only):
    m = _mae(encoder_on_visible_only=visible_only)
    seen = []
    m.encoder.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    loss, metrics = m(_images(4), None, torch.Generator().manual_seed(0))
    expected = 1 + int(16 * (1 - 0.75)) if visible_only else 1 + 16
    assert seen == [expected]
    loss.backward()
    assert m.encoder.patch_embed.proj.weight.grad is not None
    token = m.mask_token if visible_only else m.encoder_mask_token
    assert token.grad is not None
    assert {n for n, p in m.named_parameters() if p.grad is None} == set()
    assert torch.isfinite(metrics["masked_mse"])


def test_step_is_deterministic_for_a_generator():
    m = _mae()
    a, _ = m(_images(), None, torch.Generator().manual_seed(0))
    b, _ = m(_images(), None, torch.Generator().manual_seed(0))
    c, _ = m(_images(), None, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _cfg(data, out, *extra):
    return load_config(
        "mae",
        None,
        [
            f"data.source={data}",
            f"out_dir={out}",
            "backbone.name=vit_micro",
            "backbone.patch_size=4",
            "train.batch_size=32",
            "train.precision=fp32",
            "train.progress=false",
            "train.tensorboard=false",
            "train.log_every_steps=1",
            "train.num_threads=2",
            "train.optimizer.lr=2e-3",
            "train.schedule.warmup_epochs=0",
            "train.knn_monitor.every_epochs=0",
            "train.checkpoint_every_epochs=30",
            "method_args.decoder_dim=64",
            "method_args.decoder_heads=2",
            "method_args.decoder_depth=1",
            *extra,
        ],
    )


def test_training_lowers_masked_loss_and_writes_pictures(tiny_npz, tmp_path):
    cfg = _cfg(tiny_npz, tmp_path / "run", "train.epochs=60", "train.pictures_every_epochs=30")
    assert cfg.train.optimizer.name == "adamw"
    result = Trainer(cfg).fit()
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r and "event" not in r]
    assert len(losses) == result.steps == 120
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    # predicting each patch's mean scores 1.0 with norm_pix_loss; the model must do far better
    assert last < 0.6 and last < 0.7 * first, (first, last)
    assert list((run / "pictures").glob("reconstruction_step*.png"))

    # the CLI's pretext evaluation rebuilds the method and draws the held-out reconstructions
    from selfsup.cli import main

    out = tmp_path / "pretext.json"
    assert main(["eval", "pretext", str(run), "--data", str(tiny_npz), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["method"] == "mae" and row["masked_psnr"] > 10
    assert row["masked_loss"] < 0.8
    (picture,) = row["pictures"]
    assert picture.rsplit("/", 1)[-1].startswith("reconstruction_eval_")
    assert picture.endswith("_test.png") and os.path.getsize(picture) > 0

    method = get_method("mae")(
        build_backbone("vit_micro", image_size=16, patch_size=4),
        cfg.method_config(),
        image_size=16,
        mean=MEAN,
        std=STD,
    ).eval()
    images = _images(8)
    metrics = method.pretext_metrics(images, torch.Generator().manual_seed(0))
    assert set(metrics) >= {"masked_mse", "masked_psnr", "masked_loss"}
    assert all(math.isfinite(v) for v in metrics.values())
    grid = method.pictures(images, torch.Generator().manual_seed(0))["reconstruction"]
    assert grid.shape[0] == 3 and 0 <= float(grid.min()) and float(grid.max()) <= 1


@pytest.mark.parametrize("recipe", ["mae_default", "mae_cifar10_vit_tiny", "mae_cifar10_cpu"])
def test_recipes_load(recipe):
    cfg = load_config("mae", recipe)
    assert cfg.method == "mae" and cfg.backbone.name.startswith("vit")
    assert cfg.train.optimizer.name == "adamw"
