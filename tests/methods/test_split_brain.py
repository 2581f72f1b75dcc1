import json
import math

import numpy as np
import pytest
import torch
from synthetic import pattern_batches as _pattern_batches
from synthetic import train_briefly

from selfsup.augment.color import rgb_to_input, rgb_to_lab
from selfsup.backbones import build_backbone
from selfsup.backbones.channel_split import ChannelSplitBackbone, build_channel_split
from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.methods import SplitBrain, get_method

MEAN, STD = (0.5,) * 3, (0.25,) * 3


def _method(**cfg):
    torch.manual_seed(0)
    return SplitBrain(
        build_channel_split("resnet_tiny", (1, 2)),
        SplitBrain.Config(decoder_dim=32, **cfg),
        image_size=16,
        mean=MEAN,
        std=STD,
    )


def _images(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)


def test_contract_and_checks():
    assert get_method("split_brain") is SplitBrain
    assert SplitBrain.input_space == "lab" and SplitBrain.channel_groups == (1, 2)
    assert SplitBrain.encoder_channels(3) == 3
    with pytest.raises(ConfigError, match="3-channel"):
        SplitBrain.encoder_channels(1)
    with pytest.raises(ValueError, match="ChannelSplitBackbone"):
        SplitBrain(
            build_backbone("resnet_tiny"), SplitBrain.Config(), image_size=16, mean=MEAN, std=STD
        )
    m = _method()
    assert m.encoder.feature_dim == 256  # both branches' features, concatenated
    assert m.ab_bins.num_bins == 261 and m.l_bins.num_bins == 50


def test_each_direction_sees_only_its_own_channels():
    m = _method().eval()
    lab = rgb_to_lab(_images(4).float() / 255)
    out_ab, out_l = m.predict(lab)
    assert out_ab.shape == (4, 261, 8, 8) and out_l.shape == (4, 50, 8, 8)
    other_ab = lab.clone()
    other_ab[:, 1:] = lab[:, 1:].flip(0)  # new colours, same lightness
    a, b = m.predict(other_ab)
    assert torch.equal(a, out_ab) and not torch.allclose(b, out_l)  # L -> ab ignores ab
    other_l = lab.clone()
    other_l[:, :1] = lab[:, :1].flip(0)  # new lightness, same colours
    a, b = m.predict(other_l)
    assert torch.equal(b, out_l) and not torch.allclose(a, out_ab)  # ab -> L ignores L


@pytest.mark.parametrize("mode", ["classification", "regression"])
def test_loss_is_the_sum_of_both_directions_and_trains_everything(mode):
    m = _method(mode=mode, l_weight=0.5)
    images = _images()
    loss, metrics = m(images, None, torch.Generator().manual_seed(0))
    assert torch.allclose(loss, metrics["loss_ab"] + 0.5 * metrics["loss_l"])
    loss.backward()
    assert {n for n, p in m.named_parameters() if p.grad is None} == set()
    again, _ = _method(mode=mode, l_weight=0.5)(images, None, torch.Generator().manual_seed(0))
    assert torch.equal(again, loss)
    if mode == "classification":
        # untrained, both are cross-entropies close to log(number of bins)
        assert abs(float(metrics["loss_l"]) - math.log(50)) < 1.5
        assert {"ab_bin_accuracy", "l_bin_accuracy"} <= set(metrics)
    else:
        # hand-checked regression targets: L2 on ab / 110 and (L - 50) / 50 at 8x8
        m.eval()
        lab = rgb_to_lab(images.float() / 255)
        out_ab, out_l = m.predict(lab)
        pooled = torch.nn.functional.avg_pool2d(lab, 2)
        want_ab = (out_ab - pooled[:, 1:] / 110).pow(2).mean()
        want_l = (out_l - (pooled[:, :1] - 50) / 50).pow(2).mean()
        got, parts = m.losses(out_ab, out_l, lab, update_prior=False)
        assert torch.allclose(parts["loss_ab"], want_ab, atol=1e-6)
        assert torch.allclose(parts["loss_l"], want_l, atol=1e-6)


def test_pretext_metrics_and_pictures():
    m = _method().eval()
    images = _images(8)
    metrics = m.pretext_metrics(images, torch.Generator().manual_seed(0))
    assert set(metrics) == {
        "loss",
        "loss_ab",
        "loss_l",
        "ab_abs_error",
        "ab_l2_error",
        "psnr",
        "grey_ab_l2_error",
        "grey_psnr",
        "l_abs_error",
        "l_psnr",
    }
    assert all(math.isfinite(v) for v in metrics.values())
    pictures = m.pictures(images, torch.Generator().manual_seed(0))
    assert set(pictures) == {"colorization", "lightness"}
    for grid in pictures.values():
        assert grid.shape == (3, 3 * 17 + 1, 8 * 17 + 1)
        assert 0 <= float(grid.min()) and float(grid.max()) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["classification", "regression"])
