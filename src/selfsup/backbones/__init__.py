"""Image encoders: (N, C, H, W) -> (N, feature_dim), built by name from a registry.

>>> from selfsup.backbones import build_backbone, list_backbones
>>> enc = build_backbone("resnet18", stem="cifar")      # enc.feature_dim == 512
>>> vit = build_backbone("vit_small", image_size=32, patch_size=4)
>>> tv = build_backbone("torchvision:resnet50")         # adapters: torchvision:NAME, timm:NAME
"""

from selfsup.backbones.base import Backbone
from selfsup.backbones.patch_grid import PatchGridEncoder, patch_grid_view
from selfsup.backbones.registry import build_backbone, list_backbones, register_backbone
from selfsup.backbones.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet_tiny,
)
from selfsup.backbones.vit import (
    VisionTransformer,
    get_2d_sincos_pos_embed,
    vit_base,
    vit_micro,
    vit_small,
    vit_tiny,
)

__all__ = [
    "Backbone",
    "BasicBlock",
    "PatchGridEncoder",
    "Bottleneck",
    "ResNet",
    "TimmBackbone",
    "TorchvisionBackbone",
    "VisionTransformer",
    "build_backbone",
    "get_2d_sincos_pos_embed",
    "list_backbones",
    "patch_grid_view",
    "register_backbone",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet_tiny",
    "vit_base",
    "vit_micro",
    "vit_small",
    "vit_tiny",
]


def __getattr__(name: str) -> object:
    # adapters are imported lazily so that importing selfsup.backbones never imports timm
    if name in ("TorchvisionBackbone", "TimmBackbone"):
        from selfsup.backbones import external

        return getattr(external, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
