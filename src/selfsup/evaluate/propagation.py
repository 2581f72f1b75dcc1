"""Label propagation: the tracking test of Vondrick et al. (2018) on held-out synthetic clips.

The first frame's instance masks are propagated through the clip with the same attention that
colourises: every later frame's locations attend (temperature ``temperature``, the ``top_k``
most similar locations only) over the locations of the first frame (true masks) and of the
``context`` previous frames (their propagated soft masks), and copy their label distributions.
Masks are down-sampled to the embedding grid by area, the propagated distributions up-sampled
bilinearly and the arg-max taken at full resolution.

Score: the region similarity J (intersection over union) of every object of the first frame in
every later frame (an object absent from both truth and prediction scores 1), averaged over
objects, frames and clips (``miou``; ``miou_by_frame`` per frame). Baselines in the same call:
``identity`` (the first frame's masks copied unchanged: what a tracker that does not move
scores) and any other embedding, e.g. the same method at random initialisation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses import copy_attention, copy_values

__all__ = [
    "PropagationConfig",
    "evaluate_propagation",
    "identity_masks",
    "mask_iou",
    "propagate_masks",
]

Embed = Callable[[Tensor], Tensor]
"""Scaled L (M, 1, H, W) -> embeddings (M, D, h, w)."""


@dataclass
class PropagationConfig:
    """Options of the label propagation (the paper's test-time choices, scaled to small
    frames; see ``docs/methods/video_colorization.md``)."""

    temperature: float = 0.5
    top_k: int = 10
    context: int = 2
    """Previous frames (besides the first) used as references."""
    normalize: bool = False
    """L2-normalise the embeddings first (cosine similarity); the paper uses raw dot products."""
    batch_size: int = 32


def _soft_labels(masks: Tensor, classes: int, size: tuple[int, int]) -> Tensor:
    """Label maps (N, H, W) -> area-downsampled one-hot distributions (N, C, h, w)."""
    onehot = F.one_hot(masks.long(), classes).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(onehot, size)


@torch.no_grad()
def clip_embeddings(
    embed: Embed, frames: Tensor, *, device: str | torch.device = "cpu", batch_size: int = 32
) -> Tensor:
    """Embeddings (N, T, D, h, w) float32 (on CPU) of uint8 clips (N, T, 3, H, W): each frame's
    scaled L through ``embed``."""
    from selfsup.augment.color import rgb_to_input

    out = []
    for i in range(0, len(frames), batch_size):
        clip = frames[i : i + batch_size].to(device)
        light = rgb_to_input(clip.flatten(0, 1).float() / 255, "lab_l")
        emb = embed(light).float()
        out.append(emb.view(*clip.shape[:2], *emb.shape[1:]).cpu())
    return torch.cat(out)


@torch.no_grad()
def propagate_embeddings(
    emb: Tensor, first_mask: Tensor, cfg: PropagationConfig, classes: int
) -> Tensor:
    """Propagate the first frame's labels through clips, given their embeddings.

    Args:
        emb: (N, T, D, h, w) embeddings of every frame.
        first_mask: (N, H, W) long labels of frame 0 (0 background, 1.. objects).
        cfg: propagation options.
        classes: number of labels C (max label + 1).

    Returns:
        (N, T, H, W) long predicted labels (frame 0 is ``first_mask``).
    """
    n, t, d, h, w = emb.shape
    h_img, w_img = first_mask.shape[-2:]
    flat = emb.reshape(n, t, d, h * w).transpose(2, 3)  # (N, T, hw, D)
    if cfg.normalize:
        flat = F.normalize(flat, dim=-1)
    soft = [_soft_labels(first_mask, classes, (h, w)).flatten(2).transpose(1, 2)]  # (N, hw, C)
    for frame in range(1, t):
        refs = [0, *range(max(1, frame - cfg.context), frame)]
        ref_emb = torch.cat([flat[:, r] for r in refs], 1)
        ref_lab = torch.cat([soft[r] for r in refs], 1)
        a = copy_attention(flat[:, frame], ref_emb, cfg.temperature, cfg.top_k)
        soft.append(copy_values(a, ref_lab))
    probs = torch.stack(soft, 1).transpose(2, 3).reshape(n * t, classes, h, w)
    probs = F.interpolate(probs, size=(h_img, w_img), mode="bilinear", align_corners=False)
    labels = probs.argmax(1).view(n, t, h_img, w_img)
    labels[:, 0] = first_mask
    return labels


@torch.no_grad()
def propagate_masks(
    embed: Embed, light: Tensor, first_mask: Tensor, cfg: PropagationConfig, classes: int
) -> Tensor:
    """:func:`propagate_embeddings` from scaled L frames (N, T, 1, H, W) and an embedding
    function (e.g. :meth:`VideoColorization.embed` in eval mode)."""
    n, t = light.shape[:2]
    emb = embed(light.flatten(0, 1)).float()
    return propagate_embeddings(emb.view(n, t, *emb.shape[1:]), first_mask, cfg, classes)


def identity_masks(first_mask: Tensor, frames: int) -> Tensor:
    """The identity baseline: the first frame's labels in every frame (N, T, H, W)."""
    return first_mask[:, None].expand(-1, frames, -1, -1).clone()


