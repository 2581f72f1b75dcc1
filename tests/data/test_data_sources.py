"""Tests for selfsup.data.sources: npz files, image folders, the cache, named datasets."""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import (
    ImageSource,
    balanced_subset_indices,
    list_datasets,
    load_source,
    random_subset_indices,
)
from selfsup.data import sources as sources_mod

NoiseFn = Callable[..., Image.Image]

# ----------------------------------------------------------------------------- ImageSource


def test_image_source_basics() -> None:
    images = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
    src = ImageSource(images=images, labels=[0, 1, 0, 1, 2], classes=["a", "b", "c"], name="t")
    assert len(src) == 5 and src.image_size == 4 and src.num_channels == 3
    assert src.labels.dtype == np.int64
    sub = src.subset([3, 1])
    assert len(sub) == 2
    np.testing.assert_array_equal(sub.images, images[[3, 1]])
    np.testing.assert_array_equal(sub.labels, [1, 1])
    t = src.as_tensor_chw([4, 0, 2])
    assert t.shape == (3, 3, 4, 4) and t.dtype == torch.uint8 and t.is_contiguous()
    assert torch.equal(t, torch.from_numpy(images[[4, 0, 2]]).permute(0, 3, 1, 2))
    assert src.as_tensor_chw().shape == (5, 3, 4, 4)


