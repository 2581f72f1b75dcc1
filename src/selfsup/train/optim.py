"""Optimizers (SGD, LARS, AdamW, LAMB) and their peak learning rate (the schedule is in
:mod:`selfsup.train.schedule`)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from selfsup.config import OptimizerConfig
from selfsup.train.schedule import lr_at, set_lr  # noqa: F401  (they lived here)


def norm_ratio(p: Tensor, u: Tensor, coefficient: float = 1.0, eps: float = 0.0) -> Tensor:
    """The layer-wise trust ratio of LARS and LAMB: ``coefficient * ||p|| / (||u|| + eps)``
    for a parameter tensor ``p`` and its update direction ``u``, or 1 where either norm is 0
    (a 0-d tensor, so the step needs no host sync)."""
    p_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(u)
    return torch.where(
        (p_norm > 0) & (u_norm > 0), coefficient * p_norm / (u_norm + eps), torch.ones_like(p_norm)
    )


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    Each parameter's update is scaled by ``trust_coefficient * ||w|| / (||g|| + wd * ||w||)``.
    With ``clip=True`` (LARC's clip mode, as solo-learn's CIFAR recipes use) that layer-wise
    rate is capped at the global lr instead of multiplying it: the step is
    ``min(trust_coefficient * ||w|| / ||g||, lr) * g``, so no layer moves faster than plain SGD
    would. Groups with ``lars_exclude=True`` (norms and biases) get plain SGD with momentum.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
        clip: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            lars_exclude=False,
            clip=clip,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"] != 0:
                    grad = grad.add(p, alpha=group["weight_decay"])
                if not group["lars_exclude"]:
                    trust = norm_ratio(p, grad, group["trust_coefficient"], group["eps"])
                    if group["clip"]:
                        trust = torch.clamp(trust / group["lr"], max=1.0)
                    grad = grad * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


class LAMB(torch.optim.Optimizer):
    """Adam with layer-wise adaptive step sizes (You et al., ICLR 2020, Algorithm 2).

    Per parameter tensor ``w`` with gradient ``g`` at step ``t``: Adam's bias-corrected moments
    give the direction ``r = m_hat / (sqrt(v_hat) + eps)``; decoupled weight decay adds
    ``wd * w`` (``u = r + wd * w``); the step is ``lr * (||w|| / ||u||) * u``, so every layer
    moves by about ``lr`` times its own norm whatever the scale of its gradient. Where
    ``||w||`` or ``||u||`` is zero the ratio is 1 (plain AdamW-style step). Groups with
    ``lars_exclude=True`` (norms and biases, see :func:`split_decay_groups`) take the
    unscaled step ``lr * u``, as LARS leaves them to plain SGD.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        eps: float = 1e-6,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, eps=eps, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                # r = m_hat / (sqrt(v_hat) + eps), the bias corrections folded into scalars
                denom = v.sqrt().div_(math.sqrt(1 - beta2**t)).add_(group["eps"])
                update = m.div(denom).div_(1 - beta1**t)
                if group["weight_decay"] != 0:
                    update.add_(p, alpha=group["weight_decay"])
                if not group["lars_exclude"]:
                    update.mul_(norm_ratio(p, update))
                p.add_(update, alpha=-group["lr"])
        return loss


def split_decay_groups(model: nn.Module, exclude_norm_and_bias: bool) -> list[dict]:
    """Parameter groups: weights with decay, and norm/bias parameters without."""
    decay, no_decay = [], []
    for module in model.modules():
        is_norm = isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm))
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if exclude_norm_and_bias and (is_norm or name == "bias" or param.ndim <= 1):
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [{"params": decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    return groups


def split_lr_scale_groups(model: nn.Module, groups: list[dict], lr: float) -> list[dict]:
    """Split parameter groups by the model's learning-rate multipliers and fixed rates.

    ``model.lr_scales()`` (a :class:`~selfsup.methods.Method` hook; absent = none) maps
    parameter-name prefixes to multipliers, the longest matching prefix winning. Parameters
    with a multiplier other than 1 go to their own copy of their group, with ``lr_scale`` set
    (and ``lr = lr * lr_scale``); :func:`set_lr` keeps that ratio through the schedule.
    ``model.fixed_lr()`` names prefixes whose groups get ``fixed_lr=True``: :func:`set_lr`
    holds them at the peak (times their scale) instead of scheduling them.
    """
    scales_hook, fixed_hook = getattr(model, "lr_scales", None), getattr(model, "fixed_lr", None)
    scales = scales_hook() if callable(scales_hook) else {}
    fixed = tuple(fixed_hook()) if callable(fixed_hook) else ()
    if not scales and not fixed:
        return groups
    names = {id(p): name for name, p in model.named_parameters()}

    def scale_of(param: Tensor) -> float:
        name = names.get(id(param), "")
        prefix = max((k for k in scales if name.startswith(k)), key=len, default=None)
        return 1.0 if prefix is None else float(scales[prefix])

    def is_fixed(param: Tensor) -> bool:
        return names.get(id(param), "").startswith(fixed) if fixed else False

    out = []
    for group in groups:
        by_kind: dict[tuple[float, bool], list[Tensor]] = {}
        for param in group["params"]:
            by_kind.setdefault((scale_of(param), is_fixed(param)), []).append(param)
        for (scale, hold), params in by_kind.items():
            new = {**group, "params": params}
            if scale != 1.0:
                new.update(lr_scale=scale, lr=lr * scale)
            if hold:
                new.update(fixed_lr=True)
            out.append(new)
    return out


def build_optimizer(
    model: nn.Module, cfg: OptimizerConfig, global_batch_size: int
) -> torch.optim.Optimizer:
    """Build the optimizer with the peak LR (``cfg.lr`` or ``base_lr * batch / 256``), times
    the model's ``lr_scales()`` where it has any, its ``fixed_lr()`` groups marked
    (:func:`split_lr_scale_groups`)."""
    lr = peak_lr(cfg, global_batch_size)
    groups = split_decay_groups(model, cfg.exclude_norm_and_bias)
    groups = split_lr_scale_groups(model, groups, lr)
    if cfg.name == "sgd":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.SGD(
            groups,
            lr=lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
    if cfg.name == "adamw":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.name == "lamb":
        return LAMB(groups, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return LARS(
        groups,
        lr=lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        trust_coefficient=cfg.trust_coefficient,
        clip=cfg.lars_clip,
    )


def peak_lr(cfg: OptimizerConfig, global_batch_size: int) -> float:
    """``cfg.lr``, or ``cfg.base_lr`` scaled linearly with the global batch (per 256)."""
    return cfg.lr if cfg.lr is not None else cfg.base_lr * global_batch_size / 256
