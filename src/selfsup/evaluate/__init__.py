"""Evaluation protocols: feature extraction (cached), kNN, linear probe, fine-tuning, ...

``load_encoder`` and friends are re-exported from :mod:`selfsup.models`, where they live."""

from selfsup.evaluate.features import cached_features, extract_features, match_channels
from selfsup.evaluate.knn import knn_accuracy, knn_predict
from selfsup.evaluate.linear import linear_probe
from selfsup.evaluate.protocols import EvalData, evaluate_encoder, features_for, load_eval_data
from selfsup.models import (
    LoadedEncoder,
    build_encoder,
    encoder_meta,
    load_encoder,
    load_encoder_with_head,
)

__all__ = [
    "EvalData",
    "LoadedEncoder",
    "build_encoder",
    "cached_features",
    "encoder_meta",
    "evaluate_encoder",
    "extract_features",
    "features_for",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "load_encoder",
    "load_encoder_with_head",
    "load_eval_data",
    "match_channels",
]
