"""Every evaluation axis for one encoder, in one call: ``selfsup eval all``.

Axes (``AXES``; ``DEFAULT_AXES`` are the cheap ones, the rest train a network per encoder):

- ``knn``, ``linear``: on cached frozen features (see :mod:`selfsup.evaluate.protocols`);
- ``clustering``: k-means (k = number of classes) on the test features: NMI, ARI, accuracy;
- ``ood``: kNN-distance OOD detection (AUROC, FPR@95TPR) of the test set against generated
  sets (noise, blobs, constant colours, heavily corrupted test images) and any named datasets;
- ``pretext``: the method's own task metric on held-out images (run directories only);
- ``cost``: parameters, forward FLOPs per image, and the run's training throughput, time and
  peak memory from its ``summary.json``;
- ``finetune``: the whole encoder + a new head (per-epoch test curve);
- ``partial``: the same with the first ``partial_freeze`` stages frozen (default: half);
- ``low_label``: 1% / 10% of the labels over seeds: linear, fine-tune, from scratch;
- ``pictures`` (needs ``pictures_dir``): t-SNE (and UMAP when installed) of the test features
  coloured by class, a nearest-neighbour retrieval grid, and the linear probe's confusion
  matrix, as PNGs (see :mod:`selfsup.evaluate.pictures`);
- ``robustness``: corruption accuracy of the linear probe (and of the fine-tuned model when
  ``finetune`` ran) on ``robustness_test_images`` test images.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.data import ImageSource, random_subset_indices
from selfsup.evaluate.clustering import clustering_metrics
from selfsup.evaluate.features import EVAL_PRECISION, extract_features, input_spec, precision_name
from selfsup.evaluate.finetune import FinetuneConfig, finetune
from selfsup.evaluate.knn import knn_accuracy
from selfsup.evaluate.linear import linear_probe
from selfsup.evaluate.ood import generated_ood_images, ood_metrics
from selfsup.evaluate.protocols import EvalData, encoder_summary, features_for
from selfsup.models import LoadedEncoder, load_encoder

AXES = ("knn", "linear", "clustering", "ood", "pretext", "cost", "pictures", "finetune",
        "partial", "low_label", "robustness")  # fmt: skip
DEFAULT_AXES = ("knn", "linear", "clustering", "ood", "pretext", "cost")
GENERATED_OOD = ("uniform_noise", "gaussian_noise", "blobs", "constant", "corrupted")
"""Generated OOD sets; ``corrupted`` is the test set under impulse noise at severity 5."""


@dataclass
class SuiteOptions:
    """Settings of every axis (defaults: the protocols of BENCHMARKS.md)."""

    knn_k: tuple[int, ...] = (200, 20)
    knn_temperature: float = 0.1
    linear_epochs: int = 100
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    partial_freeze: int | None = None
    label_fractions: tuple[float, ...] = (0.01, 0.1)
    label_seeds: tuple[int, ...] = (0, 1, 2)
    robustness_test_images: int = 2000
    robustness_corruptions: list[str] | None = None
    robustness_severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    ood_sets: tuple[str, ...] = GENERATED_OOD
    ood_images: int = 2000
    ood_k: int = 50
    pretext_images: int = 2000
    pictures_dir: Path | None = None
    picture_points: int = 2000
    device: str = "cpu"
    seed: int = 0


def _features_of(loaded: LoadedEncoder, source: ImageSource, device: str) -> torch.Tensor:
    return extract_features(loaded.encoder, source, **input_spec(loaded.meta), device=device)


def _ood_sources(data: EvalData, opts: SuiteOptions) -> dict[str, ImageSource]:
    """The generated OOD image sets, shaped like the test images."""
    from selfsup.evaluate.robustness import corrupted_source

    test = data.test
    n = min(opts.ood_images, len(test))
    _, h, w, c = np.asarray(test.images).shape
    out: dict[str, ImageSource] = {}
    for kind in opts.ood_sets:
        if kind == "corrupted":
            idx = random_subset_indices(len(test), n, opts.seed)
            out[kind] = corrupted_source(test.subset(idx), "impulse_noise", 5)
            continue
        images = generated_ood_images(kind, n, size=h, channels=c, seed=opts.seed)
        if w != h:
            images = torch.nn.functional.interpolate(images.float(), size=(h, w)).byte()
        out[kind] = ImageSource(images.permute(0, 2, 3, 1).numpy(), name=kind)
    return out


def cost_of(loaded: LoadedEncoder) -> dict[str, Any]:
    """Parameters, forward FLOPs of one image (``torch.utils.flop_counter``: matmuls and
    convolutions, 2 FLOPs per multiply-add) and, for a run, its training cost."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = loaded.meta
    encoder = loaded.encoder.eval()
    x = torch.zeros(1, meta["in_channels"], meta["image_size"], meta["image_size"])
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        encoder(x)
    out: dict[str, Any] = {
        "parameters": sum(p.numel() for p in encoder.parameters()),
        "forward_flops_per_image": int(counter.get_total_flops()),
    }
    summary = loaded.run_dir / "summary.json" if loaded.run_dir else None
    if summary is not None and summary.exists():
        s = json.loads(summary.read_text())
        keys = ("images_per_second", "seconds", "images_seen", "peak_rss_mib", "peak_gpu_mib")
        out.update({f"train_{k}": s[k] for k in keys if k in s})
    return out


