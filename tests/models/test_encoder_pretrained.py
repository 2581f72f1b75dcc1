"""selfsup.Encoder: from_pretrained from every kind of path, save_pretrained round trip,
preprocess, and the forward pass doing what training did to the images."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup
from selfsup.backbones import build_backbone
from selfsup.config import BackboneConfig, load_config
from selfsup.data import ImageSource
from selfsup.data.decode import resize_center_crop
from selfsup.evaluate.features import extract_features
from selfsup.export import export_encoder
from selfsup.models import Encoder, encoder_meta
from selfsup.train import Trainer

SIZE = 16


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step SimCLR run of a tiny ResNet on 32 random 16 px images."""
    tmp = tmp_path_factory.mktemp("pretrained")
    rng = np.random.default_rng(0)
    np.savez(tmp / "d.npz", images=rng.integers(0, 256, (32, SIZE, SIZE, 3), dtype=np.uint8))
    cfg = load_config("simclr", None, [
        f"data.source={tmp / 'd.npz'}", f"out_dir={tmp / 'run'}", "eval_data.source=null",
        "backbone.name=resnet_tiny", "train.batch_size=16", "train.max_steps=2",
        "train.precision=fp32", "train.progress=false", "train.tensorboard=false",
        "train.num_threads=1", "train.checkpoint_every_steps=2",
        "train.knn_monitor.every_epochs=0",
    ])  # fmt: skip
    return Trainer(cfg).fit().run_dir


def _images(n: int = 5, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_from_run_checkpoint_and_export_agree(run_dir: Path, tmp_path: Path) -> None:
    export_encoder(str(run_dir), tmp_path / "enc.safetensors")
    checkpoint = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    encoders = [Encoder.from_pretrained(p) for p in
                (run_dir, checkpoint, tmp_path / "enc.safetensors")]  # fmt: skip
    enc = encoders[0]
    assert isinstance(enc, torch.nn.Module) and not enc.training
    assert (enc.feature_dim, enc.image_size, enc.input_space) == (128, SIZE, "rgb")
    assert enc.mean == (0.4914, 0.4822, 0.4465) and enc.std == (0.2470, 0.2435, 0.2616)
    x = enc.preprocess(_images())
    with torch.no_grad():
        outs = [e(x) for e in encoders]
    assert outs[0].shape == (5, 128)
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    # the same features as evaluation extracts from the same uint8 images
    meta = enc.meta
    reference = extract_features(
        enc.backbone, ImageSource(_images()), image_size=SIZE, normalize=meta["normalize"],
        in_channels=3, precision="fp32",
    )  # fmt: skip
    assert torch.allclose(outs[0], reference, atol=1e-5)


def test_save_pretrained_round_trip_is_bit_exact_and_never_unpickles(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = selfsup.Encoder.from_pretrained(run_dir)
    out = enc.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["encoder"] == enc.meta

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("loading unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    again = selfsup.Encoder.from_pretrained(out)
    a, b = enc.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(3, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(enc(x), again(x))


def test_preprocess_accepts_pil_arrays_and_tensors(run_dir: Path) -> None:
    enc = Encoder.from_pretrained(run_dir)
    photo = Image.fromarray(_images(1, 40)[0][:30])  # 40 x 30, not square
    expected = np.asarray(resize_center_crop(photo, SIZE)).astype(np.float32) / 255
    one = enc.preprocess(photo)
    assert one.shape == (1, 3, SIZE, SIZE) and one.dtype == torch.float32
    assert np.allclose(one[0].permute(1, 2, 0).numpy(), expected)
    grey = enc.preprocess(photo.convert("L"))
    assert grey.shape == (1, 3, SIZE, SIZE) and torch.equal(grey[:, 0], grey[:, 1])
    batch = _images(4)
    from_array = enc.preprocess(batch)
    from_tensor = enc.preprocess(torch.from_numpy(batch).permute(0, 3, 1, 2))
    from_list = enc.preprocess([Image.fromarray(b) for b in batch])
    assert from_array.shape == (4, 3, SIZE, SIZE)
    assert torch.equal(from_array, from_tensor) and torch.equal(from_array, from_list)
    assert torch.equal(from_array, torch.from_numpy(batch).permute(0, 3, 1, 2) / 255.0)
    with pytest.raises(TypeError, match="uint8"):
        enc.preprocess(batch.astype(np.float32))
    with pytest.raises(TypeError, match="float images"):
        enc(torch.from_numpy(batch).permute(0, 3, 1, 2))


def _encoder(in_channels: int, input_space: str) -> Encoder:
    backbone = build_backbone("resnet_tiny", in_channels=in_channels)
    meta = encoder_meta(
        BackboneConfig(name="resnet_tiny"), image_size=SIZE, in_channels=in_channels,
        normalize="cifar10", method="test", feature_dim=backbone.feature_dim,
        input_space=input_space,
    )  # fmt: skip
    return Encoder(backbone, meta).eval()


def test_lab_and_grey_encoders_take_rgb(tmp_path: Path) -> None:
    from selfsup.augment.color import rgb_to_input

    x = torch.rand(2, 3, SIZE, SIZE)
    lab = _encoder(1, "lab_l")
    assert lab.mean is None
    with torch.no_grad():
        assert torch.equal(lab(x), lab.backbone(rgb_to_input(x, "lab_l")))
    grey = _encoder(1, "rgb")
    luma = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    mean, std = grey.mean[0], grey.std[0]
    with torch.no_grad():
        assert torch.allclose(grey(x), grey.backbone((luma - mean) / std), atol=1e-6)
    again = Encoder.from_pretrained(lab.save_pretrained(tmp_path / "lab"))
    with torch.no_grad():
        assert torch.equal(again(x), lab(x))


def test_bad_pretrained_directories_are_refused(run_dir: Path, tmp_path: Path) -> None:
    out = Encoder.from_pretrained(run_dir).save_pretrained(tmp_path / "saved")
    config = json.loads((out / "config.json").read_text())
    config["encoder"]["backbone"]["width"] = 2.0  # another architecture
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match config.json"):
        Encoder.from_pretrained(out)
    config["format"] = "something-else"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a selfsup encoder config"):
        Encoder.from_pretrained(out)
