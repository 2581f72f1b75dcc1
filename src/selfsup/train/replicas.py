"""Data parallelism inside one CPU process (``train.cpu_replicas``).

On a small CPU and small views, one process whose intra-op threads split every operator spends
much of its step where those threads meet at the end of each operator: on the 2-core machine of
BENCHMARKS.md two independent 1-thread processes see 1.37x the images of one 2-thread process
at 12 px. DDP over gloo would cash that in, but its collectives (the gradient all-reduce, the
gathered negatives, synchronised BatchNorm) cost more than it gains there.

:class:`CPUReplicas` splits each batch into K shards and runs the method's whole forward and
backward on each shard in a thread of its own, with ``threads`` intra-op threads each. Shard k
runs on a *replica* of the method: a copy that shares the method's parameters (the shards'
gradients accumulate into the same ``.grad``; autograd serialises the accumulation per
parameter, and a sum of two terms does not depend on their order) and owns its buffers. After
each step the replicas' BatchNorm running statistics are averaged into the method's and copied
back, so the method (evaluated, checkpointed, exported) is always the one that holds the state.
There are no collectives; the optimizer step runs once, in the calling thread.

What differs from one replica is what differs under DDP with per-process BatchNorm and local
negatives: each shard is a batch of its own, normalised with its own statistics, with in-batch
negatives (SimCLR) or batch statistics (VICReg, Barlow Twins) from its own images only, and its
views drawn by a generator of its own (seeded from the step's seed and k, so a run is exactly
reproducible and resumable at a given K). The loss and the metrics are the shards' averages
weighted by shard size, and so are the gradients (each shard's loss is scaled by its share of
the batch).

Only methods without per-step state take part (``Method.replicable``): an EMA teacher, a
queue, a centre or a buffer that forward updates would exist once per replica.
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.errors import ConfigError
from selfsup.methods import Method, list_methods

_REPLICA_SEED_STRIDE = 0x9E3779B97F4A7C15
"""Shard k's generator is seeded with ``step seed + k * stride`` (mod 2**63); shard 0 draws
exactly what the single-replica step draws."""


def replica_seed(step_seed: int, k: int) -> int:
    """Seed of shard ``k``'s augmentation generator for a step seeded ``step_seed``."""
    return (step_seed + k * _REPLICA_SEED_STRIDE) % (2**63)


def check_replicable(method: Method, count: int) -> None:
    """Refuse ``train.cpu_replicas=count`` for a method with per-step state, with a
    :class:`~selfsup.errors.ConfigError` that says why and what to do."""
    if count > 1 and not type(method).replicable:
        raise ConfigError(
            f"train.cpu_replicas={count}: {method.name} keeps state that changes every step "
            "(a momentum teacher, a queue, a centre or a buffer its forward updates), which "
            "would exist once per replica; use train.cpu_replicas=1 for it (methods that "
            "support replicas: " + ", ".join(_replicable_names()) + ")"
        )


def _replicable_names() -> list[str]:
    return [cls.name for cls in list_methods() if cls.replicable]


def replicate(method: Method) -> Method:
    """A copy of ``method`` that shares its parameters (the same tensors, so gradients
    accumulate into the method's ``.grad``) and owns copies of its buffers and other state."""
    shared: dict[int, Any] = {id(p): p for p in method.parameters()}
    return copy.deepcopy(method, shared)


def _running_stats(module: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """(running means and variances, batch counters) of every BatchNorm layer, in module
    order."""
    stats: list[Tensor] = []
    counters: list[Tensor] = []
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._NormBase) and layer.track_running_stats:
            stats += [t for t in (layer.running_mean, layer.running_var) if t is not None]
            if layer.num_batches_tracked is not None:
                counters.append(layer.num_batches_tracked)
    return stats, counters


