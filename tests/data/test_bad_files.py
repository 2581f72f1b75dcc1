"""Bad files never stop a run: every kind of broken entry of a real photo folder is decoded
correctly or skipped and listed with a reason; too many of them stop training with a clear
error. The decode cache is keyed by content (a moved folder keeps it), built by one process at
a time, and rebuilt when corrupt."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

import selfsup.data.sources as sources_mod
from selfsup.cli import main
from selfsup.data import load_source


def _zero_width_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 5)) + chunk(b"IEND", b""))  # fmt: skip


def _solid(color, size=(24, 24), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def _exif_rotated_jpeg(path: Path) -> None:
    """A JPEG stored on its side whose EXIF orientation (6: rotate 90° clockwise to view)
    makes it upright: viewed, its top half is black and its bottom half white."""
    upright = np.zeros((40, 40), np.uint8)
    upright[20:] = 255
    stored = Image.fromarray(upright).rotate(90, expand=True)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.convert("RGB").save(path, exif=exif, quality=95)


def _bad_folder(root: Path) -> dict[str, str]:
    """A class folder with good images of every awkward kind and every kind of broken entry;
    returns {file name: a word its skip reason must contain} for the broken ones."""
    good, junk = root / "good", root / "junk"
    good.mkdir(parents=True)
    junk.mkdir()
    for i in range(12):
        _solid((20 * i, 100, 200)).save(good / f"{i}.png")
    frames = [_solid((255, 0, 0), mode="RGB"), _solid((0, 0, 255), mode="RGB")]
    frames[0].save(good / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
    pages = [_solid((0, 255, 0)), _solid((0, 0, 0))]
    pages[0].save(good / "pages.tif", save_all=True, append_images=pages[1:])
    _exif_rotated_jpeg(good / "rotated.jpg")
    Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(good / "deep16.png")
    _solid((10, 200, 10)).convert("P").save(good / "palette.png")
    if features.check("webp"):
        _solid((200, 10, 10)).save(good / "photo.webp")
    if features.check("avif"):
        _solid((200, 10, 10)).save(good / "photo.avif")
    expected = {
        "dangling.jpg": "broken symbolic link",
        "vanished.png": "vanished",
        "locked.png": "permission denied",
        "bomb.png": "decompression-bomb",
        "zero.png": "not an image",
        "fifo.jpg": "not a regular file",
        "random.jpg": "not an image",
        "notes.txt": "extension",
        "folder.jpg": "folder named like an image",
    }
    os.symlink(root / "nowhere" / "gone.jpg", junk / "dangling.jpg")
    _solid((1, 2, 3)).save(junk / "vanished.png")
    _solid((1, 2, 3)).save(junk / "locked.png")
    _solid((1, 2, 3), size=(64, 64)).save(junk / "bomb.png")
    (junk / "zero.png").write_bytes(_zero_width_png())
    os.mkfifo(junk / "fifo.jpg")  # opening it would block forever
    (junk / "random.jpg").write_bytes(os.urandom(300))
    (junk / "notes.txt").write_text("a README")
    (junk / "folder.jpg").mkdir()
    _solid((1, 2, 3)).save(junk / "folder.jpg" / "inside.png")
    return expected


@pytest.fixture
def hostile_decoder(monkeypatch):
    """``vanished.png`` is deleted between the listing and its decoding, ``locked.png`` cannot
    be opened (as for another user's file; the tests may run as root, who reads anything),
    and Pillow's decompression-bomb limit is small enough for ``bomb.png``."""
    real = sources_mod._decode_image
    real_open = Image.open

    def decode(path: str, image_size: int, grayscale: bool) -> np.ndarray:
        if path.endswith("vanished.png"):
            Path(path).unlink()
        return real(path, image_size, grayscale)

    def open_(fp, *args, **kwargs):
        if str(fp).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(sources_mod, "_decode_image", decode)
    monkeypatch.setattr(Image, "open", open_)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # bomb.png has 4096 > 2 x 1500


def test_every_kind_of_bad_file_is_skipped_and_listed(tmp_path, hostile_decoder):
    expected = _bad_folder(tmp_path / "photos")
    src = load_source(str(tmp_path / "photos"), image_size=16, cache_dir=str(tmp_path / "c"))
    reasons = {Path(p).name: r for p, r in src.skipped}
    assert set(reasons) == set(expected)
    for name, word in expected.items():
        assert word in reasons[name], (name, reasons[name])
    good = 12 + 5 + features.check("webp") + features.check("avif")
    assert len(src) == good and list(src.labels) == [0] * good  # only good/ gave images


def test_awkward_images_decode_correctly(tmp_path):
    _bad_folder(tmp_path / "photos")
    good = tmp_path / "photos" / "good"
    decode = sources_mod._decode_image
    red = np.array([255, 0, 0])
    assert (decode(str(good / "animated.gif"), 8, False) == red).all()  # the first frame
    assert (decode(str(good / "pages.tif"), 8, False) == [0, 255, 0]).all()  # the first page
    upright = decode(str(good / "rotated.jpg"), 16, False)[..., 0].astype(int)
    assert upright[:6].mean() < 30 and upright[-6:].mean() > 225  # EXIF orientation honoured
    assert (decode(str(good / "deep16.png"), 8, False) == 255).all()  # 16 bit -> 8 bit
    assert (np.abs(decode(str(good / "palette.png"), 8, False).astype(int) - [10, 200, 10])
            <= 8).all()  # fmt: skip
    for kind in ("webp", "avif"):
        if features.check(kind):
            img = decode(str(good / f"photo.{kind}"), 8, False).astype(int)
            assert (np.abs(img - [200, 10, 10]) <= 12).all(), kind


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "simclr", f"data.source={data}", f"out_dir={out}", "data.image_size=16",
            "backbone.name=resnet_tiny", "train.batch_size=8", "train.max_steps=2",
            "train.precision=fp32", "train.progress=false", "train.tensorboard=false",
            "train.num_threads=1", "method_args.proj_hidden_dim=16", "method_args.proj_out_dim=8",
            "eval_data.source=null", *extra]  # fmt: skip


