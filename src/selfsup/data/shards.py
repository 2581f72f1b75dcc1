"""WebDataset shards: write them from an image folder, stream them into training.

A shard set is a list of tar files in the WebDataset layout (members ``KEY.jpg`` / ``.png``
/ ...; ``KEY.cls`` the class index as text; ``KEY.path`` the image's path in the folder it came
from). ``data.source`` names them by a brace pattern (``shards/train-{000000..000099}.tar``),
several patterns joined by ``::``, http(s) and other URLs that the webdataset library opens
(``pipe:CMD`` for object stores), a ``shards.json`` manifest, or a folder holding one.

The manifest (written by :func:`write_shards` / ``selfsup shards``) lists every shard's sample
count and the class names. It is looked for beside the shards (for remote ones: the URL with
the shard's file name replaced by ``shards.json``); without one the shards are counted once by
reading their tar headers (remote shards: by streaming them).

**Order, splitting and resume.** Epoch ``e`` concatenates the shards in a seeded random order
(``(seed, e)``) into one stream of ``T`` samples; ``S = T // G`` global batches of
``G = B * world_size`` are taken from its first ``S * G`` samples. Rank ``r`` reads the
contiguous piece ``[r*S*B, (r+1)*S*B)`` — whole shards except at its two ends — so ranks split
the shards between them and every sample is seen exactly once per epoch (the last
``T - S*G`` samples of the epoch's order are dropped, a different set each epoch). A rank's
piece is cut into ``L = max(1, data.workers)`` contiguous lanes, one per DataLoader worker;
the rank's step ``j`` is batch ``j // L`` of lane ``j % L``, so the workers read disjoint
shards and hand batches back in step order. Each lane is shuffled in windows of
``data.shuffle_buffer`` samples (a buffer filled from the lane's stream, emitted in a seeded
random order, refilled). A run resumed at ``(epoch, step)`` computes for every lane the
window its next batch lies in and opens the shard holding that window's first sample at the
right offset: it does not reread the epoch from its first shard, and it continues with
exactly the batches the interrupted run would have seen (given the same world size and
``data.workers``). Decode-time crops depend on ``(seed, epoch, sample)`` as in
:mod:`selfsup.data.stream`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from selfsup.data.decode import DecodeSpec, decode_crop, describe_failure
from selfsup.data.loader import Batch
from selfsup.data.sources import IMAGE_EXTENSIONS, _scan_folder
from selfsup.data.stream import DecodedBatch, StreamingLoader, decode_batch, sample_rng
from selfsup.errors import MissingExtraError

logger = logging.getLogger("selfsup.data")

MANIFEST_NAME = "shards.json"
MANIFEST_FORMAT = "selfsup-shards/1"
DEFAULT_SHUFFLE_BUFFER = 1000
IMAGE_SUFFIXES = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
_URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_WEBDATASET_MISSING = (
    'WebDataset shards need the optional dependency webdataset: pip install "selfsup[shards]"'
)


def _webdataset() -> Any:
    try:
        import webdataset
    except ImportError as e:
        raise MissingExtraError(_WEBDATASET_MISSING) from e
    return webdataset


# --------------------------------------------------------------------------------------
# Naming shards
# --------------------------------------------------------------------------------------


def is_shard_spec(spec: str) -> bool:
    """Whether ``data.source`` names WebDataset shards rather than a folder, file or dataset:
    a ``.tar`` pattern or URL, ``::``-joined patterns, a ``shards.json`` manifest or a folder
    that holds one."""
    spec = spec.strip()
    if "::" in spec or Path(spec).name == MANIFEST_NAME:
        return True
    if re.search(r"\.(tar|tgz)(\.gz)?($|[?}])", spec):
        return True
    path = Path(spec).expanduser()
    return path.is_dir() and (path / MANIFEST_NAME).is_file()


def _is_local(url: str) -> bool:
    return url.startswith("file:") or not _URL_SCHEME.match(url) or len(url.split(":")[0]) == 1


def _local_path(url: str) -> Path:
    return Path(url[len("file:") :] if url.startswith("file:") else url).expanduser()


def expand_shard_spec(spec: str) -> list[str]:
    """The shard URLs of ``spec``: ``::``-joined brace patterns expanded by the webdataset
    library (``a-{000..009}.tar::b-{0..3}.tar``); a manifest or a folder with one gives its
    shards (paths relative to the manifest)."""
    spec = spec.strip()
    path = Path(spec).expanduser()
    manifest = path / MANIFEST_NAME if path.is_dir() else path
    if manifest.name == MANIFEST_NAME and manifest.is_file():
        data = _read_manifest_file(manifest)
        return [str(manifest.parent / s["name"]) for s in data["shards"]]
    wds = _webdataset()
    urls = list(wds.shardlists.expand_urls(spec))
    if not urls:
        raise ValueError(f"{spec}: names no shard")
    return urls


# --------------------------------------------------------------------------------------
# Reading shards
# --------------------------------------------------------------------------------------


@dataclass
class ShardSample:
    """One sample of a shard: its key, the encoded image and its extension, the label and the
    image's path in the folder the shards were written from (``KEY.path``), when present."""

    key: str
    data: bytes
    ext: str
    label: int | None
    path: str | None = None


