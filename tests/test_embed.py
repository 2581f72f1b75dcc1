"""selfsup embed: every image of a folder (or shard set) through the encoder, in file order,
bad files skipped and listed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup import cli
from selfsup.backbones import build_backbone
from selfsup.config import BackboneConfig
from selfsup.data import write_shards
from selfsup.data.decode import DecodeSpec, decode_crop
from selfsup.embed import embed_images
from selfsup.errors import MissingExtraError
from selfsup.models import Encoder, encoder_meta


@pytest.fixture
def encoder_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    backbone = build_backbone("resnet_tiny")
    meta = encoder_meta(BackboneConfig(name="resnet_tiny"), image_size=16, in_channels=3,
                        normalize="cifar10", method="test",
                        feature_dim=backbone.feature_dim)  # fmt: skip
    return Encoder(backbone, meta).save_pretrained(tmp_path / "encoder")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """7 images in classes and a nested folder, one broken file and a non-image."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    names = ["a/1.jpg", "a/2.png", "b/3.jpg", "b/deep/4.jpg", "5.jpg", "b/6.jpg", "a/7.jpg"]
    for rel in names:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        size = (int(rng.integers(20, 50)), int(rng.integers(20, 50)))
        im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        if rel == "a/2.png":  # transparent pixels: composited on white
            im.putalpha(Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8)))
        exif = Image.Exif()
        if rel == "b/6.jpg":  # displayed rotated
            exif[0x0112] = 6
        im.save(root / rel, quality=95, exif=exif)
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (root / "notes.txt").write_text("not an image")
    return root


def test_embed_folder_to_npy(folder: Path, encoder_dir: Path, tmp_path: Path) -> None:
    summary = embed_images(folder, encoder_dir, tmp_path / "out" / "emb.npy", batch_size=3,
                           workers=2, progress=False)  # fmt: skip
    features = np.load(tmp_path / "out" / "emb.npy")
    names = (tmp_path / "out" / "emb.txt").read_text().splitlines()
    assert names == ["5.jpg", "a/1.jpg", "a/2.png", "a/7.jpg", "b/3.jpg", "b/6.jpg",
                     "b/deep/4.jpg"]  # fmt: skip
    assert features.shape == (7, 128) and features.dtype == np.float32
    assert summary.images == 7 and summary.feature_dim == 128
    assert [Path(p).name for p, _ in summary.skipped] == ["broken.jpg"]
    listed = json.loads((tmp_path / "out" / "emb.skipped.json").read_text())
    assert listed[0][0] == "a/broken.jpg" and listed[0][1]
    encoder = Encoder.from_pretrained(encoder_dir)
    with torch.no_grad():
        expected = encoder(encoder.preprocess([Image.open(folder / n) for n in names]))
    assert np.allclose(features, expected.numpy(), atol=1e-5)
    # --fast: JPEGs decoded as training streams them (DCT scale when twice the size or more)
    embed_images(folder, encoder_dir, tmp_path / "fast.npy", workers=0, progress=False,
                 fast=True)  # fmt: skip
    decoded = np.stack([decode_crop(folder / n, DecodeSpec(16)) for n in names])
    with torch.no_grad():
        streamed = encoder(torch.from_numpy(decoded).permute(0, 3, 1, 2) / 255.0)
    assert np.allclose(np.load(tmp_path / "fast.npy"), streamed.numpy(), atol=1e-5)


def test_embed_shards_gives_the_folder_embeddings(
    folder: Path, encoder_dir: Path, tmp_path: Path
) -> None:
    (folder / "a" / "broken.jpg").unlink()
    from_folder = embed_images(folder, encoder_dir, tmp_path / "f.npy", progress=False,
                               workers=0)  # fmt: skip
    write_shards(folder, tmp_path / "shards", shard_size=3)
    embed_images(tmp_path / "shards", encoder_dir, tmp_path / "s.npy", progress=False)
    assert from_folder.images == 7
    by_name = dict(zip((tmp_path / "f.txt").read_text().splitlines(),
                       np.load(tmp_path / "f.npy"), strict=True))  # fmt: skip
    shard_names = (tmp_path / "s.txt").read_text().splitlines()
    # shards of a folder with class sub-folders hold the class files (not top-level 5.jpg)
    assert sorted(shard_names) == sorted(n for n in by_name if "/" in n)
    for name, row in zip(shard_names, np.load(tmp_path / "s.npy"), strict=True):
        assert np.allclose(row, by_name[name], atol=1e-5)


def test_parquet_output_or_a_clear_message(folder: Path, encoder_dir: Path, tmp_path: Path,
                                           monkeypatch) -> None:  # fmt: skip
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is not None:
        embed_images(folder, encoder_dir, tmp_path / "e.parquet", progress=False, workers=0)
        table = pq.read_table(tmp_path / "e.parquet")
        assert table.column_names == ["path", "embedding"] and table.num_rows == 7
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(MissingExtraError, match="pyarrow"):
        embed_images(folder, encoder_dir, tmp_path / "x.parquet", progress=False)


def test_cli_embed(folder: Path, encoder_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.npy"
    argv = ["embed", str(folder), "--encoder", str(encoder_dir), "--out", str(out),
            "--workers", "0"]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "embedded 7 images (128 features each)" in printed and "skipped" in printed
    assert np.load(out).shape == (7, 128)
    assert cli.main(["embed", str(tmp_path / "nowhere"), "--encoder", str(encoder_dir),
                     "--out", str(out)]) == 1  # fmt: skip
    assert "image folder not found" in capsys.readouterr().err
