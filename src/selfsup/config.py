"""Typed, strict run configuration.

A run is described by one :class:`RunConfig`, built from a recipe (YAML), a user file and
``key=value`` overrides, in that order. Every section forbids unknown keys, so a typo is an error
that names the key (with a did-you-mean) before any work starts.

Example::

    cfg = load_config("simclr", recipe="simclr_cifar10_cpu", overrides=["train.epochs=2"])
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from selfsup.errors import ConfigError

RECIPES_DIR = Path(__file__).parent / "recipes"


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """Where the unlabeled training images come from."""

    source: str = "cifar10"
    """A dataset name (cifar10, digits, ...), an ``.npz`` file, an image folder, WebDataset
    shards (``shards/train-{000000..000099}.tar``, ``::``-joined patterns, URLs, a
    ``shards.json`` manifest or a folder holding one), or a clip / RGB-D source
    (``synthetic_video``, ``synthetic_rgbd``, ``video:PATH``, ``rgbd:PATH``)."""
    split: str = "train"
    root: str | None = None
    """Root for named datasets; defaults to ``$SELFSUP_DATA`` then ``./data``."""
    image_size: int | None = Field(default=None, gt=0)
    """Resolution images are decoded to (folders) or resized to; None keeps the source's."""
    subset: int | None = Field(default=None, gt=0)
    """Use a seeded random subset of this many images."""
    holdout: int | None = Field(default=None, gt=0)
    """Keep this many images out of training as a validation set (class-balanced when
    labeled, a fixed seed whatever ``seed`` is; see :func:`selfsup.data.holdout_split`).
    Evaluate on them with ``selfsup eval ... --holdout N`` to tune without the test set."""
    cache_dir: str | None = None
    download: bool = False
    grayscale: bool = False
    max_skipped_fraction: float = Field(default=0.1, ge=0, le=1)
    """Image folders: stop before training when more than this fraction of the image files
    cannot be used (broken links, unreadable, corrupt); fewer are skipped and listed in
    ``RUN/skipped_files.json``."""
    mode: Literal["auto", "cache", "stream"] = "auto"
    """``cache``: decode once to ``image_size`` into a memory-mapped array; ``stream``: read
    the folder's files (or WebDataset shards) while training, decoding each with a random
    resized crop to ``image_size`` in DataLoader workers; ``auto``: shards stream, a folder
    streams when its cache would exceed ``cache_budget_gb``, the rest is cached."""
    cache_budget_gb: float = Field(default=8.0, gt=0)
    """``mode: auto`` streams a folder whose decoded cache would be larger than this (GiB)."""
    workers: int = Field(default=2, ge=0)
    """Streaming: DataLoader worker processes decoding images (0 = in the training process).
    A resumed shard run must use the same number (it fixes the order of the shards' lanes)."""
    shuffle_buffer: int = Field(default=1000, ge=1)
    """Shards: each worker shuffles its stream in windows of this many samples."""
    crop_scale: tuple[float, float] = (0.25, 1.0)
    """Streaming: area range of the random crop taken while decoding (the method's own
    augmentation crops again from it, on the device)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Options of the clip and RGB-D sources, one section per source kind
    (``synthetic_video``, ``synthetic_rgbd``, ``video``), e.g.
    ``data.options.synthetic_video.clips=2000``; the section of the source in use is validated
    when it loads."""


class EvalDataConfig(Section):
    """Labeled train/test splits used by the online kNN monitor and by evaluation."""

    source: str | None = None
    """Labeled dataset; None means the training source (when it has labels)."""
    train_split: str = "train"
    test_split: str = "test"
    train_subset: int | None = Field(default=None, gt=0)
    test_subset: int | None = Field(default=None, gt=0)


def is_vit_name(name: str) -> bool:
    """Whether a backbone name is one of selfsup's own ViTs (``vit_*``)."""
    return name.startswith("vit")


def is_resnet_name(name: str) -> bool:
    """Whether a backbone name is one of selfsup's own ResNets (``resnet*``)."""
    return name.startswith("resnet")


