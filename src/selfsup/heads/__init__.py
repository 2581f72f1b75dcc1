"""Heads that sit on the encoder during pretraining or evaluation."""

from selfsup.heads.decoder import ConvDecoder, feature_map_shape, spatial_features, tokens_to_grid
from selfsup.heads.dino import DINOHead, WeightNormLinear
from selfsup.heads.projection import LinearClassifier, ProjectionHead

__all__ = [
    "ConvDecoder",
    "DINOHead",
    "LinearClassifier",
    "ProjectionHead",
    "feature_map_shape",
    "spatial_features",
    "tokens_to_grid",
    "WeightNormLinear",
]
