"""Off-policy corrections (rollout importance-sampling weights): vectorised, detached, bounds compared in log
space. Same names, argument order, defaults and messages as :mod:`rlhf_oracle.reference.rollout`."""

from __future__ import annotations

import math

import torch

from . import _validation as v
from .policy import _out_dtype

IS_LEVELS = ("token", "sequence")
IS_MODES = ("truncate", "mask", "reject")
SEQ_RATIOS = ("product", "geometric")


def rollout_is_weights(
    logp_old: torch.Tensor,
    logp_rollout: torch.Tensor,
    mask: torch.Tensor,
    level: str = "token",
    mode: str = "truncate",
    upper: float = 2.0,
    lower: float | None = None,
    *,
    seq_ratio: str = "product",
) -> torch.Tensor:
    r"""Importance weights :math:`\rho = \pi_{old}/\mu` of the tokens an inference engine sampled, per token or per
    sequence (product or geometric mean, broadcast), truncated, masked or rejected outside ``[lower, upper]``;
    detached, 0 at masked positions. Bounds compared in log space (no overflow). See
    :func:`rlhf_oracle.reference.rollout_is_weights` (TIS, Yao et al. 2025; MIS, Li 2025; IcePop 2025).
    """
    fn = "rollout_is_weights"
    old = v.as_float(fn, "logp_old", logp_old, ndim=2, shape_doc="[B, T]")
    rollout = v.as_float(fn, "logp_rollout", logp_rollout)
    v.same_shape(fn, "logp_rollout", rollout, "logp_old", old)
    m = v.as_mask(fn, mask, like=old, like_name="logp_old")
    v.choice(fn, "level", level, IS_LEVELS)
    v.choice(fn, "mode", mode, IS_MODES)
    hi = v.positive(fn, "upper", upper)
    lo = None if lower is None else v.non_negative(fn, "lower", lower)
    if lo is not None and lo >= hi:
        raise ValueError(f"{fn}: 'lower' must be < upper = {hi}, got {lower}")
    v.choice(fn, "seq_ratio", seq_ratio, SEQ_RATIOS)
    v.finite(fn, "logp_old", old, m)
    v.finite(fn, "logp_rollout", rollout, m)
    out_dtype = _out_dtype(old, rollout)
    acc = v.acc_dtype(out_dtype)
    log_rho = torch.where(m, old.detach().to(acc) - rollout.detach().to(acc), 0.0)
    if level == "sequence":
        total = log_rho.sum(dim=-1, keepdim=True)
        if seq_ratio == "geometric":
            total = total / m.sum(dim=-1, keepdim=True).clamp_min(1).to(acc)
        log_rho = total.expand_as(log_rho)
    log_hi = math.log(hi)
    log_lo = -math.inf if not lo else math.log(lo)
    inside = (log_rho >= log_lo) & (log_rho <= log_hi)
    rho = torch.exp(log_rho.clamp(max=log_hi))  # no overflow; above the cap the value is replaced below
    if mode == "truncate":
        weights = torch.where(log_rho > log_hi, hi, rho)
        if lo is not None:
            weights = torch.where(log_rho < log_lo, lo, weights)
    elif mode == "mask":
        weights = torch.where(inside, rho, 0.0)
    else:
        weights = inside.to(acc)
    return torch.where(m, weights, 0.0).to(out_dtype)
