"""``selfsup embed``: the features of every image of a folder (or shard set), to a file.

Images are decoded in DataLoader workers exactly as :meth:`selfsup.Encoder.preprocess` does it
for the opened file (Pillow, centred square resized to the encoder's image size; with
``fast=True`` JPEGs are decoded as training streams them: at a DCT scale when at least twice
that size, else by torchvision's libjpeg-turbo decoder — much faster for large photos, and
different from Pillow's full decode by JPEG noise), encoded in batches, and written in the
order of the file list:

- ``OUT.npy``: float32 ``(N, D)``, plus ``OUT.txt``: the N image paths (relative to the
  folder; ``shard#key`` or the stored path for shards), one per line;
- or ``OUT.parquet`` (needs pyarrow): columns ``path`` (string) and ``embedding``
  (fixed-size list of float32).

Files that cannot be decoded are left out, listed in ``OUT.skipped.json`` with the reason, and
counted in the returned summary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from selfsup.data import IMAGE_EXTENSIONS
from selfsup.data.decode import DecodeSpec, decode_crop, describe_failure
from selfsup.data.shards import expand_shard_spec, is_shard_spec, iter_shard
from selfsup.errors import MissingExtraError
from selfsup.models import Encoder

_PYARROW_MISSING = 'Parquet output needs pyarrow: pip install "selfsup[parquet]" (or write .npy)'

Item = tuple[str, np.ndarray | None, str | None]
"""(name, uint8 (S, S, 3) image or None, failure reason or None)."""


@dataclass
class EmbedSummary:
    """What :func:`embed_images` wrote."""

    paths: list[Path]
    images: int
    feature_dim: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


def list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, hidden entries skipped), relative paths in
    sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append((Path(dirpath) / name).relative_to(folder).as_posix())
    return found


def _decode(data: bytes | str, name: str, spec: DecodeSpec) -> Item:
    try:
        return name, decode_crop(data, spec), None
    except Exception as e:  # any failure = unreadable file
        return name, None, describe_failure(e)


class _FolderImages(Dataset):
    def __init__(self, root: Path, files: list[str], spec: DecodeSpec) -> None:
        self.root, self.files, self.spec = root, files, spec

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Item:
        return _decode(str(self.root / self.files[i]), self.files[i], self.spec)


class _ShardImages(IterableDataset):
    """Every sample of the shards, shard ``k`` read by worker ``k % workers``."""

    def __init__(self, urls: list[str], spec: DecodeSpec) -> None:
        self.urls, self.spec = urls, spec

    def __iter__(self) -> Iterator[Item]:
        info = get_worker_info()
        mine = self.urls if info is None else self.urls[info.id :: info.num_workers]
        for url in mine:
            for sample in iter_shard(url):
                yield _decode(sample.data, sample.path or f"{url}#{sample.key}", self.spec)


def _collate(items: list[Item]) -> tuple[list[str], torch.Tensor, list[tuple[str, str]]]:
    """(names of the decoded images, their uint8 (n, 3, S, S) batch, (name, reason) failures)."""
    good = [(name, image) for name, image, _ in items if image is not None]
    bad = [(name, reason) for name, image, reason in items if image is None]
    if not good:
        return [], torch.empty(0, dtype=torch.uint8), bad  # type: ignore[return-value]
    batch = np.stack([image for _, image in good]).transpose(0, 3, 1, 2)
    return [name for name, _ in good], torch.from_numpy(np.ascontiguousarray(batch)), bad


def _outputs(out: Path) -> tuple[str, Path]:
    if out.suffix == ".parquet":
        return "parquet", out
    return "npy", out if out.suffix == ".npy" else out.with_name(out.name + ".npy")


@torch.no_grad()
def embed_images(
    source: str | Path,
    encoder: str | Path | Encoder,
    out: str | Path,
    *,
    batch_size: int = 64,
    workers: int = 2,
    device: str = "cpu",
    progress: bool = True,
    fast: bool = False,
) -> EmbedSummary:
    """Embed every image of ``source`` (a folder, or WebDataset shards) with ``encoder`` (a
    path :meth:`selfsup.Encoder.from_pretrained` reads, or an :class:`~selfsup.Encoder`) and
    write ``out`` (module docstring). Returns what was written."""
    kind, target = _outputs(Path(out))
    if kind == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as e:
            raise MissingExtraError(_PYARROW_MISSING) from e
    if not isinstance(encoder, Encoder):
        encoder = Encoder.from_pretrained(encoder)
    encoder = encoder.to(device).eval()
    spec = DecodeSpec(encoder.image_size, fast=fast)
    text = str(source)
    if is_shard_spec(text):
        dataset: Dataset | IterableDataset = _ShardImages(expand_shard_spec(text), spec)
        total = None
    else:
        root = Path(text).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        files = list_images(root)
        if not files:
            raise ValueError(f"no image file (extensions {', '.join(IMAGE_EXTENSIONS)}) in {root}")
        dataset, total = _FolderImages(root, files, spec), len(files)
    if isinstance(dataset, _ShardImages):
        workers = min(workers, len(dataset.urls))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    names: list[str] = []
    chunks: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    with tqdm(total=total, unit="img", desc="embed", disable=not progress) as bar:
        for batch_names, images, bad in loader:
            skipped += bad
            if batch_names:
                x = images.to(device, non_blocking=True).float().div_(255.0)
                chunks.append(encoder(x).float().cpu().numpy())
                names += batch_names
            bar.update(len(batch_names) + len(bad))
    if not names:
        raise ValueError(f"no image of {source} could be decoded ({len(skipped)} failed)")
    features = np.concatenate(chunks).astype(np.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == "parquet":
        written = [_write_parquet(target, names, features)]
    else:
        np.save(target, features)
        listing = target.with_suffix(".txt")
        listing.write_text("".join(f"{name}\n" for name in names))
        written = [target, listing]
    if skipped:
        bad_list = target.with_suffix(".skipped.json")
        bad_list.write_text(json.dumps(skipped, indent=2))
        written.append(bad_list)
    return EmbedSummary(written, len(names), int(features.shape[1]), skipped)


def _write_parquet(path: Path, names: list[str], features: np.ndarray) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = features.shape[1]
    column = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), dim)
    pq.write_table(pa.table({"path": pa.array(names), "embedding": column}), path)
    return path
