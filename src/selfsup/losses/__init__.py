"""Losses: pure functions of tensors, each testable against a hand-written formula."""

from selfsup.losses.attention_copy import (
    colour_copy_loss,
    colour_copy_loss_from_logits,
    copy_attention,
    copy_logits,
    copy_values,
)
from selfsup.losses.cosine import negative_cosine, normalized_mse
from selfsup.losses.depth import inverse_depth_l1, scale_invariant_log_loss
from selfsup.losses.dino import dino_loss, dino_teacher_probs
from selfsup.losses.info_nce import info_nce, multiview_nt_xent, nt_xent
from selfsup.losses.redundancy import (
    barlow_twins_loss,
    cross_correlation,
    off_diagonal,
    vicreg_loss,
    vicreg_terms,
)

__all__ = [
    "colour_copy_loss",
    "colour_copy_loss_from_logits",
    "copy_attention",
    "copy_logits",
    "copy_values",
    "inverse_depth_l1",
    "scale_invariant_log_loss",
    "barlow_twins_loss",
    "cross_correlation",
    "dino_loss",
    "dino_teacher_probs",
    "info_nce",
    "multiview_nt_xent",
    "negative_cosine",
    "normalized_mse",
    "nt_xent",
    "off_diagonal",
    "vicreg_loss",
    "vicreg_terms",
]
