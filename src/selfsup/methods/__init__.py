"""Method registry: one file per method, registered here by name."""

from __future__ import annotations

import difflib

from selfsup.methods.barlow_twins import BarlowTwins
from selfsup.methods.base import Method, MethodConfig, normalization
from selfsup.methods.byol import BYOL
from selfsup.methods.colorization import Colorization
from selfsup.methods.cpc import CPC
from selfsup.methods.dino import DINO
from selfsup.methods.inpainting import Inpainting
from selfsup.methods.jigsaw import Jigsaw
from selfsup.methods.mae import MAE
from selfsup.methods.moco import MoCoV2, MoCoV3
from selfsup.methods.relative_location import RelativeLocation
from selfsup.methods.rgbd_crossmodal import RGBDCrossModal
from selfsup.methods.rotation import Rotation
from selfsup.methods.simclr import SimCLR
from selfsup.methods.simsiam import SimSiam
from selfsup.methods.split_brain import SplitBrain
from selfsup.methods.supervised import Supervised
from selfsup.methods.vicreg import VICReg
from selfsup.methods.video_colorization import VideoColorization

_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Register a :class:`Method` subclass under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _METHODS[cls.name] = cls
    return cls


for _cls in (
    SimCLR,
    Supervised,
    MAE,
    Inpainting,
    Rotation,
    Jigsaw,
    RelativeLocation,
    Colorization,
    SplitBrain,
    BYOL,
    SimSiam,
    BarlowTwins,
    VICReg,
    CPC,
    DINO,
    MoCoV2,
    MoCoV3,
    VideoColorization,
    RGBDCrossModal,
):
    register_method(_cls)


def get_method(name: str) -> type[Method]:
    """The :class:`Method` class registered as ``name`` (a module whose ``forward`` maps a uint8
    batch ``(N, C, H, W)`` to ``(loss, metrics)``); KeyError with a did-you-mean otherwise."""
    try:
        return _METHODS[name]
    except KeyError:
        hint = difflib.get_close_matches(name, list(_METHODS), n=1)
        msg = f"unknown method {name!r}"
        msg += f"; did you mean {hint[0]!r}?" if hint else f"; known: {', '.join(sorted(_METHODS))}"
        raise KeyError(msg) from None


def list_methods() -> list[type[Method]]:
    """Every registered :class:`Method` class, sorted by name (``selfsup methods`` lists them)."""
    return [_METHODS[k] for k in sorted(_METHODS)]


__all__ = [
    "BYOL",
    "BarlowTwins",
    "CPC",
    "Colorization",
    "DINO",
    "Inpainting",
    "Jigsaw",
    "MAE",
    "Method",
    "MethodConfig",
    "MoCoV2",
    "MoCoV3",
    "RGBDCrossModal",
    "RelativeLocation",
    "Rotation",
    "SimCLR",
    "SimSiam",
    "SplitBrain",
    "Supervised",
    "VICReg",
    "VideoColorization",
    "get_method",
    "list_methods",
    "normalization",
    "register_method",
]
