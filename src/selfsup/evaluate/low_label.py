"""Low-label evaluation: linear probe and fine-tuning on 1% / 10% of the labels, beside the same
architecture trained from scratch on the same labels.

For each label fraction and seed a class-balanced subset of the labeled train split is drawn
(:func:`~selfsup.evaluate.finetune.class_balanced_subset`); every protocol of that (fraction,
seed) uses the same subset, and the test split is always the full one. Several seeds give a
mean and a spread (sample standard deviation).
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any

import torch

from selfsup.evaluate.finetune import FinetuneConfig, class_balanced_subset, finetune
from selfsup.evaluate.linear import linear_probe
from selfsup.evaluate.protocols import EvalData, features_for
from selfsup.models import load_encoder

PROTOCOLS = ("linear", "finetune", "scratch")
"""``linear``: probe on frozen features; ``finetune``: the whole encoder + head; ``scratch``: the
same fine-tuning from a random-init encoder of the same architecture."""


def summarize(values: list[float]) -> dict[str, Any]:
    """{"mean", "std" (sample; 0 for one value), "runs"} of per-seed accuracies."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "runs": values}


def low_label(
    spec: str,
    data: EvalData,
    *,
    fractions: tuple[float, ...] = (0.01, 0.1),
    seeds: tuple[int, ...] = (0, 1, 2),
    protocols: tuple[str, ...] = PROTOCOLS,
    finetune_cfg: FinetuneConfig | None = None,
    linear_epochs: int = 100,
    device: str = "cpu",
) -> dict[str, Any]:
    """Top-1 on the test split of ``data`` for each label fraction, protocol and seed.

    Returns ``{"fractions": {"0.01": {"images": n, "linear": summary, "finetune": summary,
    "scratch": summary}, ...}}`` with :func:`summarize` summaries.
    """
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown low-label protocols {sorted(unknown)}; choose from {PROTOCOLS}")
    cfg = finetune_cfg or FinetuneConfig(device=device)
    loaded = load_encoder(spec)
    labels = torch.as_tensor(data.train.labels)
    if "linear" in protocols:
        ftr, ytr, fte, yte = features_for(loaded, data, device=device)
    out: dict[str, Any] = {"encoder": spec, "seeds": list(seeds), "fractions": {}}
    for fraction in fractions:
        scores: dict[str, list[float]] = {p: [] for p in protocols}
        size = 0
        for seed in seeds:
            idx = class_balanced_subset(labels, fraction=fraction, seed=seed)
            size = len(idx)
            subset = data.train.subset(idx)
            if "linear" in protocols:
                r = linear_probe(
                    ftr[idx], ytr[idx], fte, yte,
                    epochs=linear_epochs, num_classes=data.num_classes, seed=seed, device=device,
                )  # fmt: skip
                scores["linear"].append(r["linear_top1"])
            run_cfg = replace(cfg, seed=seed)
            if "finetune" in protocols:
                r = finetune(loaded, subset, data.test, run_cfg, num_classes=data.num_classes)
                scores["finetune"].append(r["top1"])
            if "scratch" in protocols:
                scratch_spec = spec if spec.startswith("random:") else f"random:{spec}"
                scratch = load_encoder(scratch_spec, seed=seed)
                r = finetune(scratch, subset, data.test, run_cfg, num_classes=data.num_classes)
                scores["scratch"].append(r["top1"])
        out["fractions"][f"{fraction:g}"] = {
            "images": size,
            **{p: summarize(v) for p, v in scores.items()},
        }
    return out
