"""Two CPU processes (gloo) launched by torchrun's launcher train on WebDataset shards.

Checked through ``traced_train.py`` (what every rank consumed, wrote and read): each sample is
seen exactly once per epoch across the ranks, the run completes, only rank 0 writes into the
run directory, and a run stopped mid-epoch resumes at the right position in the shards (the
batches an uninterrupted run sees, per the loader's contract, without rereading the epoch from
its first shard).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from stream_images import jpeg_folder

from selfsup.data import ShardLoader, open_training_source, write_shards

HERE = Path(__file__).parent
SAMPLES, GLOBAL_BATCH, STEPS_PER_EPOCH = 48, 8, 6
TRAIN = [
    "simclr", "eval_data.source=null", "backbone.name=resnet_tiny", "data.image_size=16",
    f"train.batch_size={GLOBAL_BATCH}", "train.epochs=2", "train.precision=fp32",
    "train.progress=false", "train.tensorboard=false", "train.num_threads=1",
    "train.knn_monitor.every_epochs=0", "train.pictures_every_epochs=0",
    "train.checkpoint_every_steps=2", "data.workers=2", "data.shuffle_buffer=4", "seed=7",
]  # fmt: skip


def _torchrun(tmp_path: Path, trace: str, out_dir: Path, shards: Path, *extra: str) -> list:
    """Run ``selfsup train`` on 2 gloo processes; returns the two ranks' traces."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(HERE / "traced_train.py"), str(tmp_path / f"{trace}.json"),
        "train", *TRAIN, f"out_dir={out_dir}", f"data.source={shards}", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    traces = [json.loads((tmp_path / f"{trace}-rank{r}.json").read_text()) for r in range(2)]
    assert [t["rc"] for t in traces] == [0, 0]
    return traces


def _epoch_samples(traces: list, epoch: int) -> list[int]:
    return [i for t in traces for b in t["batches"] if b["epoch"] == epoch for i in b["indices"]]


@pytest.mark.slow
def test_two_processes_on_shards_split_write_and_resume(tmp_path: Path) -> None:
    images = jpeg_folder(tmp_path / "images", SAMPLES // 2, size=(40, 30))
    shards = tmp_path / "shards"
    write_shards(images, shards, shard_size=5)  # 10 shards: 9 x 5 + 3
    run = tmp_path / "run"

    # 2 epochs of 6 global batches of 8, stopped after epoch 1 step 4 (step 10 of 12), resumed
    first = _torchrun(tmp_path, "first", run, shards, "--stop-at-step", "10")
    second = _torchrun(tmp_path, "second", run, shards, "--resume")
    assert sorted(_epoch_samples(first, 0)) == list(range(SAMPLES))  # each sample once
    assert sorted(_epoch_samples(first, 1) + _epoch_samples(second, 1)) == list(range(SAMPLES))
    for rank in range(2):
        steps = [(b["epoch"], b["step"]) for b in first[rank]["batches"]]
        assert steps == [(0, s) for s in range(6)] + [(1, s) for s in range(4)]
        assert [(b["epoch"], b["step"]) for b in second[rank]["batches"]] == [(1, 4), (1, 5)]
    assert (run / "encoder.safetensors").is_file()  # the run completed
    assert json.loads((run / "summary.json").read_text())["steps"] == 2 * STEPS_PER_EPOCH
    for session in (first, second):  # rank 0 alone wrote the run directory
        assert session[0]["writes"] and not session[1]["writes"]

    # the resumed run continued with the batches an uninterrupted run sees at epoch 1, step 4
    source = open_training_source(str(shards), image_size=16)
    for rank in range(2):
        loader = ShardLoader(source, GLOBAL_BATCH // 2, seed=7, rank=rank, world_size=2,
                             workers=2, shuffle_buffer=4)  # fmt: skip
        expected = [b.indices.tolist() for b in loader.iterate(1)][4:]
        assert [b["indices"] for b in second[rank]["batches"]] == expected
    # ... opening the shards of the batches left, not the epoch's shards from the first one
    first_shard = source.urls[loader.shard_order(1)[0]]
    reads = [r for t in second for r in t["reads"]]
    assert reads and all(r["epoch"] == 1 for r in reads)
    assert first_shard not in [r["url"] for r in reads]
    assert len(reads) < len(source.urls)
    epoch_start = [r for t in first for r in t["reads"] if r["epoch"] == 1]
    assert first_shard in [r["url"] for r in epoch_start]
