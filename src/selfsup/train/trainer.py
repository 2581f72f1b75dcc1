"""The training loop. It knows nothing about any method.

Device, precision (bf16/fp16 autocast, channels_last), optional ``torch.compile``, DDP under
torchrun, LR schedule, gradient clipping, checkpoint/resume, JSONL/TensorBoard metrics, a
progress bar and an optional online kNN monitor. Randomness is derived from ``(seed, step)``,
and the data order from ``(seed, epoch)``, so a resumed run continues exactly where the
interrupted one stopped.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from selfsup.config import RunConfig, TrainConfig, dump_config
from selfsup.data import BatchLoader, ImageSource, load_source, random_subset_indices
from selfsup.errors import TrainingError, TrainingInterrupted
from selfsup.evaluate.encoders import encoder_meta, make_encoder
from selfsup.methods import Method, get_method, normalization
from selfsup.train import distributed as dist_utils
from selfsup.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_weights,
    write_json,
)
from selfsup.train.metrics_log import MetricsLogger
from selfsup.train.optim import build_optimizer, lr_at, peak_lr, set_lr
from selfsup.train.precision import autocast_dtype, use_channels_last
from selfsup.train.signals import StopRequest


class CollapseWarning(UserWarning):
    """The embeddings are collapsing towards a constant."""


def collapse_reason(metrics: dict[str, Any], tcfg: TrainConfig) -> str | None:
    """Why a step's metrics look like collapse, or None: ``embedding_spread`` (1 spread, 0
    collapsed) under ``train.collapse_threshold``, or ``effective_rank`` (1 = every embedding on
    one direction) under ``train.collapse_min_effective_rank``. Metrics a method does not
    report are not checked."""
    if "embedding_spread" in metrics:
        spread = float(metrics["embedding_spread"])
        if spread < tcfg.collapse_threshold:
            return f"embedding spread {spread:.4f} < {tcfg.collapse_threshold}"
    if "effective_rank" in metrics:
        rank = float(metrics["effective_rank"])
        if rank < tcfg.collapse_min_effective_rank:
            return f"effective rank {rank:.3f} < {tcfg.collapse_min_effective_rank}"
    return None


@dataclass
class TrainResult:
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
    step and ``on_after_step`` (EMA teachers, queues, centres). A non-finite step zeroes the
    gradients and applies nothing. ``forward`` is the method itself, its DDP wrapper or its
    compiled form; the hooks always go to the bare ``method``.
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

    def __post_init__(self) -> None:
        self.params = [p for p in self.method.parameters() if p.requires_grad]

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        global_size: int,
        offset: int,
        step: int,
    ) -> tuple[torch.Tensor, dict[str, Any], bool]:
        """One step on a (B, C, H, W) uint8 batch; returns (loss, metrics, applied)."""
        generator = torch.Generator(device=self.device).manual_seed(step_seed(self.seed, step))
        amp = self.amp_dtype
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, metrics = self.forward(images, labels, generator, global_size, offset)
        optimizer, scaler = self.optimizer, self.scaler
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
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
        return loss, metrics, True


def build_method(
    cfg: RunConfig, image_size: int, in_channels: int, num_classes: int | None
) -> Method:
    """The method of ``cfg`` around a freshly initialised backbone, for training images of
    ``in_channels`` channels (the encoder takes ``method.encoder_channels(in_channels)``, split
    into the method's ``channel_groups`` when it has them)."""
    method_cls = get_method(cfg.method)
    encoder = make_encoder(
        cfg.backbone,
        image_size=image_size,
        in_channels=method_cls.encoder_channels(in_channels),
        channel_groups=method_cls.channel_groups,
    )
    mean, std = normalization(cfg.normalize, in_channels)
    return method_cls(
        encoder,
        cfg.method_config(),
        image_size=image_size,
        mean=mean,
        std=std,
        augment=cfg.augment,
        num_classes=num_classes,
    )


def load_training_source(cfg: RunConfig) -> ImageSource:
    d = cfg.data
    source = load_source(
        d.source,
        split=d.split,
        root=d.root,
        image_size=d.image_size,
        cache_dir=d.cache_dir,
        download=d.download,
        grayscale=d.grayscale,
        options=d.options or None,
    )
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
        self, cfg: RunConfig, *, resume: bool = False, stop_at_step: int | None = None
    ) -> None:
        """``stop_at_step`` ends the run early after checkpointing that step (a planned
        interruption, e.g. to fit a job into a time slot); ``--resume`` continues it exactly."""
        self.cfg = cfg
        self.resume = resume
        self.stop_at_step = stop_at_step
        self.skipped_steps = 0
        self.run_dir = cfg.resolved_out_dir()

    # ------------------------------------------------------------------ setup
    def _check_run_dir(self) -> None:
        if not self.resume and latest_checkpoint(self.run_dir) is not None:
            raise TrainingError(
                f"{self.run_dir} already holds checkpoints; pass --resume to continue that run "
                "or set out_dir=... to start a new one"
            )

    def fit(self) -> TrainResult:
        cfg, tcfg = self.cfg, self.cfg.train
        device = dist_utils.local_device(tcfg.device)
        distributed = dist_utils.init_distributed(device)
        rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
        main = rank == 0
        if tcfg.num_threads:
            torch.set_num_threads(tcfg.num_threads)
        if tcfg.batch_size % world:
            raise TrainingError(
                f"train.batch_size={tcfg.batch_size} is not divisible by {world} processes"
            )
        if main:
            self._check_run_dir()
        torch.manual_seed(cfg.seed)

        source = load_training_source(cfg)
        method_cls = get_method(cfg.method)
        if source.layout != method_cls.data_layout:
            raise TrainingError(
                f"method {cfg.method!r} trains on {LAYOUT_WORDS[method_cls.data_layout]}; "
                f"data.source={cfg.data.source} gives {LAYOUT_WORDS[source.layout]}"
            )
        if method_cls.uses_labels and source.labels is None:
            raise TrainingError(f"method {cfg.method!r} needs labels; {source.name} has none")
        if tcfg.batch_size > len(source):
            raise TrainingError(
                f"train.batch_size={tcfg.batch_size} is larger than the data set "
                f"({len(source)} images in {source.name})"
            )
        image_size = cfg.data.image_size or source.image_size
        num_classes = int(source.labels.max()) + 1 if source.labels is not None else None
        method = build_method(cfg, image_size, source.num_channels, num_classes)
        method.check_global_batch(tcfg.batch_size)  # before the run directory is made
        enc_meta = encoder_meta(
            cfg.backbone,
            image_size=image_size,
            in_channels=method_cls.encoder_channels(source.num_channels),
            normalize=cfg.normalize,
            method=cfg.method,
            feature_dim=method.encoder.feature_dim,
            input_space=method_cls.input_space,
            data_channels=source.num_channels,
            channel_groups=method_cls.channel_groups,
        )
        if use_channels_last(device, tcfg.channels_last):
            method = method.to(memory_format=torch.channels_last)
            method.memory_format = torch.channels_last
        method = method.to(device)
        if distributed and tcfg.sync_batchnorm:
            method = dist_utils.convert_sync_batchnorm(method, device)
        model: nn.Module = method
        if distributed:
            model = nn.parallel.DistributedDataParallel(
                method, device_ids=[device] if device.type == "cuda" else None
            )
        step_fn = torch.compile(model) if tcfg.compile else model

        optimizer = build_optimizer(method, tcfg.optimizer, tcfg.batch_size)
        amp_dtype = autocast_dtype(device, tcfg.precision)
        scaler = torch.amp.GradScaler(
            "cuda", enabled=device.type == "cuda" and amp_dtype == torch.float16
        )
        loader = BatchLoader(
            source,
            tcfg.batch_size // world,
            seed=cfg.seed,
            rank=rank,
            world_size=world,
            device=device,
            drop_last=True,
        )
        steps_per_epoch = len(loader)
        total_steps = math.ceil(tcfg.epochs * steps_per_epoch)
        if tcfg.max_steps is not None:
            total_steps = min(total_steps, tcfg.max_steps)
        warmup_steps = round(tcfg.schedule.warmup_epochs * steps_per_epoch)
        ckpt_every = tcfg.checkpoint_every_steps or max(
            1, round(tcfg.checkpoint_every_epochs * steps_per_epoch)
        )
        knn_every = tcfg.knn_monitor.every_epochs * steps_per_epoch
        pictures_every = tcfg.pictures_every_epochs * steps_per_epoch
        lr_peak = peak_lr(tcfg.optimizer, tcfg.batch_size)

        start_step = 0
        if self.resume:
            ckpt = latest_checkpoint(self.run_dir)
            if ckpt is not None:
                state = load_checkpoint(
                    ckpt, method, {"method": cfg.method, "backbone": cfg.backbone.name}
                )
                ts = state["train_state"]
                optimizer.load_state_dict(ts["optimizer"])
                scaler.load_state_dict(ts["scaler"])
                torch.set_rng_state(ts["torch_rng"])
                self.skipped_steps = int(ts.get("skipped_steps", 0))
                start_step = int(state["meta"]["step"])
                if main:
                    print(f"resuming {self.run_dir} from step {start_step} ({ckpt.name})")
            elif main:
                print(f"--resume: no checkpoint in {self.run_dir}; starting from scratch")

        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_config(cfg))
            write_json(self.run_dir / "encoder.json", enc_meta)
            write_json(self.run_dir / "environment.json", environment(cfg.seed, world, device))
            if source.skipped:
                write_json(self.run_dir / "skipped_files.json", source.skipped)
        logger = MetricsLogger(self.run_dir, tensorboard=tcfg.tensorboard, enabled=main)
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
                    "skipped_files": len(source.skipped),
                }
            )
        monitor = (
            _KnnMonitor(cfg, image_size, enc_meta["in_channels"], device, enc_meta["input_space"])
            if (main and 0 < knn_every <= total_steps)
            else None
        )

        def checkpoint(step: int) -> None:
            if main:
                save_checkpoint(
                    self.run_dir,
                    step,
                    method,
                    method.encoder,
                    {
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "skipped_steps": self.skipped_steps,
                    },
                    {
                        "method": cfg.method,
                        "backbone": cfg.backbone.name,
                        "epoch": step / steps_per_epoch,
                        "total_steps": total_steps,
                        "world_size": world,
                        "num_classes": num_classes,
                        "encoder": enc_meta,
                    },
                    keep_last=tcfg.keep_last,
                )
            dist_utils.barrier()

        bar = tqdm(
            total=total_steps,
            initial=start_step,
            disable=not (main and tcfg.progress),
            desc=f"{cfg.method}",
            unit="step",
            dynamic_ncols=True,
        )
        train_step = TrainStep(
            method=method,
            forward=step_fn,
            optimizer=optimizer,
            scaler=scaler,
            amp_dtype=amp_dtype,
            device=device,
            seed=cfg.seed,
            grad_clip=tcfg.grad_clip,
            total_steps=total_steps,
        )

        method.on_train_start(steps_per_epoch, total_steps)
        step, last_loss = start_step, float("nan")
        t_start = time.perf_counter()
        t_log, images_since_log = t_start, 0
        collapse_warned = False
        model.train()
        with StopRequest() as stop:
            while step < total_steps:
                epoch, in_epoch = divmod(step, steps_per_epoch)
                batches = loader.iterate(epoch, start_step=in_epoch)
                with contextlib.closing(batches):
                    for batch in batches:
                        lr = set_lr(
                            optimizer,
                            lr_peak,
                            lr_at(step, total_steps, warmup_steps, tcfg.schedule),
                        )
                        loss, metrics, applied = train_step(
                            batch.images, batch.labels, batch.global_size, batch.offset, step
                        )
                        if not applied:
                            self.skipped_steps += 1
                            what = f"loss {loss.item()}, gradient norm {metrics['grad_norm']}"
                            if tcfg.on_nonfinite == "stop" or (
                                self.skipped_steps > tcfg.max_skipped_steps
                            ):
                                raise TrainingError(
                                    f"non-finite training signal at step {step} (epoch "
                                    f"{epoch}): {what}; stopping ({self.skipped_steps} "
                                    f"non-finite step(s) in this run). The last good "
                                    f"checkpoint is kept in {self.run_dir / 'checkpoints'}; "
                                    "lower the learning rate, set train.grad_clip, or set "
                                    "train.on_nonfinite=skip."
                                )
                            logger.log(
                                {
                                    "step": step,
                                    "event": "skipped_step",
                                    "reason": what,
                                    "skipped_steps": self.skipped_steps,
                                },
                                step,
                            )
                        step += 1
                        images_since_log += batch.global_size
                        bar.update(1)
                        if step % tcfg.log_every_steps == 0 or step == total_steps:
                            now = time.perf_counter()
                            last_loss = dist_utils.all_reduce_mean(loss.detach().float()).item()
                            rate = images_since_log / max(now - t_log, 1e-9)
                            record: dict[str, Any] = {
                                "step": step,
                                "epoch": step / steps_per_epoch,
                                "loss": last_loss,
                                "lr": lr,
                                "images_per_second": rate,
                                **metrics,
                            }
                            if self.skipped_steps:
                                record["skipped_steps"] = self.skipped_steps
                            logger.log(record, step)
                            bar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{rate:.0f}")
                            t_log, images_since_log = now, 0
                            reason = collapse_reason(metrics, tcfg)
                            if main and reason and not collapse_warned:
                                collapse_warned = True
                                warnings.warn(
                                    f"step {step}: {reason}: the representation may be "
                                    "collapsing (images mapped to nearly the same embedding, "
                                    "or to a few directions)",
                                    CollapseWarning,
                                    stacklevel=1,
                                )
                                logger.log(
                                    {"step": step, "event": "collapse_warning", "reason": reason},
                                    step,
                                )
                        if pictures_every and main and step % pictures_every == 0:
                            write_pictures(method, source, self.run_dir, f"step{step:08d}", device)
                            model.train()
                        if monitor is not None and step % knn_every == 0:
                            result = monitor(method.encoder)
                            logger.log(
                                {"step": step, "epoch": step / steps_per_epoch, **result}, step
                            )
                            bar.write(
                                f"step {step}: "
                                + ", ".join(f"{k}={v:.4f}" for k, v in result.items())
                            )
                            model.train()
                        if step >= total_steps or step == self.stop_at_step:
                            break
                        if stop.should_stop(device):
                            checkpoint(step)
                            bar.close()
                            name = signal.Signals(stop.signum).name  # type: ignore[arg-type]
                            raise TrainingInterrupted(
                                f"interrupted by {name} after step {step}; checkpoint written "
                                f"to {latest_checkpoint(self.run_dir)}. Continue with --resume.",
                                int(stop.signum),  # type: ignore[arg-type]
                            )
                        if step % ckpt_every == 0:
                            checkpoint(step)
                if step == self.stop_at_step:
                    break
        bar.close()
        seconds = time.perf_counter() - t_start
        checkpoint(step)
        encoder_path = self.run_dir / "encoder.safetensors"
        rate = (step - start_step) * tcfg.batch_size / max(seconds, 1e-9)
        if main:
            save_weights(method.encoder, encoder_path)
            summary = {
                "steps": step,
                "final_loss": last_loss,
                "seconds": seconds,
                "images_per_second": rate,
                "images_seen": step * tcfg.batch_size,
                "skipped_steps": self.skipped_steps,
                "method": cfg.method,
                "backbone": cfg.backbone.name,
                "images": len(source),
                **peak_memory(device),
            }
            write_json(self.run_dir / "summary.json", summary)
            logger.log({"event": "end", **summary}, step)
        logger.close()
        return TrainResult(self.run_dir, step, last_loss, rate, seconds, encoder_path)


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory of this process so far, in MiB: ``peak_gpu_mib`` (the CUDA allocator's
    maximum) on a GPU, and ``peak_rss_mib`` (the process's maximum resident set, which includes
    the data held in memory) everywhere."""
    import resource

    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


class _KnnMonitor:
    """Online kNN accuracy of the current encoder on a labeled split (every N epochs)."""

    def __init__(
        self,
        cfg: RunConfig,
        image_size: int,
        in_channels: int,
        device: torch.device,
        input_space: str = "rgb",
    ) -> None:
        """``in_channels`` / ``input_space``: what the encoder takes (``encoder.json``)."""
        from selfsup.evaluate.protocols import load_eval_data

        e = cfg.eval_data
        source = e.source or cfg.data.source
        self.data = load_eval_data(
            source,
            train_split=e.train_split,
            test_split=e.test_split,
            root=cfg.data.root,
            image_size=cfg.data.image_size,
            train_subset=e.train_subset,
            test_subset=e.test_subset,
            seed=cfg.seed,
        )
        self.cfg, self.image_size, self.in_channels, self.device = (
            cfg,
            image_size,
            in_channels,
            device,
        )
        self.input_space = input_space

    def __call__(self, encoder: nn.Module) -> dict[str, float]:
        from selfsup.evaluate.features import extract_features
        from selfsup.evaluate.knn import knn_accuracy

        kw = dict(
            image_size=self.image_size,
            normalize=self.cfg.normalize,
            in_channels=self.in_channels,
            device=self.device,
            precision=self.cfg.train.precision,
            input_space=self.input_space,
        )
        ftr = extract_features(encoder, self.data.train, **kw)  # type: ignore[arg-type]
        fte = extract_features(encoder, self.data.test, **kw)  # type: ignore[arg-type]
        k = self.cfg.train.knn_monitor.k
        result = knn_accuracy(
            ftr,
            torch.as_tensor(self.data.train.labels),
            fte,
            torch.as_tensor(self.data.test.labels),
            ks=(k,),
            temperature=self.cfg.train.knn_monitor.temperature,
            num_classes=self.data.num_classes,
        )
        return {f"online_{key}": value for key, value in result.items()}


def write_pictures(
    method: Method, source: ImageSource, run_dir: Path, tag: str, device: torch.device
) -> list[Path]:
    """Save the method's pictures of the first 8 images of ``source`` as
    ``RUN/pictures/{name}_{tag}.png``."""
    import numpy as np
    from torchvision.utils import save_image

    images = source.as_tensor_chw(np.arange(min(8, len(source)))).to(device)
    method.eval()
    pictures = method.pictures(images, torch.Generator(device=device).manual_seed(0))
    paths = []
    if pictures:
        (run_dir / "pictures").mkdir(exist_ok=True)
    for name, grid in pictures.items():
        path = run_dir / "pictures" / f"{name}_{tag}.png"
        save_image(grid.float().cpu(), path)
        paths.append(path)
    return paths


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
