"""Adapters turning torchvision / timm classifiers into :class:`Backbone` encoders.

``build_backbone("torchvision:resnet50")`` and ``build_backbone("timm:convnext_tiny")`` land
here. The classifier is removed, ``feature_dim`` is known, ``stages()`` is best-effort and
``export_state_dict()`` returns the wrapped model's state dict under the library's own key
names (classifier keys absent), so it loads with ``strict=False`` into a fresh library model.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.backbones.base import Backbone

__all__ = ["TorchvisionBackbone", "TimmBackbone", "adapt_input_conv", "first_conv"]

_TIMM_MISSING = 'timm backbones need the optional dependency timm: pip install "selfsup[timm]"'


class _Stage(nn.Module):
    """View on a group of sub-modules and loose parameters of a wrapped model (shares them).

    Not registered as a child of the backbone, so it does not duplicate state-dict entries.
    """

    def __init__(self, modules: Sequence[nn.Module], params: Sequence[nn.Parameter] = ()) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.params = nn.ParameterList(params)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a stage view is for freezing / parameter groups, not for forward")


def _resolve_stages(model: nn.Module, groups: Sequence[Sequence[str]]) -> list[nn.Module]:
    """Build stage views from name prefixes; parameters not covered form a final stage."""
    stages: list[nn.Module] = []
    covered: set[int] = set()
    for names in groups:
        mods: list[nn.Module] = []
        params: list[nn.Parameter] = []
        for name in names:
            try:
                mod = model.get_submodule(name)
                mods.append(mod)
                covered.update(id(p) for p in mod.parameters())
            except AttributeError:
                p = model.get_parameter(name)
                params.append(p)
                covered.add(id(p))
        stages.append(_Stage(mods, params))
    left_mods, left_params = [], []
    for mod in model.modules():
        own = [p for p in mod.parameters(recurse=False) if id(p) not in covered]
        if not own:
            continue
        if len(own) == len(list(mod.parameters(recurse=False))):
            left_mods.append(mod)
        else:
            left_params.extend(own)
        covered.update(id(p) for p in own)
    if left_mods or left_params:
        stages.append(_Stage(left_mods, left_params))
    return stages


def _dummy_feature_dim(model: nn.Module, in_channels: int, size: int = 224) -> int:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, in_channels, size, size))
    model.train(was_training)
    return int(out.flatten(1).shape[1])


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """(name, module) of the first ``Conv2d`` of ``model`` that takes 3 channels: the input
    convolution of torchvision's classifiers (``conv1``, ``features.0.0``, ``conv_proj``, ...)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return name, module
    raise ValueError(f"{type(model).__name__}: no 3-channel input convolution found")


