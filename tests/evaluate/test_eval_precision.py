"""One number per model and protocol on every CPU: evaluation computes in fp32 whatever
``precision: auto`` would pick (bf16 on CPUs with native bf16), and results say so.

The ``bf16_cpu`` fixture makes ``auto`` pick bf16 as a newer CPU would, so these tests take
that path on any machine."""

from __future__ import annotations

import json

import pytest
import torch

from selfsup.config import load_config
from selfsup.evaluate import extract_features, load_encoder
from selfsup.evaluate.protocols import evaluate_encoder, load_eval_data
from selfsup.pretraining import pretrain
from selfsup.utils.precision import autocast_dtype

pytestmark = pytest.mark.bf16


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _features(loaded, source, **kw):
    meta = loaded.meta
    return extract_features(
        loaded.encoder,
        source,
        image_size=meta["image_size"],
        normalize=meta["normalize"],
        in_channels=meta["in_channels"],
        **kw,
    )


def test_features_are_fp32_by_default_even_where_auto_means_bf16(tiny_npz, bf16_cpu):
    assert autocast_dtype(torch.device("cpu"), "auto") == torch.bfloat16
    data = load_eval_data(str(tiny_npz))
    loaded = load_encoder("random:resnet_tiny", defaults={"image_size": 16})
    default = _features(loaded, data.test)
    assert torch.equal(default, _features(loaded, data.test, precision="fp32"))
    assert not torch.equal(default, _features(loaded, data.test, precision="auto"))


def test_results_record_the_precision(tiny_npz, bf16_cpu):
    data = load_eval_data(str(tiny_npz))
    result = evaluate_encoder("random:resnet_tiny", data, protocols=("knn",))
    assert result["precision"] == "fp32"


def test_online_knn_gives_the_number_eval_gives(tiny_npz, tmp_path, bf16_cpu):
    """The trainer's kNN monitor on the last step's encoder equals `selfsup eval knn` on the
    finished run, although the run trained in bf16."""
    run = tmp_path / "run"
    cfg = load_config("simclr", None, [
        f"data.source={tiny_npz}", f"eval_data.source={tiny_npz}", f"out_dir={run}",
        "backbone.name=resnet_tiny",
        "train.batch_size=16", "train.max_steps=4", "train.precision=auto",
        "train.progress=false", "train.tensorboard=false", "train.num_threads=1",
        "train.knn_monitor.every_epochs=1", "train.knn_monitor.k=20",
        "method_args.proj_hidden_dim=32", "method_args.proj_out_dim=16",
    ])  # fmt: skip
    pretrain(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert next(r for r in rows if r.get("event") == "start")["precision"] == "torch.bfloat16"
    online = [r["online_knn@20"] for r in rows if "online_knn@20" in r]
    assert len(online) == 1  # at step 4, the last
    offline = evaluate_encoder(str(run), load_eval_data(str(tiny_npz)), knn_k=(20,))
    assert offline["precision"] == "fp32" and online[0] == offline["knn@20"]