class CPUReplicas:
    """Runs each step's forward and backward as ``count`` shards in parallel threads (module
    docstring). ``forward_backward`` is what :class:`~selfsup.train.trainer.TrainStep` calls
    instead of the method's forward and ``loss.backward()``.

    Replicas are made at the first step (after the trainer's set-up hooks and first view-size
    change have reached the method); later view-size changes go to every replica through
    :meth:`set_view_size`.
    """

    def __init__(self, method: Method, count: int, threads: int) -> None:
        if count < 2:
            raise ValueError(f"CPUReplicas needs at least 2 replicas; got {count}")
        check_replicable(method, count)
        self.method = method
        self.count = count
        self.threads = threads
        self.copies: list[Method] = []
        self._stats: list[tuple[list[Tensor], list[Tensor]]] = []
        """Each of ``methods``' BatchNorm (running statistics, counters), found once."""
        self._calling_threads = torch.get_num_threads()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def methods(self) -> list[Method]:
        """The method and its replicas made so far."""
        return [self.method, *self.copies]

    def set_view_size(self, size: int) -> None:
        """Progressive resizing: every replica's views become ``size`` pixels."""
        for method in self.methods:
            method.set_view_size(size)

    def forward_backward(
        self,
        images: Tensor,
        labels: Tensor | None,
        step_seed: int,
        amp_dtype: torch.dtype | None,
    ) -> tuple[Tensor, dict[str, Any]]:
        """Forward and backward of a (B, C, H, W) uint8 batch in ``count`` shards of about
        B / count images; gradients land in the method's parameters (added to what is there,
        as ``backward`` does). Returns the shard-size-weighted mean loss (detached) and
        metrics."""
        if len(images) < 2 * self.count:
            raise ValueError(
                f"train.cpu_replicas={self.count} splits each batch into {self.count} shards "
                f"of at least 2 images; got a batch of {len(images)}"
            )
        if not self.copies:
            self.copies = [replicate(self.method) for _ in range(self.count - 1)]
            self._stats = [_running_stats(m) for m in self.methods]  # updated in place
        pool = self._start_pool()
        image_shards = torch.tensor_split(images, self.count)
        label_shards = (
            torch.tensor_split(labels, self.count) if labels is not None else [None] * self.count
        )
        weights = [len(shard) / len(images) for shard in image_shards]
        futures = [
            pool.submit(
                _shard_step,
                replica,
                shard,
                shard_labels,
                replica_seed(step_seed, k),
                weight,
                amp_dtype,
            )
            for k, (replica, shard, shard_labels, weight) in enumerate(
                zip(self.methods, image_shards, label_shards, weights, strict=True)
            )
        ]
        results = [future.result() for future in futures]
        self._average_running_stats()
        loss = sum(w * loss for w, (loss, _) in zip(weights, results, strict=True))
        metrics = _weighted_mean([m for _, m in results], weights)
        return loss, metrics  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the worker threads (a later step starts them again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _start_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.count,
                thread_name_prefix="selfsup-replica",
                initializer=torch.set_num_threads,
                initargs=(self.threads,),
            )
            # Every worker sets its own intra-op threads; that call also sets torch's global
            # default, which the calling thread restores once all of them have started (the
            # barrier makes the pool start every worker now rather than reuse an idle one).
            barrier = threading.Barrier(self.count)
            list(self._pool.map(_started, [barrier] * self.count))
            torch.set_num_threads(self._calling_threads)
        return self._pool

    @torch.no_grad()
    def _average_running_stats(self) -> None:
        """The method's BatchNorm running statistics become the replicas' mean; every replica
        continues from that mean (its batch counters stay equal: each saw one batch)."""
        (stats, counters), *copies = self._stats
        if not stats and not counters:
            return
        for other, _ in copies:
            torch._foreach_add_(stats, other)
        torch._foreach_div_(stats, float(self.count))
        for other_stats, other_counters in copies:
            torch._foreach_copy_(other_stats, stats)
            torch._foreach_copy_(other_counters, counters)


def _started(barrier: threading.Barrier) -> int:
    barrier.wait()
    return torch.get_num_threads()


def _shard_step(
    method: Method,
    images: Tensor,
    labels: Tensor | None,
    seed: int,
    weight: float,
    amp_dtype: torch.dtype | None,
) -> tuple[Tensor, dict[str, Any]]:
    """One shard's forward under autocast (thread-local, so entered here) and its backward
    with the loss scaled by the shard's share of the batch."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    enabled = amp_dtype is not None
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=enabled):
        loss, metrics = method(images, labels, generator)
    (loss * weight).backward()
    return loss.detach(), {k: _detached(v) for k, v in metrics.items()}


def _detached(value: Any) -> Any:
    return value.detach() if isinstance(value, Tensor) else value


def _weighted_mean(per_shard: list[dict[str, Any]], weights: list[float]) -> dict[str, Any]:
    """Each metric's shard-size-weighted mean (metrics that are not numbers: shard 0's)."""
    out: dict[str, Any] = {}
    for key, first in per_shard[0].items():
        values = [m.get(key) for m in per_shard]
        if all(isinstance(v, (Tensor, int, float)) and not isinstance(v, bool) for v in values):
            out[key] = sum(w * v for w, v in zip(weights, values, strict=True))
        else:
            out[key] = first
    return out
