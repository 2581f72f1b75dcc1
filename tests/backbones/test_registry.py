import pytest
import torch

from selfsup.backbones import Backbone, build_backbone, list_backbones, register_backbone
from selfsup.backbones import registry as registry_module


def test_list_backbones() -> None:
    names = list_backbones()
    assert names == sorted(names)
    for expected in [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet_tiny",
        "vit_micro",
        "vit_tiny",
        "vit_small",
        "vit_base",
    ]:
        assert expected in names


def test_unknown_name_suggests() -> None:
    with pytest.raises(ValueError) as exc:
        build_backbone("resnet19")
    msg = str(exc.value)
    assert "'resnet19'" in msg
    assert "Did you mean 'resnet18'" in msg
    assert "vit_small" in msg  # lists available names


def test_unknown_kwarg_named() -> None:
    with pytest.raises(TypeError, match="'widht'.*did you mean 'width'"):
        build_backbone("resnet18", widht=2.0)
    with pytest.raises(TypeError, match="'img_size'"):
        build_backbone("vit_micro", img_size=32)


def test_register_custom_and_duplicate() -> None:
    class Tiny(Backbone):
        def __init__(self, dim: int = 4) -> None:
            super().__init__()
            self.feature_dim, self.in_channels = dim, 3
            self.lin = torch.nn.Linear(3, dim)

        def forward_features(self, x):
            return x

        def forward(self, x):
            return self.lin(x.mean((2, 3)))

        def stages(self):
            return [self.lin]

    @register_backbone("_test_tiny")
    def tiny(*, dim: int = 4) -> Tiny:
        return Tiny(dim)

    try:
        assert "_test_tiny" in list_backbones()
        m = build_backbone("_test_tiny", dim=5)
        assert m(torch.randn(2, 3, 8, 8)).shape == (2, 5)
        with pytest.raises(ValueError, match="already registered"):
            register_backbone("_test_tiny")(lambda: Tiny())
    finally:
        registry_module._REGISTRY.pop("_test_tiny", None)


def test_colon_names_reserved() -> None:
    with pytest.raises(ValueError):
        register_backbone("foo:bar")
