"""The value-function (critic) loss with PPO-style value clipping."""

from __future__ import annotations

import torch

from . import _validation as v
from .policy import AGGREGATION_MODES, _aggregate


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float | None = 0.2,
    agg: str = "token-mean",
    *,
    max_tokens: int | None = None,
) -> torch.Tensor:
    r"""Clipped value loss :math:`\tfrac12\max((V - R)^2, (V_{old} + \mathrm{clip}(V - V_{old}, \pm\epsilon) - R)^2)`.

    ``clip_eps=None``: :math:`\tfrac12 (V - R)^2`. Aggregated with ``agg`` (default ``"token-mean"``). Masked
    positions are replaced by 0 before any arithmetic, so NaN there reaches neither the loss nor the gradient.
    PPO2 / lm-human-preferences value clipping; see :func:`rlhf_oracle.reference.value_loss`. Returns 0-dim.
    """
    fn = "value_loss"
    per_token, m, out_dtype, max_tokens = _per_token(fn, values, old_values, returns, mask, clip_eps, max_tokens)
    v.choice(fn, "agg", agg, AGGREGATION_MODES)
    return _aggregate(fn, per_token, m, agg, max_tokens).to(out_dtype)


def _per_token(
    fn: str,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float | None,
    max_tokens: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.dtype, int | None]:
    """(per-token loss, mask, output dtype, max_tokens) on validated inputs, 0 at masked positions."""
    val = v.as_float(fn, "values", values, ndim=2, shape_doc="[B, T]")
    old = v.as_float(fn, "old_values", old_values)
    ret = v.as_float(fn, "returns", returns)
    v.same_shape(fn, "old_values", old, "values", val)
    v.same_shape(fn, "returns", ret, "values", val)
    m = v.as_mask(fn, mask, like=val, like_name="values")
    max_tokens = v.optional_positive_int(fn, "max_tokens", max_tokens)
    for name, arr in (("values", val), ("old_values", old), ("returns", ret)):
        v.finite(fn, name, arr, m)
    eps = None if clip_eps is None else v.positive(fn, "clip_eps", clip_eps)

    out_dtype = torch.promote_types(torch.promote_types(val.dtype, old.dtype), ret.dtype)
    acc = v.acc_dtype(out_dtype)
    val0, old0, ret0 = (torch.where(m, arr.to(acc), 0.0) for arr in (val, old, ret))
    unclipped = (val0 - ret0).square()
    if eps is None:
        return 0.5 * unclipped, m, out_dtype, max_tokens
    clipped_values = old0 + (val0 - old0).clamp(-eps, eps)
    return 0.5 * torch.maximum(unclipped, (clipped_values - ret0).square()), m, out_dtype, max_tokens