def open_shard(url: str) -> Any:
    """A readable binary stream of one shard (local path, ``file:``, ``pipe:``, http(s)
    and the other schemes of ``webdataset.gopen``)."""
    if _is_local(url):
        return open(_local_path(url), "rb")
    return _webdataset().gopen(url)


def _key_and_ext(name: str) -> tuple[str | None, str]:
    """WebDataset's split of a member name: key = up to the first dot of the base name."""
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return (match.group(1), match.group(2).lower()) if match else (None, "")


def _image_member(sample: dict[str, Any]) -> tuple[str, bytes] | None:
    for ext in IMAGE_SUFFIXES:
        if ext in sample:
            return ext, sample[ext]
    return None


def _label(sample: dict[str, Any], where: str) -> int | None:
    raw = sample.get("cls")
    if raw is None:
        return None
    try:
        return int(raw.decode().strip() if isinstance(raw, bytes) else raw)
    except ValueError as e:
        raise ValueError(f"{where}: .cls member is not an integer: {raw[:20]!r}") from e


def iter_shard(url: str, skip: int = 0) -> Iterator[ShardSample]:
    """The samples of one shard in order (those with an image member), the first ``skip``
    read past without being handed out."""
    wds = _webdataset()
    stream = open_shard(url)
    try:
        files = wds.tariterators.tar_file_expander([{"url": url, "stream": stream}])
        n = 0
        for sample in wds.tariterators.group_by_keys(files):
            image = _image_member(sample)
            if image is None:
                continue
            n += 1
            if n <= skip:
                continue
            where = f"{url}#{sample['__key__']}"
            path = sample.get("path")
            yield ShardSample(
                sample["__key__"], image[1], image[0], _label(sample, where),
                path.decode() if isinstance(path, bytes) else path,
            )  # fmt: skip
    finally:
        stream.close()


def count_shard(url: str) -> tuple[int, int | None]:
    """(samples with an image member, largest label or None) of one shard; local shards are
    counted from their tar headers (labels read from the small ``.cls`` members)."""
    if not _is_local(url):
        top: int | None = None
        n = 0
        for sample in iter_shard(url):
            n += 1
            if sample.label is not None:
                top = sample.label if top is None else max(top, sample.label)
        return n, top
    keys: dict[str, bool] = {}
    top = None
    with tarfile.open(_local_path(url), "r:*") as tar:
        for member in tar:
            if not member.isreg():
                continue
            key, ext = _key_and_ext(member.name)
            if key is None:
                continue
            keys.setdefault(key, False)
            if ext in IMAGE_SUFFIXES:
                keys[key] = True
            elif ext == "cls":
                f = tar.extractfile(member)
                label = int(f.read().decode().strip()) if f else None
                if label is not None:
                    top = label if top is None else max(top, label)
    return sum(keys.values()), top


def _read_manifest_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable shard manifest ({e})") from e
    if data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("shards"), list):
        raise ValueError(f"{path}: not a selfsup shard manifest (format {MANIFEST_FORMAT})")
    return data


