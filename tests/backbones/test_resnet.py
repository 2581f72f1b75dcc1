import pytest
import torch

from selfsup.backbones import Backbone, ResNet, build_backbone

EXPECTED_DIM = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet_tiny": 128}


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
@torch.no_grad()
def test_presets_width_half(name: str, stem: str) -> None:
    model = build_backbone(name, stem=stem, width=0.5)
    assert isinstance(model, Backbone)
    assert model.feature_dim == EXPECTED_DIM[name] // 2
    assert model.in_channels == 3
    y = model(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, model.feature_dim)


@pytest.mark.parametrize("name", sorted(EXPECTED_DIM))
@torch.no_grad()
def test_feature_dim_width_one(name: str) -> None:
    model = build_backbone(name)
    assert model.feature_dim == EXPECTED_DIM[name]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, EXPECTED_DIM[name])


def test_cifar_stem_keeps_resolution() -> None:
    model = build_backbone("resnet_tiny", stem="cifar")
    x = torch.randn(2, 3, 32, 32)
    stem_out = model.stem(x)
    assert stem_out.shape[-2:] == (32, 32)
    assert model.forward_features(x).shape == (2, 128, 4, 4)


def test_imagenet_stem_downsamples_by_32() -> None:
    model = build_backbone("resnet_tiny", stem="imagenet")
    assert model.stem(torch.randn(2, 3, 64, 64)).shape[-2:] == (16, 16)
    assert model.forward_features(torch.randn(2, 3, 64, 64)).shape == (2, 128, 2, 2)
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 128, 1, 1)


def test_in_channels() -> None:
    model = build_backbone("resnet_tiny", in_channels=1)
    assert model.in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 128)


def test_zero_init_residual() -> None:
    zero = build_backbone("resnet18", width=0.25)
    assert all(b.bn2.weight.abs().sum() == 0 for b in zero.layer1)
    nonzero = build_backbone("resnet18", width=0.25, zero_init_residual=False)
    assert all(b.bn2.weight.abs().sum() > 0 for b in nonzero.layer1)
    r50 = build_backbone("resnet50", width=0.25)
    assert all(b.bn3.weight.abs().sum() == 0 for b in r50.layer1)


def test_stages_cover_all_parameters_in_order() -> None:
    model: ResNet = build_backbone("resnet_tiny")
    stages = model.stages()
    assert stages == [model.stem, model.layer1, model.layer2, model.layer3, model.layer4]
    n_stage = sum(p.numel() for s in stages for p in s.parameters())
    assert n_stage == sum(p.numel() for p in model.parameters())
    x = torch.randn(2, 3, 32, 32)
    h = x
    for s in stages:
        h = s(h)
    torch.testing.assert_close(h, model.forward_features(x))


def test_channels_last_bf16_autocast_forward_backward() -> None:
    model = build_backbone("resnet18", width=0.25).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert y.shape == (2, 128)
    assert y.dtype == torch.bfloat16
    y.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_export_state_dict_roundtrip() -> None:
    a = build_backbone("resnet_tiny").eval()
    b = build_backbone("resnet_tiny").eval()
    b.load_state_dict(a.export_state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x))


def test_bad_stem_raises() -> None:
    with pytest.raises(ValueError, match="stem"):
        build_backbone("resnet18", stem="foo")
