"""The value-function (critic) loss with PPO-style value clipping."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _validation as v
from .policy import AGGREGATION_MODES, _aggregate, check_max_tokens


def value_loss(
    values: Any,
    old_values: Any,
    returns: Any,
    mask: Any,
    clip_eps: float | None = 0.2,
    agg: str = "token-mean",
    *,
    max_tokens: int | None = None,
) -> float:
    r"""Clipped value loss of PPO, aggregated over valid tokens.

    .. math::

        \mathcal{L}^{V}_t = \tfrac12 \max\Big( (V_t - \hat R_t)^2,\
        \big(V^{old}_t + \mathrm{clip}(V_t - V^{old}_t, -\epsilon_v, \epsilon_v) - \hat R_t\big)^2 \Big)

    Source: the value clipping of OpenAI baselines' PPO2 and openai/lm-human-preferences (``cliprange_value``);
    Huang et al. 2022, "The 37 Implementation Details of PPO", detail 9. Schulman et al. 2017 eq. 9 has the
    unclipped :math:`(V_\theta(s_t) - V^{targ}_t)^2`.

    Shapes: ``values`` (current critic), ``old_values`` (critic at rollout time), ``returns`` (GAE returns),
    ``mask`` [B, T] -> float.

    Conventions:
        - the clip bounds the *change* of the value, ``V - V_old``, not the loss, and the max of the two squared
          errors is pessimistic (openai/baselines #765); writing ``min`` is a known bug.
        - ``clip_eps`` is separate from the policy's clip (0.2 in TRL/DS-Chat/lm-human-preferences, 0.5 in verl
          and the OpenRLHF CLI); ``None`` disables clipping: :math:`\tfrac12 (V - \hat R)^2`.
        - the factor 1/2 is included, as in every surveyed framework; ``agg="token-mean"`` is their default
          reduction (any mode of :func:`rlhf_oracle.reference.aggregate` is accepted).
    """
    fn = "value_loss"
    val = v.as_float(fn, "values", values, ndim=2, shape_doc="[B, T]")
    old = v.as_float(fn, "old_values", old_values)
    ret = v.as_float(fn, "returns", returns)
    v.same_shape(fn, "old_values", old, "values", val)
    v.same_shape(fn, "returns", ret, "values", val)
    m = v.as_mask(fn, mask, like=val, like_name="values")
    v.choice(fn, "agg", agg, AGGREGATION_MODES)
    max_tokens = check_max_tokens(fn, max_tokens)
    for name, arr in (("values", val), ("old_values", old), ("returns", ret)):
        v.finite(fn, name, arr, m)

    unclipped = (val - ret) ** 2
    if clip_eps is None:
        per_token = 0.5 * unclipped
    else:
        eps = v.positive(fn, "clip_eps", clip_eps)
        clipped_values = old + np.clip(val - old, -eps, eps)
        per_token = 0.5 * np.maximum(unclipped, (clipped_values - ret) ** 2)
    per_token = np.where(m, per_token, 0.0)
    return _aggregate(fn, per_token, m, agg, max_tokens)