_SHARD_NAME = re.compile(r"[^/\s]+\.(?:tar|tgz|tar\.gz)(?=$|[\s?])")


def _shard_name(url: str) -> str | None:
    """The shard's file name inside a path or URL (``pipe:`` commands included)."""
    found = _SHARD_NAME.findall(url)
    return found[-1] if found else None


def _manifest_url(url: str) -> str | None:
    """Where the manifest beside a remote shard is: the URL with the shard's file name
    replaced by ``shards.json`` (``https://h/d/a-000.tar`` -> ``https://h/d/shards.json``,
    ``pipe:aws s3 cp s3://b/a-000.tar -`` -> ``pipe:aws s3 cp s3://b/shards.json -``)."""
    name = _shard_name(url)
    if name is None:
        return None
    head, _, tail = url.rpartition(name)
    return head + MANIFEST_NAME + tail


def _manifest_for(urls: Sequence[str]) -> tuple[dict[str, int], dict[str, Any]] | None:
    """(shard file name -> sample count, manifest) from the ``shards.json`` beside the first
    shard (a local file, or read through the webdataset library for remote shards), when it
    lists every shard of ``urls``."""
    if not urls:
        return None
    if _is_local(urls[0]):
        path = _local_path(urls[0]).parent / MANIFEST_NAME
        if not path.is_file():
            return None
        data = _read_manifest_file(path)
    else:
        data = _read_remote_manifest(urls[0])
        if data is None:
            return None
    counts = {s["name"]: int(s["samples"]) for s in data["shards"]}
    names = [_shard_name(u) for u in urls]
    if not all(n in counts for n in names):
        return None
    return counts, data


def _read_remote_manifest(url: str) -> dict[str, Any] | None:
    """The manifest beside a remote shard, or None when there is none (or it cannot be read)."""
    where = _manifest_url(url)
    if where is None:
        return None
    try:
        stream = _webdataset().gopen(where)
        try:
            text = stream.read()
        finally:
            stream.close()
        data = json.loads(text)
    except MissingExtraError:
        raise
    except Exception:  # no manifest there: count the shards instead
        return None
    if data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("shards"), list):
        return None
    return data


# --------------------------------------------------------------------------------------
# The streamed shard set
# --------------------------------------------------------------------------------------


@dataclass
class ShardStream:
    """A WebDataset shard set read while training (module docstring).

    Attributes:
        urls: the shards, in their listed order (which defines sample indices: sample ``i``
            of shard ``k`` is ``sum(counts[:k]) + i``).
        counts: samples per shard.
        classes: class names (from the manifest), or None.
        num_classes: number of classes when the shards carry ``.cls`` labels, else None.
        name: human-readable name.
        decode: how an image becomes a row.
        skipped: ``(shard#key, reason)`` of samples that failed to decode so far.
    """

    urls: list[str]
    counts: list[int]
    classes: list[str] | None
    num_classes: int | None
    name: str
    decode: DecodeSpec
    skipped: list[tuple[str, str]] = field(default_factory=list)
    labels: None = None
    """Per-sample labels are only known as the shards are read (``num_classes`` says whether
    there are any)."""

    def __post_init__(self) -> None:
        if len(self.urls) != len(self.counts):
            raise ValueError(f"{len(self.counts)} counts for {len(self.urls)} shards")
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def image_size(self) -> int:
        return self.decode.size

    @property
    def num_channels(self) -> int:
        return self.decode.channels

    def subset(self, indices: Any) -> ShardStream:
        raise ValueError(
            f"{self.name}: data.subset and data.holdout need random access; shards are read "
            "in sequence (write a smaller shard set with `selfsup shards` instead)"
        )

    def as_tensor_chw(self, indices: Sequence[int] | np.ndarray | None = None) -> torch.Tensor:
        """Centre crops of the samples ``indices`` (all if None), uint8 ``(n, C, S, S)``,
        read in shard order (meant for a few images, e.g. the first 8 for pictures)."""
        wanted = np.arange(len(self)) if indices is None else np.asarray(indices, np.int64)
        found: dict[int, np.ndarray] = {}
        todo = {int(i) for i in wanted}
        for k, url in enumerate(self.urls):
            lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
            here = sorted(i - lo for i in todo if lo <= i < hi)
            for j, sample in enumerate(iter_shard(url)) if here else ():
                if j in here:
                    found[lo + j] = decode_crop(sample.data, self.decode)
                    todo.discard(lo + j)
                if j >= here[-1]:
                    break
        if todo:
            raise IndexError(f"{self.name}: samples {sorted(todo)[:5]} not found in the shards")
        spec = self.decode
        rows = [found[int(i)] for i in wanted]
        out = np.stack(rows) if rows else np.empty((0, spec.size, spec.size, spec.channels))
        return torch.from_numpy(np.ascontiguousarray(out.astype(np.uint8).transpose(0, 3, 1, 2)))


