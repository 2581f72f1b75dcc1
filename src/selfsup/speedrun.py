"""``selfsup speedrun``: the best encoder this machine can train in N minutes, then judged.

A speedrun trains with a recipe tuned for the budget (``speedrun_<N>min`` recipes, chosen as the
largest tuned budget not above N, else the smallest) on a **time-based schedule**: the learning
rate, the target momentum, the resolution and every other schedule are functions of elapsed /
total wall-clock time (``train.time_budget_minutes``), so a slower machine still completes its
schedule when the time is up. Data loading and compilation count as training time; evaluation
is timed separately.

Then it evaluates the encoder:

- on labeled data with a test split (``cifar10``): kNN@200 and kNN@20 with the whole train
  split as the bank and the test split as queries, and with ``linear`` a linear probe;
- with ``train.encoder_ema`` set, the same for the trained (not averaged) weights too, as
  ``online_knn_top1`` / ``online_knn20_top1`` (/ ``online_linear_top1``);
- with ``holdout=K``: the K held-out training images (never trained on) are the queries and the
  rest of the train split the bank (tune with this, report with the test split);
- on an unlabeled source (a flat image folder): the method's pretext metrics and the effective
  rank of the encoder's features on up to 5,000 images.

The run directory is a normal one (``encoder.safetensors``, ``metrics.jsonl``, ``summary.json``)
plus ``speedrun.json``. Example::

    selfsup speedrun --minutes 5 --out runs/speedrun5
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.config import RECIPES_DIR, load_config
from selfsup.data import load_source
from selfsup.errors import ConfigError

SPEEDRUN_BUDGETS = (5, 15, 30)
"""Budgets (minutes) with a tuned ``speedrun_<N>min`` recipe."""


def speedrun_recipe(minutes: float) -> str:
    """The tuned recipe for a budget: the largest tuned budget not above ``minutes`` (the
    smallest for shorter runs)."""
    fitting = [b for b in SPEEDRUN_BUDGETS if b <= minutes + 1e-9]
    budget = max(fitting) if fitting else min(SPEEDRUN_BUDGETS)
    return f"speedrun_{budget}min"


def _has_test_split(source: str, root: str | None) -> bool:
    """Whether ``source`` is a named dataset with a test split (files and folders have none)."""
    from selfsup.data import list_datasets

    if source not in list_datasets():
        return False
    try:
        load_source(source, split="test", root=root)
    except (FileNotFoundError, ValueError):
        return False
    return True


def run_speedrun(
    minutes: float,
    out_dir: str | Path,
    *,
    data: str = "cifar10",
    root: str | None = None,
    seed: int = 0,
    linear: bool = False,
    device: str = "auto",
    holdout: int | None = None,
    recipe: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Train for ``minutes`` of wall-clock time, evaluate, write ``OUT/speedrun.json``.

    Returns the speedrun record (see the module docstring and :func:`_record`).
    """
    from selfsup.pretraining import pretrain
    from selfsup.utils.distributed import local_device
    from selfsup.utils.precision import autocast_dtype, cpu_info

    if not minutes > 0 or not math.isfinite(minutes):
        raise ConfigError(f"--minutes must be a positive number of minutes, got {minutes}")
    recipe = recipe or speedrun_recipe(minutes)
    if not (RECIPES_DIR / f"{recipe}.yaml").exists() and not Path(recipe).exists():
        raise ConfigError(f"no speedrun recipe {recipe!r}")
    out_dir = Path(out_dir)
    cfg_overrides = [
        f"out_dir={out_dir}",
        f"data.source={data}",
        f"seed={seed}",
        f"train.time_budget_minutes={minutes}",
        f"train.device={device}",
        *([f"data.root={root}"] if root else []),
        *([f"data.holdout={holdout}"] if holdout else []),
        *overrides,
    ]
    cfg = load_config(None, recipe, cfg_overrides)
    source = load_source(data, split=cfg.data.split, root=root)  # fails early on bad data
    resume = (out_dir / "checkpoints").exists()
    pretrain(cfg, resume=resume)

    t0 = time.perf_counter()
    metrics = _evaluate(out_dir, cfg, source, linear=linear, holdout=holdout, root=root,
                        device=device)  # fmt: skip
    eval_seconds = time.perf_counter() - t0
    summary = json.loads((out_dir / "summary.json").read_text())
    dev = local_device(cfg.train.device)
    amp = autocast_dtype(dev, cfg.train.precision)
    record = {
        **metrics,
        "train_seconds": summary.get("elapsed_seconds"),
        "eval_seconds": eval_seconds,
        "images_seen": summary.get("images_seen"),
        "method": cfg.method,
        "backbone": cfg.backbone.model_dump(exclude_none=True),
        "recipe": recipe,
        "budget_minutes": minutes,
        "seed": seed,
        "data": data,
        "evaluation": metrics.get("evaluation"),
        "precision": "fp32" if amp is None else str(amp).replace("torch.", ""),
        "compile": summary.get("compile"),  # train.compile and why (auto: fp32 CPU runs)
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "threads": torch.get_num_threads(),
        "cpu_replicas": cfg.train.cpu_replicas if dev.type == "cpu" else 1,
        "cpu": cpu_info(),
        "torch": torch.__version__,
    }
    (out_dir / "speedrun.json").write_text(json.dumps(record, indent=2))
    return record