class BackboneConfig(Section):
    """The encoder. Options left unset (None) take the backbone's own defaults."""

    name: str = "resnet18"
    stem: Literal["cifar", "imagenet"] | None = None
    """ResNet stem: cifar (3x3 conv, no max-pool; the default) or imagenet (7x7/2 + max-pool)."""
    width: float | None = Field(default=None, gt=0)
    """ResNet channel multiplier."""
    patch_size: int | None = Field(default=None, gt=0)
    pos_embed: Literal["sincos", "learned"] | None = None
    drop_path_rate: float | None = Field(default=None, ge=0, lt=1)
    global_pool: Literal["cls", "avg"] | None = None
    """ViT only: the pooled feature, the cls token (None: the default) or the mean of the patch
    tokens (``avg``; MAE's frozen features read better that way: docs/methods/mae.md)."""
    pretrained: bool = False
    """torchvision/timm backbones only: start from the library's published weights."""

    @property
    def is_vit(self) -> bool:
        """One of selfsup's own ViTs (``vit_*``: patch size, position embedding, pooling)."""
        return is_vit_name(self.name)

    @property
    def is_resnet(self) -> bool:
        """One of selfsup's own ResNets (``resnet*``: stem, width)."""
        return is_resnet_name(self.name)

    def build_kwargs(self, image_size: int, in_channels: int) -> dict[str, Any]:
        """Keyword arguments for :func:`selfsup.backbones.build_backbone` of this family."""
        if self.name.startswith(("torchvision:", "timm:")):
            adapter: dict[str, Any] = {"in_channels": in_channels}
            return {**adapter, "pretrained": True} if self.pretrained else adapter
        if self.is_resnet:
            kwargs: dict[str, Any] = {"stem": self.stem, "width": self.width}
        elif self.is_vit:
            kwargs = {
                "image_size": image_size,
                "patch_size": self.patch_size,
                "pos_embed": self.pos_embed,
                "drop_path_rate": self.drop_path_rate,
                "global_pool": self.global_pool,
            }
        else:
            kwargs = {}
        kwargs["in_channels"] = in_channels
        return {k: v for k, v in kwargs.items() if v is not None}