def open_shards(spec: str, decode: DecodeSpec) -> ShardStream:
    """The :class:`ShardStream` of ``spec`` (sample counts from the manifest, else counted)."""
    urls = expand_shard_spec(spec)
    for url in urls:
        if _is_local(url) and not _local_path(url).is_file():
            raise FileNotFoundError(f"shard not found: {url} (from data.source={spec!r})")
    found = _manifest_for(urls)
    if found is not None:
        counts_by_name, manifest = found
        counts = [counts_by_name[_shard_name(u)] for u in urls]  # type: ignore[index]
        classes = manifest.get("classes")
        labeled = bool(manifest.get("labeled", classes is not None))
        num_classes = (
            (len(classes) if classes else manifest.get("num_classes")) if labeled else None
        )
    else:
        log = logger.info if _is_local(urls[0]) else logger.warning
        log("%s: no %s beside the shards; counting the samples of %d shard(s) by reading them",
            spec, MANIFEST_NAME, len(urls))  # fmt: skip
        counts, tops = [], []
        for url in urls:
            n, top = count_shard(url)
            counts.append(n)
            tops.append(top)
        classes = None
        known = [t for t in tops if t is not None]
        num_classes = max(known) + 1 if known else None
    if sum(counts) == 0:
        raise ValueError(f"{spec}: the shards hold no image sample")
    name = Path(urls[0]).parent.name or "shards"
    return ShardStream(urls, counts, classes, num_classes, name, decode)


# --------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lane:
    """One lane of a rank's piece of an epoch (module docstring), in epoch-stream positions.

    Attributes:
        index: lane number ``w``; it serves the rank's steps ``w, w + L, w + 2L, ...``.
        start: epoch-stream position of its first sample.
        length: samples in the lane (``batches * B``).
        first_batch: the lane's first batch to hand out (> 0 after a resume).
    """

    index: int
    start: int
    length: int
    first_batch: int


class ShardLoader(StreamingLoader):
    """Batches of a :class:`ShardStream` (module docstring for the order, the split over ranks
    and workers, and resume).

    Args:
        source: the shard set.
        batch_size: per-process batch ``B``.
        shuffle_buffer: window size of the in-lane shuffle (1 = shard order only).
        seed, rank, world_size, device, workers, prefetch: as
            :class:`~selfsup.data.stream.FolderStreamLoader`.
    """

    def __init__(
        self,
        source: ShardStream,
        batch_size: int,
        *,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        **kwargs: Any,
    ) -> None:
        super().__init__(source, batch_size, **kwargs)
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
        self.shuffle_buffer = shuffle_buffer
        self._check_size()

    @property
    def num_samples(self) -> int:
        return len(self.source)

    @property
    def lanes(self) -> int:
        """``L``: lanes per rank (one per worker)."""
        return max(1, self.workers)

    def shard_order(self, epoch: int) -> np.ndarray:
        """Indices into ``source.urls``: the order in which epoch ``epoch`` reads the shards."""
        rng = np.random.default_rng((self.seed, epoch, 0x5EED))
        return rng.permutation(len(self.source.urls))

    def lanes_for(self, start_step: int) -> list[Lane]:
        """This rank's lanes, resumed at ``start_step`` (same for every epoch)."""
        steps, b, n_lanes = self.steps_per_epoch, self.batch_size, self.lanes
        start = self.rank * steps * b
        lanes = []
        for w in range(n_lanes):
            batches = len(range(w, steps, n_lanes))
            lanes.append(Lane(w, start, batches * b, len(range(w, start_step, n_lanes))))
            start += batches * b
        return lanes

    def _epoch_dataset(self, epoch: int, start_step: int) -> IterableDataset:
        return _ShardEpoch(self, epoch, start_step)


