"""Heads that sit on the encoder during pretraining or evaluation."""

from selfsup.heads.projection import LinearClassifier, ProjectionHead

__all__ = ["LinearClassifier", "ProjectionHead"]
