"""Robustness: corrupted test sets scored by a linear probe and a fine-tuned model."""

from __future__ import annotations

import numpy as np
import pytest

from selfsup.data import load_source
from selfsup.evaluate import load_encoder
from selfsup.evaluate.corruptions import corrupt, default_generator
from selfsup.evaluate.finetune import FinetuneConfig, finetune
from selfsup.evaluate.protocols import load_eval_data
from selfsup.evaluate.robustness import corrupted_source, robustness

pytestmark = pytest.mark.usefixtures("one_thread")


def test_corrupted_source_is_the_seeded_corruption_of_every_image(tiny_npz):
    source = load_source(str(tiny_npz))
    bad = corrupted_source(source, "gaussian_noise", 3, batch_size=10)
    again = corrupted_source(source, "gaussian_noise", 3, batch_size=10)
    assert np.array_equal(bad.images, again.images) and np.array_equal(bad.labels, source.labels)
    assert not np.array_equal(bad.images, source.images)
    # batches share one generator: the same as corrupting the whole set in one call
    whole = corrupt(source.as_tensor_chw(np.arange(len(source))), "gaussian_noise", 3,
                    default_generator("gaussian_noise", 3))  # fmt: skip
    assert np.array_equal(bad.images, whole.permute(0, 2, 3, 1).numpy())


@pytest.mark.bf16
def test_robustness_summary_for_probe_and_finetuned_model(tiny_npz):
    data = load_eval_data(str(tiny_npz))
    loaded = load_encoder("random:resnet_tiny", defaults={"image_size": 16, "normalize": "none"})
    ft = finetune(loaded, data.train, data.test, FinetuneConfig(epochs=2, batch_size=16),
                  keep_model=True)  # fmt: skip
    out = robustness(loaded, data, corruptions=["contrast", "pixelate"], severities=(1, 5),
                     linear_epochs=5, finetuned=ft["model"])  # fmt: skip
    assert out["corruptions"] == ["contrast", "pixelate"] and out["severities"] == [1, 5]
    for key in ("linear", "finetuned"):
        r = out[key]
        cells = [a for by_s in r["per_corruption"].values() for a in by_s.values()]
        assert len(cells) == 4 and all(0 <= a <= 1 for a in cells)
        assert r["mean_corruption_accuracy"] == pytest.approx(np.mean(cells))
        assert r["per_corruption_mean"]["pixelate"] == pytest.approx(
            np.mean(list(r["per_corruption"]["pixelate"].values()))
        )
        assert r["relative_drop"] == pytest.approx(
            (r["clean"] - r["mean_corruption_accuracy"]) / r["clean"]
        )
    # the fine-tuned model's clean accuracy is the one fine-tuning measured (both in fp32, on
    # any CPU: this failed on CPUs with native bf16 when each protocol used precision=auto)
    assert out["finetuned"]["clean"] == pytest.approx(ft["top1"])
    assert out["precision"] == ft["precision"] == "fp32"