def test_image_source_validation() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ImageSource(images=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        ImageSource(images=np.zeros((2, 4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="labels"):
        ImageSource(images=np.zeros((2, 4, 4, 3), np.uint8), labels=[1])


# ----------------------------------------------------------------------------- npz


def _write_npz(path: Path, **members: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **members)
    return path


def test_npz_nhwc_with_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    p = _write_npz(
        tmp_path / "d.npz", images=images, labels=np.arange(6) % 2, classes=np.array(["cat", "dog"])
    )
    src = load_source(str(p))
    np.testing.assert_array_equal(src.images, images)
    assert src.labels.dtype == np.int64 and list(src.labels) == [0, 1, 0, 1, 0, 1]
    assert src.classes == ["cat", "dog"] and src.name == "d"


def test_npz_nhw_without_labels_stays_one_channel(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8), dtype=np.uint8)
    src = load_source(str(_write_npz(tmp_path / "g.npz", images=images)))
    assert src.images.shape == (4, 8, 8, 1) and src.labels is None and src.classes is None
    np.testing.assert_array_equal(src.images[..., 0], images)
    rgb = src.to_rgb()
    assert rgb.images.shape == (4, 8, 8, 3) and rgb.to_rgb() is rgb
    np.testing.assert_array_equal(rgb.images[..., 2], images)


def test_npz_grayscale_and_resize(tmp_path: Path) -> None:
    images = np.full((3, 8, 10, 3), 200, dtype=np.uint8)
    p = _write_npz(tmp_path / "r.npz", images=images)
    src = load_source(str(p), image_size=4, grayscale=True, cache_dir=str(tmp_path / "c"))
    assert src.images.shape == (3, 4, 4, 1)
    assert isinstance(src.images, np.memmap)
    assert np.all(src.images == 200)


def test_npz_float_images_converted(tmp_path: Path) -> None:
    images = np.linspace(0, 1, 2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
    src = load_source(str(_write_npz(tmp_path / "f.npz", images=images)))
    assert src.images.dtype == np.uint8 and src.images.max() == 255 and src.images.min() == 0
    bad = _write_npz(tmp_path / "b.npz", images=np.full((2, 4, 4, 3), 1000.0))
    with pytest.raises(ValueError, match="uint8"):
        load_source(str(bad))


def test_npz_missing_images_names_members(tmp_path: Path) -> None:
    p = _write_npz(tmp_path / "bad.npz", x=np.zeros(3), labels=np.zeros(3))
    with pytest.raises(ValueError) as err:
        load_source(str(p))
    msg = str(err.value)
    assert "bad.npz" in msg and "'x'" in msg and "'labels'" in msg


# ----------------------------------------------------------------------------- folders

_MODES = [
    ("RGB", "jpg"),
    ("L", "png"),
    ("P", "png"),
    ("RGBA", "png"),
    ("CMYK", "jpg"),
    ("I;16", "png"),
]


def _make_class_folder(root: Path, noise_image: NoiseFn, truncated_jpeg: bytes) -> Path:
    """cats/ holds the good images (various modes and sizes), dogs/ one good one + junk."""
    (root / "cats").mkdir(parents=True)
    (root / "dogs" / "nested").mkdir(parents=True)
    for i, (mode, ext) in enumerate(_MODES):
        noise_image(mode, (20 + 7 * i, 33 - 2 * i), seed=i).save(
            root / "cats" / f"{i}_{mode.replace(';', '')}.{ext}"
        )
    noise_image("RGB", (64, 48), seed=9).save(root / "dogs" / "nested" / "good.png")
    (root / "dogs" / "empty.png").write_bytes(b"")
    (root / "dogs" / "trunc.jpg").write_bytes(truncated_jpeg)
    (root / "dogs" / "text.jpg").write_text("definitely not a jpeg")
    (root / "dogs" / "notes.txt").write_text("a README")
    (root / "dogs" / ".DS_Store").write_bytes(b"\0\0")  # hidden: ignored silently
    return root


def test_class_folder_decodes_converts_and_skips(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, noise_image: NoiseFn, truncated_jpeg: bytes
) -> None:
    root = _make_class_folder(tmp_path / "imgs", noise_image, truncated_jpeg)
    with caplog.at_level(logging.WARNING, logger="selfsup.data"):
        src = load_source(str(root), image_size=16, cache_dir=str(tmp_path / "cache"))
    assert src.images.shape == (len(_MODES) + 1, 16, 16, 3)
    assert src.images.dtype == np.uint8
    assert src.classes == ["cats", "dogs"]
    assert list(src.labels) == [0] * len(_MODES) + [1]
    skipped = {Path(p).name: reason for p, reason in src.skipped}
    assert set(skipped) == {"empty.png", "trunc.jpg", "text.jpg", "notes.txt"}
    assert "truncated" in skipped["trunc.jpg"]
    assert "extension" in skipped["notes.txt"]
    assert "skipped 4" in caplog.text and "trunc.jpg" in caplog.text
    # Decoded content matches a direct PIL decode of the same file.
    direct = sources_mod._decode_image(str(root / "cats" / "0_RGB.jpg"), 16, False)
    np.testing.assert_array_equal(src.images[0], direct)


def test_flat_folder_is_unlabeled_and_grayscale(tmp_path: Path, noise_image: NoiseFn) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(3):
        noise_image("RGB", (30, 20), seed=i).save(root / f"{i}.png")
    src = load_source(str(root), image_size=8, grayscale=True)
    assert src.images.shape == (3, 8, 8, 1) and src.labels is None and src.classes is None
    assert src.skipped == []


def test_folder_default_image_size(tmp_path: Path, noise_image: NoiseFn) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    noise_image("RGB", (100, 80)).save(root / "a.png")
    assert load_source(str(root)).image_size == sources_mod.DEFAULT_FOLDER_IMAGE_SIZE == 64


def test_transparent_pixels_composited_on_white(tmp_path: Path) -> None:
    root = tmp_path / "alpha"
    root.mkdir()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(root / "clear.png")
    src = load_source(str(root), image_size=8)
    assert np.all(src.images == 255)


def test_empty_and_all_bad_folders_raise(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        load_source(str(empty))
    bad = tmp_path / "allbad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.png").write_text("nope")
    with pytest.raises(ValueError, match="allbad"):
        load_source(str(bad), cache_dir=str(tmp_path / "c"))
    assert not any((tmp_path / "c").glob("*.npy"))  # nothing half-written left behind


def test_missing_path_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_source(str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------- cache


def _counting_decoder(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = sources_mod._decode_image

    def counted(path: str, image_size: int, grayscale: bool) -> np.ndarray:
        calls.append(path)
        return real(path, image_size, grayscale)

    monkeypatch.setattr(sources_mod, "_decode_image", counted)
    return calls


def test_cache_hit_returns_memmap_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, noise_image: NoiseFn, truncated_jpeg: bytes
) -> None:
    root = _make_class_folder(tmp_path / "imgs", noise_image, truncated_jpeg)
    cache = str(tmp_path / "cache")
    first = load_source(str(root), image_size=16, cache_dir=cache)

    def fail(*args: object) -> np.ndarray:
        raise AssertionError("decoder called on a cache hit")

    monkeypatch.setattr(sources_mod, "_decode_image", fail)
    second = load_source(str(root), image_size=16, cache_dir=cache)
    assert isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert second.classes == first.classes
    assert [tuple(s) for s in second.skipped] == [tuple(s) for s in first.skipped]
    assert not list(Path(cache).glob("*.tmp"))


def test_cache_uses_env_dir(tmp_path: Path, noise_image: NoiseFn) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    noise_image("RGB", (10, 10)).save(root / "a.png")
    load_source(str(root), image_size=8)
    assert list((tmp_path / "_cache").glob("flat-8px-*.npy"))  # SELFSUP_CACHE (conftest)


def test_cache_rebuilds_on_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, noise_image: NoiseFn
) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(3):
        noise_image("RGB", (20, 20), seed=i).save(root / f"{i}.png")
    calls = _counting_decoder(monkeypatch)
    load_source(str(root), image_size=8)
    assert len(calls) == 3
    load_source(str(root), image_size=8)
    assert len(calls) == 3  # cache hit

    st = (root / "0.png").stat()
    os.utime(root / "0.png", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touch
    load_source(str(root), image_size=8)
    assert len(calls) == 6

    noise_image("RGB", (20, 20), seed=7).save(root / "3.png")  # add a file
    src = load_source(str(root), image_size=8)
    assert len(calls) == 10 and len(src) == 4

    src = load_source(str(root), image_size=12)  # new resolution
    assert len(calls) == 14 and src.image_size == 12


# ----------------------------------------------------------------------------- named datasets


def _fake_cifar(root: Path, split: str = "train", n: int = 10) -> np.ndarray:
    images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    _write_npz(
        root / "cifar10" / f"{split}.npz",
        images=images,
        labels=np.arange(n, dtype=np.int64) % 10,
        classes=np.array([f"c{i}" for i in range(10)]),
    )
    return images


def test_list_datasets() -> None:
    names = list_datasets()
    assert {"cifar10", "cifar100", "stl10", "svhn", "mnist", "fashion_mnist", "digits"} <= set(
        names
    )


def test_named_npz_via_root_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = _fake_cifar(tmp_path / "data", "train")
    _fake_cifar(tmp_path / "data", "test", n=4)
    src = load_source("cifar10", root=str(tmp_path / "data"))
    np.testing.assert_array_equal(src.images, images)
    assert src.classes[0] == "c0" and src.labels.dtype == np.int64
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path / "data"))
    assert len(load_source("cifar10", split="test")) == 4
    up = load_source("cifar10", image_size=40)
    assert up.images.shape == (10, 40, 40, 3)


def test_named_missing_without_download_hints(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_source("cifar100", root=str(tmp_path / "data"))
    msg = str(err.value)
    assert "download=True" in msg and str(tmp_path / "data") in msg


def test_named_torchvision_present_but_incomplete(tmp_path: Path) -> None:
    (tmp_path / "data" / "cifar10").mkdir(parents=True)  # folder exists, files do not
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_source("cifar10", root=str(tmp_path / "data"))


def _write_idx(path: Path, arr: np.ndarray) -> None:
    code = 0x0800 | arr.ndim  # ubyte
    header = struct.pack(">I", code) + b"".join(struct.pack(">I", d) for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_named_torchvision_mnist_from_raw_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "data" / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        _write_idx(
            raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        )
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    src = load_source("mnist", root=str(tmp_path / "data"))
    assert src.images.shape == (12, 28, 28, 1) and list(src.labels[:3]) == [0, 1, 2]
    assert src.classes is not None and len(src.classes) == 10
    assert list((tmp_path / "_cache").glob("mnist-train-*.npz"))

    def boom(*args: object) -> None:
        raise AssertionError("torchvision used despite the cached npz")

    monkeypatch.setattr(sources_mod, "_torchvision_arrays", boom)
    again = load_source("mnist", root=str(tmp_path / "data"))
    np.testing.assert_array_equal(again.images, src.images)


def test_digits() -> None:
    train = load_source("digits")
    test = load_source("digits", split="test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.images.shape[1:] == (32, 32, 3) and train.images.dtype == np.uint8
    assert set(np.unique(train.labels)) == set(range(10)) and train.labels.dtype == np.int64
    assert train.images.max() > 200
    small = load_source("digits", image_size=16, grayscale=True)
    assert small.images.shape[1:] == (16, 16, 1)
    np.testing.assert_array_equal(load_source("digits").labels, train.labels)  # fixed split


# ----------------------------------------------------------------------------- subsets


def test_random_subset_indices() -> None:
    idx = random_subset_indices(100, 10, seed=3)
    assert len(idx) == 10 and len(set(idx.tolist())) == 10 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, random_subset_indices(100, 10, seed=3))
    assert len(random_subset_indices(5, 10)) == 5


def test_balanced_subset_indices() -> None:
    labels = np.array([0] * 50 + [1] * 30 + [2] * 3)
    idx = balanced_subset_indices(labels, 21, seed=0)
    counts = np.bincount(labels[idx], minlength=3)
    assert len(idx) == 21 and len(set(idx.tolist())) == 21
    assert counts[2] == 3 and abs(counts[0] - counts[1]) <= 1
    even = np.bincount(labels[balanced_subset_indices(labels, 9, seed=1)], minlength=3)
    assert list(even) == [3, 3, 3]
