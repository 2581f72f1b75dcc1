"""ResNet-18/34/50 with a CIFAR or ImageNet stem and a width multiplier.

Layout follows torchvision (ResNet v1.5: stride on the 3x3 conv of the Bottleneck), but the
classifier is gone: ``forward`` returns the global-average-pooled feature vector.

Feature dims (width 1): resnet18/34 -> 512, resnet50 -> 2048; in general
``round(512 * width) * expansion``. ``resnet_tiny`` (BasicBlock [1, 1, 1, 1], width 0.25) -> 128.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from selfsup.backbones.base import Backbone
from selfsup.backbones.registry import register_backbone

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet_tiny"]

Stem = Literal["cifar", "imagenet"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs + identity/projection shortcut. (N, in, H, W) -> (N, planes, H/s, W/s)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)  # last BN: zero-initialised if zero_init_residual
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                conv1x1(in_planes, planes, stride), nn.BatchNorm2d(planes)
            )

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4). (N, in, H, W) -> (N, 4 * planes, H/s, W/s)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(
                conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes)
            )

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(Backbone):
    """ResNet encoder without classifier.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: number of blocks in each of the 4 stages.
        stem: ``"cifar"`` (3x3 conv, stride 1, no max-pool: keeps resolution) or
            ``"imagenet"`` (7x7 conv stride 2 + 3x3 max-pool stride 2: /4).
        width: multiplies the base channel counts 64/128/256/512.
        in_channels: input image channels.
        zero_init_residual: zero the last BN of each residual branch (blocks start as identity).

    Shapes:
        ``forward_features``: (N, C, H, W) -> (N, feature_dim, H/8, W/8) with the cifar stem,
        (N, feature_dim, H/32, W/32) with the imagenet stem.
        ``forward``: (N, C, H, W) -> (N, feature_dim).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        *,
        stem: Stem = "cifar",
        width: float = 1.0,
        in_channels: int = 3,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        if len(layers) != 4:
            raise ValueError(f"layers must have 4 entries, got {layers}")
        planes = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.in_channels = in_channels
        self.stem_type = stem
        self.feature_dim = planes[-1] * block.expansion

        if stem == "cifar":
            self.stem = nn.Sequential(
                conv3x3(in_channels, planes[0]), nn.BatchNorm2d(planes[0]), nn.ReLU(inplace=True)
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, planes[0], 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(planes[0]),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        in_planes = planes[0]
        stage_list = []
        for i, (p, n) in enumerate(zip(planes, layers, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_planes, p, stride))
                in_planes = p * block.expansion
            stage_list.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stage_list
        self.pool = nn.AdaptiveAvgPool2d(1)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.last_bn().weight)

    def stages(self) -> list[nn.Module]:
        """``[stem, layer1, layer2, layer3, layer4]``."""
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, feature_dim, h, w) feature map of ``layer4``."""
        for stage in self.stages():
            x = stage(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, feature_dim) globally average-pooled features."""
        return torch.flatten(self.pool(self.forward_features(x)), 1)


def _resnet(
    name: str,
    block: type[BasicBlock] | type[Bottleneck],
    layers: list[int],
    default_width: float,
    doc: str,
) -> Callable[..., ResNet]:
    """Register the ResNet ``name`` (``block`` x ``layers``) as a backbone factory whose
    keyword arguments are ``stem``, ``width``, ``in_channels``, ``zero_init_residual``."""

    def factory(
        *,
        stem: Stem = "cifar",
        width: float = default_width,
        in_channels: int = 3,
        zero_init_residual: bool = True,
    ) -> ResNet:
        return ResNet(block, layers, stem=stem, width=width, in_channels=in_channels,
                      zero_init_residual=zero_init_residual)  # fmt: skip

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    return register_backbone(name)(factory)


resnet18 = _resnet(
    "resnet18", BasicBlock, [2, 2, 2, 2], 1.0,
    "ResNet-18 (BasicBlock [2, 2, 2, 2]); feature_dim = 512 * width.",
)  # fmt: skip
resnet34 = _resnet(
    "resnet34", BasicBlock, [3, 4, 6, 3], 1.0,
    "ResNet-34 (BasicBlock [3, 4, 6, 3]); feature_dim = 512 * width.",
)  # fmt: skip
resnet50 = _resnet(
    "resnet50", Bottleneck, [3, 4, 6, 3], 1.0,
    "ResNet-50 (Bottleneck [3, 4, 6, 3]); feature_dim = 2048 * width.",
)  # fmt: skip
resnet_tiny = _resnet(
    "resnet_tiny", BasicBlock, [1, 1, 1, 1], 0.25,
    """Tiny ResNet for tests / CPU benchmarks: BasicBlock [1, 1, 1, 1], width 0.25.

    Channels 16/32/64/128, so feature_dim = 128 (= 512 * width). About 0.3M parameters.
    """,
)  # fmt: skip
