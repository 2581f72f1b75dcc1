"""``selfsup`` CLI run under torchrun, recording for the shard tests what each rank did.

Usage: ``python -m torch.distributed.run ... traced_train.py TRACE.json selfsup-args...``.
Each process writes ``TRACE.json`` with ``-rank{R}`` before the suffix:

- ``batches``: every batch the training loop consumed (epoch, step in epoch, sample indices);
- ``writes``: every file-system write under the run directory (``out_dir=``) seen by Python's
  audit hooks (opening for writing, mkdir, rename/replace, remove, rmtree);
- ``reads``: every shard a DataLoader worker opened (epoch, shard URL, samples skipped);
- ``rc``: the CLI's exit status.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree",
                "os.truncate", "os.symlink", "os.link", "os.utime", "os.chmod"}  # fmt: skip


def main() -> int:
    trace_path, argv = Path(sys.argv[1]), sys.argv[2:]
    rank = int(os.environ.get("RANK", "0"))
    out_dir = next(a.split("=", 1)[1] for a in argv if a.startswith("out_dir="))
    run_dir = Path(out_dir).resolve()
    writes: list[list[str]] = []

    def under_run_dir(path: object) -> bool:
        if not isinstance(path, str | bytes | os.PathLike):
            return False
        try:
            return Path(os.fsdecode(path)).resolve().is_relative_to(run_dir)
        except (OSError, ValueError):
            return False

    def audit(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & _WRITE_FLAGS)
            if writing and under_run_dir(path):
                writes.append([event, os.fsdecode(path)])
        elif event in _PATH_EVENTS:
            for path in args[:2]:
                if under_run_dir(path):
                    writes.append([event, os.fsdecode(path)])

    sys.addaudithook(audit)

    from selfsup import cli
    from selfsup.data import shards
    from selfsup.train import trainer

    batches: list[dict] = []
    consume = trainer.Trainer._batches

    def traced_batches(self, run):  # type: ignore[no-untyped-def]
        for batch in consume(self, run):
            batches.append({"epoch": batch.epoch, "step": batch.step_in_epoch,
                            "indices": batch.indices.tolist()})  # fmt: skip
            yield batch

    trainer.Trainer._batches = traced_batches
    reads_path = trace_path.with_name(f"{trace_path.stem}-rank{rank}-reads.jsonl")
    read_samples = shards._ShardEpoch._samples_from
    iter_shard = shards.iter_shard

    def traced_samples_from(self, position, end):  # type: ignore[no-untyped-def]
        def traced_iter_shard(url, skip=0):  # type: ignore[no-untyped-def]
            with open(reads_path, "a") as f:
                f.write(json.dumps({"epoch": self.epoch, "url": url, "skip": skip}) + "\n")
            return iter_shard(url, skip)

        shards.iter_shard = traced_iter_shard
        try:
            yield from read_samples(self, position, end)
        finally:
            shards.iter_shard = iter_shard

    shards._ShardEpoch._samples_from = traced_samples_from
    rc = 1
    try:
        rc = cli.main(argv)
    finally:
        out = trace_path.with_name(f"{trace_path.stem}-rank{rank}{trace_path.suffix}")
        reads = []
        if reads_path.exists():
            reads = [json.loads(line) for line in reads_path.read_text().splitlines()]
        out.write_text(json.dumps({"rc": rc, "batches": batches, "writes": writes,
                                   "reads": reads}))  # fmt: skip
    return rc


if __name__ == "__main__":
    sys.exit(main())
