import pytest
import torch

from selfsup.backbones import Backbone, build_backbone

torchvision = pytest.importorskip("torchvision")


def _check_stages(model: Backbone) -> None:
    ids = [id(p) for s in model.stages() for p in s.parameters()]
    assert set(ids) == {id(p) for p in model.parameters()}


@pytest.mark.parametrize(
    ("name", "kwargs", "dim"),
    [
        ("torchvision:resnet18", {}, 512),
        ("torchvision:mobilenet_v3_small", {}, 1024),
    ],
)
def test_torchvision_feature_dims(name: str, kwargs: dict, dim: int) -> None:
    model = build_backbone(name, **kwargs)
    assert isinstance(model, Backbone)
    assert model.feature_dim == dim
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, dim)
    _check_stages(model)


def test_torchvision_resnet18_export_roundtrip() -> None:
    model = build_backbone("torchvision:resnet18").eval()
    sd = model.export_state_dict()
    assert not any(k.startswith("fc.") for k in sd)
    assert "conv1.weight" in sd and "layer4.1.bn2.running_var" in sd
    ref = torchvision.models.resnet18(weights=None).eval()
    result = ref.load_state_dict(sd, strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"}
    assert result.unexpected_keys == []
    ref.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), model(x))
        assert model.forward_features(x).shape == (2, 512, 1, 1)
    assert len(model.stages()) == 5


def test_torchvision_errors() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        build_backbone("torchvision:resnet19")
    with pytest.raises(TypeError, match="bogus"):
        build_backbone("torchvision:resnet18", bogus=1)


@pytest.mark.parametrize(
    ("name", "kwargs", "dim"),
    [("resnet18", {}, 512), ("vit_tiny_patch16_224", {"img_size": 32}, 192)],
)
def test_timm_export_roundtrip(name: str, kwargs: dict, dim: int) -> None:
    timm = pytest.importorskip("timm")
    model = build_backbone(f"timm:{name}", **kwargs).eval()
    assert model.feature_dim == dim
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, dim)
    _check_stages(model)

    sd = model.export_state_dict()
    ref = timm.create_model(name, pretrained=False, **kwargs).eval()  # with classifier
    result = ref.load_state_dict(sd, strict=False)
    assert result.unexpected_keys == []
    head_keys = set(ref.state_dict()) - set(sd)
    assert set(result.missing_keys) == head_keys
    assert head_keys and all(k.startswith(("fc.", "head.")) for k in head_keys)
    ref.reset_classifier(0)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), y)


def test_timm_errors() -> None:
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match="resnet18"):
        build_backbone("timm:resnet19x")
    with pytest.raises(TypeError, match="bogus"):
        build_backbone("timm:resnet18", bogus=1)


def test_timm_missing_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r'pip install "selfsup\[timm\]"'):
        build_backbone("timm:resnet18")
