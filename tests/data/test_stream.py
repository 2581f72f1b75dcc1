"""Streaming image folders: decode-time crops, the loader's order contract, bad files, modes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps, JpegImagePlugin
from stream_images import jpeg_folder, smooth_image

from selfsup.data import (
    BatchLoader,
    DecodeSpec,
    FolderStream,
    FolderStreamLoader,
    ImageSource,
    make_loader,
    num_classes_of,
    open_training_source,
)
from selfsup.data.decode import center_box, decode_crop, random_crop_box


def _stream(root: Path, size: int = 16, **kwargs) -> FolderStream:
    source = open_training_source(str(root), mode="stream", image_size=size, **kwargs)
    assert isinstance(source, FolderStream)
    return source


# ----------------------------------------------------------------------------- decoding


def test_draft_decode_matches_a_full_decode(tmp_path: Path) -> None:
    """A big JPEG decoded at a DCT scale (the box is 8x the output) gives the same crop as a
    full decode + resize of that box, to JPEG noise."""
    path = tmp_path / "big.jpg"
    smooth_image(1, (1600, 1200)).save(path, quality=95)
    spec = DecodeSpec(64)
    fast = decode_crop(path, spec).astype(np.float32)
    with Image.open(path) as im:
        full = np.asarray(ImageOps.fit(im.convert("RGB"), (64, 64), Image.Resampling.BILINEAR))
    assert fast.shape == (64, 64, 3)
    assert np.abs(fast - full.astype(np.float32)).mean() < 3.0

    calls = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def recording_draft(self, mode, size):  # type: ignore[no-untyped-def]
        result = real_draft(self, mode, size)
        calls.append(self.size)
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(JpegImagePlugin.JpegImageFile, "draft", recording_draft)
        decode_crop(path, spec)
    assert calls == [(200, 150)]  # decoded at 1/8: 1200 / 8 = 150 >= 64


def test_random_crop_follows_the_box_and_the_seed(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    grid = np.zeros((100, 200, 3), dtype=np.uint8)
    grid[:, :, 0] = np.arange(200)[None, :]  # red = x
    grid[:, :, 1] = np.arange(100)[:, None]  # green = y
    Image.fromarray(grid).save(path)
    spec = DecodeSpec(8, scale=(0.1, 0.3))
    box = random_crop_box(200, 100, np.random.default_rng(5), spec.scale, spec.ratio)
    out = decode_crop(path, spec, np.random.default_rng(5)).astype(np.float32)
    left, top, w, h = box
    assert 0.1 * 200 * 100 * 0.9 <= w * h <= 0.3 * 200 * 100 * 1.1
    assert out[..., 0].min() >= left - 1 and out[..., 0].max() <= left + w
    assert out[..., 1].min() >= top - 1 and out[..., 1].max() <= top + h
    again = decode_crop(path, spec, np.random.default_rng(5))
    assert np.array_equal(out.astype(np.uint8), again)
    assert center_box(200, 100) == (50.0, 0.0, 100.0, 100.0)


def test_exif_orientation_is_applied_before_cropping(tmp_path: Path) -> None:
    upright = smooth_image(3, (40, 80))  # portrait as displayed
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # landscape on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright.save(tmp_path / "upright.jpg", quality=95)
    spec = DecodeSpec(24)
    a = decode_crop(tmp_path / "rotated.jpg", spec).astype(np.float32)
    b = decode_crop(tmp_path / "upright.jpg", spec).astype(np.float32)
    assert np.abs(a - b).mean() < 4.0


def test_decoders_agree_and_fail_clearly(
    tmp_path: Path, truncated_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchvision's libjpeg decoder (used for JPEGs without a DCT scale) and Pillow give the
    same crop; CMYK and grey JPEGs decode; a truncated JPEG is an error saying so."""
    from selfsup.data import decode

    path = tmp_path / "p.jpg"
    smooth_image(4, (300, 200)).save(path, quality=95)
    spec = DecodeSpec(150)
    fast = decode_crop(path, spec, np.random.default_rng(0)).astype(np.float32)
    monkeypatch.setattr(decode, "decode_jpeg", None)  # Pillow only
    slow = decode_crop(path, spec, np.random.default_rng(0)).astype(np.float32)
    monkeypatch.undo()
    assert np.abs(fast - slow).mean() < 1.0
    smooth_image(5, (64, 48)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert decode_crop(tmp_path / "cmyk.jpg", DecodeSpec(40)).shape == (40, 40, 3)
    smooth_image(6, (64, 48)).convert("L").save(tmp_path / "grey.jpg")
    assert decode_crop(tmp_path / "grey.jpg", DecodeSpec(40)).shape == (40, 40, 3)
    assert decode_crop(tmp_path / "grey.jpg", DecodeSpec(40, grayscale=True)).shape[2] == 1
    with pytest.raises(OSError, match="truncated"):
        decode_crop(truncated_jpeg, DecodeSpec(64))  # libjpeg path (96 px: no DCT scale)
    with pytest.raises(OSError, match="truncated"):
        decode_crop(truncated_jpeg, DecodeSpec(16))  # Pillow at a DCT scale


def test_modes_and_bytes_input(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (30, 30), (255, 0, 0, 0))  # fully transparent red
    rgba.save(tmp_path / "t.png")
    out = decode_crop((tmp_path / "t.png").read_bytes(), DecodeSpec(10))
    assert out.shape == (10, 10, 3) and (out == 255).all()  # composited on white
    grey = decode_crop(tmp_path / "t.png", DecodeSpec(10, grayscale=True))
    assert grey.shape == (10, 10, 1)
    with pytest.raises(ValueError, match="crop scale"):
        DecodeSpec(10, scale=(0.5, 0.2))


# ----------------------------------------------------------------------------- the loader


def test_stream_source_lists_files_labels_and_classes(tmp_path: Path) -> None:
    source = _stream(jpeg_folder(tmp_path / "d", 5), size=12)
    assert len(source) == 10 and source.classes == ["cat", "dog"]
    assert source.labels.tolist() == [0] * 5 + [1] * 5
    assert (source.image_size, source.num_channels, num_classes_of(source)) == (12, 3, 2)
    crops = source.as_tensor_chw([0, 7])
    assert crops.shape == (2, 3, 12, 12) and crops.dtype == torch.uint8
    part = source.subset([7, 1])
    assert part.files == [source.files[7], source.files[1]] and part.labels.tolist() == [1, 0]
    assert _stream(tmp_path / "d", grayscale=True).num_channels == 1


def test_holdout_and_subset_of_a_streamed_folder(tmp_path: Path) -> None:
    from selfsup.data import holdout_split, random_subset_indices

    source = _stream(jpeg_folder(tmp_path / "d", 6), size=8)  # 6 cats, 6 dogs
    train, held = holdout_split(source, 4)
    assert isinstance(train, FolderStream) and (len(train), len(held)) == (8, 4)
    assert sorted(held.labels.tolist()) == [0, 0, 1, 1]  # class-balanced
    assert not set(train.files) & set(held.files)
    part = train.subset(random_subset_indices(len(train), 5, seed=0))
    assert len(part) == 5 and set(part.files) <= set(train.files)


def test_order_is_the_batch_loaders_and_ranks_cover_the_epoch_once(tmp_path: Path) -> None:
    source = _stream(jpeg_folder(tmp_path / "d", 13), size=8)  # 26 files
    ranks = [FolderStreamLoader(source, 3, seed=4, rank=r, world_size=2, workers=0)
             for r in range(2)]  # fmt: skip
    array = ImageSource(np.zeros((26, 1, 1, 3), np.uint8))
    cached = [BatchLoader(array, 3, seed=4, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == 26 // 6 == 4
    seen = []
    for loader, reference in zip(ranks, cached, strict=True):
        batches = list(loader.iterate(2))
        for b in batches:
            assert b.images.shape == (3, 3, 8, 8) and b.images.dtype == torch.uint8
            assert (b.global_size, b.offset) == (6, 3 * loader.rank)
            assert torch.equal(b.labels, torch.as_tensor(source.labels[b.indices.numpy()]))
        assert [b.indices.tolist() for b in batches] == [
            reference.indices_for_step(2, s).tolist() for s in range(4)
        ]
        seen += [i for b in batches for i in b.indices.tolist()]
    assert len(seen) == len(set(seen)) == 24  # 26 - 2 dropped, none twice


def test_resume_and_worker_count_give_identical_batches(tmp_path: Path) -> None:
    source = _stream(jpeg_folder(tmp_path / "d", 8), size=8)
    full = list(FolderStreamLoader(source, 4, seed=1, workers=2).iterate(1))
    resumed = list(FolderStreamLoader(source, 4, seed=1, workers=0).iterate(1, start_step=2))
    assert [b.step_in_epoch for b in resumed] == [2, 3]
    for a, b in zip(full[2:], resumed, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.indices, b.indices)
    other_epoch = list(FolderStreamLoader(source, 4, seed=1, workers=0).iterate(2))
    assert not torch.equal(full[0].images, other_epoch[0].images)


def test_bad_files_are_replaced_listed_and_warned_once(
    tmp_path: Path, truncated_jpeg: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    root = jpeg_folder(tmp_path / "d", 3, classes=())
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    (root / "cut.jpg").write_bytes(truncated_jpeg)
    (root / "notes.txt").write_text("ignored")
    source = _stream(root)
    assert [Path(p).name for p, _ in source.skipped] == ["notes.txt"]
    loader = FolderStreamLoader(source, 6, seed=0, workers=2)
    with caplog.at_level(logging.WARNING, logger="selfsup.data"):
        for _ in range(2):
            (batch,) = list(loader.iterate(0))
    assert batch.images.shape[0] == 6
    bad = {"zero.jpg", "text.jpg", "cut.jpg"}
    assert {Path(p).name for p, _ in source.skipped} == bad | {"notes.txt"}
    assert all(reason for _, reason in source.skipped)
    good = {i for i, f in enumerate(source.files) if Path(f).name not in bad}
    assert set(batch.indices.tolist()) <= good  # bad rows hold good images now
    assert sum("skipped unreadable file" in r.message for r in caplog.records) == 3


def test_a_batch_of_only_bad_files_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    for i in range(2):
        (root / f"{i}.jpg").write_bytes(b"junk")
    loader = FolderStreamLoader(_stream(root), 2, workers=0)
    with pytest.raises(ValueError, match="no file of a batch of 2 could be decoded"):
        list(loader.iterate(0))


# ----------------------------------------------------------------------------- modes


def test_auto_mode_streams_only_what_exceeds_the_cache_budget(tmp_path: Path) -> None:
    root = jpeg_folder(tmp_path / "d", 4)
    cached = open_training_source(str(root), image_size=16)
    assert isinstance(cached, ImageSource) and cached.images.shape == (8, 16, 16, 3)
    tiny_budget = 8 * 16 * 16 * 3 / 2**30 / 2  # half of what the cache needs
    streamed = open_training_source(str(root), image_size=16, cache_budget_gb=tiny_budget)
    assert isinstance(streamed, FolderStream)
    forced = open_training_source(str(root), mode="cache", image_size=16, cache_budget_gb=1e-9)
    assert isinstance(forced, ImageSource)
    assert isinstance(make_loader(streamed, 4, workers=0), FolderStreamLoader)
    assert isinstance(make_loader(cached, 4), BatchLoader)


def test_modes_a_source_cannot_be_read_in_are_refused(tmp_path: Path) -> None:
    npz = tmp_path / "x.npz"
    np.savez(npz, images=np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="data.mode=stream reads image folders"):
        open_training_source(str(npz), mode="stream")
    with pytest.raises(ValueError, match="only streamed"):
        open_training_source(str(tmp_path / "s-{0..3}.tar"), mode="cache")
    with pytest.raises(ValueError, match="data.mode must be one of"):
        open_training_source(str(npz), mode="lazy")


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
def test_training_on_a_streamed_folder_resumes_exactly(tmp_path: Path) -> None:
    """A run on a streamed folder (with a bad file) stopped at step 3 and resumed ends with the
    weights of the uninterrupted run; the bad file is listed in skipped_files.json."""
    from safetensors.torch import load_file

    from selfsup.config import load_config
    from selfsup.train import Trainer

    root = jpeg_folder(tmp_path / "d", 8)
    (root / "cat" / "zz_bad.jpg").write_bytes(b"\xff\xd8 cut")
    common = [
        f"data.source={root}", "data.mode=stream", "data.image_size=16", "data.workers=1",
        "eval_data.source=null", "backbone.name=resnet_tiny", "train.batch_size=4",
        "train.epochs=2", "train.precision=fp32", "train.progress=false",
        "train.tensorboard=false", "train.num_threads=1", "train.checkpoint_every_steps=2",
        "train.knn_monitor.every_epochs=0",
    ]  # fmt: skip

    def train(out: str, stop: int | None = None, resume: bool = False) -> Path:
        cfg = load_config("simclr", None, [*common, f"out_dir={tmp_path / out}"])
        return Trainer(cfg, resume=resume, stop_at_step=stop).fit().run_dir

    whole = train("whole")
    train("split", stop=3)
    split = train("split", resume=True)
    a = load_file(str(whole / "encoder.safetensors"))
    b = load_file(str(split / "encoder.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for run in (whole, split):  # the resumed run keeps what its first session found
        skipped = json.loads((run / "skipped_files.json").read_text())
        assert [Path(p).name for p, _ in skipped] == ["zz_bad.jpg"]
    assert json.loads((whole / "summary.json").read_text())["skipped_files"] == 1