class OptimizerConfig(Section):
    name: Literal["sgd", "lars", "adamw", "lamb"] = "sgd"
    """``sgd`` (with momentum), ``lars`` (layer-wise trust ratio on SGD), ``adamw``, ``lamb``
    (layer-wise trust ratio on Adam; ``lr`` is then the relative change of each layer's
    weights per step: 0.015-0.03 was best for the speedrun's SimCLR, BENCHMARKS.md)."""
    lr: float | None = Field(default=None, gt=0)
    """Absolute peak learning rate. When None, ``base_lr * global_batch / 256``."""
    base_lr: float = Field(default=0.3, gt=0)
    weight_decay: float = Field(default=1e-6, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    betas: tuple[float, float] = (0.9, 0.999)
    nesterov: bool = False
    trust_coefficient: float = Field(default=0.001, gt=0)
    """LARS trust ratio coefficient."""
    lars_clip: bool = False
    """LARS: cap the layer-wise rate at the global lr (LARC's clip mode) instead of
    multiplying it."""
    exclude_norm_and_bias: bool = True
    """No weight decay (and no LARS adaptation) on norm layers and biases."""


class ScheduleConfig(Section):
    name: Literal["cosine", "linear", "constant"] = "cosine"
    """The decay after the warm-up: ``cosine``; ``linear`` (straight to the floor, the
    schedule budgeted training favours: Li, Yumer & Ramanan, ICLR 2020); ``constant``."""
    warmup_epochs: float = Field(default=0.0, ge=0)
    warmup_fraction: float | None = Field(default=None, ge=0, lt=1)
    """Warm-up as a fraction of the whole run; overrides ``warmup_epochs``. Under a time budget
    (``train.time_budget_minutes``) the warm-up is this fraction of the time, or
    ``warmup_epochs / epochs`` when unset."""
    final_lr_fraction: float = Field(default=0.0, ge=0, le=1)


class KnnMonitorConfig(Section):
    every_epochs: int = Field(default=0, ge=0)
    """0 disables the monitor."""
    k: int = Field(default=200, gt=0)
    temperature: float = Field(default=0.1, gt=0)


class TrainConfig(Section):
    epochs: float = Field(default=10, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    """Stop after this many optimizer steps (overrides epochs when smaller)."""
    time_budget_minutes: float | None = Field(default=None, gt=0)
    """Train for this many minutes of wall-clock time instead of ``epochs``: set-up, data
    loading and compilation count, evaluation does not. Every schedule (learning rate, target
    momentum, view size, ...) is then a function of elapsed / budget time, so a slower machine
    still completes its schedule when the time is up (``max_steps`` still caps the run)."""
    view_size_schedule: list[tuple[float, int]] | None = None
    """Progressive resizing: ``[[fraction, size], ...]``, training views of ``size`` pixels
    from that fraction of the run on (e.g. ``[[0, 16], [0.5, 24], [0.8, 32]]``); None keeps
    the data's size. Evaluation always sees the full-size images."""

    @field_validator("view_size_schedule")
    @classmethod
    def _check_view_sizes(
        cls, value: list[tuple[float, int]] | None
    ) -> list[tuple[float, int]] | None:
        if value is None:
            return value
        if not value or value[0][0] != 0:
            raise ValueError("must start at fraction 0, e.g. [[0, 16], [0.5, 32]]")
        fractions = [f for f, _ in value]
        if fractions != sorted(fractions) or not all(0 <= f < 1 for f in fractions):
            raise ValueError("fractions must increase within [0, 1)")
        if any(size < 1 for _, size in value):
            raise ValueError("sizes must be positive")
        return value

    batch_size: int = Field(default=256, gt=0)
    """Global batch size (split evenly over processes)."""
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    """``auto``: on for CUDA and bf16-capable CPUs (it slows fp32 convolutions on AVX2 CPUs)."""
    compile: bool | Literal["auto"] = "auto"
    """``torch.compile`` the method's forward (inductor). ``auto``: on where it pays for itself
    within the run, which measured so (``benchmarks/bench_compile.py``) only for fp32 on the
    CPU (1.13-1.44x faster steps across methods, 15-55 s per cold compile): a CPU run without
    autocast in one process without ``train.cpu_replicas``, expected to train at least 200
    seconds per compilation (one per size of ``view_size_schedule``): its time budget, or its
    steps times an eager step the trainer times at set-up (at each scheduled view size,
    weighted by how long it lasts). A resumed run follows its first session's decision (eager
    after a fall-back; a checkpoint that predates recorded decisions counts steps). Methods
    whose compiled step measured no faster (``Method.keep_eager_on_cpu``: inpainting,
    colorization, split-brain, video colorization) stay eager; a compiled step that fails at
    run time falls back to eager. Off with bf16 autocast on a CPU (0.91-0.98x) and on GPUs
    (no gain measured on an H100); ``true`` compiles anyway
    (:func:`selfsup.utils.precision.use_compile`)."""
    grad_clip: float | None = Field(default=None, gt=0)
    encoder_ema: float | None = Field(default=None, gt=0, lt=1)
    """Keep an exponential moving average of the encoder's weights with this decay per
    optimizer step (e.g. 0.999: a horizon of about 1,000 steps; the decay ramps up as
    ``min(decay, (1 + k) / (10 + k))`` over the first updates k, so the random start fades)
    and make it the run's encoder: ``encoder.safetensors`` holds the averaged weights and
    ``encoder_online.safetensors`` the trained ones. BatchNorm statistics are the trained
    network's latest. Checkpoints keep the average (exact resume); their own
    ``encoder.safetensors`` and the online kNN monitor are the trained weights. None: off."""
    device: str = "auto"
    num_threads: int | None = Field(default=None, gt=0)
    cpu_replicas: int = Field(default=1, ge=1)
    """On a CPU, split each batch into this many shards that run forward and backward in
    parallel threads, each on a replica of the method sharing its parameters, with
    ``num_threads / cpu_replicas`` intra-op threads (at least 1): data parallelism without
    collectives (:mod:`selfsup.train.replicas`). Each shard normalises with its own BatchNorm
    statistics and contrasts against its own images, as DDP with per-process BatchNorm and
    local negatives would. Only for methods without per-step state (``Method.replicable``);
    ignored on other devices."""
    cpu_heap_cache: bool = True
    """On a CPU device with glibc, keep freed memory in the process while training, so a step
    reuses the pages the last one freed instead of faulting in fresh ones for every large
    tensor (:mod:`selfsup.utils.allocator`); ``false`` leaves the C library's defaults."""
    checkpoint_every_epochs: float = Field(default=1.0, gt=0)
    checkpoint_every_steps: int | None = Field(default=None, gt=0)
    keep_last: int = Field(default=2, gt=0)
    log_every_steps: int = Field(default=10, gt=0)
    progress: bool = True
    tensorboard: bool = True
    knn_monitor: KnnMonitorConfig = KnnMonitorConfig()
    pictures_every_epochs: int = Field(default=1, ge=0)
    """Write the method's pictures (reconstructions, ...) to RUN/pictures every N epochs."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN/Inf loss or gradient: ``stop`` (keep the last good checkpoint) or ``skip`` the step."""
    max_skipped_steps: int = Field(default=20, ge=0)
    """With ``on_nonfinite: skip``, stop anyway after more than this many non-finite steps in a
    row (scattered ones are all skipped, and counted in ``skipped_steps``)."""
    collapse_threshold: float = Field(default=0.05, ge=0)
    """Warn when the method's ``embedding_spread`` metric (1 = spread, 0 = collapsed) is below."""
    collapse_min_rank_fraction: float = Field(default=0.05, ge=0, le=1)
    """After the warm-up, warn when the method's ``effective_rank`` is below this fraction of
    the largest rank its batch could show (``min(N, D)`` of the embeddings: dimensional
    collapse)."""
    collapse_min_effective_rank: float = Field(default=1.5, ge=0)
    """Warn when the method's ``effective_rank`` metric (exp of the entropy of the embeddings'
    normalised singular values; 1 = every embedding on one direction) is below."""
    sync_batchnorm: bool = True
    """Under DDP, normalise with statistics of the global batch (as one process would)."""


class RunConfig(Section):
    """One training run: the method and its ``method_args``, the data, the encoder, the view
    pipeline and normalisation, the training settings, the labeled data for evaluation, the
    seed and the output directory. Build it with :func:`load_config`."""

    method: str = "simclr"
    seed: int = 0
    out_dir: str = "runs/{method}"
    data: DataConfig = DataConfig()
    eval_data: EvalDataConfig = EvalDataConfig()
    backbone: BackboneConfig = BackboneConfig()
    augment: str | None = None
    """View pipeline preset (``selfsup.augment.list_pipelines()``); None = the method's own."""
    normalize: Literal["imagenet", "cifar10", "none"] = "cifar10"
    train: TrainConfig = TrainConfig()
    method_args: dict[str, Any] = Field(default_factory=dict)
    """Method-specific options, validated by the method's own config class."""

    @field_validator("out_dir")
    @classmethod
    def _check_out_dir(cls, value: str) -> str:
        try:
            value.format(method="m")
        except (KeyError, IndexError, ValueError, AttributeError) as err:
            raise ValueError(
                f"may contain {{method}} and no other {{...}} field ({type(err).__name__}: {err})"
            ) from None
        if not value.strip():
            raise ValueError("must name a directory")
        return value

    def method_config(self) -> BaseModel:
        from selfsup.methods import get_method

        return get_method(self.method).Config.model_validate(self.method_args)

    def resolved_out_dir(self) -> Path:
        return Path(self.out_dir.format(method=self.method))


# ----------------------------------------------------------------------------- loading


def _parse_value(text: str) -> Any:
    """Parse an override's value with YAML rules (``1e-3`` -> float, ``true`` -> bool, ...)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _looks_like_float(value):
        return float(value)
    return value


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe name (``simclr_cifar10_cpu``) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        return path
    candidate = RECIPES_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = list_recipes()
    hint = difflib.get_close_matches(name_or_path, known, n=1)
    msg = f"unknown recipe {name_or_path!r}"
    msg += f"; did you mean {hint[0]!r}?" if hint else f"; known recipes: {', '.join(known)}"
    raise ConfigError(msg)


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def config_from_dict(data: dict[str, Any], *, source: str = "config") -> RunConfig:
    """Validate a nested dict, turning pydantic's errors into one readable :class:`ConfigError`."""
    from selfsup.methods import get_method

    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, data, source)) from None
    try:
        method_cls = get_method(cfg.method)
    except KeyError as err:
        raise ConfigError(f"{source}: method: {err.args[0]}") from None
    try:
        method_cls.Config.model_validate(cfg.method_args)
    except ValidationError as err:
        raise ConfigError(
            format_validation_error(err, data, source, prefix=("method_args",))
        ) from None
    return cfg


