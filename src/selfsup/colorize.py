"""``selfsup colorize``: colourise grey frames from one coloured reference frame by attention
copying (Vondrick et al. 2018), with a trained ``video_colorization`` run.

Every frame's grey (L) channel and the reference's are embedded; each location of a frame copies
the reference's ab colour through the attention ``softmax(f_ref . f_frame / T)`` (optionally over
its ``top_k`` most similar reference locations), the copied ab is up-sampled to the frame's own
resolution and put back with the frame's own L. Colour frames may be given: only their L is
used.

The run's method embeds (encoder + embedding head). An encoder without that head (any grey-input
encoder: ``encoder.json`` input space ``lab_l``, e.g. a ``colorization`` run or an exported
encoder) works too: its multi-scale features (:func:`~selfsup.heads.pyramid_features`, stride
``stride``) are L2-normalised and compared by cosine similarity.

Frames are processed with their shorter side resized to ``size`` (default: the run's training
image size, where its features are at home), then the colours are up-sampled to the original.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = ["colorize_files", "load_embedder"]


def load_embedder(
    spec: str, device: str | torch.device = "cpu", stride: int = 4
) -> tuple[Callable[[Tensor], Tensor], int, float | None]:
    """(embed function, training image size, the run's copy temperature or None) for a run
    directory or an encoder (module docstring)."""
    from selfsup.heads import pyramid_features
    from selfsup.models import load_encoder
    from selfsup.utils.io import latest_checkpoint

    path = Path(spec)
    if path.is_dir() and latest_checkpoint(path) is not None:
        from selfsup.evaluate.pretext import load_method

        method = load_method(path, device)
        if hasattr(method, "embed"):
            return method.embed, method.image_size, float(method.cfg.copy_temperature)  # type: ignore[attr-defined]
    loaded = load_encoder(spec, eval_view=False)  # the bare backbone: its weights, as trained
    space = loaded.meta.get("input_space", "rgb")
    if space != "lab_l":
        raise ValueError(
            f"{spec}: colourising needs an encoder of grey (L) images (input space lab_l, e.g. a "
            f"video_colorization or colorization run); this one sees {space!r}"
        )
    encoder = loaded.encoder.to(device).eval()

    def embed(light: Tensor) -> Tensor:
        return F.normalize(pyramid_features(encoder, light, stride), dim=1)

    return embed, int(loaded.meta["image_size"]), None


def _load_rgb(path: str | Path) -> Tensor:
    """An image file -> (1, 3, H, W) float RGB in [0, 1]."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def _resize_short(x: Tensor, size: int) -> Tensor:
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    out = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(x, size=out, mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def colorize_files(
    encoder: str,
    reference: str | Path,
    frames: Sequence[str | Path],
    out_dir: str | Path,
    *,
    size: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    stride: int = 4,
    device: str | torch.device = "cpu",
) -> list[Path]:
    """Colourise ``frames`` from ``reference`` and write ``OUT/<frame>_colorized.png`` for each
    and ``OUT/side_by_side.png`` (per frame a row: reference, grey frame, colourised frame).

    Returns the paths written.
    """
    from torchvision.utils import make_grid, save_image

    from selfsup.augment.color import lab_to_input, lab_to_rgb, rgb_to_lab
    from selfsup.losses import copy_attention, copy_values

    if not frames:
        raise ValueError("give at least one frame to colourise")
    embed, train_size, run_temperature = load_embedder(encoder, device, stride)
    size = size or train_size
    temp = temperature or run_temperature or 0.05
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    ref = _load_rgb(reference).to(device)
    ref_small = _resize_short(ref, size)
    lab_ref = rgb_to_lab(ref_small.clamp(0, 1))
    e_ref = embed(lab_to_input(lab_ref, "lab_l")).float()
    ab_ref = F.adaptive_avg_pool2d(lab_ref[:, 1:], e_ref.shape[-2:])
    keys = e_ref.flatten(2).transpose(1, 2)
    values = ab_ref.flatten(2).transpose(1, 2)

    written, rows = [], []
    thumb = (size, size)
    for frame_path in frames:
        frame = _load_rgb(frame_path).to(device)
        small = _resize_short(frame, size)
        e = embed(lab_to_input(rgb_to_lab(small.clamp(0, 1)), "lab_l")).float()
        h, w = e.shape[-2:]
        a = copy_attention(e.flatten(2).transpose(1, 2), keys, temp, top_k)
        ab = copy_values(a, values).transpose(1, 2).reshape(1, 2, h, w)
        ab = F.interpolate(ab, size=frame.shape[-2:], mode="bilinear", align_corners=False)
        light = rgb_to_lab(frame.clamp(0, 1))[:, :1]
        colour = lab_to_rgb(torch.cat([light, ab], 1)).clamp(0, 1)
        path = out_dir / f"{Path(frame_path).stem}_colorized.png"
        save_image(colour.cpu(), path)
        written.append(path)
        grey = lab_to_rgb(torch.cat([light, torch.zeros_like(ab)], 1))
        for picture in (ref, grey, colour):
            rows.append(F.interpolate(picture, size=thumb, mode="bilinear", align_corners=False))
    side = out_dir / "side_by_side.png"
    save_image(make_grid(torch.cat(rows).cpu(), nrow=3, padding=2, pad_value=1.0), side)
    written.append(side)
    return written
