"""Build encoders from a backbone config, and find and load trained ones: runs, checkpoints,
random init.

An encoder travels as ``encoder.safetensors`` plus ``encoder.json`` (its meta: backbone
config, input size and channels, normalisation, method, and ``input_space`` — ``rgb``,
``lab_l`` or ``lab``, what the encoder saw in training; a meta without it is ``rgb``. A
composite split-brain encoder also records ``channel_groups`` and the training data's
``data_channels``). Evaluation accepts:

- a run directory (its final ``encoder.safetensors``, else its latest checkpoint),
- a checkpoint directory or an ``encoder.safetensors`` file with its meta beside it,
- ``random:SPEC`` — the same architecture as SPEC (a run or a backbone name) at random init,
  the baseline every number should sit beside.

:func:`selfsup.models.load_encoder_with_head` instead gives a run's encoder followed by one of
its method's heads (e.g. SimCLR's ``projector``), to probe the representation after the head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.backbones import Backbone, build_backbone
from selfsup.backbones.patch_grid import PatchGridEncoder
from selfsup.config import BackboneConfig, is_vit_name
from selfsup.utils.io import file_digest, latest_checkpoint, load_safetensors


@dataclass
class LoadedEncoder:
    """An encoder ``(N, C, S, S) -> (N, D)`` with its ``encoder.json`` meta (backbone,
    ``image_size`` S, ``in_channels`` C, ``normalize``, ``input_space``, ``feature_dim`` D,
    ``method``; ``view`` for an encoder shown images through a patch grid, when it comes
    wrapped in a :class:`~selfsup.backbones.PatchGridEncoder`)."""

    encoder: Backbone
    meta: dict[str, Any]
    identity: str
    """A string that changes when the weights change (used as a feature-cache key)."""
    label: str
    run_dir: Path | None = None


def encoder_meta(
    backbone: BackboneConfig,
    *,
    image_size: int,
    in_channels: int,
    normalize: str,
    method: str,
    feature_dim: int,
    input_space: str = "rgb",
    data_channels: int | None = None,
    channel_groups: tuple[int, ...] | None = None,
    view: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``encoder.json`` meta. ``in_channels`` is what the encoder takes; ``data_channels``
    (recorded when it differs) the training images' channels; ``channel_groups`` (when set)
    the sub-backbones of a :class:`~selfsup.backbones.channel_split.ChannelSplitBackbone`."""
    meta: dict[str, Any] = {
        "backbone": backbone.model_dump(mode="json"),
        "image_size": image_size,
        "in_channels": in_channels,
        "normalize": normalize,
        "method": method,
        "feature_dim": feature_dim,
        "input_space": input_space,
    }
    if data_channels is not None and data_channels != in_channels:
        meta["data_channels"] = data_channels
    if channel_groups:
        meta["channel_groups"] = list(channel_groups)
    if view:
        meta["view"] = dict(view)
    return meta


def make_encoder(
    backbone: BackboneConfig,
    *,
    image_size: int,
    in_channels: int,
    channel_groups: tuple[int, ...] | list[int] | None = None,
) -> Backbone:
    """A randomly initialised encoder: one backbone taking ``in_channels``, or, with
    ``channel_groups``, a ChannelSplitBackbone with one such backbone per group."""
    if not channel_groups:
        kwargs = backbone.build_kwargs(image_size=image_size, in_channels=in_channels)
        return build_backbone(backbone.name, **kwargs)
    from selfsup.backbones.channel_split import ChannelSplitBackbone

    if sum(channel_groups) != in_channels:
        raise ValueError(f"channel groups {list(channel_groups)} do not add up to {in_channels}")
    branches = [
        build_backbone(backbone.name, **backbone.build_kwargs(image_size=image_size, in_channels=g))
        for g in channel_groups
    ]
    return ChannelSplitBackbone(branches, channel_groups)


def build_encoder(meta: dict[str, Any]) -> Backbone:
    """A randomly initialised backbone described by an encoder meta dict."""
    return make_encoder(
        BackboneConfig.model_validate(meta["backbone"]),
        image_size=meta["image_size"],
        in_channels=meta["in_channels"],
        channel_groups=meta.get("channel_groups"),
    )


def _find_weights(path: Path) -> tuple[Path, Path | None]:
    """(weights file, run dir) for a run dir, checkpoint dir or safetensors file."""
    if path.is_file():
        return path, None
    if (path / "encoder.safetensors").exists() and (path / "encoder.json").exists():
        return path / "encoder.safetensors", path
    if (path / "encoder.safetensors").exists() and (path / "meta.json").exists():
        return path / "encoder.safetensors", path.parent.parent
    ckpt = latest_checkpoint(path)
    if ckpt is not None:
        return ckpt / "encoder.safetensors", path
    raise FileNotFoundError(
        f"{path}: no encoder.safetensors here and no checkpoint under {path / 'checkpoints'}"
    )


