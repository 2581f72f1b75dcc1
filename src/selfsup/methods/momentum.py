"""Exponential-moving-average (momentum) copies of modules: BYOL's target network, and the
building block for MoCo's key encoder and DINO's teacher.

The copy is frozen (no gradients, never seen by the optimizer) and is updated after each
optimizer step with ``theta_t <- m * theta_t + (1 - m) * theta_s``; buffers (BatchNorm running
statistics) are copied. Being a submodule, it is part of the owner's state dict, so a resumed
run continues from exactly the same target weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """BYOL's momentum schedule: ``final - (final - base) * (cos(pi * step / total) + 1) / 2``.

    Equals ``base`` at step 0 and ``final`` (1 by default) at ``step == total_steps``.

    Example::

        cosine_momentum(0, 100, 0.99)    # 0.99
        cosine_momentum(100, 100, 0.99)  # 1.0
    """
    if total_steps <= 0:
        return base
    k = min(max(step, 0), total_steps)
    return final - (final - base) * (math.cos(math.pi * k / total_steps) + 1) / 2


class EMA(nn.Module):
    """Frozen momentum copies of a group of named modules.

    Args:
        online: the modules to follow, by name (e.g. ``{"encoder": enc, "projector": proj}``).
            Only deep copies are kept; the online modules are passed again to :meth:`update`
            (so they are not registered twice in the owner's state dict).
        base_momentum: ``m_0``.
        schedule: ``"cosine"`` (towards ``final_momentum``, BYOL / MoCo v3 / DINO) or
            ``"constant"`` (MoCo v2).
        final_momentum: the schedule's end value.

    The copies are reached by name: ``ema["encoder"](x)``. The momentum of the last update is
    kept in the ``momentum`` buffer (for logging).

    Example::

        ema = EMA({"encoder": encoder}, base_momentum=0.99)
        ...  # after optimizer.step():
        ema.update({"encoder": encoder}, step, total_steps)
    """

    def __init__(
        self,
        online: Mapping[str, nn.Module],
        base_momentum: float = 0.99,
        schedule: str = "cosine",
        final_momentum: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"base_momentum must be in [0, 1], got {base_momentum}")
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown momentum schedule {schedule!r} (cosine or constant)")
        self.copies = nn.ModuleDict({k: copy.deepcopy(m) for k, m in online.items()})
        self.copies.requires_grad_(False)
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum
        self.schedule = schedule
        self.register_buffer("momentum", torch.tensor(float(base_momentum)))

    def __getitem__(self, name: str) -> nn.Module:
        return self.copies[name]

    def momentum_at(self, step: int, total_steps: int) -> float:
        """The momentum used for the update after optimizer step ``step`` (0-based)."""
        if self.schedule == "constant":
            return self.base_momentum
        return cosine_momentum(step, total_steps, self.base_momentum, self.final_momentum)

    @torch.no_grad()
    def update(
        self,
        online: Mapping[str, nn.Module],
        step: int,
        total_steps: int,
        momentum: float | None = None,
    ) -> float:
        """Move the copies towards ``online``: parameters by EMA, buffers copied.

        ``momentum`` overrides the schedule. Returns the momentum used.
        """
        m = self.momentum_at(step, total_steps) if momentum is None else momentum
        if set(online) != set(self.copies):
            raise KeyError(f"EMA follows {sorted(self.copies)}, got {sorted(online)}")
        for name, target in self.copies.items():
            source = online[name]
            t_params = dict(target.named_parameters())
            for key, p_s in source.named_parameters():
                p_t = t_params[key]
                p_t.mul_(m).add_(p_s.detach().to(p_t.dtype), alpha=1.0 - m)
            t_buffers = dict(target.named_buffers())
            for key, b_s in source.named_buffers():
                t_buffers[key].copy_(b_s)
        self.momentum.fill_(m)
        return m