def test_learns_both_directions_on_pattern_images(mode):
    """Colour follows the class of the pattern images, and so does the mean lightness:
    after a short training each branch predicts the other's channels far better than the
    untrained model and than a trivial predictor (grey for ab, the mean L of the training
    images for L)."""
    train, test = _pattern_batches()
    m = _method(mode=mode)
    g = torch.Generator().manual_seed(0)
    before = m.eval().pretext_metrics(test, g)
    after = train_briefly(m, train).pretext_metrics(test, g)
    mean_l = rgb_to_lab(train.float() / 255)[:, :1].mean()
    const_l_error = float((rgb_to_lab(test.float() / 255)[:, :1] - mean_l).abs().mean())
    # measured (80 steps): ab_l2_error 9.4 / 16.1 (classification / regression) vs grey 41.7;
    # l_abs_error 8.5 / 8.4 vs 12.3 for the constant, 8.4 for an oracle knowing each class's
    # mean L (stripes of random phase make the rest unpredictable from ab)
    assert after["ab_l2_error"] < 0.5 * after["grey_ab_l2_error"], (before, after)
    assert after["ab_l2_error"] < 0.5 * before["ab_l2_error"], (before, after)
    assert after["l_abs_error"] < 0.8 * const_l_error, (const_l_error, before, after)
    assert after["l_abs_error"] < 0.6 * before["l_abs_error"], (before, after)
    assert after["l_psnr"] > before["l_psnr"] + 2, (before, after)


def test_trains_and_evaluates_end_to_end(tiny_npz, tmp_path):
    from selfsup.cli import main
    from selfsup.data import load_source
    from selfsup.evaluate import load_encoder

    run = tmp_path / "run"
    assert main(
        [
            "train", "split_brain", f"out_dir={run}", f"data.source={tiny_npz}",
            "backbone.name=resnet_tiny", "train.batch_size=16", "train.epochs=2",
            "train.precision=fp32", "train.progress=false", "train.tensorboard=false",
            "train.num_threads=1", "train.optimizer.name=adamw", "train.optimizer.lr=3e-3",
            "train.knn_monitor.every_epochs=1", f"eval_data.source={tiny_npz}",
            "method_args.decoder_dim=32", "backbone.width=0.25",  # recipe default: 0.5
        ]
    ) == 0  # fmt: skip
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["input_space"] == "lab" and meta["channel_groups"] == [1, 2]
    assert meta["in_channels"] == 3 and meta["feature_dim"] == 256
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("online_knn@200" in r for r in rows)
    assert {p.name.split("_step")[0] for p in (run / "pictures").glob("*.png")} == {
        "colorization",
        "lightness",
    }

    loaded = load_encoder(str(run))
    assert isinstance(loaded.encoder, ChannelSplitBackbone)
    out = tmp_path / "knn.json"
    assert (
        main(
            ["eval", "knn", str(run), f"random:{run}", "--data", str(tiny_npz), "--json", str(out)]
        )
        == 0
    )
    trained, rand = json.loads(out.read_text())
    assert trained["input_space"] == rand["input_space"] == "lab"
    assert trained["feature_dim"] == rand["feature_dim"] == 256
    # the features kNN used are the composite encoder on the Lab-converted RGB images
    from selfsup.evaluate import extract_features

    source = load_source(str(tiny_npz), split="train")
    feats = extract_features(
        loaded.encoder,
        source,
        image_size=16,
        normalize="cifar10",
        in_channels=3,
        precision="fp32",
        input_space="lab",
    )
    x = rgb_to_input(torch.from_numpy(np.asarray(source.images)).permute(0, 3, 1, 2) / 255, "lab")
    with torch.no_grad():
        expected = loaded.encoder.eval()(x)
    assert torch.allclose(feats, expected, atol=1e-5)

    out = tmp_path / "pretext.json"
    assert main(["eval", "pretext", str(run), "--data", str(tiny_npz), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["method"] == "split_brain" and {"l_abs_error", "ab_l2_error"} <= set(row)
    assert len(row["pictures"]) == 2


@pytest.mark.parametrize("recipe", ["split_brain_default", "split_brain_cifar10_cpu"])
def test_recipes_load(recipe):
    cfg = load_config("split_brain", recipe)
    assert cfg.method == "split_brain" and cfg.method_config().mode == "classification"
    assert cfg.backbone.width in (0.5, 0.125)  # half the usual width per branch