def _evaluate(
    run_dir: Path,
    cfg: Any,
    source: Any,
    *,
    linear: bool,
    holdout: int | None,
    root: str | None,
    device: str,
) -> dict[str, Any]:
    from selfsup.evaluate import evaluate_encoder, load_eval_data

    eval_device = "cuda" if device.startswith("cuda") else "cpu"
    protocols = ("knn", "linear") if linear else ("knn",)
    if source.labels is None:
        return _unlabeled_metrics(run_dir, source, eval_device)
    if holdout is None and not _has_test_split(cfg.data.source, root):
        # a labeled file or folder: query a held-out part (not trained on when --holdout
        # was given; otherwise seen unlabeled in training, but never in the kNN bank)
        holdout = max(1, min(5000, len(source) // 10))
        where = f"{holdout} images of the source held out of the bank"
    elif holdout is not None:
        where = f"the {holdout} training images held out of training"
    else:
        where = "the test split"
    data = load_eval_data(cfg.data.source, root=root, holdout=holdout)

    def scores(spec: Path) -> dict[str, float]:
        r = evaluate_encoder(str(spec), data, protocols=protocols, device=eval_device)
        return {"knn_top1": r["knn@200"], "knn20_top1": r["knn@20"],
                **({"linear_top1": r["linear_top1"]} if linear else {})}  # fmt: skip

    out: dict[str, Any] = {
        **scores(run_dir),
        "evaluation": f"kNN bank {len(data.train)} images, queries {len(data.test)} ({where})",
    }
    online = run_dir / "encoder_online.safetensors"
    if online.exists():  # train.encoder_ema: the trained weights themselves, for comparison
        out.update({f"online_{k}": v for k, v in scores(online).items()})
    return out


def _unlabeled_metrics(run_dir: Path, source: Any, device: str) -> dict[str, Any]:
    """Pretext metrics and the effective rank of the encoder's features, for data without
    labels (or without a split to query)."""
    from selfsup.evaluate.features import extract_features
    from selfsup.evaluate.pretext import evaluate_pretext
    from selfsup.methods.monitor import effective_rank
    from selfsup.models import load_encoder, load_method

    n = min(len(source), 5000)
    sample = source.subset(np.random.default_rng(0).permutation(len(source))[:n])
    loaded = load_encoder(str(run_dir))
    meta = loaded.meta
    feats = extract_features(
        loaded.encoder, sample, image_size=meta["image_size"], normalize=meta["normalize"],
        in_channels=meta["in_channels"], input_space=meta.get("input_space", "rgb"),
        device=device,
    )  # fmt: skip
    method = load_method(str(run_dir), device=device)
    return {
        "effective_rank": float(effective_rank(feats.float())),
        "feature_dim": int(feats.shape[1]),
        "pretext": evaluate_pretext(method, sample, device=device),
        "evaluation": f"no labels: pretext metrics and effective rank on {n} images",
    }


__all__ = ["SPEEDRUN_BUDGETS", "run_speedrun", "speedrun_recipe"]
