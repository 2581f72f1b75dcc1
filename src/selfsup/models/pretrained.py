"""``selfsup.Encoder``: a trained encoder as a plain ``nn.Module`` for use outside selfsup.

Example::

    import selfsup
    from PIL import Image

    encoder = selfsup.Encoder.from_pretrained("runs/simclr_cifar10_cpu")
    x = encoder.preprocess([Image.open("cat.jpg"), Image.open("dog.png")])  # (2, 3, S, S)
    features = encoder(x)                                # (2, encoder.feature_dim)
    encoder.save_pretrained("my-encoder")                # config.json + model.safetensors
    same = selfsup.Encoder.from_pretrained("my-encoder") # bit-exact

The forward pass takes float RGB images ``(N, 3, H, W)`` with values in ``[0, 1]`` and does
what training did to images before the backbone: channel matching (a grey-input encoder gets
the luminance), normalisation with the run's mean/std — or, for encoders that saw Lab inputs
(colorization, split-brain), the conversion to scaled CIE Lab. So every encoder is called the
same way, and an exported graph (``selfsup export --format onnx``) needs no preprocessing
beyond resizing and scaling to ``[0, 1]``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import Tensor, nn

from selfsup.augment.color import input_channels, rgb_to_input
from selfsup.backbones import Backbone
from selfsup.data.decode import resize_center_crop
from selfsup.methods.base import normalization
from selfsup.models.encoders import build_encoder, load_encoder
from selfsup.utils.io import save_weights

PRETRAINED_FORMAT = "selfsup-encoder/1"
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
_LUMA = (0.299, 0.587, 0.114)

ImageLike = Image.Image | np.ndarray | Tensor


class Encoder(nn.Module):
    """A trained encoder with its preprocessing: float RGB ``(N, 3, H, W)`` in ``[0, 1]`` ->
    features ``(N, feature_dim)``.

    Build it with :meth:`from_pretrained`; ``Encoder(backbone, meta)`` wraps a backbone and its
    ``encoder.json`` meta directly.

    Attributes:
        backbone: the encoder network (input: what training fed it).
        meta: the ``encoder.json`` meta (architecture, image size, channels, normalisation,
            input space, method).
        feature_dim: ``D``.
        image_size: the side length the encoder was trained at (what :meth:`preprocess` makes).
        input_space: ``rgb``, ``lab_l`` (the L channel) or ``lab``.
        mean, std: per-channel statistics the forward pass normalises with (``rgb`` input
            space; ``None`` for the Lab spaces, which are scaled instead).
    """

    def __init__(self, backbone: Backbone, meta: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.meta = dict(meta)
        self.input_space: str = meta.get("input_space", "rgb")
        self.in_channels = int(meta["in_channels"])
        self.mean: tuple[float, ...] | None = None
        self.std: tuple[float, ...] | None = None
        if self.input_space == "rgb":
            self.mean, self.std = normalization(meta.get("normalize", "none"), self.in_channels)
            shape = (1, self.in_channels, 1, 1)
            self.register_buffer("_mean", torch.tensor(self.mean).view(shape), persistent=False)
            self.register_buffer("_std", torch.tensor(self.std).view(shape), persistent=False)
        elif input_channels(self.input_space) != self.in_channels:
            raise ValueError(
                f"input space {self.input_space!r} gives {input_channels(self.input_space)} "
                f"channels, the encoder takes {self.in_channels}"
            )
        self.register_buffer("_luma", torch.tensor(_LUMA).view(1, 3, 1, 1), persistent=False)

    @property
    def feature_dim(self) -> int:
        return int(self.backbone.feature_dim)

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    def forward(self, images: Tensor) -> Tensor:
        """``images``: float ``(N, 3, H, W)`` in ``[0, 1]`` (``(N, 1, H, W)`` grey also works).
        Returns ``(N, feature_dim)`` features."""
        x = images
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images (N, 3, H, W) in [0, 1], got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected float images in [0, 1], got {x.dtype} (see preprocess)")
        if self.input_space != "rgb":
            return self.backbone(rgb_to_input(x, self.input_space))
        if x.shape[1] == 3 and self.in_channels == 1:
            x = (x * self._luma).sum(1, keepdim=True)
        elif x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        return self.backbone((x - self._mean) / self._std)

    # ------------------------------------------------------------------ preprocessing

    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> Tensor:
        """Images -> the float ``(N, 3, S, S)`` batch in ``[0, 1]`` that :meth:`forward` takes,
        with ``S = image_size``: each image's centred square resized to ``S`` (antialiased
        bilinear), as ``selfsup embed`` and the streaming loaders decode images.

        Accepts a PIL image (any mode), a uint8 array ``(H, W)`` / ``(H, W, C)``, a uint8
        tensor ``(C, H, W)``, a batch of arrays ``(N, H, W, C)`` or tensors ``(N, C, H, W)``,
        or a list of any of these. The result is on the encoder's device.
        """
        if isinstance(images, Image.Image | np.ndarray | Tensor) and not _is_batch(images):
            images = [images]
        elif isinstance(images, np.ndarray | Tensor):
            images = list(images)
        rows = [resize_center_crop(_to_pil(im), self.image_size) for im in images]
        if not rows:
            raise ValueError("preprocess: no image given")
        batch = torch.from_numpy(np.stack(rows)).permute(0, 3, 1, 2).float().div_(255.0)
        return batch.to(self._luma.device)

    # ------------------------------------------------------------------ loading / saving

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> Encoder:
        """Load an encoder, in eval mode on ``device``, from any of:

        - a directory written by :meth:`save_pretrained` (``config.json`` +
          ``model.safetensors``),
        - a run directory (its final encoder, else its latest checkpoint's),
        - a checkpoint directory (``RUN/checkpoints/step_*``),
        - an exported ``.safetensors`` file with its ``.json`` meta beside it.

        Only JSON and safetensors are read: loading never unpickles anything.
        """
        path = Path(path).expanduser()
        if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
            config = json.loads((path / CONFIG_NAME).read_text())
            if config.get("format") != PRETRAINED_FORMAT:
                raise ValueError(
                    f"{path / CONFIG_NAME}: not a selfsup encoder config "
                    f"(format {config.get('format')!r}, expected {PRETRAINED_FORMAT!r})"
                )
            meta = config["encoder"]
            backbone = build_encoder(meta)
            state = load_file(str(path / WEIGHTS_NAME))
            try:
                backbone.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise ValueError(f"{path / WEIGHTS_NAME} does not match {CONFIG_NAME}: {e}") from e
        else:
            loaded = load_encoder(str(path), eval_view=False)
            backbone, meta = loaded.encoder, loaded.meta
        return cls(backbone, meta).to(device).eval()

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` (the meta) and ``model.safetensors`` (the backbone's weights,
        under its own key names) into ``directory``; :meth:`from_pretrained` reads them back
        bit-exactly. Returns the directory."""
        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        save_weights(self.backbone, directory / WEIGHTS_NAME, metadata={"format": "pt"})
        config = {"format": PRETRAINED_FORMAT, "encoder": self.meta}
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    def extra_repr(self) -> str:
        return (
            f"feature_dim={self.feature_dim}, image_size={self.image_size}, "
            f"input_space={self.input_space!r}, method={self.meta.get('method')!r}"
        )


def _is_batch(images: np.ndarray | Tensor | Image.Image) -> bool:
    """A 4-d array/tensor is a batch; 2-d and 3-d ones are single images."""
    return not isinstance(images, Image.Image) and images.ndim == 4


def _to_pil(image: ImageLike) -> Image.Image:
    """One image (PIL, uint8 ``(H, W[, C])`` array or uint8 ``(C, H, W)`` tensor) as PIL."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, Tensor):
        if image.ndim != 3:
            raise ValueError(f"expected a (C, H, W) tensor, got shape {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {arr.dtype} (scale to 0..255 first)")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got {arr.shape}")
    return Image.fromarray(arr)