def mask_iou(pred: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
    """J of every object of the first frame in every later frame.

    Args:
        pred, truth: (N, T, H, W) labels.

    Returns:
        ``(iou, counted)``, both (N, T - 1, L) for labels 1..L: the IoU (1 where the object is
        absent from both) and whether the object is in the clip's first frame (only those
        count).
    """
    labels = int(truth.max())
    ious, counted = [], []
    present = torch.stack([(truth[:, 0] == k).flatten(1).any(1) for k in range(1, labels + 1)], -1)
    for k in range(1, labels + 1):
        p, g = pred[:, 1:] == k, truth[:, 1:] == k
        inter = (p & g).flatten(2).sum(-1).float()
        union = (p | g).flatten(2).sum(-1).float()
        ious.append(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)))
        counted.append(present[:, k - 1 : k].expand_as(union))
    return torch.stack(ious, -1), torch.stack(counted, -1)


def _summary(iou: Tensor, counted: Tensor) -> dict[str, Any]:
    weights = counted.float()
    by_frame = (iou * weights).sum((0, 2)) / weights.sum((0, 2)).clamp_min(1)
    return {
        "miou": float((iou * weights).sum() / weights.sum().clamp_min(1)),
        "miou_by_frame": [round(float(v), 4) for v in by_frame],
    }


#: The settings :func:`tune_propagation` chooses from (per embedding, on validation clips).
TUNING_GRID: tuple[PropagationConfig, ...] = tuple(
    [PropagationConfig(temperature=t, top_k=k) for t in (0.1, 0.5, 2.0) for k in (5, 20)]
    + [PropagationConfig(temperature=t, top_k=k, normalize=True) for t in (0.03, 0.1)
       for k in (5, 20)]
)  # fmt: skip


@torch.no_grad()
def evaluate_propagation(
    embeds: dict[str, Embed],
    frames: Tensor,
    masks: Tensor,
    cfg: PropagationConfig | dict[str, PropagationConfig] | None = None,
    *,
    device: str | torch.device = "cpu",
    pictures: Path | None = None,
) -> dict[str, Any]:
    """Propagation mIoU of every embedding in ``embeds`` and of the identity baseline.

    Args:
        embeds: name -> embedding function (eval mode, on ``device``).
        frames: (N, T, 3, H, W) uint8 clips.
        masks: (N, T, H, W) uint8 true instance labels.
        cfg: propagation options, one for all or one per embedding name.
        device: where the embeddings run.
        pictures: if given, a PNG per embedding is written here: the first clips' frames with
            the truth and the propagated masks.

    Returns:
        ``{"identity": {...}, name: {"miou", "miou_by_frame", "config"}, ..., "clips",
        "frames", "seconds", "pictures"}``.
    """
    cfg = cfg or PropagationConfig()
    n, t = frames.shape[:2]
    classes = int(masks.max()) + 1
    truth = masks.long()
    out: dict[str, Any] = {"clips": n, "frames": t}
    t0 = time.perf_counter()
    out["identity"] = _summary(*mask_iou(identity_masks(truth[:, 0], t), truth))
    predictions: dict[str, Tensor] = {}
    for name, embed in embeds.items():
        c = cfg[name] if isinstance(cfg, dict) else cfg
        emb = clip_embeddings(embed, frames, device=device, batch_size=c.batch_size)
        pred = propagate_embeddings(emb, truth[:, 0], c, classes)
        predictions[name] = pred
        out[name] = {**_summary(*mask_iou(pred, truth)), "config": asdict(c)}
    out["seconds"] = time.perf_counter() - t0
    if pictures is not None:
        out["pictures"] = {}
        pictures.mkdir(parents=True, exist_ok=True)
        for name, pred in predictions.items():
            path = pictures / f"propagation_{name}.png"
            _save_propagation_picture(frames[:4], truth[:4], pred[:4], path)
            out["pictures"][name] = str(path)
    return out