def _meta_for(weights: Path, run_dir: Path | None) -> dict[str, Any]:
    candidates = [weights.with_suffix(".json"), weights.parent / "encoder.json"]
    if run_dir is not None:
        candidates.append(run_dir / "encoder.json")
    for c in candidates:
        if c.exists():
            return json.loads(c.read_text())
    ckpt_meta = weights.parent / "meta.json"
    if ckpt_meta.exists():
        data = json.loads(ckpt_meta.read_text())
        if "encoder" in data:
            return data["encoder"]
    raise FileNotFoundError(f"{weights}: no encoder.json describing its architecture beside it")


def with_eval_view(encoder: Backbone, meta: dict[str, Any]) -> nn.Module:
    """``encoder`` as evaluation shows it images: wrapped in a
    :class:`~selfsup.backbones.PatchGridEncoder` when ``meta`` has a ``view`` (methods trained
    on patches or tiles), else itself. Shapes: (N, C, S, S) -> (N, feature_dim) either way."""
    view = meta.get("view")
    return encoder if not view else PatchGridEncoder(encoder, **view)


def load_encoder(
    spec: str,
    *,
    seed: int = 0,
    defaults: dict[str, Any] | None = None,
    eval_view: bool = True,
    global_pool: str | None = None,
) -> LoadedEncoder:
    """Load an encoder by spec (see the module docstring): a run directory, a checkpoint, an
    ``encoder.safetensors`` file (with its ``.json`` beside it) or ``random:SPEC``. The result's
    ``encoder`` maps images ``(N, in_channels, image_size, image_size)`` float, prepared as its
    ``meta`` says (``normalize``, ``input_space``), to features ``(N, meta["feature_dim"])``.

    ``defaults`` supplies meta fields (image_size, in_channels, normalize) for ``random:NAME``
    where NAME is a bare backbone name. With ``eval_view`` (the default) an encoder whose meta
    has a ``view`` comes wrapped in it (:func:`with_eval_view`); ``eval_view=False`` gives the
    bare backbone (export, weights). ``global_pool`` (``cls`` / ``avg``) reads a ViT's pooled
    feature another way than it was saved with (an evaluation choice; the weights are the same).
    """
    if spec.startswith("random:"):
        target = spec[len("random:") :]
        path = Path(target)
        if path.exists():
            weights, run_dir = _find_weights(path)
            meta = dict(_meta_for(weights, run_dir))
        else:
            meta = {
                "backbone": BackboneConfig(name=target).model_dump(mode="json"),
                "image_size": 32,
                "in_channels": 3,
                "normalize": "cifar10",
                **(defaults or {}),
            }
            run_dir = None
        meta["method"] = "random"
        meta = _with_global_pool(meta, global_pool, spec)
        torch.manual_seed(seed)
        encoder = build_encoder(meta)
        meta["feature_dim"] = encoder.feature_dim
        if not eval_view:
            meta.pop("view", None)
        identity = "random:" + json.dumps(meta, sort_keys=True) + f":seed{seed}"
        label = f"random ({meta['backbone']['name']})"
        return LoadedEncoder(with_eval_view(encoder, meta), meta, identity, label=label)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"encoder not found: {spec}")
    weights, run_dir = _find_weights(path)
    meta = _with_global_pool(_meta_for(weights, run_dir), global_pool, spec)
    encoder = build_encoder(meta)
    state = load_safetensors(weights)  # refuses pickles: loading never runs code
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights}: weights do not match a {meta['backbone']['name']} "
            f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})"
        )
    label = f"{meta.get('method', '?')} ({run_dir.name if run_dir else weights.name})"
    identity = file_digest(weights)
    if global_pool is not None:
        identity += f"|pool={global_pool}"
    if eval_view and meta.get("view"):
        identity += "|view=" + json.dumps(meta["view"], sort_keys=True)
    else:
        meta = {k: v for k, v in meta.items() if k != "view"}
    return LoadedEncoder(
        with_eval_view(encoder, meta), meta, identity, label=label, run_dir=run_dir
    )


def _with_global_pool(meta: dict[str, Any], global_pool: str | None, spec: str) -> dict[str, Any]:
    """``meta`` with its backbone's ``global_pool`` replaced (ViT backbones only; the value is
    checked where the meta is built into a backbone, by ``BackboneConfig``)."""
    if global_pool is None:
        return meta
    backbone = dict(meta["backbone"])
    if not is_vit_name(str(backbone.get("name", ""))):
        raise ValueError(
            f"{spec}: global_pool applies to ViT encoders, not {backbone.get('name')!r}"
        )
    backbone["global_pool"] = global_pool
    return {**meta, "backbone": backbone}
