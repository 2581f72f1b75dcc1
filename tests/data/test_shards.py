"""WebDataset shards: writing them, naming them, and the shard loader's split and resume."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from stream_images import jpeg_folder

from selfsup.data import ShardLoader, ShardStream, open_training_source, write_shards
from selfsup.data import shards as shards_module
from selfsup.data.decode import DecodeSpec, decode_crop
from selfsup.data.shards import expand_shard_spec, is_shard_spec, iter_shard, open_shards
from selfsup.errors import MissingExtraError


@pytest.fixture
def shard_dir(tmp_path: Path) -> Path:
    """23 labeled JPEGs (cat 12, dog 11) in shards of 5 (the last holds 3), plus a bad file."""
    root = jpeg_folder(tmp_path / "images", 12)
    for p in sorted((root / "dog").iterdir())[11:]:
        p.unlink()
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    write_shards(root, tmp_path / "shards", shard_size=5)
    return tmp_path / "shards"


def _stream(spec: str | Path, size: int = 8) -> ShardStream:
    source = open_training_source(str(spec), image_size=size)
    assert isinstance(source, ShardStream)
    return source


def _all_indices(batches: list) -> list[int]:
    return [i for b in batches for i in b.indices.tolist()]


# ----------------------------------------------------------------------------- writing


def test_write_shards_stores_files_labels_and_manifest(shard_dir: Path, tmp_path: Path) -> None:
    manifest = json.loads((shard_dir / "shards.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [5, 5, 5, 5, 3]
    assert manifest["samples"] == 23 and manifest["classes"] == ["cat", "dog"]
    assert [Path(p).name for p, _ in manifest["skipped"]] == ["broken.jpg"]
    seen = {}
    for shard in sorted(shard_dir.glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        for name, data in members.items():
            key, ext = name.split(".", 1)
            if ext == "jpg":
                rel = members[f"{key}.path"].decode()
                assert data == (tmp_path / "images" / rel).read_bytes()  # stored as is
                label = int(members[f"{key}.cls"])
                assert ["cat", "dog"][label] == rel.split("/")[0]
                seen[rel] = label
    assert len(seen) == 23
    # seeded shuffle across shards: the first shard is not just the first cat files
    first = sorted(m.name for m in tarfile.open(shard_dir / "train-000000.tar"))
    assert any(n.endswith(".cls") for n in first)


def test_shard_specs_patterns_lists_and_manifests(shard_dir: Path) -> None:
    pattern = str(shard_dir / "train-{000000..000004}.tar")
    assert is_shard_spec(pattern) and is_shard_spec(str(shard_dir))
    assert is_shard_spec("https://host/data/train-{0..9}.tar") and not is_shard_spec("cifar10")
    assert not is_shard_spec(str(shard_dir.parent / "images"))
    assert len(expand_shard_spec(pattern)) == 5
    two = f"{shard_dir}/train-{{000000..000001}}.tar::{shard_dir}/train-000004.tar"
    assert [Path(u).name for u in expand_shard_spec(two)] == [
        "train-000000.tar", "train-000001.tar", "train-000004.tar"
    ]  # fmt: skip
    for spec in (pattern, shard_dir, shard_dir / "shards.json"):
        source = _stream(spec)
        assert len(source) == 23 and source.counts == [5, 5, 5, 5, 3]
        assert source.classes == ["cat", "dog"] and source.num_classes == 2
    assert len(_stream(two)) == 13


def test_shards_without_a_manifest_are_counted(shard_dir: Path) -> None:
    (shard_dir / "shards.json").unlink()
    source = _stream(shard_dir / "train-{000000..000004}.tar")
    assert source.counts == [5, 5, 5, 5, 3] and source.num_classes == 2
    assert source.classes is None


def test_stale_manifest_is_an_error_naming_the_shard(shard_dir: Path) -> None:
    manifest = json.loads((shard_dir / "shards.json").read_text())
    manifest["shards"][4]["samples"] = 4  # the last shard holds 3
    (shard_dir / "shards.json").write_text(json.dumps(manifest))
    loader = ShardLoader(_stream(shard_dir), 4, workers=0, shuffle_buffer=1)
    with pytest.raises(ValueError, match=r"train-000004.tar: holds 3 image samples, 4 expected"):
        for epoch in range(4):  # some epoch reads the last shard before its end
            list(loader.iterate(epoch))


def test_missing_webdataset_names_the_extra(shard_dir: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(MissingExtraError, match=r'pip install "selfsup\[shards\]"'):
        expand_shard_spec(str(shard_dir / "train-{000000..000004}.tar"))


# ----------------------------------------------------------------------------- the loader


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_split_the_shards_and_see_every_sample_once(shard_dir: Path, workers: int) -> None:
    source = _stream(shard_dir)
    epochs = []
    for epoch in range(2):
        seen = []
        for rank in range(2):
            loader = ShardLoader(source, 2, seed=3, rank=rank, world_size=2, workers=workers,
                                 shuffle_buffer=3)  # fmt: skip
            assert len(loader) == 23 // 4 == 5
            batches = list(loader.iterate(epoch))
            assert [b.step_in_epoch for b in batches] == list(range(5))
            for b in batches:
                assert b.images.shape == (2, 3, 8, 8) and b.images.dtype == torch.uint8
                assert (b.global_size, b.offset) == (4, 2 * rank)
            seen += _all_indices(batches)
        assert len(seen) == len(set(seen)) == 20  # 23 - 3 dropped this epoch, none twice
        epochs.append(seen)
    assert set(epochs[0]) != set(epochs[1]) or epochs[0] != epochs[1]


def test_labels_and_pixels_follow_the_samples(shard_dir: Path) -> None:
    source = _stream(shard_dir, size=12)
    canonical = [s for url in source.urls for s in iter_shard(url)]
    loader = ShardLoader(source, 4, seed=0, workers=0, shuffle_buffer=1)
    for b in loader.iterate(0):
        for row, index, label in zip(b.images, b.indices.tolist(), b.labels.tolist(),
                                     strict=True):  # fmt: skip
            sample = canonical[index]
            assert label == sample.label
            rng = np.random.default_rng((0, 0, index))
            expected = decode_crop(sample.data, DecodeSpec(12), rng).copy()
            assert torch.equal(row, torch.from_numpy(expected).permute(2, 0, 1))
    centre = source.as_tensor_chw([0, 22])
    expected = decode_crop(canonical[22].data, DecodeSpec(12)).copy()
    assert torch.equal(centre[1], torch.from_numpy(expected).permute(2, 0, 1))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_exactly_without_rereading_the_epoch(
    shard_dir: Path, workers: int, monkeypatch
) -> None:
    source = _stream(shard_dir)
    loader = ShardLoader(source, 2, seed=1, workers=workers, shuffle_buffer=4)
    full = list(loader.iterate(1))
    assert len(full) == 11
    for start in (1, 4, 7, 10):
        resumed = list(loader.iterate(1, start_step=start))
        assert [b.step_in_epoch for b in resumed] == list(range(start, 11))
        for a, b in zip(full[start:], resumed, strict=True):
            assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images)
    if workers:
        return
    opened: list[tuple[str, int]] = []
    real = shards_module.iter_shard

    def recording(url: str, skip: int = 0):  # type: ignore[no-untyped-def]
        opened.append((Path(url).name, skip))
        return real(url, skip)

    monkeypatch.setattr(shards_module, "iter_shard", recording)
    list(loader.iterate(1, start_step=8))
    first_shard = Path(source.urls[loader.shard_order(1)[0]]).name
    assert opened and first_shard not in [name for name, _ in opened]
    assert len(opened) < len(source.urls)


def test_too_few_samples_for_a_global_batch(shard_dir: Path) -> None:
    with pytest.raises(ValueError, match="fewer than the global batch 32"):
        ShardLoader(_stream(shard_dir), 16, world_size=2, workers=0)


def test_subset_of_shards_is_refused(shard_dir: Path) -> None:
    with pytest.raises(ValueError, match="need random access"):
        _stream(shard_dir).subset([0, 1])
    with pytest.raises(FileNotFoundError, match="shard not found"):
        open_shards(str(shard_dir / "train-{000000..000009}.tar"), DecodeSpec(8))


def test_cli_writes_shards(tmp_path: Path, capsys) -> None:
    from selfsup import cli

    root = jpeg_folder(tmp_path / "images", 4, classes=())  # flat: unlabeled
    out = tmp_path / "sh"
    argv = ["shards", str(root), "--out", str(out), "--shard-size", "3", "--prefix", "part"]
    assert cli.main(argv) == 0
    assert "wrote 4 images, unlabeled into 2 shards" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["part-000000.tar", "part-000001.tar",
                                                     "shards.json"]  # fmt: skip
    source = _stream(out)
    assert source.counts == [3, 1] and source.num_classes is None
    assert cli.main(["shards", str(tmp_path / "missing"), "--out", str(out)]) == 1
    assert "image folder not found" in capsys.readouterr().err


def test_remote_shards_through_the_webdataset_library(shard_dir: Path) -> None:
    """``pipe:`` URLs stand for remote shards (http(s), object stores): opened by the webdataset
    library, counted from the manifest beside them when there is one, else by reading them."""
    pattern = f"pipe:cat {shard_dir}/train-{{000000..000004}}.tar"
    remote = _stream(pattern)
    assert remote.counts == [5, 5, 5, 5, 3] and remote.classes == ["cat", "dog"]
    local = _stream(shard_dir)
    a = list(ShardLoader(remote, 4, seed=2, workers=0, shuffle_buffer=3).iterate(0))
    b = list(ShardLoader(local, 4, seed=2, workers=0, shuffle_buffer=3).iterate(0))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.indices, y.indices) and torch.equal(x.images, y.images)
    (shard_dir / "shards.json").unlink()
    counted = _stream(pattern)
    assert counted.counts == [5, 5, 5, 5, 3] and counted.num_classes == 2
