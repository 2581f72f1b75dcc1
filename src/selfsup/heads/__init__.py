"""Heads that sit on the encoder during pretraining or evaluation."""

from selfsup.heads.decoder import ConvDecoder, feature_map_shape, spatial_features, tokens_to_grid
from selfsup.heads.projection import LinearClassifier, ProjectionHead

__all__ = [
    "ConvDecoder",
    "LinearClassifier",
    "ProjectionHead",
    "feature_map_shape",
    "spatial_features",
    "tokens_to_grid",
]