def _pictures(loaded, data, ftr, ytr, fte, yte, opts: SuiteOptions) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Write the pictures of one encoder into ``opts.pictures_dir/<encoder name>/``."""
    import importlib.util

    from selfsup.evaluate import pictures as pics

    out = Path(opts.pictures_dir) / _safe_name(loaded)  # type: ignore[arg-type]
    names = data.test.classes
    written: dict[str, str] = {}
    methods = ["tsne"] + (["umap"] if importlib.util.find_spec("umap") else [])
    for method in methods:
        title = f"{method.upper()}: {loaded.label}"
        written[method] = str(pics.scatter_plot(
            fte, yte, out / f"{method}.png", method=method, class_names=names,
            max_points=opts.picture_points, seed=opts.seed, title=title))  # fmt: skip
    q = np.sort(np.random.default_rng(opts.seed).permutation(len(fte))[:8])
    # the bank images actually needed: the queries' neighbours
    bank_idx = np.unique(pics.nearest_neighbours(fte[q], ftr, 8).numpy())
    written["retrieval"] = str(pics.retrieval_grid(
        data.test.as_tensor_chw(q), fte[q], data.train.as_tensor_chw(bank_idx), ftr[bank_idx],
        out / "retrieval.png", k=8, query_labels=yte[q], bank_labels=ytr[bank_idx]))  # fmt: skip
    probe = linear_probe(ftr, ytr, fte, yte, epochs=opts.linear_epochs,
                         num_classes=data.num_classes, seed=opts.seed, device=opts.device,
                         return_head=True)  # fmt: skip
    with torch.no_grad():
        pred = probe["head"].cpu()(fte).argmax(1)
    matrix = pics.confusion_matrix(pred, yte, data.num_classes)
    written["confusion"] = str(pics.confusion_plot(matrix, out / "confusion.png",
                                                   class_names=names))  # fmt: skip
    return written


def _safe_name(loaded: LoadedEncoder) -> str:
    run = loaded.run_dir.name if loaded.run_dir else loaded.label
    name = ("random_" if loaded.meta.get("method") == "random" else "") + run
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def evaluate_all(
    spec: str,
    data: EvalData,
    *,
    axes: tuple[str, ...] = DEFAULT_AXES,
    options: SuiteOptions | None = None,
    extra_ood: dict[str, ImageSource] | None = None,
) -> dict[str, Any]:
    """Run ``axes`` for the encoder ``spec`` (run dir, checkpoint, file or ``random:SPEC``) on
    ``data``; ``extra_ood`` adds named OOD datasets. Returns one JSON-able dict: the headline
    numbers at the top level (``knn@K``, ``linear_top1``) and one entry per other axis, plus
    ``seconds`` per axis."""
    unknown = set(axes) - set(AXES)
    if unknown:
        raise ValueError(f"unknown evaluation axes {sorted(unknown)}; choose from {list(AXES)}")
    opts = options or SuiteOptions()
    loaded = load_encoder(spec, seed=opts.seed)
    ftr, ytr, fte, yte = features_for(loaded, data, device=opts.device)
    result = encoder_summary(spec, loaded, ftr, fte)
    result.update(data=data.key, axes=list(axes), seconds={})
    result["precision"] = precision_name(opts.device, EVAL_PRECISION)

    def timed(axis: str, fn) -> Any:  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        value = fn()
        result["seconds"][axis] = time.perf_counter() - t0
        return value

    if "knn" in axes:
        result.update(timed("knn", lambda: knn_accuracy(
            ftr, ytr, fte, yte, ks=opts.knn_k, temperature=opts.knn_temperature,
            num_classes=data.num_classes)))  # fmt: skip
    if "linear" in axes:
        result.update(timed("linear", lambda: linear_probe(
            ftr, ytr, fte, yte, epochs=opts.linear_epochs, num_classes=data.num_classes,
            seed=opts.seed, device=opts.device)))  # fmt: skip
    if "clustering" in axes:
        result["clustering"] = timed("clustering", lambda: clustering_metrics(
            fte, yte, k=data.num_classes, seed=opts.seed))  # fmt: skip
    if "ood" in axes:

        def ood() -> dict[str, Any]:
            sets = {**_ood_sources(data, opts), **(extra_ood or {})}
            out = {}
            for name, source in sets.items():
                m = ood_metrics(ftr, fte, _features_of(loaded, source, opts.device), k=opts.ood_k)
                out[name] = {**m, "images": len(source)}
            return out

        result["ood"] = timed("ood", ood)
        result["ood_score"] = f"distance to the {opts.ood_k}-th nearest train feature"
    if "pretext" in axes and loaded.run_dir is not None and loaded.meta.get("method") != "random":
        from selfsup.evaluate.pretext import evaluate_pretext
        from selfsup.models import load_method

        def pretext() -> dict[str, float]:
            n = min(opts.pretext_images, len(data.test))
            held_out = data.test.subset(np.arange(n))
            return evaluate_pretext(load_method(loaded.run_dir, opts.device), held_out,
                                    device=opts.device, seed=opts.seed)  # fmt: skip

        result["pretext"] = timed("pretext", pretext)
    if "cost" in axes:
        result["cost"] = timed("cost", lambda: cost_of(loaded))
    if "pictures" in axes:
        if opts.pictures_dir is None:
            raise ValueError("the pictures axis needs a directory to write to (pictures_dir)")
        result["pictures"] = timed("pictures", lambda: _pictures(
            loaded, data, ftr, ytr, fte, yte, opts))  # fmt: skip
    finetuned = None
    if "finetune" in axes:
        ft = timed("finetune", lambda: finetune(
            loaded, data.train, data.test, replace(opts.finetune, device=opts.device),
            num_classes=data.num_classes, keep_model=True))  # fmt: skip
        finetuned = ft.pop("model")
        result["finetune"] = ft
    if "partial" in axes:
        k = opts.partial_freeze
        if k is None:
            k = len(loaded.encoder.stages()) // 2
        cfg = replace(opts.finetune, device=opts.device, freeze_stages=k)
        result["partial"] = timed("partial", lambda: finetune(
            loaded, data.train, data.test, cfg, num_classes=data.num_classes))  # fmt: skip
    if "low_label" in axes:
        from selfsup.evaluate.low_label import low_label

        result["low_label"] = timed("low_label", lambda: low_label(
            spec, data, fractions=opts.label_fractions, seeds=opts.label_seeds,
            finetune_cfg=opts.finetune, linear_epochs=opts.linear_epochs,
            device=opts.device))  # fmt: skip
    if "robustness" in axes:
        from selfsup.evaluate.robustness import robustness

        n = min(opts.robustness_test_images, len(data.test))
        idx = random_subset_indices(len(data.test), n, opts.seed)
        small = EvalData(data.train, data.test.subset(idx), data.key + f"|test{n}")
        result["robustness"] = timed("robustness", lambda: robustness(
            loaded, small, corruptions=opts.robustness_corruptions,
            severities=opts.robustness_severities, linear_epochs=opts.linear_epochs,
            finetuned=finetuned, device=opts.device, seed=opts.seed))  # fmt: skip
    return result


def write_result(result: dict[str, Any], out_dir: Path) -> Path:
    """Write one encoder's result as ``out_dir/<name>.json`` (name from its spec)."""
    spec = result["encoder"]
    stem = spec.rstrip("/").replace("random:", "random_")
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem.split("/")[-1] or stem)
    if spec.startswith("random:"):
        name = "random_" + name.removeprefix("random_")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path