@torch.no_grad()
def tune_propagation(
    embeds: dict[str, Embed],
    frames: Tensor,
    masks: Tensor,
    grid: tuple[PropagationConfig, ...] = TUNING_GRID,
    *,
    device: str | torch.device = "cpu",
) -> dict[str, tuple[PropagationConfig, list[dict[str, Any]]]]:
    """For each embedding, the setting of ``grid`` with the best mIoU on (validation) clips,
    and every setting's score: ``{name: (best config, [{"config", "miou"}, ...])}``. Each
    embedding gets its own best, so a baseline is not judged at another model's setting."""
    truth = masks.long()
    classes = int(truth.max()) + 1
    out = {}
    for name, embed in embeds.items():
        emb = clip_embeddings(embed, frames, device=device)
        scores = []
        for c in grid:
            pred = propagate_embeddings(emb, truth[:, 0], c, classes)
            scores.append({"config": asdict(c), "miou": _summary(*mask_iou(pred, truth))["miou"]})
        best = max(range(len(grid)), key=lambda i: scores[i]["miou"])
        out[name] = (grid[best], scores)
    return out


_PALETTE = torch.tensor(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240]],
    dtype=torch.float32,
)  # fmt: skip


def overlay(frames: Tensor, labels: Tensor, alpha: float = 0.55) -> Tensor:
    """Frames (M, 3, H, W) uint8 with labels (M, H, W) painted over: (M, 3, H, W) in [0, 1]."""
    colours = _PALETTE[labels.long() % len(_PALETTE)].permute(0, 3, 1, 2) / 255
    rgb = frames.float() / 255
    mask = (labels > 0)[:, None].float() * alpha
    return rgb * (1 - mask) + colours * mask


def _save_propagation_picture(frames: Tensor, truth: Tensor, pred: Tensor, path: Path) -> None:
    """Per clip two rows: truth overlaid on the frames, then the prediction; one column per
    frame."""
    from torchvision.utils import make_grid, save_image

    rows = []
    for i in range(len(frames)):
        rows.append(overlay(frames[i], truth[i]))
        rows.append(overlay(frames[i], pred[i]))
    grid = make_grid(torch.cat(rows), nrow=frames.shape[1], padding=1, pad_value=1.0)
    save_image(grid, path)


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


# ----------------------------------------------------------------------------- runs
def held_out_clips(
    cfg: Any,
    *,
    clips: int,
    frames: int | None = None,
    size: int | None = None,
    split: str = "test",
) -> tuple[Tensor, Tensor]:
    """Held-out synthetic clips with masks like a run's training data: the ``test`` (or
    ``val``) split of its ``synthetic_video`` source (another seed each; the image set's test
    split), ``clips`` of them.

    Returns (frames (N, T, 3, S, S) uint8, masks (N, T, S, S) uint8)."""
    from selfsup.data.textures import base_images
    from selfsup.data.video import (
        SPLIT_SEEDS,
        SyntheticVideoOptions,
        make_clips,
        parse_options,
    )

    head, _, rest = cfg.data.source.partition(":")
    if head.strip().lower().replace("-", "_") != "synthetic_video":
        raise ValueError(
            f"label propagation needs clips with true masks: the run trained on "
            f"{cfg.data.source!r}; evaluate on synthetic_video clips instead (--data "
            "synthetic_video[:IMAGES])"
        )
    section = (cfg.data.options or {}).get("synthetic_video")
    opts = parse_options(SyntheticVideoOptions, section, "synthetic_video")
    update: dict[str, Any] = {"clips": clips}
    if frames is not None:
        update["frames"] = frames
    opts = opts.model_copy(update=update)
    images, _ = base_images(rest.strip() or None, split="test", root=cfg.data.root,
                            cache_dir=cfg.data.cache_dir, seed=opts.seed)  # fmt: skip
    out = make_clips(images, opts, size=size or cfg.data.image_size or 32,
                     seed_offset=SPLIT_SEEDS[split])  # fmt: skip
    return out.frames, out.masks


