"""Heads that sit on the encoder during pretraining or evaluation."""

from selfsup.heads.decoder import ConvDecoder, feature_map_shape, spatial_features, tokens_to_grid
from selfsup.heads.dense import DenseEmbedding, pyramid_channels, pyramid_features
from selfsup.heads.dino import DINOHead, WeightNormLinear
from selfsup.heads.projection import LinearClassifier, ProjectionHead

__all__ = [
    "ConvDecoder",
    "DenseEmbedding",
    "DINOHead",
    "LinearClassifier",
    "ProjectionHead",
    "feature_map_shape",
    "pyramid_channels",
    "pyramid_features",
    "spatial_features",
    "tokens_to_grid",
    "WeightNormLinear",
]