class _ShardEpoch(IterableDataset):
    """The decoded batches of one epoch of one rank; DataLoader worker ``i`` serves lane
    ``(start_step + i) % L`` so that the DataLoader's round robin hands them out in step
    order."""

    def __init__(self, loader: ShardLoader, epoch: int, start_step: int) -> None:
        self.source: ShardStream = loader.source
        self.seed, self.epoch, self.start_step = loader.seed, epoch, start_step
        self.batch_size, self.n_lanes = loader.batch_size, loader.lanes
        self.window = loader.shuffle_buffer
        self.global_size = loader.global_batch_size
        self.offset = loader.rank * loader.batch_size
        self.lanes = loader.lanes_for(start_step)
        self.order = loader.shard_order(epoch)
        counts = np.asarray(self.source.counts, dtype=np.int64)[self.order]
        self.ends = np.cumsum(counts)  # epoch-stream end position of each shard in order

    def __iter__(self) -> Iterator[DecodedBatch]:
        info = get_worker_info()
        if info is None:  # in the main process: every lane, interleaved in step order
            iters = [self._lane_batches(lane) for lane in self._rotated()]
            while iters:
                for it in list(iters):
                    item = next(it, None)
                    if item is None:
                        iters.remove(it)
                    else:
                        yield item
            return
        if info.num_workers != self.n_lanes:
            raise RuntimeError(f"{info.num_workers} workers for {self.n_lanes} lanes")
        yield from self._lane_batches(self._rotated()[info.id])

    def _rotated(self) -> list[Lane]:
        s = self.start_step % self.n_lanes
        return self.lanes[s:] + self.lanes[:s]

    def _samples_from(self, position: int, end: int) -> Iterator[tuple[int, ShardSample]]:
        """(sample index, sample) of the epoch stream from ``position`` to ``end``."""
        k = int(np.searchsorted(self.ends, position, side="right"))
        while position < end:
            shard = int(self.order[k])
            url, count = self.source.urls[shard], self.source.counts[shard]
            j = position - int(self.ends[k] - count)  # position inside the shard
            first = int(self.source.offsets[shard])
            if j < count:
                for sample in iter_shard(url, skip=j):
                    yield first + j, sample
                    j += 1
                    position += 1
                    if position == end or j == count:
                        break
                if j < count and position < end:
                    raise ValueError(
                        f"{url}: holds {j} image samples, {count} expected (the manifest or "
                        "the count is stale: rewrite shards.json or remove it to recount)"
                    )
            k += 1

    def _lane_samples(self, lane: Lane) -> Iterator[tuple[int, ShardSample]]:
        """The lane's samples from its first batch on, shuffled window by window."""
        first = lane.first_batch * self.batch_size
        window = self.window
        w0 = first // window
        for w_start in range(w0 * window, lane.length, window):
            w_end = min(w_start + window, lane.length)
            begin = lane.start + w_start
            buffer = list(self._samples_from(begin, lane.start + w_end))
            rng = np.random.default_rng((self.seed, self.epoch, begin, 0xB0F))
            perm = rng.permutation(len(buffer)) if window > 1 else np.arange(len(buffer))
            drop = first - w_start if w_start == w0 * window else 0
            for i in perm[drop:]:
                yield buffer[int(i)]

    def _lane_batches(self, lane: Lane) -> Iterator[DecodedBatch]:
        samples = self._lane_samples(lane)
        b = self.batch_size
        n_batches = lane.length // b
        for i in range(lane.first_batch, n_batches):
            chunk = [next(samples) for _ in range(b)]
            yield self._decode(chunk, step=lane.index + i * self.n_lanes)

    def _decode(self, chunk: list[tuple[int, ShardSample]], step: int) -> DecodedBatch:
        index = np.array([i for i, _ in chunk], dtype=np.int64)
        items = [(s.data, f"{self.source.urls[self._shard_of(i)]}#{s.key}") for i, s in chunk]
        labels = None
        if self.source.num_classes is not None:
            labels = np.array([-1 if s.label is None else s.label for _, s in chunk], np.int64)
        images, index_out, labels, skipped = decode_batch(
            items, index, labels, self.source.decode,
            lambda k: sample_rng(self.seed, self.epoch, int(index[k])),
        )  # fmt: skip
        batch = Batch(
            images=images,
            labels=None if labels is None else torch.from_numpy(labels),
            indices=torch.from_numpy(index_out),
            epoch=self.epoch,
            step_in_epoch=step,
            global_size=self.global_size,
            offset=self.offset,
        )
        return DecodedBatch(batch, skipped)

    def _shard_of(self, index: int) -> int:
        return int(np.searchsorted(self.source.offsets, index, side="right")) - 1


