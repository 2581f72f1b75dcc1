"""The held-out validation split: disjoint, class-balanced, the same for every run seed, used
by training (``data.holdout``) and evaluation (``--holdout``) alike."""

from __future__ import annotations

import numpy as np
import pytest

from selfsup.config import load_config
from selfsup.data import ImageSource, holdout_split
from selfsup.evaluate import load_eval_data
from selfsup.train.trainer import load_training_source


def _source(n: int = 100, classes: int = 4, labeled: bool = True) -> ImageSource:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256  # an id in every image
    labels = np.arange(n) % classes if labeled else None
    return ImageSource(images=images, labels=labels, name="ids")


@pytest.mark.parametrize("labeled", [True, False])
def test_holdout_is_disjoint_complete_and_sized(labeled):
    src = _source(labeled=labeled)
    train, held = holdout_split(src, 20)
    assert len(train) == 80 and len(held) == 20
    ids_train = set(train.images[:, 0, 0, 0].tolist())
    ids_held = set(held.images[:, 0, 0, 0].tolist())
    assert not ids_train & ids_held
    assert ids_train | ids_held == set(range(100))


def test_holdout_is_class_balanced_and_fixed():
    src = _source()
    _, held = holdout_split(src, 20)
    assert np.bincount(held.labels).tolist() == [5, 5, 5, 5]
    _, again = holdout_split(src, 20)
    assert np.array_equal(held.images, again.images)


@pytest.mark.parametrize("n", [0, 100, 150])
def test_holdout_out_of_range_is_a_clear_error(n):
    with pytest.raises(ValueError, match="holdout"):
        holdout_split(_source(), n)


def test_training_never_sees_the_held_out_images_whatever_the_seed(tiny_npz):
    held = holdout_split(load_eval_data(str(tiny_npz), test_source=str(tiny_npz)).train, 16)[1]
    held_rows = {im.tobytes() for im in held.images}
    for seed in (0, 1):
        cfg = load_config(
            "simclr", None, [f"data.source={tiny_npz}", "data.holdout=16", f"seed={seed}"]
        )
        source = load_training_source(cfg)
        assert len(source) == 64 - 16
        assert not held_rows & {im.tobytes() for im in source.images}


def test_eval_data_with_holdout_queries_the_held_out_images(tiny_npz):
    data = load_eval_data(str(tiny_npz), holdout=16)
    assert len(data.train) == 48 and len(data.test) == 16
    assert "holdout16" in data.key
    cfg = load_config("simclr", None, [f"data.source={tiny_npz}", "data.holdout=16"])
    trained_on = {im.tobytes() for im in load_training_source(cfg).images}
    assert trained_on == {im.tobytes() for im in data.train.images}