def load_config(
    method: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> RunConfig:
    """Build a run config: defaults < recipe/config file < ``key=value`` overrides.

    ``method`` sets ``method`` (and, if no file is given and a recipe ``<method>_default``
    exists, starts from it).
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if config_file is None and method is not None:
        default = RECIPES_DIR / f"{method}_default.yaml"
        if default.exists():
            config_file = str(default)
    if config_file is not None:
        path = resolve_recipe(config_file)
        data = read_yaml(path)
        source = str(path)
    if method is not None:
        if "method" in data and data["method"] != method:
            raise ConfigError(f"{source} is a recipe for method {data['method']!r}, not {method!r}")
        data["method"] = method
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        _set_dotted(data, key.strip(), _parse_value(value))
    return config_from_dict(data, source=source if not overrides else f"{source} + overrides")


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section at ``loc`` (for did-you-mean)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        else:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def format_validation_error(
    err: ValidationError, data: dict[str, Any], source: str, prefix: tuple[str, ...] = ()
) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            known = _known_keys(RunConfig, loc)
            if loc and loc[0] == "method_args":
                known = _method_arg_keys(data)
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            extra = f"; did you mean {'.'.join([*map(str, loc[:-1]), hint[0]])!r}?" if hint else ""
            lines.append(f"  {key}: unknown key{extra}")
        else:
            given = e.get("input")
            shown = "" if isinstance(given, dict) else f" (got {given!r})"
            lines.append(f"  {key}: {e['msg']}{shown}")
    return "\n".join(lines)


def _method_arg_keys(data: dict[str, Any]) -> list[str]:
    try:
        from selfsup.methods import get_method

        return list(get_method(str(data.get("method", "simclr"))).Config.model_fields)
    except Exception:  # noqa: BLE001 - only a hint
        return []


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
