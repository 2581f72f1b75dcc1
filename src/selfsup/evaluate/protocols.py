"""The evaluation entry points used by the CLI: encoder spec + labeled data -> metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from selfsup.data import ImageSource, holdout_split, load_source, random_subset_indices
from selfsup.evaluate.features import EVAL_PRECISION, cached_features, input_spec, precision_name
from selfsup.evaluate.knn import knn_accuracy
from selfsup.evaluate.linear import linear_probe
from selfsup.models import LoadedEncoder, load_encoder, load_encoder_with_head


@dataclass
class EvalData:
    """Labeled train (kNN bank / probe training) and test splits."""

    train: ImageSource
    test: ImageSource
    key: str

    @property
    def num_classes(self) -> int:
        assert self.train.labels is not None
        return int(max(self.train.labels.max(), self.test.labels.max())) + 1  # type: ignore[union-attr]


def load_eval_data(
    source: str,
    *,
    train_split: str = "train",
    test_split: str = "test",
    test_source: str | None = None,
    root: str | None = None,
    image_size: int | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    holdout: int | None = None,
) -> EvalData:
    """Load the two labeled splits of ``source`` (a dataset name, ``.npz`` file or image folder;
    ``test_source`` defaults to ``source``) as uint8 images ``(N, H, W, C)`` with int labels
    ``(N,)``; ``train_subset`` / ``test_subset`` take seeded random subsets. Raises ValueError
    when a split has no labels.

    With ``holdout=N`` the test split is not read: the N held-out images of the train split
    (:func:`selfsup.data.holdout_split`, the images a run with ``data.holdout=N`` never
    trained on) are the queries and the rest of the train split is the bank.
    """
    train = load_source(source, split=train_split, root=root, image_size=image_size)
    if holdout is not None:
        train, test = holdout_split(train, holdout)
    else:
        test = load_source(
            test_source or source, split=test_split, root=root, image_size=image_size
        )
    for name, split in (("train", train), ("test", test)):
        if split.labels is None:
            raise ValueError(
                f"evaluation needs labels, but the {name} split of {split.name} has none"
            )
    if train_subset and train_subset < len(train):
        train = train.subset(random_subset_indices(len(train), train_subset, seed))
    if test_subset and test_subset < len(test):
        test = test.subset(random_subset_indices(len(test), test_subset, seed + 1))
    key = (
        f"{source}:{train_split}:{train_subset}|{test_source or source}:{test_split}:{test_subset}"
    )
    if holdout is not None:
        key = f"{source}:{train_split}:holdout{holdout}:{train_subset}|{test_subset}"
    return EvalData(train, test, key)


def features_for(
    loaded: LoadedEncoder,
    data: EvalData,
    *,
    device: str = "cpu",
    batch_size: int = 512,
    cache_dir: Path | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train_features, train_labels, test_features, test_labels), cached per encoder+data."""
    common: dict[str, Any] = dict(
        **input_spec(loaded.meta), device=device, batch_size=batch_size, cache_dir=cache_dir
    )
    ftr = cached_features(
        loaded.encoder, loaded.identity, data.train, data.key + "#train", **common
    )
    fte = cached_features(loaded.encoder, loaded.identity, data.test, data.key + "#test", **common)
    ytr = torch.as_tensor(data.train.labels).long()
    yte = torch.as_tensor(data.test.labels).long()
    return ftr, ytr, fte, yte


def encoder_summary(
    spec: str, loaded: LoadedEncoder, train_features: Tensor, test_features: Tensor
) -> dict[str, Any]:
    """The head of every result row: the encoder's spec, label, method, backbone, feature
    dimension and the number of train / test images (features ``(N, D)``)."""
    return {
        "encoder": spec,
        "label": loaded.label,
        "method": loaded.meta.get("method"),
        "backbone": loaded.meta["backbone"]["name"],
        "feature_dim": int(train_features.shape[1]),
        "train_images": len(train_features),
        "test_images": len(test_features),
    }


def evaluate_encoder(
    spec: str,
    data: EvalData,
    *,
    protocols: tuple[str, ...] = ("knn",),
    device: str = "cpu",
    knn_k: tuple[int, ...] = (200, 20),
    knn_temperature: float = 0.1,
    linear_epochs: int = 100,
    linear_lr: float = 0.1,
    linear_batch_norm: bool = True,
    seed: int = 0,
    cache_dir: Path | None = None,
    head: str | None = None,
    global_pool: str | None = None,
) -> dict[str, Any]:
    """Judge one encoder on labeled data: features ``(N, D)`` of ``data``'s train and test
    images (extracted once, cached), then the named protocols — ``"knn"`` (cosine kNN, weighted
    vote; ``knn@K`` top-1 for each K) and ``"linear"`` (a linear probe on frozen features;
    ``linear_top1``).

    ``spec`` is a run directory, checkpoint, ``encoder.safetensors`` file or ``random:SPEC``
    (:func:`selfsup.models.load_encoder`); with ``head`` (a run directory only), the features
    are the outputs of that method head after the encoder (e.g. ``projector``); ``global_pool``
    reads a ViT encoder's pooled feature as ``cls`` or ``avg`` (patch-token mean). Returns a dict
    with the metrics, ``label``, ``method``, ``backbone``, ``feature_dim`` and image counts."""
    loaded = (
        load_encoder_with_head(spec, head)
        if head
        else load_encoder(spec, seed=seed, global_pool=global_pool)
    )
    ftr, ytr, fte, yte = features_for(loaded, data, device=device, cache_dir=cache_dir)
    result = encoder_summary(spec, loaded, ftr, fte)
    result["input_space"] = loaded.meta.get("input_space", "rgb")
    result["precision"] = precision_name(device, EVAL_PRECISION)
    if head:
        result["head"] = head
    if "knn" in protocols:
        result.update(
            knn_accuracy(
                ftr,
                ytr,
                fte,
                yte,
                ks=knn_k,
                temperature=knn_temperature,
                num_classes=data.num_classes,
            )
        )
    if "linear" in protocols:
        result.update(
            linear_probe(
                ftr,
                ytr,
                fte,
                yte,
                epochs=linear_epochs,
                lr=linear_lr,
                batch_norm=linear_batch_norm,
                num_classes=data.num_classes,
                seed=seed,
                device=device,
            )
        )
    return result