# --------------------------------------------------------------------------------------
# Writing shards
# --------------------------------------------------------------------------------------


@dataclass
class ShardSetSummary:
    """What :func:`write_shards` wrote."""

    out: Path
    shards: list[Path]
    samples: int
    classes: list[str] | None
    skipped: list[tuple[str, str]]
    manifest: Path


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0
    tar.addfile(info, io.BytesIO(data))


def _check_decodes(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # any failure = unreadable file
        return describe_failure(e)
    return None


def write_shards(
    folder: str | Path,
    out: str | Path,
    *,
    shard_size: int = 1000,
    prefix: str = "train",
    shuffle: bool = True,
    seed: int = 0,
    verify: bool = True,
) -> ShardSetSummary:
    """Write the images of ``folder`` as WebDataset shards ``OUT/PREFIX-000000.tar`` ... of
    ``shard_size`` samples each, plus ``OUT/shards.json``.

    The files' bytes are stored as they are (no re-encoding). Class sub-folders give labels
    (``KEY.cls``; class names in the manifest); a flat folder is unlabeled. ``shuffle`` mixes
    the samples across shards (seeded), so that reading shards in a random order with a
    window shuffle mixes classes. ``verify`` decodes every file first and leaves out (and
    lists) those that fail, as the decode-once cache does.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    root, out = Path(folder).expanduser(), Path(out).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files, labels, classes, ignored = _scan_folder(root)
    skipped = [(str(root / rel), reason) for rel, reason in ignored]
    order = np.arange(len(files))
    if verify and files:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            reasons = list(pool.map(_check_decodes, (root / f for f in files)))
        skipped += [(str(root / f), r) for f, r in zip(files, reasons, strict=True) if r]
        order = np.array([i for i, r in enumerate(reasons) if r is None], dtype=np.int64)
    if len(order) == 0:
        raise ValueError(f"no readable image in {root} ({len(skipped)} file(s) skipped)")
    if shuffle:
        order = np.random.default_rng(seed).permutation(order)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    entries = []
    for number, start in enumerate(range(0, len(order), shard_size)):
        path = out / f"{prefix}-{number:06d}.tar"
        tmp = path.with_name(f".{path.name}.tmp")
        chunk = order[start : start + shard_size]
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for k in chunk:
                rel = files[int(k)]
                key = f"{int(k):09d}"
                ext = Path(rel).suffix.lower().lstrip(".")
                _add_member(tar, f"{key}.{'jpg' if ext == 'jpeg' else ext}",
                            (root / rel).read_bytes())  # fmt: skip
                if labels is not None:
                    _add_member(tar, f"{key}.cls", str(labels[int(k)]).encode())
                _add_member(tar, f"{key}.path", rel.encode())
        os.replace(tmp, path)
        written.append(path)
        entries.append({"name": path.name, "samples": len(chunk)})
    manifest = {
        "format": MANIFEST_FORMAT,
        "shards": entries,
        "samples": int(len(order)),
        "labeled": labels is not None,
        "classes": classes,
        "source": str(root.resolve()),
        "skipped": skipped,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    manifest_path = out / MANIFEST_NAME
    tmp = manifest_path.with_name(f".{MANIFEST_NAME}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, manifest_path)
    return ShardSetSummary(out, written, int(len(order)), classes, skipped, manifest_path)