def adapt_input_conv(model: nn.Module, in_channels: int) -> str:
    """Replace ``model``'s first RGB convolution by one taking ``in_channels`` (same kernel,
    stride, padding, groups and bias); returns its name, whose state-dict keys are unchanged.

    Existing (e.g. pretrained) weights are carried over as timm does: summed over RGB for one
    channel, else tiled over the new channels and scaled by ``3 / in_channels``.
    """
    name, old = first_conv(model)
    new = nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,  # type: ignore[arg-type]
        old.dilation, old.groups, old.bias is not None, old.padding_mode,
    )  # fmt: skip
    with torch.no_grad():
        w = old.weight
        if in_channels == 1:
            new.weight.copy_(w.sum(1, keepdim=True))
        else:
            reps = -(-in_channels // 3)
            new.weight.copy_(w.repeat(1, reps, 1, 1)[:, :in_channels] * (3 / in_channels))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    return name


class TorchvisionBackbone(Backbone):
    """Any ``torchvision.models`` classification constructor, classifier replaced by Identity.

    Args:
        name: constructor name, e.g. ``"resnet18"``, ``"vit_b_16"``, ``"convnext_tiny"``.
        pretrained: load torchvision's default weights (needs them cached / downloadable).
        in_channels: input channels; other than 3, the model's first convolution is replaced
            by one taking ``in_channels`` (:func:`adapt_input_conv`; same key names, so the
            exported weights load into a torchvision model given the same replacement).
        **kwargs: passed to the constructor (``weights=`` may be given explicitly).

    The wrapped model is ``self.model``; ``forward``: (N, C, H, W) -> (N, feature_dim).
    """

    _HEAD_ATTRS = ("fc", "classifier", "heads", "head")

    def __init__(
        self, name: str, *, pretrained: bool = False, in_channels: int = 3, **kwargs: Any
    ) -> None:
        super().__init__()
        import torchvision.models as tvm

        available = tvm.list_models(module=tvm)
        if name not in available:
            close = difflib.get_close_matches(name, available, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"unknown torchvision model {name!r}.{hint}")
        weights = kwargs.pop("weights", "DEFAULT" if pretrained else None)
        if name in ("googlenet", "inception_v3"):
            kwargs.setdefault("aux_logits", False)
        try:
            model = tvm.get_model(name, weights=weights, **kwargs)
        except TypeError as e:
            raise TypeError(f"torchvision:{name}: {e}") from e
        if in_channels < 1:
            raise ValueError(f"torchvision:{name}: in_channels must be >= 1, got {in_channels}")
        if in_channels != 3:
            adapt_input_conv(model, in_channels)
        self.name = name
        self.in_channels = in_channels
        self.model = model
        self.head_keys: list[str] = []
        self.feature_dim = self._remove_head()

    def _remove_head(self) -> int:
        """Replace the classifier's last Linear (or conv) by Identity; return its fan-in."""
        for attr in self._HEAD_ATTRS:
            head = getattr(self.model, attr, None)
            if not isinstance(head, nn.Module):
                continue
            # last Linear / Conv2d inside the head, or the head itself
            target_name, target = "", head
            for n, m in head.named_modules():
                if isinstance(m, nn.Linear | nn.Conv2d):
                    target_name, target = n, m
            if not isinstance(target, nn.Linear | nn.Conv2d):
                continue
            full = f"{attr}.{target_name}" if target_name else attr
            self.head_keys = [f"{full}.{k}" for k, _ in target.named_parameters()]
            parent_name, _, child = full.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, child, nn.Identity())
            if isinstance(target, nn.Linear):
                return int(target.in_features)
            return _dummy_feature_dim(self.model, self.in_channels)
        raise ValueError(f"torchvision:{self.name}: could not find a classifier to remove")

    def forward_features(self, x: Tensor) -> Tensor:
        """Un-pooled features: (N, D, h, w) for CNNs, (N, 1 + L, D) tokens for ViTs.

        Supported for ResNet-like models, models with ``.features`` and ``vit_*``.
        """
        m = self.model
        if hasattr(m, "layer4"):
            x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            return m.layer4(m.layer3(m.layer2(m.layer1(x))))
        if hasattr(m, "features"):
            return m.features(x)
        if hasattr(m, "class_token") and hasattr(m, "encoder"):
            x = m._process_input(x)
            x = torch.cat([m.class_token.expand(x.shape[0], -1, -1), x], dim=1)
            return m.encoder(x)
        raise NotImplementedError(f"forward_features not supported for torchvision:{self.name}")

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_channels, H, W) -> (N, feature_dim)."""
        return self.model(x).flatten(1)

    def stages(self) -> list[nn.Module]:
        """Best effort: ResNets -> [stem, layer1..4]; ``.features`` models -> each feature
        block; ViTs -> [embedding, each encoder layer]. Leftover parameters form a last stage.
        Unknown layouts -> ``[model]``."""
        m = self.model
        if hasattr(m, "layer4"):
            groups = [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
        elif isinstance(getattr(m, "features", None), nn.Sequential):
            groups = [[f"features.{n}"] for n, _ in m.features.named_children()]
        elif hasattr(m, "class_token") and hasattr(m, "encoder"):
            groups = [["conv_proj", "class_token", "encoder.pos_embedding"]]
            groups += [[f"encoder.layers.{n}"] for n, _ in m.encoder.layers.named_children()]
        else:
            return [m]
        return _resolve_stages(m, groups)

    def export_state_dict(self) -> dict[str, Tensor]:
        """torchvision key names, classifier keys absent (load with ``strict=False``)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}


class TimmBackbone(Backbone):
    """Any ``timm`` model, created with ``num_classes=0`` (pooled pre-logits output).

    Args:
        name: timm model name, e.g. ``"resnet18"``, ``"vit_tiny_patch16_224"``.
        pretrained: load timm's pretrained weights (needs them cached / downloadable).
        in_channels: input channels (timm's ``in_chans``).
        **kwargs: passed to ``timm.create_model`` (e.g. ``img_size=32`` for ViTs).
    """

    def __init__(
        self, name: str, *, pretrained: bool = False, in_channels: int = 3, **kwargs: Any
    ) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as e:
            raise ImportError(_TIMM_MISSING) from e
        if "num_classes" in kwargs:
            raise TypeError(f"timm:{name}: num_classes is fixed to 0 for backbones")
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"unknown timm model {name!r}.{hint}")
        try:
            self.model = timm.create_model(
                name, pretrained=pretrained, num_classes=0, in_chans=in_channels, **kwargs
            )
        except TypeError as e:
            raise TypeError(f"timm:{name}: {e}") from e
        self.name = name
        self.in_channels = in_channels
        dim = getattr(self.model, "head_hidden_size", None) or self.model.num_features
        self.feature_dim = int(dim)

    def forward_features(self, x: Tensor) -> Tensor:
        """timm's ``forward_features`` (un-pooled: feature map or tokens)."""
        return self.model.forward_features(x)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, feature_dim)."""
        return self.model(x)

    def stages(self) -> list[nn.Module]:
        """Best effort from timm's coarse ``group_matcher`` (stem, then blocks); else
        ``[model]``."""
        try:
            from timm.models import group_parameters

            grouped = group_parameters(self.model, self.model.group_matcher(coarse=True))
        except Exception:  # models without a group_matcher
            return [self.model]
        # each parameter -> its owning module (or the parameter itself if owned by the root)
        groups = [
            sorted({n.rpartition(".")[0] or n for n in names})
            for _, names in sorted(grouped.items())
        ]
        return _resolve_stages(self.model, groups)

    def export_state_dict(self) -> dict[str, Tensor]:
        """timm key names, classifier keys absent (load with ``strict=False``)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
