"""Image sources: turn a spec (npz file, image folder, dataset name) into uint8 arrays.

Every source ends up as an :class:`ImageSource` holding a uint8 array of shape
``(N, H, W, C)`` with ``H == W`` (for folders and resized sources) and ``C`` in ``{1, 3}``.
Two other *layouts* stack more than one picture per item in the channels, so the loader and
the trainer feed them unchanged: ``"clip"`` (``C = 3 T``: T RGB frames, frame ``t`` in channels
``3t .. 3t + 2``; :mod:`selfsup.data.video`) and ``"rgbd"`` (``C = 5``: RGB, then the metric
depth in millimetres as a 16-bit number split into a high and a low byte, 0 = unknown;
:mod:`selfsup.data.rgbd`).
Image folders are decoded once with PIL into a ``.npy`` cache that later runs open with
``np.load(mmap_mode="r")``; the cache key covers the file list (relative paths, sizes and
mtimes), the image size, the colour mode and a format version, so any change rebuilds it, but
not the folder's location (a moved or re-mounted folder keeps its cache). A file that cannot
be used (broken link, vanished, unreadable, corrupt, not an image, over Pillow's
decompression-bomb limit) is skipped and listed in ``ImageSource.skipped`` with the reason.

Channel handling: sources are never silently turned into RGB. One-channel data (MNIST,
grey npz files) stays ``C == 1`` unless the caller converts it; ``grayscale=True`` turns
RGB data into one luminance channel (ITU-R 601-2 weights, as PIL's ``"L"`` mode).
Image folders are decoded to RGB (``C == 3``) unless ``grayscale=True``. The bundled
``digits`` dataset is replicated to 3 channels unless ``grayscale=True``. Callers that
need 3 channels call :meth:`ImageSource.to_rgb`.

Cache: ``cache_dir`` argument, else ``$SELFSUP_CACHE``, else ``~/.cache/selfsup``. Files are
written atomically (temp file + ``os.replace``), so concurrent builders (e.g. several DDP
ranks) never see a half-written cache; a folder's entry is built by one process at a time
(a lock file; the others wait, then open it), and one that fails its checks (shape, labels, a
digest of sampled blocks) is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError, features

from selfsup.utils.locks import exclusive_lock

logger = logging.getLogger("selfsup.data")

#: Bumped whenever the on-disk cache layout or the decoding rules change.
CACHE_FORMAT_VERSION = 2
#: Image size used for image folders when ``image_size`` is not given.
DEFAULT_FOLDER_IMAGE_SIZE = 64
#: File extensions (lower case) considered images inside a folder.
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".pgm",
    ".pbm",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
    *((".avif",) if features.check("avif") else ()),
)

#: What the channels of an :class:`ImageSource` hold (module docstring).
LAYOUTS = ("image", "clip", "rgbd")

_TORCHVISION_DATASETS = ("cifar10", "cifar100", "stl10", "svhn", "mnist", "fashion_mnist")
_DATASET_NAMES = (*_TORCHVISION_DATASETS, "digits")
_PROGRESS_MIN_FILES = 256
# Luminance weights used by PIL for RGB -> L.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# --------------------------------------------------------------------------------------
# The source object
# --------------------------------------------------------------------------------------


@dataclass
class ImageSource:
    """A set of images held as one uint8 array.

    Attributes:
        images: uint8 array ``(N, H, W, C)``, ``C`` in ``{1, 3}``; may be a read-only
            ``np.memmap`` (do not write to it).
        labels: int64 array ``(N,)`` or ``None`` for unlabeled data.
        classes: class names indexed by label, or ``None``.
        name: human-readable name (used in logs).
        skipped: ``(path, reason)`` for every file that could not be read.
        layout: what the channels hold (module docstring): ``"image"`` (C in {1, 3}),
            ``"clip"`` (C = 3 T frames) or ``"rgbd"`` (C = 5).
    """

    images: np.ndarray
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    name: str = "images"
    skipped: list[tuple[str, str]] = field(default_factory=list)
    layout: str = "image"

    def __post_init__(self) -> None:
        if not isinstance(self.images, np.ndarray):
            raise TypeError(f"images must be a numpy array, got {type(self.images).__name__}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; expected one of {LAYOUTS}")
        channels = self.images.shape[-1] if self.images.ndim == 4 else None
        ok = {
            "image": channels in (1, 3),
            "clip": channels is not None and channels >= 3 and channels % 3 == 0,
            "rgbd": channels == 5,
        }[self.layout]
        if self.images.ndim != 4 or not ok:
            want = {"image": "C in {1, 3}", "clip": "C = 3 x frames", "rgbd": "C = 5"}
            raise ValueError(
                f"{self.layout} sources must have shape (N, H, W, C) with {want[self.layout]}, "
                f"got {self.images.shape}"
            )
        if self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {self.images.dtype}")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
            if len(self.labels) != len(self.images):
                raise ValueError(
                    f"{len(self.labels)} labels for {len(self.images)} images in {self.name}"
                )
        if self.classes is not None:
            self.classes = [str(c) for c in self.classes]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        """Image height ``H`` (equal to the width for square sources)."""
        return int(self.images.shape[1])

    @property
    def num_channels(self) -> int:
        """Number of channels ``C`` (1 or 3 for images; 3 T for clips; 5 for RGB-D)."""
        return int(self.images.shape[3])

    @property
    def frames(self) -> int:
        """Frames per item: ``C // 3`` for clips, 1 otherwise."""
        return self.num_channels // 3 if self.layout == "clip" else 1

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageSource:
        """Return a new in-memory source with the rows ``indices`` (in that order)."""
        idx = _as_index_array(indices)
        return ImageSource(
            images=_gather(self.images, idx),
            labels=None if self.labels is None else self.labels[idx],
            classes=None if self.classes is None else list(self.classes),
            name=self.name,
            skipped=list(self.skipped),
            layout=self.layout,
        )

    def to_rgb(self) -> ImageSource:
        """Return a 3-channel version (1-channel images are replicated; in memory). Clip and
        RGB-D sources are returned unchanged."""
        if self.num_channels == 3 or self.layout != "image":
            return self
        return ImageSource(
            images=np.repeat(np.asarray(self.images), 3, axis=3),
            labels=self.labels,
            classes=None if self.classes is None else list(self.classes),
            name=self.name,
            skipped=list(self.skipped),
        )

    def as_tensor_chw(
        self, indices: Sequence[int] | np.ndarray | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return the images ``indices`` (all if ``None``) as a contiguous uint8 tensor
        of shape ``(n, C, H, W)``."""
        idx = np.arange(len(self)) if indices is None else _as_index_array(indices)
        return torch.from_numpy(_gather_nchw(self.images, idx))


def _as_index_array(indices: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    return np.asarray(indices, dtype=np.int64).reshape(-1)


def _gather(images: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``images[idx]`` read in sorted order (memmap friendly), returned in ``idx`` order."""
    if len(idx) == 0:
        return np.empty((0, *images.shape[1:]), dtype=images.dtype)
    order = np.argsort(idx, kind="stable")
    rows = images[idx[order]]
    out = np.empty_like(rows)
    out[order] = rows
    return out


def _gather_nchw(images: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``images[idx]`` as a contiguous ``(n, C, H, W)`` array (read in sorted order).

    The NHWC -> NCHW transpose is done by numpy: for uint8 it is several times faster than
    ``torch.permute(...).contiguous()``.
    """
    if len(idx) == 0:
        return np.empty((0, images.shape[3], *images.shape[1:3]), dtype=images.dtype)
    order = np.argsort(idx, kind="stable")
    rows = images[idx[order]]  # sorted reads: sequential on a memmap
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return np.ascontiguousarray(rows.transpose(0, 3, 1, 2)[inverse])


# --------------------------------------------------------------------------------------
# Subset helpers
# --------------------------------------------------------------------------------------


def random_subset_indices(n_total: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct indices drawn uniformly from ``range(n_total)``, sorted, int64 ``(n,)``.

    If ``n >= n_total`` all indices are returned.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n >= n_total:
        return np.arange(n_total, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=n, replace=False)).astype(np.int64)


def balanced_subset_indices(
    labels: np.ndarray | Sequence[int], n: int, seed: int = 0
) -> np.ndarray:
    """``n`` indices with classes as balanced as possible, sorted, int64 ``(n,)``.

    Each class contributes ``n // K`` samples (the remainder going to randomly chosen
    classes); a class with too few samples gives all of them and the shortfall is spread
    over the other classes. If ``n >= len(labels)`` all indices are returned.
    """
    labels = np.asarray(labels).reshape(-1)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    class_rank = rng.permutation(len(classes))  # random tie-break between classes
    all_idx, all_pos, all_rank = [], [], []
    for c, rank in zip(classes, class_rank, strict=True):
        idx = rng.permutation(np.flatnonzero(labels == c))
        all_idx.append(idx)
        all_pos.append(np.arange(len(idx)))
        all_rank.append(np.full(len(idx), rank))
    idx, pos, rank = (np.concatenate(a) for a in (all_idx, all_pos, all_rank))
    # Round-robin over classes: first every class's 1st sample, then every 2nd, ...
    order = np.lexsort((rank, pos))
    return np.sort(idx[order[:n]]).astype(np.int64)


HOLDOUT_SEED = 0
"""Seed of every held-out validation split: fixed, so that runs with different ``seed`` values
are tuned and compared on the same held-out images."""


def holdout_split(source: ImageSource, n: int) -> tuple[ImageSource, ImageSource]:
    """Split ``source`` into (training part, ``n`` held-out images) for validation.

    The held-out images are class-balanced when the source has labels
    (:func:`balanced_subset_indices`), a random subset otherwise, always drawn with
    :data:`HOLDOUT_SEED`. Hyper-parameters chosen on the held-out part never see a test set
    (e.g. CIFAR-10: 45,000 training / 5,000 validation images of the train split).
    """
    if not 0 < n < len(source):
        raise ValueError(
            f"holdout={n} must be between 1 and {len(source) - 1} "
            f"({len(source)} images in {source.name})"
        )
    if source.labels is not None:
        held = balanced_subset_indices(source.labels, n, HOLDOUT_SEED)
    else:
        held = np.sort(random_subset_indices(len(source), n, HOLDOUT_SEED))
    keep = np.setdiff1d(np.arange(len(source)), held)
    return source.subset(keep), source.subset(held)


# --------------------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$SELFSUP_CACHE`` if set, else ``~/.cache/selfsup``."""
    env = os.environ.get("SELFSUP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "selfsup"


def default_data_root() -> Path:
    """``$SELFSUP_DATA`` if set, else ``./data``."""
    env = os.environ.get("SELFSUP_DATA")
    return Path(env).expanduser() if env else Path("data")


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_source` as a dataset spec."""
    return list(_DATASET_NAMES)


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` on a temp file next to ``path``, then rename it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_json(path: Path, obj: object) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj)))


