"""Name -> factory registry for backbones (timm style).

>>> from selfsup.backbones import build_backbone
>>> model = build_backbone("resnet18", stem="cifar")
>>> model = build_backbone("torchvision:resnet18")   # adapter, weights=None
>>> model = build_backbone("timm:vit_tiny_patch16_224", img_size=32)
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from selfsup.backbones.base import Backbone

__all__ = ["register_backbone", "build_backbone", "list_backbones"]

_REGISTRY: dict[str, Callable[..., Backbone]] = {}
_EXTERNAL_PREFIXES = ("torchvision:", "timm:")

F = TypeVar("F", bound=Callable[..., Backbone])


def register_backbone(name: str) -> Callable[[F], F]:
    """Decorator registering a factory ``fn(**kwargs) -> Backbone`` under ``name``."""
    if ":" in name:
        raise ValueError(f"backbone name {name!r} may not contain ':' (reserved for adapters)")

    def decorator(fn: F) -> F:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_backbones() -> list[str]:
    """Sorted names of the native backbones.

    ``torchvision:NAME`` and ``timm:NAME`` are also accepted by :func:`build_backbone`.
    """
    return sorted(_REGISTRY)


def _check_kwargs(name: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [
        p.name
        for p in params.values()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, accepted, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(
            f"backbone {name!r} got unknown keyword argument(s) {', '.join(hints)}; "
            f"accepted: {', '.join(accepted)}"
        )


def build_backbone(name: str, **kwargs: Any) -> Backbone:
    """Build a backbone (an encoder) by name: a module mapping images ``(N, C, H, W)`` float to
    features ``(N, feature_dim)``; ``.feature_dim`` says D (ResNet-18: 512 at width 1).

    Example::

        encoder = build_backbone("resnet18", stem="cifar", width=0.25)  # (N, 3, 32, 32) -> (N, 128)

    Args:
        name: a registered name (see :func:`list_backbones`), ``"torchvision:NAME"`` or
            ``"timm:NAME"``.
        **kwargs: passed to the factory (e.g. ``stem``, ``width`` for ResNets).

    Raises:
        ValueError: unknown name (message lists the available names and a suggestion).
        TypeError: a keyword argument the factory does not accept (message names it).
    """
    if name.startswith("torchvision:"):
        from selfsup.backbones.external import TorchvisionBackbone

        return TorchvisionBackbone(name.split(":", 1)[1], **kwargs)
    if name.startswith("timm:"):
        from selfsup.backbones.external import TimmBackbone

        return TimmBackbone(name.split(":", 1)[1], **kwargs)
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown backbone {name!r}.{hint} Available: {', '.join(list_backbones())} "
            f"(or 'torchvision:NAME' / 'timm:NAME')."
        )
    fn = _REGISTRY[name]
    _check_kwargs(name, fn, kwargs)
    return fn(**kwargs)
