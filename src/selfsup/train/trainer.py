"""The training loop. It knows nothing about any method.

:meth:`Trainer.fit` reads top to bottom: set the run up (device, DDP, data, method, optimizer,
resume), then for every batch set the learning rate for the run's progress, take one
:class:`TrainStep`, hand the result to the callbacks (metrics, progress bar, collapse monitor,
pictures, and those given to the trainer, such as the online kNN monitor wired in by
:func:`selfsup.pretraining.pretrain`), stop or checkpoint; then the final checkpoint, encoder
and summary. Randomness is derived from ``(seed, step)`` and the data order from
``(seed, epoch)``, so a resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.config import RunConfig, dump_config
from selfsup.data import (
    Batch,
    holdout_split,
    make_loader,
    num_classes_of,
    open_training_source,
    random_subset_indices,
)
from selfsup.data.training_data import TrainingSource
from selfsup.errors import ConfigError, TrainingError, TrainingInterrupted
from selfsup.methods import Method, get_method
from selfsup.methods.momentum import EMA
from selfsup.models import build_method, method_encoder_meta
from selfsup.models import write_pictures as write_pictures  # an alias; it lives in models
from selfsup.train.callbacks import (
    Callback,
    CollapseMonitor,
    LogMetrics,
    Pictures,
    ProgressBar,
    StepOutput,
    TrainingRun,
)
from selfsup.train.callbacks import CollapseWarning as CollapseWarning  # aliases: they
from selfsup.train.callbacks import collapse_reason as collapse_reason  # live in callbacks
from selfsup.train.metrics_log import MetricsLogger, rewind_metrics
from selfsup.train.optim import build_optimizer, peak_lr
from selfsup.train.replicas import CPUReplicas
from selfsup.train.schedule import LRSchedule, Progress, view_size_phases
from selfsup.train.signals import StopRequest
from selfsup.utils import distributed as dist_utils
from selfsup.utils.allocator import heap_cache
from selfsup.utils.io import (
    latest_checkpoint,
    load_checkpoint,
    read_json,
    save_checkpoint,
    save_weights,
    write_json,
)
from selfsup.utils.locks import RunDirLock, RunDirLockedError
from selfsup.utils.precision import (
    COMPILE_AUTO_MIN_SECONDS,
    autocast_dtype,
    compile_blocked,
    use_channels_last,
    use_compile,
)


class ShortRunWarning(UserWarning):
    """A step-counted run too short to finish its learning-rate warm-up."""


@dataclass
class TrainResult:
    """What a finished :meth:`Trainer.fit` returns."""

    run_dir: Path
    steps: int
    final_loss: float
    images_per_second: float
    seconds: float
    encoder_path: Path


LAYOUT_WORDS = {
    "image": "single images (a dataset name, .npz file or image folder)",
    "clip": "video clips (data.source=synthetic_video or video:PATH)",
    "rgbd": "RGB-D images (data.source=synthetic_rgbd or rgbd:PATH)",
}
"""How an error names each data layout (:data:`selfsup.data.sources.LAYOUTS`)."""


def step_seed(seed: int, step: int) -> int:
    """Seed of the augmentation generator at ``step`` (independent of process count)."""
    return (seed * 1_000_003 + step * 7_919 + 12_345) % (2**63)


@dataclass
class TrainStep:
    """One optimizer step exactly as ``Trainer.fit`` runs it (benchmarks time this same code).

    A ``(step, seed)`` generator for the method's augmentation, the method's forward under
    autocast (``amp_dtype``; None = fp32) returning ``(loss, metrics)``, backward through the
    (fp16-only) grad scaler, the gradient norm (clipped to ``grad_clip`` when set; always
    computed), a finiteness check of loss and norm, then ``before_optimizer_step``, the optimizer
    step and ``on_after_step`` (EMA teachers, queues, centres), then, with ``encoder_ema``, the
    update of the encoder's weight average. A non-finite step zeroes the gradients and applies
    nothing. ``forward`` is the method itself, its DDP wrapper or its compiled form; the hooks
    always go to the bare ``method``.
    """

    method: Method
    forward: Callable[..., tuple[torch.Tensor, dict[str, Any]]]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    device: torch.device
    seed: int
    grad_clip: float | None
    total_steps: int
    replicas: CPUReplicas | None = None
    """``train.cpu_replicas > 1``: forward and backward run as parallel shards instead."""
    encoder_ema: EMA | None = None
    """``train.encoder_ema``: the average of the encoder's weights (``encoder_ema["encoder"]``),
    updated after every applied step with :func:`encoder_ema_decay`."""
    compiled: bool = False
    """``forward`` is the method through ``torch.compile``."""
    eager_fallback: Callable[..., tuple[torch.Tensor, dict[str, Any]]] | None = None
    """With ``compiled`` (``train.compile=auto``): the eager method, which takes over for the
    rest of the run when the compiled forward or its backward raises (e.g. inductor cannot
    build its C++ kernels); the step is then redone eager from its seed. Without it (``true``)
    the error propagates with a note saying how to train eager."""
    compile_failure: str | None = None
    """Set when the compiled forward gave way to ``eager_fallback``: at which step, and why."""

    def __post_init__(self) -> None:
        self.params = [p for p in self.method.parameters() if p.requires_grad]

    @property
    def methods(self) -> list[Method]:
        """The method and, with ``replicas``, its replicas (what a view-size change reaches)."""
        return self.replicas.methods if self.replicas is not None else [self.method]

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        global_size: int,
        offset: int,
        step: int,
    ) -> tuple[torch.Tensor, dict[str, Any], bool]:
        """One step on a (B, C, H, W) uint8 batch; returns (loss, metrics, applied)."""
        optimizer, scaler, amp = self.optimizer, self.scaler, self.amp_dtype
        seed = step_seed(self.seed, step)
        if self.replicas is not None:
            optimizer.zero_grad(set_to_none=True)
            loss, metrics = self.replicas.forward_backward(images, labels, seed, amp)
        elif not self.compiled or self.compile_failure is not None:
            loss, metrics = self._forward_backward(images, labels, seed, global_size, offset)
        else:
            try:
                loss, metrics = self._forward_backward(images, labels, seed, global_size, offset)
            except Exception as error:
                self._fall_back_to_eager(error, step)
                # redone from the step's seed; a bug of the method itself raises here again
                loss, metrics = self._forward_backward(images, labels, seed, global_size, offset)
        scaler.unscale_(optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.params, self.grad_clip or float("inf"))
        # DDP has already averaged the gradients, so every rank sees the same verdict
        # (a NaN loss on one rank makes everyone's averaged gradients NaN).
        finite = bool(torch.isfinite(loss)) and (
            scaler.is_enabled() or bool(torch.isfinite(grad_norm))
        )
        metrics = {**metrics, "grad_norm": grad_norm}
        if not finite:
            optimizer.zero_grad(set_to_none=True)
            scaler.update()
            return loss, metrics, False
        self.method.before_optimizer_step(step, self.total_steps)
        scaler.step(optimizer)
        scaler.update()
        self.method.on_after_step(step, self.total_steps)
        if self.encoder_ema is not None:
            decay = encoder_ema_decay(self.encoder_ema.base_momentum, step)
            self.encoder_ema.update({"encoder": self.method.encoder}, step, 0, momentum=decay)
        return loss, metrics, True

    def _fall_back_to_eager(self, error: Exception, step: int) -> None:
        """The compiled step raised ``error`` at ``step``: with ``eager_fallback``, train eager
        from here on and say so; without it (``train.compile=true``), re-raise with a note."""
        if self.eager_fallback is None:
            error.add_note(
                f"train.compile=true: the compiled step failed at step {step}; "
                "train.compile=false trains eager (auto falls back to eager by itself)"
            )
            raise error
        self.forward, self.eager_fallback = self.eager_fallback, None
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        self.compile_failure = (
            f"fell back to eager at step {step}: {type(error).__name__}: {first_line}"
        )
        warnings.warn(
            f"train.compile=auto: torch.compile failed ({type(error).__name__}: {first_line}); "
            f"the run goes on eager from step {step}",
            RuntimeWarning,
            stacklevel=3,
        )

    def _forward_backward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        seed: int,
        global_size: int,
        offset: int,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """``forward`` under autocast with a fresh ``(step, seed)`` generator, then backward."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        amp = self.amp_dtype
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, metrics = self.forward(images, labels, generator, global_size, offset)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        return loss, metrics