def test_training_completes_and_counts_the_skipped_files(tmp_path, hostile_decoder, capsys):
    expected = _bad_folder(tmp_path / "photos")
    run = tmp_path / "run"
    # 7 of the ~26 image-named files cannot be used: over the default 10%, a clear error
    assert main(_train_args(tmp_path / "photos", run)) == 1
    err = capsys.readouterr().err
    assert "could not be read" in err and "data.max_skipped_fraction=0.1" in err
    assert not (run / "checkpoints").exists()
    # accepted when allowed: the run completes and lists them (vanished.png is gone for good)
    assert main(_train_args(tmp_path / "photos", run, "data.max_skipped_fraction=0.5")) == 0
    listed = json.loads((run / "skipped_files.json").read_text())
    assert {Path(p).name for p, _ in listed} == set(expected) - {"vanished.png"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_files"] == len(expected) - 1 and summary["steps"] == 2


# ----------------------------------------------------------------------------- the cache


def _flat_folder(root: Path, n: int = 6) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        _solid((30 * i, 60, 90)).save(root / f"{i}.png")
    (root / "broken.png").write_bytes(b"nope")
    return root


def _count_decodes(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = sources_mod._decode_image

    def counted(path: str, image_size: int, grayscale: bool) -> np.ndarray:
        calls.append(path)
        return real(path, image_size, grayscale)

    monkeypatch.setattr(sources_mod, "_decode_image", counted)
    return calls


def test_a_moved_folder_keeps_its_cache(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    first = load_source(str(_flat_folder(tmp_path / "a" / "photos")), image_size=8,
                        cache_dir=cache)  # fmt: skip
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(tmp_path / "a" / "photos", moved)  # keeps mtimes, as mv and rsync -a do
    calls = _count_decodes(monkeypatch)
    again = load_source(str(moved), image_size=8, cache_dir=cache)
    assert calls == []
    np.testing.assert_array_equal(first.images, again.images)
    assert again.skipped == [(str(moved / "broken.png"), again.skipped[0][1])]


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "meta"])
def test_a_corrupt_cache_is_detected_and_rebuilt(tmp_path, monkeypatch, damage):
    cache = tmp_path / "cache"
    folder = _flat_folder(tmp_path / "photos")
    first = np.array(load_source(str(folder), image_size=8, cache_dir=str(cache)).images)
    (npy,) = cache.glob("photos-8px-*.npy")
    if damage == "truncate":
        npy.write_bytes(npy.read_bytes()[:-100])
    elif damage == "overwrite":  # the same size, other bytes: only the digest notices
        data = bytearray(npy.read_bytes())
        data[-50:] = bytes(50)
        npy.write_bytes(bytes(data))
    else:
        npy.with_suffix(".json").write_text('{"labels": nu')
    calls = _count_decodes(monkeypatch)
    again = load_source(str(folder), image_size=8, cache_dir=str(cache))
    assert len(calls) == 7
    np.testing.assert_array_equal(again.images, first)


def _load_in_child(folder: str, cache: str, log: str, start) -> None:  # a forked process
    real = sources_mod._decode_image

    def slow(path: str, image_size: int, grayscale: bool) -> np.ndarray:
        with open(log, "a") as f:
            f.write(path + "\n")
        import time

        time.sleep(0.05)
        return real(path, image_size, grayscale)

    sources_mod._decode_image = slow
    start.wait()
    src = load_source(folder, image_size=8, cache_dir=cache)
    np.save(f"{log}.{os.getpid()}.npy", np.asarray(src.images))


def test_two_processes_building_one_cache_decode_once(tmp_path):
    folder = _flat_folder(tmp_path / "photos", n=12)
    cache, log = str(tmp_path / "cache"), str(tmp_path / "decodes.log")
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_load_in_child, args=(str(folder), cache, log, start))
             for _ in range(2)]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert len(Path(log).read_text().splitlines()) == 13  # one build; the other waited for it
    a, b = (np.load(f"{log}.{p.pid}.npy") for p in procs)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 12 and not list(Path(cache).glob("*.tmp"))


def test_a_cache_hit_lists_the_same_skipped_files(tmp_path):
    """A cache hit lists the same skipped files, under the folder's current path."""
    folder = _flat_folder(tmp_path / "photos")
    first = load_source(str(folder), image_size=8, cache_dir=str(tmp_path / "c"))
    second = load_source(str(folder), image_size=8, cache_dir=str(tmp_path / "c"))
    assert first.skipped == second.skipped == [(str(folder / "broken.png"), first.skipped[0][1])]