def _warn_skipped(root: Path, skipped: list[tuple[str, str]]) -> None:
    """Log how many items of ``root`` were skipped, naming the first five with their reasons."""
    if skipped:
        shown = ", ".join(f"{p} ({r})" for p, r in skipped[:5])
        logger.warning("%s: skipped %d item(s): %s%s", root, len(skipped), shown,
                       ", ..." if len(skipped) > 5 else "")  # fmt: skip


def _save_item_cache(
    root: Path,
    npy_path: Path,
    meta_path: Path,
    items: list[np.ndarray],
    skipped: list[tuple[str, str]],
    layout: str,
    count_key: str,
) -> ImageSource:
    """Stack decoded clip / RGB-D items (each ``(H, W, C)``), write them and their meta (the
    skipped items, the count under ``count_key``, the folder) atomically into the cache, and
    return them as an :class:`ImageSource` of ``layout``."""
    array = np.stack(items)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    _atomic_write(npy_path, write)
    _save_json(meta_path, {"skipped": skipped, count_key: len(array), "root": str(root.resolve())})
    return ImageSource(images=array, name=root.name, layout=layout, skipped=skipped)


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=total < _PROGRESS_MIN_FILES)


def _to_grayscale(images: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 -> ``(N, H, W, 1)`` uint8 luminance."""
    out = np.empty((*images.shape[:3], 1), dtype=np.uint8)
    for i in range(0, len(images), 4096):  # chunked to bound float memory
        chunk = images[i : i + 4096].astype(np.float32) @ _LUMA
        out[i : i + 4096, ..., 0] = np.clip(np.rint(chunk), 0, 255).astype(np.uint8)
    return out


def _fit(im: Image.Image, size: int) -> Image.Image:
    """Shorter-side resize to ``size`` (antialiased bilinear) + centre crop to a square."""
    if im.size == (size, size):
        return im
    return ImageOps.fit(im, (size, size), method=Image.Resampling.BILINEAR)


def _resize_array(img: np.ndarray, size: int) -> np.ndarray:
    """One ``(H, W, C)`` uint8 image -> ``(size, size, C)`` uint8."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    out = np.asarray(_fit(im, size))
    return out[..., None] if out.ndim == 2 else out


# --------------------------------------------------------------------------------------
# Arrays (npz files and named datasets)
# --------------------------------------------------------------------------------------


def _images_to_uint8(images: np.ndarray, where: str) -> np.ndarray:
    """Accept uint8 as is; convert other dtypes explicitly or raise.

    * floats with values in ``[0, 1]`` are scaled by 255; floats in ``[0, 255]`` are rounded;
    * integers with values in ``[0, 255]`` are cast;
    * anything else raises ``ValueError``.
    """
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind not in "fiu" or images.size == 0:
        raise ValueError(f"{where}: images must be uint8, got dtype {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if images.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        logger.info("%s: converting float images in [0, 1] to uint8 (x255)", where)
        return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    if lo >= 0 and hi <= 255:
        logger.info("%s: converting %s images in [0, 255] to uint8", where, images.dtype)
        return np.clip(np.rint(images), 0, 255).astype(np.uint8)
    raise ValueError(
        f"{where}: images must be uint8 (or floats in [0, 1] / values in [0, 255]); "
        f"got dtype {images.dtype} with range [{lo}, {hi}]"
    )


def _normalise_array(images: np.ndarray, where: str) -> np.ndarray:
    """Return ``(N, H, W, C)`` uint8 with C in {1, 3} (``(N, H, W)`` becomes C=1)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"{where}: images must have shape (N, H, W), (N, H, W, 1) or (N, H, W, 3); "
            f"got {images.shape}"
        )
    images = _images_to_uint8(images, where)
    if images.shape[-1] == 4:  # RGBA: drop alpha
        images = images[..., :3]
    return images


def _finish_arrays(
    images: np.ndarray,
    labels: np.ndarray | None,
    classes: list[str] | None,
    *,
    name: str,
    image_size: int | None,
    grayscale: bool,
    cache_dir: Path,
    key_parts: dict,
) -> ImageSource:
    """Apply grayscale conversion and resizing (cached on disk) to an in-memory array."""
    if grayscale and images.shape[-1] == 3:
        images = _to_grayscale(images)
    needs_resize = image_size is not None and images.shape[1:3] != (image_size, image_size)
    if needs_resize:
        key = _hash({**key_parts, "size": image_size, "gray": grayscale, "v": CACHE_FORMAT_VERSION})
        path = cache_dir / f"{_safe(name)}-{image_size}px-{key}.npy"
        shape = (len(images), image_size, image_size, images.shape[-1])
        if not _is_complete_npy(path, shape):
            logger.info(
                "%s: resizing %d images to %dpx into %s", name, len(images), image_size, path
            )

            def write(tmp: Path) -> None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
                with _progress(len(images), f"resize {name}") as bar:
                    for i in range(len(images)):
                        out[i] = _resize_array(images[i], image_size)
                        bar.update(1)
                out.flush()
                del out

            _atomic_write(path, write)
        images = np.load(path, mmap_mode="r")
    return ImageSource(images=images, labels=labels, classes=classes, name=name)


def _is_complete_npy(path: Path, shape: tuple[int, ...]) -> bool:
    """Whether ``path`` is a readable uint8 ``.npy`` of ``shape`` (a torn or foreign file is
    not, and gets rebuilt)."""
    try:
        arr = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        return False
    except Exception:  # noqa: BLE001 - unreadable = corrupt
        logger.warning("cache %s is corrupt; rebuilding it", path)
        return False
    if arr.dtype != np.uint8 or arr.shape != shape:
        logger.warning("cache %s has %s %s, not uint8 %s; rebuilding it", path, arr.dtype,
                       arr.shape, shape)  # fmt: skip
        return False
    return True


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "source"


def _load_npz(
    path: Path, *, name: str, image_size: int | None, grayscale: bool, cache_dir: Path
) -> ImageSource:
    with np.load(path, allow_pickle=False) as data:
        members = list(data.files)
        if "images" not in members:
            raise ValueError(f"{path}: no 'images' member in npz file; members present: {members}")
        images = _normalise_array(data["images"], str(path))
        labels = data["labels"].astype(np.int64).reshape(-1) if "labels" in members else None
        classes = [str(c) for c in data["classes"].reshape(-1)] if "classes" in members else None
    st = path.stat()
    # the file's name and identity, not its location: a moved data set keeps its cache
    key_parts = {"npz": path.name, "bytes": st.st_size, "mtime": st.st_mtime_ns}
    return _finish_arrays(
        images,
        labels,
        classes,
        name=name,
        image_size=image_size,
        grayscale=grayscale,
        cache_dir=cache_dir,
        key_parts=key_parts,
    )


# --------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------


def _pil_to_8bit(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to ``"L"``, ``"RGB"`` or ``"RGBA"`` (8 bit per channel).

    16-bit / 32-bit integer images (``I;16*``, ``I``) are scaled by 1/257 when their values
    exceed 255; float images (``F``) in ``[0, 1]`` are scaled by 255.
    """
    if im.mode in ("L", "RGB", "RGBA"):
        return im
    if im.mode.startswith("I") or im.mode == "F":
        arr = np.asarray(im).astype(np.float64)
        if im.mode == "F" and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        elif im.mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    if im.mode in ("LA", "La", "PA", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        return im.convert("RGBA")
    if im.mode == "1":
        return im.convert("L")
    return im.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV, ...


def _decode_image(path: str, image_size: int, grayscale: bool) -> np.ndarray:
    """Decode one file to ``(image_size, image_size, C)`` uint8, C = 1 if ``grayscale`` else 3.

    Raises on unreadable, truncated or non-image files, on images with a zero side and on
    images over Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, twice over).
    Animated and multi-page files give their first frame; transparent images are composited on
    white; EXIF orientation is applied; the shorter side is resized to ``image_size``
    (antialiased bilinear) and the centre is cropped.
    """
    with Image.open(path) as im:
        if 0 in im.size:
            raise ValueError(f"the image has a zero side ({im.size[0]}x{im.size[1]})")
        if im.format == "JPEG":
            im.draft(im.mode, (image_size, image_size))  # fast DCT downscale, keeps >= size
        im.seek(0)  # the first frame of an animation or a multi-page file
        im.load()  # raises on truncated data
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # malformed EXIF must not lose the image
            pass
        im = _pil_to_8bit(im)
        if im.mode == "RGBA":
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im).convert("RGB")
        im = im.convert("L" if grayscale else "RGB")
        arr = np.asarray(_fit(im, image_size), dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    return arr


def _why_unreadable(err: BaseException, path: Path) -> str:
    """A short reason for ``skipped_files.json``: what went wrong with ``path``."""
    if isinstance(err, FileNotFoundError):
        if path.is_symlink():
            return f"broken symbolic link (to {os.readlink(path)}, which does not exist)"
        return "the file vanished after the folder was listed"
    if isinstance(err, PermissionError):
        return "permission denied"
    if isinstance(err, Image.DecompressionBombError):
        return f"larger than Pillow's decompression-bomb limit: {err}"
    if isinstance(err, UnidentifiedImageError):
        return "not an image Pillow can read (unknown format, or a malformed or zero-size header)"
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _scan_folder(
    root: Path,
) -> tuple[list[str], list[int] | None, list[str] | None, list[tuple[str, str]]]:
    """Return (relative image files, labels or None, classes or None, ignored entries).

    Sub-folders of ``root`` are classes (sorted names; files found recursively inside,
    following symbolic links but never into the same folder twice); without sub-folders the
    top-level files are an unlabeled set. Hidden entries (names starting with ``.``) are
    ignored silently; other non-image files, folders named like image files (``x.jpg/``) and
    folders that cannot be listed are returned as ``(relative path, reason)``.
    """
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    files: list[str] = []
    ignored: list[tuple[str, str]] = []

    def image_named(path: Path) -> bool:
        return path.suffix.lower() in IMAGE_EXTENSIONS

    def add(path: Path) -> bool:
        rel = path.relative_to(root).as_posix()
        if image_named(path):
            files.append(rel)
            return True
        ignored.append((rel, f"not an image extension ({path.suffix or 'none'})"))
        return False

    named_like_images = [p for p in entries if p.is_dir() and image_named(p)]
    ignored.extend((p.name, "a folder named like an image file") for p in named_like_images)
    class_dirs = [p for p in entries if p.is_dir() and not image_named(p)]
    if not class_dirs:
        for p in entries:
            if not p.is_dir():
                add(p)
        return files, None, None, ignored
    classes = [p.name for p in class_dirs]
    labels: list[int] = []
    seen: set[str] = set()

    def unlistable(err: OSError) -> None:
        where = Path(err.filename or "?")
        rel = where.relative_to(root).as_posix() if where.is_relative_to(root) else str(where)
        ignored.append((rel, f"folder cannot be listed: {err.strerror or err}"))

    for label, d in enumerate(class_dirs):
        for dirpath, dirnames, filenames in os.walk(d, followlinks=True, onerror=unlistable):
            real = os.path.realpath(dirpath)
            if real in seen:  # a symbolic link back into a folder already read
                dirnames[:] = []
                continue
            seen.add(real)
            here = Path(dirpath)
            keep = []
            for name in sorted(n for n in dirnames if not n.startswith(".")):
                if image_named(here / name):
                    rel = (here / name).relative_to(root).as_posix()
                    ignored.append((rel, "a folder named like an image file"))
                else:
                    keep.append(name)
            dirnames[:] = keep
            for fname in sorted(filenames):
                if not fname.startswith(".") and add(here / fname):
                    labels.append(label)
    ignored.extend((p.name, "not in a class folder") for p in entries if not p.is_dir())
    return files, labels, classes, ignored


def _stat_files(
    root: Path, rels: list[str]
) -> tuple[list[tuple[str, int, int]], list[tuple[str, str]]]:
    """(``(rel, size, mtime_ns)`` of every readable regular file, ``(rel, reason)`` of the
    rest: broken links, files gone since the listing, special files such as FIFOs)."""
    stats, bad = [], []
    for rel in rels:
        path = root / rel
        try:
            st = path.stat()
        except OSError as err:
            bad.append((rel, _why_unreadable(err, path)))
            continue
        if not stat.S_ISREG(st.st_mode):
            bad.append((rel, "not a regular file"))
            continue
        stats.append((rel, st.st_size, st.st_mtime_ns))
    return stats, bad


def _decode_all(
    root: Path, files: list[str], image_size: int, grayscale: bool, out: np.ndarray
) -> tuple[list[int], list[tuple[str, str]]]:
    """Decode ``files`` into consecutive rows of ``out``; return (kept positions, skipped as
    ``(relative path, reason)``)."""
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []

    def work(rel: str) -> np.ndarray | str:
        try:
            return _decode_image(str(root / rel), image_size, grayscale)
        except Exception as e:  # any failure = unreadable file
            return _why_unreadable(e, root / rel)

    workers = max(1, min(8, os.cpu_count() or 1))
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        _progress(len(files), f"decode {root.name}") as bar,
    ):
        for i, result in enumerate(pool.map(work, files)):
            if isinstance(result, str):
                skipped.append((files[i], result))
            else:
                out[len(kept)] = result
                kept.append(i)
            bar.update(1)
    return kept, skipped


def _sampled_digest(path: Path, blocks: int = 16, block_size: int = 1 << 16) -> str:
    """SHA-256 of a file's size and ``blocks`` evenly spaced blocks (first and last included):
    cheap on a large cache, and it notices truncation, holes and overwritten regions."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for i in range(blocks):
            f.seek(max(0, size - block_size) * i // max(blocks - 1, 1))
            h.update(f.read(block_size))
    return h.hexdigest()[:32]


def _open_cached_folder(npy_path: Path, meta_path: Path) -> tuple[np.ndarray, dict] | None:
    """The cached images (memory-mapped) and meta of a folder, or None when the pair is
    missing or does not check out (torn, truncated or overwritten files: rebuilt)."""
    if not (npy_path.exists() and meta_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(npy_path, mmap_mode="r")
        labels = meta["labels"]
        problems = [
            images.dtype != np.uint8 and "dtype",
            list(images.shape) != meta["shape"] and "shape",
            labels is not None and len(labels) != len(images) and "labels",
            _sampled_digest(npy_path) != meta["digest"] and "content",
        ]
    except Exception as err:  # noqa: BLE001 - unreadable = corrupt
        problems = [f"{type(err).__name__}: {err}"]
    problems = [p for p in problems if p]
    if problems:
        logger.warning("cache %s is corrupt (%s); rebuilding it", npy_path, ", ".join(problems))
        return None
    return images, meta


def _load_folder(
    root: Path,
    *,
    image_size: int,
    grayscale: bool,
    cache_dir: Path,
    max_skipped_fraction: float | None = None,
) -> ImageSource:
    """Decode an image folder once into ``cache_dir`` (or open that cache).

    The cache key is the folder's content as listed (relative paths, sizes, mtimes; the
    unreadable entries), the resolution, the colour mode and :data:`CACHE_FORMAT_VERSION`, not
    where the folder is: a moved or re-mounted folder finds its cache. One process builds an
    entry at a time (a lock file), writing under temporary names that are renamed when
    complete, the meta (with a digest of the images) last; a cache that fails its checks is
    rebuilt.
    """
    files, labels, classes, ignored = _scan_folder(root)
    name = root.resolve().name
    stats, unreadable = _stat_files(root, files)
    readable = {rel for rel, _, _ in stats}
    if unreadable:
        keep = [i for i, rel in enumerate(files) if rel in readable]
        labels = None if labels is None else [labels[i] for i in keep]
        files = [files[i] for i in keep]
    key = _hash(
        {
            "files": stats,
            "unreadable": unreadable,
            "ignored": ignored,
            "size": image_size,
            "gray": grayscale,
            "v": CACHE_FORMAT_VERSION,
        }
    )
    tail = f"-{image_size}px-{key}"
    with exclusive_lock(cache_dir / "locks" / f"folder{tail}.lock"):
        found = _open_cached_folder(*_cache_paths(cache_dir, f"{_safe(name)}{tail}"))
        if found is None:  # perhaps cached under the folder's old name
            for other in sorted(cache_dir.glob(f"*{tail}.json")):
                found = _open_cached_folder(other.with_suffix(".npy"), other)
                if found is not None:
                    break
        if found is None:
            found = _build_folder_cache(
                root, files, labels, classes, ignored + unreadable, len(unreadable),
                image_size, grayscale, *_cache_paths(cache_dir, f"{_safe(name)}{tail}"),
            )  # fmt: skip
    images, meta = found
    skipped = [(str(root / rel), reason) for rel, reason in meta["skipped"]]
    if max_skipped_fraction is not None:
        _check_skipped_fraction(root, len(images), meta["unreadable_images"], skipped,
                                max_skipped_fraction)  # fmt: skip
    return ImageSource(
        images=images,
        labels=None if meta["labels"] is None else np.asarray(meta["labels"], np.int64),
        classes=meta["classes"],
        name=name,
        skipped=skipped,
    )


def _cache_paths(cache_dir: Path, stem: str) -> tuple[Path, Path]:
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


def _check_skipped_fraction(
    root: Path, decoded: int, unreadable: int, skipped: list[tuple[str, str]], limit: float
) -> None:
    """Refuse a folder where more than ``limit`` of the image files could not be used."""
    tried = decoded + unreadable
    if tried and unreadable / tried > limit:
        shown = "; ".join(f"{p} ({r})" for p, r in skipped[:5])
        raise ValueError(
            f"{root}: {unreadable} of {tried} image files could not be read "
            f"({unreadable / tried:.0%}, more than data.max_skipped_fraction={limit:g}): "
            f"{shown}{'; ...' if len(skipped) > 5 else ''}. Fix or remove them, or raise "
            "data.max_skipped_fraction."
        )


def _build_folder_cache(
    root: Path,
    files: list[str],
    labels: list[int] | None,
    classes: list[str] | None,
    skipped: list[tuple[str, str]],
    unreadable: int,
    image_size: int,
    grayscale: bool,
    npy_path: Path,
    meta_path: Path,
) -> tuple[np.ndarray, dict]:
    """Decode ``files`` into ``npy_path`` and write ``meta_path`` (both atomically, the meta
    last); ``skipped`` holds ``(relative path, reason)`` of what was left out already, of
    which ``unreadable`` image files."""
    skipped = list(skipped)
    kept: list[int] = []
    not_decoded: list[tuple[str, str]] = []

    def report() -> None:
        if skipped:
            shown = ", ".join(f"{root / p} ({r})" for p, r in skipped[:5])
            logger.warning(
                "%s: skipped %d unreadable/non-image file(s): %s%s",
                root,
                len(skipped),
                shown,
                ", ..." if len(skipped) > 5 else "",
            )
        if not kept:
            raise ValueError(f"no readable image in {root} ({len(skipped)} file(s) skipped)")

    if not files:
        report()
    logger.info("%s: decoding %d files to %dpx (cache %s)", root, len(files), image_size, npy_path)

    def write(tmp: Path) -> None:
        shape = (len(files), image_size, image_size, 1 if grayscale else 3)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        good, bad = _decode_all(root, files, image_size, grayscale, out)
        kept.extend(good)
        not_decoded.extend(bad)
        skipped.extend(bad)
        report()  # raises (and the temp file is removed) if nothing was readable
        if len(kept) == len(files):
            out.flush()
            del out
            return
        # Some files were bad: rewrite with only the decoded rows (they are at the front).
        tmp2 = tmp.with_suffix(".compact")
        try:
            small = np.lib.format.open_memmap(
                tmp2, mode="w+", dtype=np.uint8, shape=(len(kept), *shape[1:])
            )
            for i in range(0, len(kept), 4096):
                j = min(i + 4096, len(kept))
                small[i:j] = out[i:j]
            small.flush()
            del small, out
            os.replace(tmp2, tmp)
        finally:
            tmp2.unlink(missing_ok=True)

    _atomic_write(npy_path, write)
    images = np.load(npy_path, mmap_mode="r")
    meta = {
        "labels": None if labels is None else [labels[i] for i in kept],
        "classes": classes,
        "skipped": skipped,
        "unreadable_images": unreadable + len(not_decoded),
        "shape": list(images.shape),
        "digest": _sampled_digest(npy_path),
        "root": str(root.resolve()),  # for information only: not part of the key
        "image_size": image_size,
        "version": CACHE_FORMAT_VERSION,
    }
    _save_json(meta_path, meta)
    return images, meta


# --------------------------------------------------------------------------------------
# Named datasets
# --------------------------------------------------------------------------------------


def _load_digits(split: str, image_size: int | None, grayscale: bool) -> ImageSource:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"digits: split must be 'train' or 'test', got {split!r}")
    bunch = load_digits()
    y = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=0.2, stratify=y, random_state=0, shuffle=True
    )
    idx = np.sort(train_idx if split == "train" else test_idx)
    size = image_size or 32
    grey = np.clip(np.rint(bunch.images[idx] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    out = np.empty((len(idx), size, size, 1 if grayscale else 3), dtype=np.uint8)
    for i, img in enumerate(grey):
        up = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
        out[i] = up[..., None]
    return ImageSource(
        images=out, labels=y[idx], classes=[str(i) for i in range(10)], name=f"digits-{split}"
    )


def _torchvision_arrays(
    name: str, split: str, root: Path, download: bool
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """Construct the torchvision dataset and return (images NHWC uint8, labels, classes)."""
    import torchvision.datasets as tvd

    ds_root = str(root / name)
    two_way = {
        "cifar10": tvd.CIFAR10,
        "cifar100": tvd.CIFAR100,
        "mnist": tvd.MNIST,
        "fashion_mnist": tvd.FashionMNIST,
    }
    if name in two_way:
        if split not in ("train", "test"):
            raise ValueError(f"{name}: split must be 'train' or 'test', got {split!r}")
        ds = two_way[name](root=ds_root, train=split == "train", download=download)
    elif name == "stl10":
        if split not in ("train", "test", "unlabeled", "train+unlabeled"):
            raise ValueError(
                f"stl10: split must be train/test/unlabeled/train+unlabeled, got {split!r}"
            )
        ds = tvd.STL10(root=ds_root, split=split, download=download)
    elif name == "svhn":
        if split not in ("train", "test", "extra"):
            raise ValueError(f"svhn: split must be train/test/extra, got {split!r}")
        ds = tvd.SVHN(root=ds_root, split=split, download=download)
    else:  # pragma: no cover - guarded by caller
        raise ValueError(f"unknown dataset {name!r}")

    data = getattr(ds, "data", None)
    if data is not None:
        images = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        if name in ("stl10", "svhn"):  # stored as (N, C, H, W)
            images = images.transpose(0, 2, 3, 1)
    else:  # generic (slow) path through __getitem__
        images = np.stack([np.asarray(ds[i][0]) for i in range(len(ds))])
    raw = getattr(ds, "targets", None)
    if raw is None:
        raw = getattr(ds, "labels", None)
    labels = None
    if raw is not None:
        labels = (raw.numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)).astype(
            np.int64
        )
        if labels.size and (labels < 0).all():  # STL10 unlabeled split: all -1
            labels = None
    classes = getattr(ds, "classes", None)
    if classes is None and name == "svhn":
        classes = [str(i) for i in range(10)]
    return np.ascontiguousarray(images), labels, classes


def _load_named(
    name: str,
    *,
    split: str,
    root: Path,
    image_size: int | None,
    cache_dir: Path,
    download: bool,
    grayscale: bool,
) -> ImageSource:
    if name == "digits":
        return _load_digits(split, image_size, grayscale)
    label = f"{name}-{split}"
    npz = root / name / f"{split}.npz"
    if npz.is_file():
        return _load_npz(
            npz, name=label, image_size=image_size, grayscale=grayscale, cache_dir=cache_dir
        )

    cached = cache_dir / f"{name}-{split}-{_hash(str(root.resolve()))[:12]}.npz"
    if not cached.is_file():
        hint = (
            f"dataset {name!r} (split {split!r}) not found: looked for {npz} and for the "
            f"torchvision files under {root / name}; pass download=True "
            f"(CLI: data.download=true) to download it, or set SELFSUP_DATA / root"
        )
        if not download and not (root / name).exists():
            raise FileNotFoundError(hint)
        try:
            images, labels, classes = _torchvision_arrays(name, split, root, download)
        except RuntimeError as e:
            if download:
                raise
            raise FileNotFoundError(f"{hint} ({e})") from e
        members: dict[str, np.ndarray] = {"images": images}
        if labels is not None:
            members["labels"] = labels
        if classes is not None:
            members["classes"] = np.asarray(classes, dtype=str)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **members)

        _atomic_write(cached, write)
    return _load_npz(
        cached, name=label, image_size=image_size, grayscale=grayscale, cache_dir=cache_dir
    )


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def load_source(
    spec: str,
    *,
    split: str = "train",
    root: str | None = None,
    image_size: int | None = None,
    cache_dir: str | None = None,
    download: bool = False,
    grayscale: bool = False,
    max_skipped_fraction: float | None = None,
    options: dict | None = None,
) -> ImageSource:
    """Load images described by ``spec`` into an :class:`ImageSource`.

    Args:
        spec: one of
            * a path to an ``.npz`` file with member ``images`` (uint8 ``(N, H, W, C)`` or
              ``(N, H, W)``), optional ``labels`` (int ``(N,)``) and ``classes`` (str ``(K,)``).
              Float images in ``[0, 1]`` are scaled by 255, other values in ``[0, 255]`` are
              rounded; anything else raises ``ValueError``. 1-channel images stay ``C == 1``.
            * a directory: an ImageFolder tree (sub-folders = classes, sorted) or a flat folder
              of images (unlabeled). Decoded once to RGB (or L if ``grayscale``), resized
              (shorter side + centre crop) to ``image_size`` (default
              :data:`DEFAULT_FOLDER_IMAGE_SIZE` = 64) and cached as ``.npy``.
            * a dataset name from :func:`list_datasets` (case-insensitive, ``-`` = ``_``),
              looked up under the data root: first ``<root>/<name>/<split>.npz``, then the
              torchvision files under ``<root>/<name>`` (converted once to an npz in the
              cache dir). A bare name always means the dataset; write ``./cifar10`` to load
              a local folder of that name.
            * ``synthetic_video`` / ``synthetic_video:IMAGES``: synthetic clips made from an
              image set (``clip`` layout; :mod:`selfsup.data.video`);
              ``synthetic_rgbd`` / ``synthetic_rgbd:IMAGES``: procedurally rendered RGB-D
              scenes (``rgbd`` layout; :mod:`selfsup.data.rgbd`); ``IMAGES`` is any spec
              above, by default CIFAR-10 under the data root.
            * ``video:PATH``: a folder of videos (sub-folders of frames, or video files) cut
              into clips; ``rgbd:PATH``: an NYU-style ``rgb/`` + ``depth/`` folder.
        split: dataset split for named datasets (``train``/``test``; STL10 also
            ``unlabeled``/``train+unlabeled``; SVHN also ``extra``). Ignored for paths.
        root: data root for named datasets; default ``$SELFSUP_DATA`` or ``./data``.
        image_size: output side length. For arrays, images are resized (once, cached) only if
            given and different; for folders it defaults to 64; for ``digits`` to 32.
        cache_dir: cache location; default ``$SELFSUP_CACHE`` or ``~/.cache/selfsup``.
        download: allow torchvision to download a missing named dataset.
        grayscale: return one luminance channel (``C == 1``).
        max_skipped_fraction: folders only: raise ``ValueError`` when more than this fraction
            of the image files cannot be used (broken links, vanished, unreadable, corrupt,
            not images); None accepts any number (they are listed in ``skipped``).
        options: ``data.options``: options of the clip / RGB-D sources by source kind,
            ``{"synthetic_video": {...}, "synthetic_rgbd": {...}, "video": {...}}``; the section
            of the source loaded is validated by it (an unknown key is an error naming it),
            the others are ignored, so a recipe can switch sources.

    Returns:
        An :class:`ImageSource` with uint8 images ``(N, H, W, C)``.

    Raises:
        FileNotFoundError: the path does not exist, or a named dataset is missing and
            ``download`` is false.
        ValueError: malformed npz, no readable image in a folder (or more than
            ``max_skipped_fraction`` unreadable), bad split or dtype.
    """
    if image_size is not None and image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    special = _special_source(
        spec,
        split=split,
        root=root,
        image_size=image_size,
        cache_dir=cache_dir,
        grayscale=grayscale,
        options=options,
    )
    if special is not None:
        return special
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    name = spec.strip().lower().replace("-", "_")
    path = Path(spec).expanduser()
    if name in _DATASET_NAMES:  # a bare name always means the dataset; use ./name for a path
        data_root = Path(root).expanduser() if root else default_data_root()
        return _load_named(
            name,
            split=split,
            root=data_root,
            image_size=image_size,
            cache_dir=cache,
            download=download,
            grayscale=grayscale,
        )
    if not path.exists():
        raise FileNotFoundError(
            f"image source not found: {spec} (not a file, a folder, or one of {list_datasets()})"
        )
    if path.is_dir():
        return _load_folder(
            path,
            image_size=image_size or DEFAULT_FOLDER_IMAGE_SIZE,
            grayscale=grayscale,
            cache_dir=cache,
            max_skipped_fraction=max_skipped_fraction,
        )
    if path.suffix.lower() == ".npz":
        return _load_npz(
            path, name=path.stem, image_size=image_size, grayscale=grayscale, cache_dir=cache
        )
    raise ValueError(f"unsupported image source {path}: expected an .npz file or a folder")


#: Sources whose items are not single images (see :func:`load_source`).
SPECIAL_SOURCES = ("synthetic_video", "synthetic_rgbd", "video", "rgbd")


def _special_source(
    spec: str,
    *,
    split: str,
    root: str | None,
    image_size: int | None,
    cache_dir: str | None,
    grayscale: bool,
    options: dict | None,
) -> ImageSource | None:
    """The clip / RGB-D sources of :func:`load_source`, or None for an ordinary spec."""
    unknown = sorted(set(options or {}) - {"synthetic_video", "synthetic_rgbd", "video"})
    if unknown:
        raise ValueError(
            f"data.options.{unknown[0]}: unknown source kind; data.options holds one section "
            "per source kind: synthetic_video, synthetic_rgbd or video "
            "(e.g. data.options.synthetic_video.clips=2000)"
        )
    head, colon, rest = spec.strip().partition(":")
    kind = head.lower().replace("-", "_")
    if kind not in SPECIAL_SOURCES or (not colon and kind in ("video", "rgbd")):
        return None
    if grayscale:
        raise ValueError(f"{spec}: data.grayscale does not apply to {kind} sources")
    arg = rest.strip() or None
    section = (options or {}).get(kind)
    if section is not None and not isinstance(section, dict):
        raise ValueError(f"data.options.{kind} must be a mapping of options, got {section!r}")
    if kind in ("video", "rgbd") and arg is None:
        raise ValueError(f"{spec}: give a folder, e.g. {kind}:path/to/folder")
    return SOURCE_KINDS[kind](
        arg, split=split, root=root, image_size=image_size, cache_dir=cache_dir, options=section
    )


#: The loaders of the clip / RGB-D source kinds, registered by :mod:`selfsup.data.video` and
#: :mod:`selfsup.data.rgbd` (imported by :mod:`selfsup.data`), so that this module, which they
#: build on, does not import them. Each takes ``(arg, *, split, root, image_size, cache_dir,
#: options)``: ``arg`` is the text after ``kind:`` (None when absent).
SOURCE_KINDS: dict[str, Callable[..., ImageSource]] = {}


def register_source_kind(kind: str, loader: Callable[..., ImageSource]) -> None:
    """Make ``data.source=KIND[:ARG]`` load with ``loader`` (see :data:`SOURCE_KINDS`)."""
    if kind not in SPECIAL_SOURCES:
        raise ValueError(f"unknown source kind {kind!r}; expected one of {SPECIAL_SOURCES}")
    SOURCE_KINDS[kind] = loader