def run_propagation(
    run_dir: str | Path,
    *,
    clips: int = 256,
    frames: int | None = None,
    data: str | None = None,
    cfg: PropagationConfig | None = None,
    tune_clips: int = 0,
    baselines: tuple[str, ...] = ("random",),
    device: str | torch.device = "cpu",
    seed: int = 0,
    write: bool = True,
) -> dict[str, Any]:
    """Label propagation of a ``video_colorization`` run on held-out clips, beside the identity
    baseline and (``baselines=("random",)``) the same method at random initialisation.

    With ``tune_clips > 0`` each embedding (trained, random) is propagated with its own best
    setting of :data:`TUNING_GRID` on that many *validation* clips (another seed than the test
    clips) instead of ``cfg``. ``data`` (e.g. ``synthetic_video:IMAGES``) replaces the run's
    training source. With ``write``, pictures go to ``RUN/pictures/propagation_*.png`` and a
    row to ``RUN/eval.jsonl`` (the report shows both). Returns the
    :func:`evaluate_propagation` result plus ``propagation_miou``, ``identity_miou``,
    ``random_encoder_miou`` and, when tuned, ``tuning`` (every setting's validation mIoU).
    """
    from selfsup.config import load_config
    from selfsup.evaluate.pretext import load_method, random_method

    run_dir = Path(run_dir)
    method = load_method(run_dir, device)
    if not hasattr(method, "embed"):
        raise ValueError(f"{run_dir}: method {method.name!r} has no dense embedding to propagate")
    run_cfg = load_config(None, str(run_dir / "config.yaml"))
    if data is not None:
        run_cfg.data.source = data
    embeds: dict[str, Embed] = {"trained": method.embed}  # type: ignore[dict-item]
    if "random" in baselines:
        embeds["random_encoder"] = random_method(run_dir, device, seed=seed).embed  # type: ignore[assignment]
    configs: PropagationConfig | dict[str, PropagationConfig] = cfg or PropagationConfig()
    tuning = None
    if tune_clips:
        val_frames, val_masks = held_out_clips(run_cfg, clips=tune_clips, frames=frames,
                                               size=method.image_size, split="val")  # fmt: skip
        tuned = tune_propagation(embeds, val_frames, val_masks, device=device)
        configs = {name: best for name, (best, _) in tuned.items()}
        tuning = {name: scores for name, (_, scores) in tuned.items()}
    clip_frames, clip_masks = held_out_clips(run_cfg, clips=clips, frames=frames,
                                             size=method.image_size)  # fmt: skip
    pictures = run_dir / "pictures" if write else None
    result = evaluate_propagation(embeds, clip_frames, clip_masks, configs, device=device,
                                  pictures=pictures)  # fmt: skip
    if tuning is not None:
        result["tuning"] = {"clips": tune_clips, "scores": tuning}
    result["propagation_miou"] = result["trained"]["miou"]
    result["identity_miou"] = result["identity"]["miou"]
    if "random_encoder" in result:
        result["random_encoder_miou"] = result["random_encoder"]["miou"]
    result["data"] = f"{run_cfg.data.source}:test"
    if write:
        row = {
            "encoder": str(run_dir),
            "method": method.name,
            "protocol": "propagation",
            "data": result["data"],
            "pictures": list(result.get("pictures", {}).values()),
            **{k: result[k] for k in ("propagation_miou", "identity_miou", "random_encoder_miou")
               if k in result},
        }  # fmt: skip
        with open(run_dir / "eval.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    return result
