"""Fine-tuning (full, partial, low-label subsets)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from selfsup.data import load_source
from selfsup.evaluate import load_encoder
from selfsup.evaluate.finetune import (
    FinetuneConfig,
    class_balanced_subset,
    finetune,
    freeze_first_stages,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_tiny():
    return load_encoder(
        "random:resnet_tiny", defaults={"image_size": 16, "normalize": "none"}, seed=0
    )


def test_class_balanced_subset_sizes_seeds_and_errors():
    labels = np.repeat(np.arange(10), 100)[np.random.default_rng(0).permutation(1000)]
    one = class_balanced_subset(labels, fraction=0.01, seed=0)
    ten = class_balanced_subset(labels, fraction=0.1, seed=0)
    assert np.bincount(labels[one], minlength=10).tolist() == [1] * 10
    assert np.bincount(labels[ten], minlength=10).tolist() == [10] * 10
    assert np.all(np.diff(ten) > 0)  # sorted, distinct
    assert np.array_equal(ten, class_balanced_subset(labels, fraction=0.1, seed=0))
    assert not np.array_equal(ten, class_balanced_subset(labels, fraction=0.1, seed=1))
    three = class_balanced_subset(torch.as_tensor(labels), per_class=3, seed=2)
    assert len(three) == 30
    with pytest.raises(ValueError, match="fewer than 101"):
        class_balanced_subset(labels, per_class=101)
    with pytest.raises(ValueError, match="exactly one"):
        class_balanced_subset(labels)


def test_freeze_first_stages_and_a_clear_error():
    enc = _random_tiny().encoder
    stages = enc.stages()
    frozen = freeze_first_stages(enc, 2)
    assert frozen == stages[:2]
    for i, stage in enumerate(stages):
        assert all(p.requires_grad == (i >= 2) for p in stage.parameters())
    with pytest.raises(ValueError, match=f"has {len(stages)} stages"):
        freeze_first_stages(_random_tiny().encoder, len(stages) + 1)


def test_partial_finetune_keeps_frozen_stages_and_their_bn_statistics(tiny_npz):
    loaded = _random_tiny()
    before = {k: v.clone() for k, v in loaded.encoder.state_dict().items()}
    data = load_source(str(tiny_npz))
    cfg = FinetuneConfig(epochs=1, batch_size=16, freeze_stages=2, lr=0.1)
    result = finetune(loaded, data, data, cfg)
    assert result["freeze_stages"] == 2 and len(result["curve"]) == 1
    # the loaded encoder is untouched; the fine-tuned copy is returned only as numbers
    for k, v in loaded.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    kept = finetune(_random_tiny(), data, data, cfg, keep_model=True)["model"]
    stages = kept.encoder.stages()
    frozen = {id(t) for s in stages[:2] for t in [*s.parameters(), *s.buffers()]}
    after = dict(kept.encoder.named_parameters()) | dict(kept.encoder.named_buffers())
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert not {k for k, v in after.items() if id(v) in frozen} & changed
    assert any("running_mean" in k for k in after if id(after[k]) in frozen)
    trainable = {k for k, v in after.items() if id(v) not in frozen and v.is_floating_point()}
    assert trainable & changed and any(k.endswith("running_mean") for k in changed)


def test_finetune_learns_and_records_a_curve(tiny_npz):
    data = load_source(str(tiny_npz))
    train, test = data.subset(range(0, 48)), data.subset(range(48, 64))
    result = finetune(_random_tiny(), train, test, FinetuneConfig(epochs=12, batch_size=16, lr=0.1))
    assert [p["epoch"] for p in result["curve"]] == list(range(1, 13))
    assert all(0 <= p["test_top1"] <= 1 for p in result["curve"])
    assert result["top1"] == result["curve"][-1]["test_top1"]
    assert result["curve"][-1]["train_loss"] < result["curve"][0]["train_loss"]
    assert result["top1"] >= 0.5  # 4 classes: chance is 0.25
    frozen_all = finetune(
        _random_tiny(), train, test,
        FinetuneConfig(epochs=1, batch_size=16, freeze_stages=result["num_stages"]),
    )  # fmt: skip
    assert frozen_all["trainable_params"] < result["trainable_params"]


def test_low_label_uses_balanced_subsets_per_seed_and_reports_mean_and_spread(tiny_npz):
    from selfsup.evaluate.low_label import low_label
    from selfsup.evaluate.protocols import load_eval_data

    data = load_eval_data(str(tiny_npz))
    spec = "random:resnet_tiny"
    with pytest.raises(ValueError, match="unknown low-label protocols"):
        low_label(spec, data, protocols=("linear", "magic"))
    # 64 images, 4 classes: fraction 0.25 = 4 per class
    out = low_label(spec, data, fractions=(0.25,), seeds=(0, 1), protocols=("linear",),
                    linear_epochs=5)  # fmt: skip
    cell = out["fractions"]["0.25"]
    assert cell["images"] == 16 and len(cell["linear"]["runs"]) == 2
    runs = cell["linear"]["runs"]
    assert cell["linear"]["mean"] == pytest.approx(sum(runs) / 2)
    assert cell["linear"]["std"] == pytest.approx(abs(runs[0] - runs[1]) / 2**0.5)


def test_cli_finetune_partial_and_low_label(tiny_npz, tmp_path, capsys):
    from selfsup.cli import main

    out = tmp_path / "ft.json"
    common = ["--data", str(tiny_npz), "--ft-epochs", "2", "--ft-batch-size", "16"]
    assert main(["eval", "finetune", "random:resnet_tiny", *common, "--freeze-stages", "1",
                 "--json", str(out)]) == 0  # fmt: skip
    (row,) = json.loads(out.read_text())
    assert row["freeze_stages"] == 1 and len(row["curve"]) == 2
    assert "fine-tune top-1" in capsys.readouterr().out
    out = tmp_path / "ll.json"
    assert main(["eval", "low-label", "random:resnet_tiny", *common, "--label-fractions", "0.25",
                 "--label-seeds", "0", "1", "--epochs", "3", "--json", str(out)]) == 0  # fmt: skip
    (row,) = json.loads(out.read_text())
    cell = row["fractions"]["0.25"]
    assert cell["images"] == 16
    assert {"linear", "finetune", "scratch"} <= set(cell)
    assert all(len(cell[p]["runs"]) == 2 for p in ("linear", "finetune", "scratch"))
    assert main(["eval", "finetune", "random:resnet_tiny", *common, "--freeze-stages", "9"]) != 0
    assert "stages" in capsys.readouterr().err
