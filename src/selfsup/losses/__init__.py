"""Losses: pure functions of tensors, each testable against a hand-written formula."""

from selfsup.losses.info_nce import info_nce, nt_xent

__all__ = ["info_nce", "nt_xent"]
