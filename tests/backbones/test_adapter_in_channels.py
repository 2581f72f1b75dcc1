"""torchvision/timm adapters honour in_channels: a 1-channel colorization encoder trained
through them exports with the library's key names and loads with strict=True into the
library's own model built for 1 input channel, computing the same features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.backbones.external import adapt_input_conv, first_conv
from selfsup.config import load_config
from selfsup.export import export_encoder
from selfsup.models import load_encoder
from selfsup.train import Trainer

torchvision = pytest.importorskip("torchvision")


def _torchvision_resnet18(in_channels: int) -> nn.Module:
    model = torchvision.models.resnet18(weights=None)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.fc = nn.Identity()
    return model


def _timm_resnet18(in_channels: int) -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("resnet18", pretrained=False, in_chans=in_channels, num_classes=0)


def _train_colorization(backbone: str, tmp_path: Path) -> Path:
    """One step of colorization (an L -> ab encoder: 1 input channel) with ``backbone``."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    cfg = load_config("colorization", None, [
        f"data.source={tmp_path / 'd.npz'}", f"out_dir={tmp_path / 'run'}",
        f"backbone.name={backbone}", "eval_data.source=null", "train.batch_size=8",
        "train.max_steps=1", "train.precision=fp32", "train.progress=false",
        "train.tensorboard=false", "train.num_threads=1", "train.knn_monitor.every_epochs=0",
        "train.pictures_every_epochs=0",
    ])  # fmt: skip
    return Trainer(cfg).fit().run_dir


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fmt", "library_model"),
    [("torchvision", _torchvision_resnet18), ("timm", _timm_resnet18)],
)
def test_one_channel_encoder_exports_and_loads_strictly(
    fmt: str, library_model, tmp_path: Path
) -> None:
    run = _train_colorization(f"{fmt}:resnet18", tmp_path)
    loaded = load_encoder(str(run))
    assert loaded.meta["in_channels"] == 1 and loaded.meta["input_space"] == "lab_l"
    assert loaded.encoder.in_channels == 1
    (path,) = export_encoder(str(run), tmp_path / f"{fmt}.safetensors", fmt=fmt)
    state = load_file(str(path))
    model = library_model(1).eval()
    model.load_state_dict(state, strict=True)  # every backbone key, nothing left over
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded.encoder.eval()(x), atol=1e-5)
    with pytest.raises(RuntimeError, match="size mismatch"):
        library_model(3).load_state_dict(state, strict=True)  # the RGB model does not fit


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_adapters_build_any_input_channels(channels: int) -> None:
    tv = build_backbone("torchvision:mobilenet_v3_small", in_channels=channels).eval()
    assert tv.in_channels == channels and tv.model.features[0][0].in_channels == channels
    assert tv(torch.randn(2, channels, 64, 64)).shape == (2, tv.feature_dim)
    pytest.importorskip("timm")
    tm = build_backbone("timm:resnet18", in_channels=channels)
    assert tm.model.conv1.in_channels == channels


def test_adapted_convolution_keeps_pretrained_information() -> None:
    """Grey input through the adapted 1-channel conv equals the RGB conv on the grey image
    repeated in 3 channels (the RGB weights summed), as timm adapts pretrained weights."""
    rgb = torchvision.models.resnet18(weights=None)
    conv = first_conv(rgb)[1]
    grey = torch.randn(2, 1, 32, 32)
    expected = conv(grey.expand(-1, 3, -1, -1))
    adapt_input_conv(rgb, 1)
    assert torch.allclose(rgb.conv1(grey), expected, atol=1e-5)