def encoder_ema_decay(decay: float, step: int) -> float:
    """The decay of the encoder's weight average after optimizer step ``step`` (0-based):
    ``min(decay, (1 + step) / (10 + step))``, so the first updates follow the trained weights
    closely and the random initialisation fades from the average."""
    return min(decay, (1 + step) / (10 + step))


def load_training_source(cfg: RunConfig) -> TrainingSource:
    """The run's training images: an in-memory source, or a streamed folder or shard set
    (``data.mode``; :func:`selfsup.data.open_training_source`)."""
    d = cfg.data
    source = open_training_source(
        d.source,
        mode=d.mode,
        split=d.split,
        root=d.root,
        image_size=d.image_size,
        cache_dir=d.cache_dir,
        download=d.download,
        grayscale=d.grayscale,
        max_skipped_fraction=d.max_skipped_fraction,
        cache_budget_gb=d.cache_budget_gb,
        crop_scale=d.crop_scale,
        options=d.options or None,
    )
    if d.holdout is not None:
        source, _ = holdout_split(source, d.holdout)
    if d.subset is not None and d.subset < len(source):
        source = source.subset(random_subset_indices(len(source), d.subset, cfg.seed))
    return source


class Trainer:
    """Runs one training job described by a :class:`RunConfig`.

    Example::

        cfg = load_config("simclr", "simclr_cifar10_cpu", ["train.epochs=1"])
        result = Trainer(cfg).fit()
    """

    def __init__(
        self,
        cfg: RunConfig,
        *,
        resume: bool = False,
        stop_at_step: int | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        """``stop_at_step`` ends the run early after checkpointing that step (a planned
        interruption, e.g. to fit a job into a time slot); ``--resume`` continues it exactly.
        ``callbacks`` run after the trainer's own at every hook (:mod:`selfsup.train.callbacks`);
        ``train.knn_monitor`` needs :class:`selfsup.pretraining.OnlineKnn` among them (which
        :func:`selfsup.pretraining.pretrain` adds)."""
        self.cfg = cfg
        self.resume = resume
        self.stop_at_step = stop_at_step
        self.callbacks = list(callbacks)
        self.run_dir = cfg.resolved_out_dir()
        minutes = cfg.train.time_budget_minutes
        self.budget_seconds: float | None = None if minutes is None else 60.0 * minutes
        """The time budget (``train.time_budget_minutes``) in seconds, or None (steps)."""
        self.elapsed_before = 0.0  # wall-clock seconds of earlier sessions (resume)
        self.clock_start = time.perf_counter()
        self.view_size: int | None = None
        self.run_lock = RunDirLock(self.run_dir)
        """One writer per run directory, held by the main process from set-up to the end."""
        self.earlier_segments: list[dict[str, Any]] = []
        """The sessions before this one of a resumed run, as its checkpoint recorded them."""
        self.resumed_state: dict[str, Any] = {}
        """The ``train_state`` of the checkpoint this session resumed from (empty if none)."""
        self.nonfinite_in_a_row = 0
        if cfg.train.knn_monitor.every_epochs and not any(
            c.serves == "train.knn_monitor" for c in self.callbacks
        ):
            warnings.warn(
                "train.knn_monitor.every_epochs is set but no callback runs the kNN monitor: "
                "train with selfsup.pretrain(cfg) (as `selfsup train` does) or pass "
                "callbacks=[selfsup.pretraining.OnlineKnn()]",
                stacklevel=2,
            )

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        """Train to the end of the schedule (or to ``stop_at_step``), checkpointing on the way;
        with ``resume``, from the run's last checkpoint. The main process holds the run
        directory's lock (:class:`~selfsup.utils.locks.RunDirLock`) until it returns. On the
        CPU, freed memory stays in the process meanwhile (``train.cpu_heap_cache``)."""
        tcfg = self.cfg.train
        try:
            on_cpu = dist_utils.local_device(tcfg.device).type == "cpu"
            with heap_cache(enabled=tcfg.cpu_heap_cache and on_cpu):
                return self._train()
        finally:
            replicas = getattr(self, "train_step", None) and self.train_step.replicas
            if replicas:
                replicas.close()
            self.run_lock.release()

    def _train(self) -> TrainResult:
        """:meth:`fit`: set up, the loop, the final checkpoint and summary."""
        self.clock_start = time.perf_counter()  # set-up counts towards a time budget
        run = self._set_up()
        self.progress_bar = ProgressBar()
        callbacks = [LogMetrics(), self.progress_bar, CollapseMonitor(), Pictures()]
        callbacks += self.callbacks
        for callback in callbacks:
            callback.on_fit_start(run)
        run.method.on_train_start(run.steps_per_epoch, run.total_steps)
        run.model.train()
        run.started = time.perf_counter()
        progress = self.progress(run)
        with StopRequest() as stop, contextlib.closing(self._batches(run)) as batches:
            for batch in batches:
                run.lr = self.lr_schedule.apply(run.optimizer, progress)
                self._resize_views(run, progress)
                loss, metrics, applied = self.train_step(
                    batch.images, batch.labels, batch.global_size, batch.offset, run.step
                )
                self._check_finite(run, applied, loss, metrics)
                run.step += 1
                progress = self.progress(run)
                run.warmed_up = progress.done >= self.lr_schedule.warmup
                self._estimate_total_steps(run, progress)
                out = StepOutput(loss, metrics, applied, batch.global_size)
                for callback in callbacks:
                    callback.on_step_end(run, out)
                if progress.fraction >= 1 or run.step == self.stop_at_step:
                    break
                if stop.should_stop(run.device):
                    self._interrupt(run, stop)
                if run.step % self.checkpoint_every == 0:
                    self._checkpoint(run)
        seconds = time.perf_counter() - run.started
        self._checkpoint(run)
        result = self._finish(run, seconds)
        for callback in callbacks:
            callback.on_fit_end(run)
        run.logger.close()
        return result

    def elapsed(self) -> float:
        """Wall-clock seconds of this run so far: every earlier session of a resumed run plus
        this one from the start of :meth:`fit` (set-up and data loading included)."""
        return self.elapsed_before + time.perf_counter() - self.clock_start

    def progress(self, run: TrainingRun) -> Progress:
        """How far the run is. Every schedule of the loop (the learning rate, the view size,
        the end) reads this: ``run.step`` of ``run.total_steps``, or under
        ``train.time_budget_minutes`` the elapsed seconds of the budget (rank 0's clock, the
        same on every process; ``max_steps`` ends it early)."""
        if self.budget_seconds is None:
            return Progress(run.step, run.total_steps)
        elapsed = dist_utils.broadcast_from_main(self.elapsed(), run.device)
        max_steps = self.cfg.train.max_steps
        if max_steps is not None and run.step >= max_steps:
            elapsed = max(elapsed, self.budget_seconds)
        steps = run.step - run.start_step
        # the pace so far (a guess of 0.1% of the budget before the first step), so that the
        # warm-up's first step runs at a small learning rate rather than at zero
        per_step = (
            (time.perf_counter() - run.started) / steps if steps else 1e-3 * self.budget_seconds
        )
        return Progress(elapsed, self.budget_seconds, step=per_step)

    def _estimate_total_steps(self, run: TrainingRun, progress: Progress) -> None:
        """Under a time budget the number of steps is known only at the end: estimate it from
        the pace so far, for what counts in steps (the target-momentum schedules of the
        methods' ``on_after_step(step, total_steps)``, logging the last step)."""
        if self.budget_seconds is None or progress.fraction <= 0:
            return
        estimate = max(run.step, math.ceil(run.step / progress.fraction))
        if self.cfg.train.max_steps is not None:
            estimate = min(estimate, self.cfg.train.max_steps)
        run.total_steps = estimate
        self.train_step.total_steps = estimate

    def _resize_views(self, run: TrainingRun, progress: Progress) -> None:
        """``train.view_size_schedule``: the view size for this point of the run."""
        schedule = self.cfg.train.view_size_schedule
        if not schedule:
            return
        size = [s for f, s in schedule if f <= progress.fraction][-1]
        if size != self.view_size:
            for method in self.train_step.methods:
                method.set_view_size(size)
            self.view_size = size
            run.log({"step": run.step, "event": "view_size", "view_size": size})

    def _batches(self, run: TrainingRun) -> Iterator[Batch]:
        """The loader's batches from ``run.step`` on, epoch after epoch, to the end (under a
        time budget the loop ends them)."""
        while self.budget_seconds is not None or run.step < run.total_steps:
            epoch, in_epoch = divmod(run.step, run.steps_per_epoch)
            with contextlib.closing(self.loader.iterate(epoch, start_step=in_epoch)) as batches:
                yield from batches

    def _check_finite(
        self, run: TrainingRun, applied: bool, loss: torch.Tensor, metrics: dict[str, Any]
    ) -> None:
        """After a step: count a non-finite one (nothing was applied); stop unless told to
        skip, or after more than ``train.max_skipped_steps`` of them in a row."""
        if applied:
            self.nonfinite_in_a_row = 0
            return
        run.skipped_steps += 1
        self.nonfinite_in_a_row += 1
        tcfg = run.cfg.train
        what = f"loss {loss.item()}, gradient norm {metrics['grad_norm']}"
        if tcfg.on_nonfinite == "stop" or self.nonfinite_in_a_row > tcfg.max_skipped_steps:
            why = (
                "" if tcfg.on_nonfinite == "stop"
                else f" {self.nonfinite_in_a_row} in a row, more than "
                f"train.max_skipped_steps={tcfg.max_skipped_steps};"
            )  # fmt: skip
            raise TrainingError(
                f"non-finite training signal at step {run.step} (epoch "
                f"{run.step // run.steps_per_epoch}): {what};{why} stopping "
                f"({run.skipped_steps} non-finite step(s) in this run). The last good "
                f"checkpoint is kept in {self.run_dir / 'checkpoints'}; lower the learning "
                "rate, set train.grad_clip, or set train.on_nonfinite=skip."
            )
        run.log(
            {
                "step": run.step,
                "event": "skipped_step",
                "reason": what,
                "skipped_steps": run.skipped_steps,
            }
        )

    def _interrupt(self, run: TrainingRun, stop: StopRequest) -> None:
        """SIGTERM/SIGINT: checkpoint this step and raise :class:`TrainingInterrupted`."""
        self._checkpoint(run)
        self.progress_bar.close()
        name = signal.Signals(stop.signum).name  # type: ignore[arg-type]
        raise TrainingInterrupted(
            f"interrupted by {name} after step {run.step}; checkpoint written to "
            f"{latest_checkpoint(self.run_dir)}. Continue with --resume.",
            int(stop.signum),  # type: ignore[arg-type]
        )

    def _checkpoint(self, run: TrainingRun) -> None:
        """Write ``checkpoints/step_XXXXXXXX`` (main process), then wait for every process."""
        self.checkpointed_segments = self.segments(run)
        if run.is_main:
            save_checkpoint(
                self.run_dir,
                run.step,
                run.method,
                run.method.encoder,
                {
                    "optimizer": run.optimizer.state_dict(),
                    "scaler": run.scaler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "skipped_steps": run.skipped_steps,
                    "nonfinite_in_a_row": self.nonfinite_in_a_row,
                    "elapsed_seconds": self.elapsed(),
                    "segments": self.checkpointed_segments,
                    "metrics_bytes": run.logger.size(),
                    "view_size": self.view_size,
                    "compile_decision": self._compile_record(),  # a resumed run follows it
                    "encoder_ema": (
                        None
                        if self.train_step.encoder_ema is None
                        else self.train_step.encoder_ema.state_dict()
                    ),
                },
                {
                    "method": self.cfg.method,
                    "backbone": self.cfg.backbone.name,
                    "epoch": run.epoch,
                    "total_steps": run.total_steps,
                    "world_size": run.world_size,
                    "num_classes": run.num_classes,
                    "encoder": run.encoder_meta,
                },
                keep_last=self.cfg.train.keep_last,
            )
        dist_utils.barrier()

    def segments(self, run: TrainingRun) -> list[dict[str, Any]]:
        """Every session of the run so far, this one last (unless it has not taken a step):
        ``start_step``, ``end_step``, ``steps``, ``seconds`` (of training steps and
        checkpoints, from its first step to now), ``world_size`` and ``started`` (local time).
        A session killed after its last checkpoint counts up to that checkpoint."""
        now = {
            "start_step": run.start_step,
            "end_step": run.step,
            "steps": run.step - run.start_step,
            "seconds": time.perf_counter() - run.started,
            "world_size": run.world_size,
            "started": self.session_started,
        }
        if now["steps"] == 0 and self.earlier_segments:  # resumed at the end: nothing new
            return list(self.earlier_segments)
        return [*self.earlier_segments, now]

    def _finish(self, run: TrainingRun, seconds: float) -> TrainResult:
        """The final encoder, ``summary.json`` and the ``end`` record (main process). The
        totals (``seconds``, ``images_seen``, ``images_per_second``) span every session of a
        resumed run, listed in ``segments`` as the final checkpoint recorded them."""
        cfg = self.cfg
        encoder_path = self.run_dir / "encoder.safetensors"
        segments = self.checkpointed_segments
        seconds = sum(s["seconds"] for s in segments)
        rate = run.step * cfg.train.batch_size / max(seconds, 1e-9)
        # a streamed source finds bad files as it reads them, each process its own (and an
        # earlier session of a resumed run may have found others)
        listed = self.run_dir / "skipped_files.json"
        found = dist_utils.gather_objects(list(run.source.skipped))
        if run.is_main and listed.exists():
            found.append(read_json(listed))
        skipped: dict[str, tuple[str, str]] = {}
        for part in found:
            for path, reason in part:  # type: ignore[attr-defined]
                skipped.setdefault(path, (path, reason))
        if run.is_main:
            if skipped:
                write_json(listed, list(skipped.values()))
            ema = self.train_step.encoder_ema
            if ema is not None:  # the average is the run's encoder; the trained weights beside
                save_weights(run.method.encoder, self.run_dir / "encoder_online.safetensors")
            save_weights(run.method.encoder if ema is None else ema["encoder"], encoder_path)
            summary = {
                "steps": run.step,
                "final_loss": run.last_loss,
                "seconds": seconds,
                "elapsed_seconds": self.elapsed(),
                "time_budget_minutes": cfg.train.time_budget_minutes,
                "encoder_ema": cfg.train.encoder_ema,
                "compile": self._compile_record()["reason"],
                "images_per_second": rate,
                "images_seen": run.step * cfg.train.batch_size,
                "skipped_steps": run.skipped_steps,
                "skipped_files": len(skipped),
                "method": cfg.method,
                "backbone": cfg.backbone.name,
                "images": len(run.source),
                "segments": segments,
                **peak_memory(run.device),
            }
            write_json(self.run_dir / "summary.json", summary)
            run.log({"event": "end", **summary})
        return TrainResult(self.run_dir, run.step, run.last_loss, rate, seconds, encoder_path)

    # ------------------------------------------------------------------ setup
    def _set_up(self) -> TrainingRun:
        """Everything before the first step: processes, data, method, optimizer, schedule,
        resume, the run directory's files and the ``start`` record."""
        cfg, tcfg = self.cfg, self.cfg.train
        device = dist_utils.local_device(tcfg.device)
        distributed = dist_utils.init_distributed(device)
        world = dist_utils.get_world_size()
        main = dist_utils.get_rank() == 0
        if tcfg.num_threads:
            torch.set_num_threads(tcfg.num_threads)
        if tcfg.batch_size % world:
            raise TrainingError(
                f"train.batch_size={tcfg.batch_size} is not divisible by {world} processes"
            )
        if main:
            self._lock_run_dir()
        torch.manual_seed(cfg.seed)
        source = self._load_data()
        num_classes = num_classes_of(source)
        image_size = cfg.data.image_size or source.image_size
        method = build_method(cfg, image_size, source.num_channels, num_classes)
        method.check_global_batch(tcfg.batch_size)  # before the run directory is made
        method, model = self._place(method, device, distributed)
        replicas = self._replicas(method, device, world)  # before the run directory is made
        optimizer = build_optimizer(method, tcfg.optimizer, tcfg.batch_size)
        amp_dtype = autocast_dtype(device, tcfg.precision)
        scaler = torch.amp.GradScaler(
            "cuda", enabled=device.type == "cuda" and amp_dtype == torch.float16
        )
        self.loader = make_loader(source, tcfg.batch_size // world, seed=cfg.seed,
                                  rank=dist_utils.get_rank(), world_size=world, device=device,
                                  workers=cfg.data.workers,
                                  shuffle_buffer=cfg.data.shuffle_buffer)  # fmt: skip
        steps_per_epoch = len(self.loader)
        total_steps = math.ceil(tcfg.epochs * steps_per_epoch)
        if tcfg.max_steps is not None:
            total_steps = min(total_steps, tcfg.max_steps)
        sched = tcfg.schedule
        warmup_fraction = (
            sched.warmup_fraction
            if sched.warmup_fraction is not None
            else (sched.warmup_epochs / tcfg.epochs if self.budget_seconds else None)
        )
        if self.budget_seconds is not None:  # warm-up and decay in seconds
            warmup = min(warmup_fraction or 0.0, 1.0) * self.budget_seconds
        elif warmup_fraction is not None:
            warmup = round(warmup_fraction * total_steps)
        else:
            warmup = round(sched.warmup_epochs * steps_per_epoch)
        self.lr_schedule = LRSchedule(
            sched, peak=peak_lr(tcfg.optimizer, tcfg.batch_size), warmup=warmup
        )
        if self.budget_seconds is None and 0 < total_steps < warmup and main:
            warnings.warn(
                f"the run ends at step {total_steps}, before its learning-rate warm-up is over "
                f"({warmup} steps: train.schedule.warmup_epochs={sched.warmup_epochs:g} x "
                f"{steps_per_epoch} steps per epoch), so it never trains at the peak rate and "
                "the encoder will be barely trained; shorten the warm-up (e.g. "
                "train.schedule.warmup_fraction=0.1) or train for more steps",
                ShortRunWarning,
                stacklevel=2,
            )
        self.checkpoint_every = tcfg.checkpoint_every_steps or max(
            1, round(tcfg.checkpoint_every_epochs * steps_per_epoch)
        )
        start_step, skipped_steps = self._resume(method, optimizer, scaler, main)
        enc_meta = method_encoder_meta(cfg, method, source.num_channels)
        compiled, self.compile_reason = self._compile_decision(
            method, device, amp_dtype, world, replicas, total_steps, num_classes,
            source.num_channels, image_size,
        )  # fmt: skip
        logger = self._start_run_dir(source, enc_meta, start_step, main, world, device, amp_dtype,
                                     steps_per_epoch, total_steps)  # fmt: skip
        self.train_step = TrainStep(
            method=method,
            forward=torch.compile(model) if compiled else model,
            compiled=compiled,
            eager_fallback=model if compiled and tcfg.compile == "auto" else None,
            optimizer=optimizer,
            scaler=scaler,
            amp_dtype=amp_dtype,
            device=device,
            seed=cfg.seed,
            grad_clip=tcfg.grad_clip,
            total_steps=total_steps,
            replicas=replicas,
            encoder_ema=self._encoder_ema(method),
        )
        return TrainingRun(
            cfg=cfg, run_dir=self.run_dir, device=device, is_main=main, world_size=world,
            source=source, method=method, model=model, optimizer=optimizer, scaler=scaler,
            logger=logger, encoder_meta=enc_meta, num_classes=num_classes,
            steps_per_epoch=steps_per_epoch, total_steps=total_steps, start_step=start_step,
            step=start_step, skipped_steps=skipped_steps,
        )  # fmt: skip

    def _compile_decision(
        self,
        method: Method,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        world: int,
        replicas: CPUReplicas | None,
        total_steps: int,
        num_classes: int | None,
        channels: int,
        image_size: int,
    ) -> tuple[bool, str]:
        """``train.compile``: ``(compile?, why)``
        (:func:`~selfsup.utils.precision.use_compile`). ``auto`` weighs the run's time: its
        budget, or its steps times an eager step timed here (:meth:`_time_eager_step`). A
        resumed run takes the decision its checkpoint recorded (the compiled and eager steps
        differ in float rounding: an exact resume needs the first session's path); one whose
        checkpoint predates recorded decisions counts steps, as the code that wrote it did."""
        tcfg = self.cfg.train
        recorded = self.resumed_state.get("compile_decision")
        if tcfg.compile == "auto" and recorded is not None:
            return bool(recorded["compiled"]), str(recorded["reason"])
        keep_eager = (
            "train.cpu_replicas runs the eager method" if replicas is not None
            else "not measured for multi-process runs" if world > 1
            else f"{method.name}: {method.keep_eager_on_cpu}"
            if device.type == "cpu" and method.keep_eager_on_cpu else None
        )  # fmt: skip
        compilations = len(view_size_phases(tcfg.view_size_schedule))  # one per view size
        step_seconds = None
        # resumed without a recorded decision: a checkpoint written before decisions were
        # recorded, whose code counted steps; so does this session, and the resume stays exact
        predates_records = bool(self.resumed_state)
        if (
            tcfg.compile == "auto"
            and self.budget_seconds is None
            and not predates_records
            and compile_blocked(device, amp_dtype, keep_eager) is None
        ):
            needed = COMPILE_AUTO_MIN_SECONDS * compilations / max(total_steps, 1)
            step_seconds = self._time_eager_step(
                method, device, num_classes, channels, image_size, short_below=needed
            )
        return use_compile(
            tcfg.compile, device, amp_dtype, steps=total_steps,
            budget_seconds=self.budget_seconds, step_seconds=step_seconds,
            compilations=compilations, keep_eager=keep_eager,
        )  # fmt: skip

    def _compile_record(self) -> dict[str, Any]:
        """The ``train.compile`` decision as the run stands now, for its checkpoints and
        summary: ``{"compiled": bool, "reason": str}``. After a fall-back to eager the run is
        eager and the reason says where and why, so a resumed session trains eager from the
        start instead of compiling (and failing) again."""
        failed = self.train_step.compile_failure
        return {
            "compiled": self.train_step.compiled and failed is None,
            "reason": self.compile_reason + (f"; {failed}" if failed else ""),
        }

    def _time_eager_step(
        self,
        method: Method,
        device: torch.device,
        num_classes: int | None,
        channels: int,
        image_size: int,
        short_below: float = 0.0,
    ) -> float | None:
        """Seconds of the method's eager forward + backward on a random uint8 batch of the
        run's shape, leaving no trace: gradients cleared, buffers (BatchNorm statistics,
        queues, centres), the views' size and the global RNG as they were. With a
        ``train.view_size_schedule`` it is the mean over the run's steps: each view size is
        timed and weighs by the fraction of the run it lasts (a 12 px step costs a fraction
        of a 32 px one). The first pass pays one-off allocations, so it overstates the step:
        below ``short_below`` seconds it already says the run is too short to compile and is
        returned; otherwise a second pass is timed and returned. None if the forward fails here
        (``auto`` then counts steps instead)."""
        batch = self.cfg.train.batch_size
        gen = torch.Generator().manual_seed(0)
        shape = (batch, channels, image_size, image_size)
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen).to(device)
        labels = None
        if num_classes:
            labels = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
        phases = view_size_phases(self.cfg.train.view_size_schedule)
        buffers = [b.detach().clone() for b in method.buffers()]
        rng = torch.get_rng_state()
        seconds: float | None = None
        try:
            for _ in range(2):
                seconds = 0.0
                for share, size in phases:
                    if size is not None:
                        method.set_view_size(size)
                    started = time.perf_counter()
                    step_gen = torch.Generator(device=device).manual_seed(0)
                    loss, _ = method(images, labels, step_gen, batch, 0)
                    loss.backward()
                    seconds += share * (time.perf_counter() - started)
                if seconds < short_below:
                    break
        except Exception:  # the run's own first step will say what is wrong, if anything
            seconds = None
        finally:
            method.zero_grad(set_to_none=True)
            with torch.no_grad():
                for buffer, saved in zip(method.buffers(), buffers, strict=True):
                    buffer.copy_(saved)
            if phases[0][1] is not None:  # the views as the loop expects them
                method.set_view_size(self.view_size or phases[0][1])
            torch.set_rng_state(rng)
        return seconds

    def _encoder_ema(self, method: Method) -> EMA | None:
        """``train.encoder_ema``: the encoder's weight average, from the resumed checkpoint's
        when there is one (a run that did not keep one starts it from the current weights)."""
        decay = self.cfg.train.encoder_ema
        if decay is None:
            return None
        ema = EMA({"encoder": method.encoder}, base_momentum=decay, schedule="constant")
        saved = self.resumed_state.get("encoder_ema")
        if saved is not None:
            ema.load_state_dict(saved)
        return ema

    def _replicas(self, method: Method, device: torch.device, world: int) -> CPUReplicas | None:
        """``train.cpu_replicas``: the shard runner, or None for one replica or a device other
        than the CPU (the option is about CPU threads, so a recipe that sets it still runs on a
        GPU); refuses settings it cannot serve with a :class:`~selfsup.errors.ConfigError`."""
        tcfg = self.cfg.train
        count = tcfg.cpu_replicas
        if count == 1 or device.type != "cpu":
            return None
        where = f"train.cpu_replicas={count}"
        if world > 1:
            raise ConfigError(f"{where} runs in one process; this run has {world} (use 1)")
        if tcfg.compile is True:
            raise ConfigError(f"{where} runs the eager method; set train.compile=false")
        threads = max(1, (tcfg.num_threads or torch.get_num_threads()) // count)
        return CPUReplicas(method, count, threads)

    def _lock_run_dir(self) -> None:
        """Take the run directory's lock (one writer), then refuse to start a new run over
        another's checkpoints. A stale lock (its process is gone) is taken over with
        ``--resume``, or where the dead run left no checkpoint to continue."""
        take_over = self.resume or latest_checkpoint(self.run_dir) is None
        try:
            self.run_lock.acquire(take_over_stale=take_over)
        except RunDirLockedError as err:
            raise TrainingError(str(err)) from None
        if self.run_lock.taken_over is not None:
            print(f"taking over {self.run_lock.path} from "
                  f"{RunDirLock.describe(self.run_lock.taken_over)}, which is gone")  # fmt: skip
        if not self.resume and latest_checkpoint(self.run_dir) is not None:
            raise TrainingError(
                f"{self.run_dir} already holds checkpoints; pass --resume to continue that run "
                "or set out_dir=... to start a new one"
            )

    def _load_data(self) -> TrainingSource:
        """The training images, checked against the method and the batch size."""
        cfg = self.cfg
        source = load_training_source(cfg)
        method_cls = get_method(cfg.method)
        layout = getattr(source, "layout", "image")  # streamed sources hold images
        if layout != method_cls.data_layout:
            raise TrainingError(
                f"method {cfg.method!r} trains on {LAYOUT_WORDS[method_cls.data_layout]}; "
                f"data.source={cfg.data.source} gives {LAYOUT_WORDS[layout]}"
            )
        if method_cls.uses_labels and num_classes_of(source) is None:
            raise TrainingError(f"method {cfg.method!r} needs labels; {source.name} has none")
        if cfg.train.batch_size > len(source):
            raise TrainingError(
                f"train.batch_size={cfg.train.batch_size} is larger than the data set "
                f"({len(source)} images in {source.name})"
            )
        return source

    def _place(
        self, method: Method, device: torch.device, distributed: bool
    ) -> tuple[Method, nn.Module]:
        """Move ``method`` to ``device`` (channels_last when it pays), with global-batch
        BatchNorm and a DDP wrapper under DDP; returns (the method, the module to step)."""
        tcfg = self.cfg.train
        if use_channels_last(device, tcfg.channels_last):
            method = method.to(memory_format=torch.channels_last)
            method.memory_format = torch.channels_last
        method = method.to(device)
        if not distributed:
            return method, method
        if tcfg.sync_batchnorm:
            method = dist_utils.convert_sync_batchnorm(method, device)  # type: ignore[assignment]
        ddp = nn.parallel.DistributedDataParallel(
            method, device_ids=[device] if device.type == "cuda" else None
        )
        return method, ddp

    def _resume(
        self,
        method: Method,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        main: bool,
    ) -> tuple[int, int]:
        """With ``resume``, load the last checkpoint into the method, optimizer, scaler and
        RNG; returns (start step, non-finite steps skipped so far)."""
        ckpt = latest_checkpoint(self.run_dir) if self.resume else None
        if ckpt is None:
            if self.resume and main:
                print(f"--resume: no checkpoint in {self.run_dir}; starting from scratch")
            return 0, 0
        expected = {"method": self.cfg.method, "backbone": self.cfg.backbone.name}
        state = load_checkpoint(ckpt, method, expected)
        ts = state["train_state"]
        optimizer.load_state_dict(ts["optimizer"])
        scaler.load_state_dict(ts["scaler"])
        torch.set_rng_state(ts["torch_rng"])
        start_step = int(state["meta"]["step"])
        self.elapsed_before = float(ts.get("elapsed_seconds", 0.0))
        self.resumed_state = ts
        self.earlier_segments = list(ts.get("segments", []))
        self.nonfinite_in_a_row = int(ts.get("nonfinite_in_a_row", 0))
        if ts.get("view_size") is not None:  # the views as they were; logged when they change
            self.view_size = int(ts["view_size"])
            method.set_view_size(self.view_size)
        if main:
            print(f"resuming {self.run_dir} from step {start_step} ({ckpt.name})")
        return start_step, int(ts.get("skipped_steps", 0))

    def _start_run_dir(
        self,
        source: TrainingSource,
        enc_meta: dict[str, Any],
        start_step: int,
        main: bool,
        world: int,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        steps_per_epoch: int,
        total_steps: int,
    ) -> MetricsLogger:
        """Write config.yaml, encoder.json, environment.json (and skipped_files.json) and the
        ``start`` record of a new run; returns the metrics logger (quiet off the main process)."""
        cfg = self.cfg
        self.session_started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # what was logged after the resumed checkpoint is logged again from here
            rewind_metrics(self.run_dir, start_step, self.resumed_state.get("metrics_bytes"))
            (self.run_dir / "config.yaml").write_text(dump_config(cfg))
            write_json(self.run_dir / "encoder.json", enc_meta)
            write_json(self.run_dir / "environment.json", environment(cfg.seed, world, device))
            if source.skipped:
                write_json(self.run_dir / "skipped_files.json", source.skipped)
        logger = MetricsLogger(self.run_dir, tensorboard=cfg.train.tensorboard, enabled=main)
        if main and start_step == 0:
            logger.log(
                {
                    "event": "start",
                    "images": len(source),
                    "steps_per_epoch": steps_per_epoch,
                    "total_steps": total_steps,
                    "world_size": world,
                    "device": str(device),
                    "precision": str(amp_dtype),
                    "compile": self.compile_reason,
                    "skipped_files": len(source.skipped),
                }
            )
        return logger


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory of this process so far, in MiB: ``peak_gpu_mib`` (the CUDA allocator's
    maximum) on a GPU, and ``peak_rss_mib`` (the process's maximum resident set, which includes
    the data held in memory) everywhere."""
    import resource

    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def environment(seed: int, world_size: int, device: torch.device) -> dict[str, Any]:
    """What produced a run: seed, library versions, hardware, command line."""
    import platform
    import sys

    import numpy
    import torchvision

    from selfsup._version import __version__

    return {
        "seed": seed,
        "selfsup": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "world_size": world_size,
        "threads": torch.get_num_threads(),
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
