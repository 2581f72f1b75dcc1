"""Robustness to common corruptions: accuracy of a classifier on corrupted test images.

The classifier is a linear probe trained on the clean training features (and, optionally, a
fine-tuned encoder + head from :func:`~selfsup.evaluate.finetune.finetune` with
``keep_model=True``). Every test image is corrupted with each corruption of
:mod:`selfsup.evaluate.corruptions` at each severity (one seeded generator per corruption and
severity, so every encoder sees the same corrupted images), and the same classifier is scored
on them. Reported, per classifier:

- ``clean``: accuracy on the uncorrupted test images;
- ``per_corruption[name][severity]`` and ``per_corruption_mean[name]`` (over severities);
- ``mean_corruption_accuracy``: the mean over corruptions and severities (mCA);
- ``relative_drop``: ``(clean - mCA) / clean``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from selfsup.data import ImageSource
from selfsup.evaluate.corruptions import corrupt, corruption_names, default_generator
from selfsup.evaluate.features import EVAL_PRECISION, extract_features, input_spec, precision_name
from selfsup.evaluate.linear import linear_probe
from selfsup.evaluate.protocols import EvalData, features_for
from selfsup.models import LoadedEncoder


def corrupted_source(
    source: ImageSource, name: str, severity: int, *, batch_size: int = 1000
) -> ImageSource:
    """A copy of ``source`` with every image corrupted (same labels), drawn from one generator
    seeded by (name, severity) so the set is the same on every call."""
    generator = default_generator(name, severity)
    out = np.empty_like(np.asarray(source.images))
    for start in range(0, len(source), batch_size):
        idx = np.arange(start, min(start + batch_size, len(source)))
        x = corrupt(source.as_tensor_chw(idx), name, severity, generator)
        out[idx] = x.permute(0, 2, 3, 1).numpy()
    return ImageSource(out, labels=source.labels, name=f"{source.name}[{name}@{severity}]")


def _summary(clean: float, table: dict[str, dict[int, float]]) -> dict[str, Any]:
    per_mean = {name: float(np.mean(list(by_s.values()))) for name, by_s in table.items()}
    mca = float(np.mean([a for by_s in table.values() for a in by_s.values()]))
    return {
        "clean": clean,
        "per_corruption": {n: {str(s): a for s, a in by_s.items()} for n, by_s in table.items()},
        "per_corruption_mean": per_mean,
        "mean_corruption_accuracy": mca,
        "relative_drop": (clean - mca) / clean if clean > 0 else 0.0,
    }


@torch.no_grad()
def _model_accuracy(model: nn.Module, features_or_model_input: Tensor, labels: Tensor) -> float:
    pred = model(features_or_model_input).argmax(1).cpu()
    return float((pred == labels).float().mean())


def robustness(
    loaded: LoadedEncoder,
    data: EvalData,
    *,
    corruptions: list[str] | None = None,
    severities: tuple[int, ...] = (1, 2, 3, 4, 5),
    linear_epochs: int = 100,
    finetuned: nn.Module | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Corruption accuracy of a linear probe (and of ``finetuned``, when given) on
    ``data.test``; see the module docstring for the result's fields.

    Returns ``{"linear": summary, "finetuned": summary (when given), "corruptions": [...],
    "severities": [...], "test_images": n}``.
    """
    names = corruptions or corruption_names()
    common: dict[str, Any] = dict(**input_spec(loaded.meta), device=device)
    ftr, ytr, fte, yte = features_for(loaded, data, device=device)
    probe = linear_probe(ftr, ytr, fte, yte, epochs=linear_epochs, num_classes=data.num_classes,
                         seed=seed, device=device, return_head=True)  # fmt: skip
    head = probe["head"].cpu()
    classifiers: dict[str, tuple[nn.Module, nn.Module | None]] = {"linear": (head, None)}
    if finetuned is not None:
        classifiers["finetuned"] = (finetuned.head.cpu(), finetuned.encoder)  # type: ignore[union-attr]
    clean: dict[str, float] = {"linear": probe["linear_top1"]}
    if finetuned is not None:
        f_clean = extract_features(finetuned.encoder, data.test, **common)  # type: ignore[arg-type]
        clean["finetuned"] = _model_accuracy(classifiers["finetuned"][0], f_clean, yte)
    tables: dict[str, dict[str, dict[int, float]]] = {k: {} for k in classifiers}
    for name in names:
        for severity in severities:
            bad = corrupted_source(data.test, name, severity)
            for key, (clf, encoder) in classifiers.items():
                feats = extract_features(encoder or loaded.encoder, bad, **common)
                tables[key].setdefault(name, {})[severity] = _model_accuracy(clf, feats, yte)
    result: dict[str, Any] = {k: _summary(clean[k], tables[k]) for k in classifiers}
    result.update(corruptions=names, severities=list(severities), test_images=len(data.test),
                  precision=precision_name(device, EVAL_PRECISION))  # fmt: skip
    return result
