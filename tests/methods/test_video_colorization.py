"""Video colorization by attention copying: colour codebook, frame sampling, the training step,
label propagation, a few-step training run through the CLI, ``eval propagation`` and
``selfsup colorize``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.augment.color import rgb_to_input
from selfsup.backbones import build_backbone
from selfsup.config import load_config
from selfsup.data.textures import procedural_textures
from selfsup.data.video import SyntheticVideoOptions, make_clips
from selfsup.errors import ConfigError
from selfsup.evaluate.propagation import (
    PropagationConfig,
    evaluate_propagation,
    identity_masks,
    mask_iou,
    propagate_masks,
)
from selfsup.methods import VideoColorization, get_method
from selfsup.methods.video_colorization import kmeans, quantize

IMAGES = procedural_textures(64, 32, seed=11)


def _method(**cfg) -> VideoColorization:
    torch.manual_seed(0)
    enc = build_backbone("resnet_tiny", in_channels=1)
    config = VideoColorization.Config(**{"hidden_dim": 32, "feature_stride": 2, **cfg})
    return VideoColorization(enc, config, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)


def _clips(n: int = 6, frames: int = 5, seed: int = 0) -> torch.Tensor:
    c = make_clips(IMAGES, SyntheticVideoOptions(clips=n, frames=frames, seed=seed), size=16)
    return c.frames.reshape(n, frames * 3, 16, 16)


def test_kmeans_finds_separated_clusters_and_quantize_assigns_them() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-40.0, 10.0], [0.0, -30.0], [35.0, 35.0]])
    pts = centres.repeat_interleave(50, 0) + torch.randn(150, 2, generator=g)
    found = kmeans(pts, 3, 20, torch.Generator().manual_seed(1))
    assert torch.allclose(found, centres, atol=0.5)  # sorted by the first coordinate
    again = kmeans(pts, 3, 20, torch.Generator().manual_seed(1))
    assert torch.equal(found, again)
    ab = centres.T.reshape(1, 2, 1, 3) + 0.3
    assert quantize(ab, found).tolist() == [[[0, 1, 2]]]


def test_refuses_image_data_and_colour_encoders() -> None:
    assert VideoColorization.encoder_channels(24) == 1
    with pytest.raises(ConfigError, match="synthetic_video"):
        VideoColorization.encoder_channels(3)
    with pytest.raises(ValueError, match="1 input channel"):
        VideoColorization(build_backbone("resnet_tiny"), VideoColorization.Config(),
                          image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)  # fmt: skip


def test_frame_selection_is_ordered_and_slices_the_global_batch() -> None:
    m = _method(max_frame_gap=2)
    clips = torch.arange(8 * 7).view(8, 7, 1, 1, 1).expand(8, 7, 3, 2, 2)  # value = 7 clip + t
    picked = m.select_frames(clips, torch.Generator().manual_seed(0), None, 0)[:, :, 0, 0, 0]
    t = picked - (torch.arange(8) * 7)[:, None]
    gaps = t[:, 1:] - t[:, :-1]
    assert ((gaps == gaps[:, :1]) & (gaps >= 1) & (gaps <= 2)).all()  # evenly spaced, in order
    assert (t[:, 0] >= 0).all() and (t[:, -1] <= 6).all()
    half = m.select_frames(clips[4:], torch.Generator().manual_seed(0), 8, 4)[:, :, 0, 0, 0]
    assert torch.equal(half, picked[4:])
    with pytest.raises(ValueError, match="too short"):
        m.select_frames(clips[:, :3], torch.Generator().manual_seed(0), None, 0)


def test_step_trains_everything_and_fits_the_codebook_once() -> None:
    m = _method()
    images = _clips()
    assert int(m.codebook_ready) == 0
    loss, metrics = m(images, None, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and {"copy_accuracy", "uncopyable"} <= set(metrics)
    loss.backward()
    assert {n for n, p in m.named_parameters() if p.grad is None} == set()
    assert int(m.codebook_ready) == 1
    book = m.codebook.clone()
    assert len(torch.unique(book, dim=0)) == 16
    m(images[:3], None, torch.Generator().manual_seed(5))
    assert torch.equal(m.codebook, book)  # fitted on the first batch only
    state = m.state_dict()
    assert torch.equal(state["codebook"], book) and int(state["codebook_ready"]) == 1
    # the same generator gives the same step
    m2 = _method()
    assert torch.equal(m2(images, None, torch.Generator().manual_seed(0))[0], loss)


def test_pretext_metrics_and_pictures() -> None:
    m = _method().eval()
    images = _clips(4)
    metrics = m.pretext_metrics(images, torch.Generator().manual_seed(0))
    assert {"loss", "copy_accuracy", "uncopyable", "ab_l2_error", "psnr", "static_psnr",
            "grey_psnr"} <= set(metrics)  # fmt: skip
    assert all(math.isfinite(v) for v in metrics.values())
    grid = m.pictures(images, torch.Generator().manual_seed(0))["video_colorization"]
    assert grid.shape == (3, 4 * 17 + 1, 4 * 17 + 1)  # 4 rows x 4 clips of 16 px


# ----------------------------------------------------------------------------- propagation
def test_mask_iou_and_identity() -> None:
    truth = torch.zeros(1, 3, 4, 4, dtype=torch.long)
    truth[0, :, :2, :2] = 1  # object 1 stays
    truth[0, 0, 2:, 2:] = 2
    truth[0, 1, 2:, :2] = 2  # object 2 moves, then leaves
    pred = identity_masks(truth[:, 0], 3)
    iou, counted = mask_iou(pred, truth)
    assert counted.all()
    assert iou[0, :, 0].tolist() == [1.0, 1.0]
    assert iou[0, :, 1].tolist() == [0.0, 0.0]  # moved away; gone while predicted


def test_propagation_follows_objects_with_an_oracle_embedding() -> None:
    """Clips of flat grey objects moving over a darker background: an embedding that encodes
    the grey level tracks them, the identity baseline does not."""
    n, t, s = 3, 5, 16
    masks = torch.zeros(n, t, s, s, dtype=torch.long)
    for f in range(t):
        masks[:, f, 2:7, 1 + 2 * f : 6 + 2 * f] = 1
        masks[:, f, 9:14, 10 - f : 15 - f] = 2
    levels = torch.tensor([60, 140, 220], dtype=torch.uint8)
    frames = levels[masks][:, :, None].expand(n, t, 3, s, s).contiguous()

    grey = (levels.float() / 255).view(3, 1, 1, 1).expand(3, 3, 1, 1)
    centres = rgb_to_input(grey, "lab_l").view(1, 3, 1, 1)  # the scaled L of each level

    def embed(light: torch.Tensor) -> torch.Tensor:
        return torch.exp(-20 * (light - centres).abs())  # (M, 3, S, S): one-hot of the level

    out = evaluate_propagation({"oracle": embed}, frames, masks.to(torch.uint8),
                               PropagationConfig(top_k=5, temperature=0.1))  # fmt: skip
    assert out["oracle"]["miou"] > 0.95
    assert out["identity"]["miou"] < 0.5
    preds = propagate_masks(embed, torch.zeros(1, 2, 1, s, s), masks[:1, 0],
                            PropagationConfig(), 3)  # fmt: skip
    assert preds.shape == (1, 2, s, s) and torch.equal(preds[0, 0], masks[0, 0])


# ----------------------------------------------------------------------------- end to end
def _train(tmp: Path, *extra: str) -> Path:
    from selfsup.cli import main

    npz = tmp / "base.npz"
    np.savez(npz, images=IMAGES)
    run = tmp / "run"
    code = main([
        "train", "video_colorization", f"out_dir={run}", f"data.source=synthetic_video:{npz}",
        "data.image_size=16", "data.options.synthetic_video.clips=24",
        "data.options.synthetic_video.frames=5",
        "backbone.name=resnet_tiny", "train.batch_size=8", "train.max_steps=4",
        "train.precision=fp32", "train.progress=false", "train.tensorboard=false",
        "train.num_threads=1", "method_args.hidden_dim=32", "method_args.feature_stride=2",
        *extra,
    ])  # fmt: skip
    assert code == 0
    return run


def test_trains_and_evaluates_end_to_end(tmp_path: Path, tiny_npz: Path, capsys) -> None:
    from selfsup.cli import main

    run = _train(tmp_path)
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["input_space"] == "lab_l" and meta["in_channels"] == 1
    assert meta["data_channels"] == 15
    assert list((run / "pictures").glob("video_colorization_step*.png"))
    # kNN transfer of the grey encoder to RGB images
    out = tmp_path / "knn.json"
    assert main(["eval", "knn", str(run), "--data", str(tiny_npz), "--json", str(out)]) == 0
    assert 0 <= json.loads(out.read_text())[0]["knn@20"] <= 1
    # label propagation on held-out clips, with both baselines, pictures and an eval row
    out = tmp_path / "prop.json"
    assert main(["eval", "propagation", str(run), "--test-subset", "6", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    for key in ("propagation_miou", "identity_miou", "random_encoder_miou"):
        assert 0 <= row[key] <= 1
    assert row["clips"] == 6 and len(row["trained"]["miou_by_frame"]) == 4
    assert (run / "pictures" / "propagation_trained.png").exists()
    rows = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert rows[-1]["protocol"] == "propagation"
    # the pretext metrics on held-out clips
    assert main(["eval", "pretext", str(run), "--data", f"synthetic_video:{tmp_path / 'base.npz'}",
                 "--test-subset", "8"]) == 0  # fmt: skip
    assert "copy_accuracy" in capsys.readouterr().out


def test_colorize_command(tmp_path: Path) -> None:
    from selfsup.cli import main

    run = _train(tmp_path)
    clips = make_clips(IMAGES, SyntheticVideoOptions(clips=1, frames=3), size=24).frames[0]
    paths = []
    for i, frame in enumerate(clips):
        path = tmp_path / f"f{i}.png"
        Image.fromarray(frame.permute(1, 2, 0).numpy()).save(path)
        paths.append(str(path))
    out = tmp_path / "coloured"
    code = main(["colorize", "--encoder", str(run), "--reference", paths[0], *paths[1:],
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    assert (out / "side_by_side.png").exists()
    coloured = np.asarray(Image.open(out / "f1_colorized.png").convert("RGB"))
    assert coloured.shape == (24, 24, 3)
    # the frame's own lightness is kept (up to 8-bit rounding and the colour gamut clip)
    from selfsup.augment.color import rgb_to_lab

    def light(a: np.ndarray) -> torch.Tensor:
        return rgb_to_lab(torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255)[0, 0]

    original = np.asarray(Image.open(paths[1]).convert("RGB"))
    assert (light(coloured) - light(original)).abs().mean() < 3.0
    with pytest.raises(SystemExit):
        main(["colorize", "--encoder", str(run), "--out", str(out)])


def test_wrong_data_layout_is_refused(tmp_path: Path, tiny_npz: Path) -> None:
    from selfsup.errors import TrainingError
    from selfsup.train import Trainer

    cfg = load_config("video_colorization", None, [f"data.source={tiny_npz}",
                      f"out_dir={tmp_path / 'r'}", "backbone.name=resnet_tiny"])  # fmt: skip
    with pytest.raises(TrainingError, match="trains on video clips"):
        Trainer(cfg).fit()


@pytest.mark.parametrize("recipe", ["video_colorization_default",
                                    "video_colorization_cifar10_cpu"])  # fmt: skip
def test_recipes_load(recipe: str) -> None:
    cfg = load_config("video_colorization", recipe)
    assert get_method(cfg.method) is VideoColorization
    assert cfg.data.source.startswith("synthetic_video")


def train_briefly(method: VideoColorization, clips: torch.Tensor, steps: int, batch: int = 16):
    opt = torch.optim.AdamW(method.parameters(), lr=3e-3, weight_decay=0.0)
    method.train()
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        idx = torch.randperm(len(clips), generator=g)[:batch]
        loss, _ = method(clips[idx], None, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return method.eval()


@pytest.mark.slow
def test_learns_to_copy_colours() -> None:
    """A short training copies colours into held-out clips better than the untrained model."""
    train, test = _clips(96, seed=1), _clips(24, seed=2)
    m = _method()
    g = torch.Generator().manual_seed(0)
    m(train[:16], None, g)  # fits the codebook
    before = m.eval().pretext_metrics(test, g)
    after = train_briefly(m, train, 60).pretext_metrics(test, g)
    assert after["loss"] < before["loss"] - 0.2, (before, after)
    assert after["copy_accuracy"] > before["copy_accuracy"] + 0.1, (before, after)


@pytest.mark.slow
def test_default_recipe_trains_with_no_data_set_up(tmp_path: Path, monkeypatch) -> None:
    """``selfsup train video_colorization`` needs nothing but the method: without CIFAR-10 the
    clips are made from procedural textures (a few steps here instead of the recipe's 2
    epochs)."""
    from selfsup.cli import main

    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path / "nothing"))
    run = tmp_path / "run"
    assert main(["train", "video_colorization", f"out_dir={run}", "train.max_steps=2",
                 "train.progress=false"]) == 0  # fmt: skip
    assert (run / "encoder.safetensors").exists()
