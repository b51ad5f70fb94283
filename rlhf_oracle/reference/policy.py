"""Policy objectives: the PPO clipped surrogate, its gradient, and its token-level LM form."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _validation as v
from ._validation import BoolArray, FloatArray

AGGREGATION_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def _clip_bounds(
    fn: str, clip_eps: float, clip_eps_high: float | None, dual_clip: float | None
) -> tuple[float, float, float | None]:
    low = v.positive(fn, "clip_eps", clip_eps)
    if low >= 1:
        raise ValueError(f"{fn}: 'clip_eps' must be < 1, got {clip_eps}")
    high = low if clip_eps_high is None else v.positive(fn, "clip_eps_high", clip_eps_high)
    c = None if dual_clip is None else v.greater_than_one(fn, "dual_clip", dual_clip)
    return 1.0 - low, 1.0 + high, c


def _ratio_inputs(fn: str, logp: Any, logp_old: Any, advantages: Any) -> tuple[FloatArray, FloatArray, FloatArray]:
    new = v.as_float(fn, "logp", logp)
    old = v.as_float(fn, "logp_old", logp_old)
    adv = v.as_float(fn, "advantages", advantages)
    v.same_shape(fn, "logp_old", old, "logp", new)
    v.same_shape(fn, "advantages", adv, "logp", new)
    return new, old, adv


def _ratio_inputs_finite(
    fn: str, new: FloatArray, old: FloatArray, adv: FloatArray, where: BoolArray | None = None
) -> None:
    for name, arr in (("logp", new), ("logp_old", old), ("advantages", adv)):
        v.finite(fn, name, arr, where)


def ppo_clip_objective(
    logp: Any,
    logp_old: Any,
    advantages: Any,
    clip_eps: float = 0.2,
    *,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
) -> FloatArray:
    r"""Per-step clipped surrogate objective of PPO (to maximise).

    .. math::

        L^{CLIP}_t = \min\big(r_t A_t,\ \mathrm{clip}(r_t, 1-\epsilon, 1+\epsilon) A_t\big),
        \qquad r_t = \frac{\pi_\theta(a_t \mid s_t)}{\pi_{\theta_{old}}(a_t \mid s_t)} = e^{\log\pi - \log\pi_{old}}

    Source: Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7 (epsilon = 0.2).

    Variants (keyword-only):
        - ``clip_eps_high`` (clip-higher, DAPO eq. 8 with eps_low = 0.2, eps_high = 0.28): the upper bound is
          ``1 + clip_eps_high``; ``None`` means symmetric.
        - ``dual_clip = c > 1`` (Ye et al. 2020, eq. 5): for ``A_t < 0`` the objective is
          :math:`\max(L^{CLIP}_t, c A_t)`, which bounds the loss when r is far above 1. For ``A_t >= 0`` it is
          the ordinary surrogate (applying it to A > 0 is the tianshou #433 bug).

    Shapes: ``logp``, ``logp_old``, ``advantages`` any common shape (classic PPO [N], LM [B, T]) -> same shape.
    This is the per-step value; no mean is taken (see :func:`policy_loss`).
    """
    fn = "ppo_clip_objective"
    new, old, adv = _ratio_inputs(fn, logp, logp_old, advantages)
    low, high, c = _clip_bounds(fn, clip_eps, clip_eps_high, dual_clip)
    _ratio_inputs_finite(fn, new, old, adv)
    ratio = np.exp(new - old)
    unclipped = ratio * adv
    clipped = np.clip(ratio, low, high) * adv
    objective: FloatArray = np.minimum(unclipped, clipped)
    if c is not None:
        objective = np.where(adv < 0, np.maximum(objective, c * adv), objective)
    return objective


def ppo_clip_grad(
    logp: Any,
    logp_old: Any,
    advantages: Any,
    clip_eps: float = 0.2,
    *,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
) -> FloatArray:
    r"""Analytic derivative of :func:`ppo_clip_objective` with respect to ``logp``.

    Since :math:`\partial r / \partial \log\pi = r`,

    .. math::

        \frac{\partial L^{CLIP}_t}{\partial \log \pi_\theta(a_t|s_t)} =
        \begin{cases}
        0 & A_t > 0 \text{ and } r_t > 1 + \epsilon_{high} \\
        0 & A_t < 0 \text{ and } r_t < 1 - \epsilon \\
        0 & A_t < 0 \text{ and } r_t > c \quad \text{(dual clip only)} \\
        r_t A_t & \text{otherwise}
        \end{cases}

    Source: derived from Schulman et al. 2017 eq. 7; the piecewise form is checked by sympy in
    :mod:`rlhf_oracle.derivations` (``ppo_clip_grad``).

    Convention: at an exact boundary (``r_t = 1 + eps`` etc.) the unclipped branch is taken, which is the
    one-sided limit from inside the trust region and what ``torch.clamp`` (gradient passes at the bounds) gives.
    Shapes: as :func:`ppo_clip_objective`.
    """
    fn = "ppo_clip_grad"
    new, old, adv = _ratio_inputs(fn, logp, logp_old, advantages)
    low, high, c = _clip_bounds(fn, clip_eps, clip_eps_high, dual_clip)
    _ratio_inputs_finite(fn, new, old, adv)
    ratio = np.exp(new - old)
    clipped_above = (adv > 0) & (ratio > high)
    clipped_below = (adv < 0) & (ratio < low)
    flat = clipped_above | clipped_below
    if c is not None:
        flat = flat | ((adv < 0) & (ratio > c))
    grad: FloatArray = np.where(flat, 0.0, ratio * adv)
    return grad


def aggregate(values: Any, mask: Any, agg: str = "seq-mean-token-mean", *, max_tokens: int | None = None) -> float:
    r"""Reduce per-token values ``[B, T]`` to a scalar under one of the conventions in use.

    With :math:`m_{b,t}` the mask and :math:`|o_b| = \sum_t m_{b,t}`:

    - ``"seq-mean-token-mean"`` (default; the seed text and DeepSeekMath eq. 1, GRPO eq. 3):
      :math:`\frac{1}{B}\sum_b \frac{1}{|o_b|}\sum_t m_{b,t} x_{b,t}`
    - ``"token-mean"`` (DAPO eq. 8; the default of verl, OpenRLHF and TRL PPO):
      :math:`\frac{\sum_{b,t} m_{b,t} x_{b,t}}{\sum_{b,t} m_{b,t}}`
    - ``"seq-mean-token-sum"``: :math:`\frac{1}{B}\sum_b \sum_t m_{b,t} x_{b,t}`
    - ``"seq-mean-token-sum-norm"`` (Dr. GRPO, Liu et al. 2025: the constant normaliser):
      :math:`\frac{1}{B L}\sum_b \sum_t m_{b,t} x_{b,t}` with ``L = max_tokens`` (the generation budget), or the
      padded length T when ``max_tokens`` is None (verl's fallback).

    Source: the 1/|o| average of DeepSeekMath eq. 1; the token mean of DAPO eq. 8 (Yu et al. 2025); the
    constant normaliser of Dr. GRPO (Liu et al. 2025, §3.1); verl's ``agg_loss`` names the four modes.

    .. math::

        \text{seq-mean-token-mean} = \frac{1}{B}\sum_{b=1}^{B}\frac{\sum_t m_{b,t}x_{b,t}}{\sum_t m_{b,t}}

    Conventions: masked positions are never read (NaN there is harmless). ``seq-mean-token-mean`` refuses a row
    with no valid token (it divides by |o_b| = 0); ``token-mean`` refuses an all-empty mask. The sum modes
    count an empty row as contributing 0 and still count it in B.

    Shapes: ``values`` [B, T], ``mask`` [B, T] -> float.
    """
    fn = "aggregate"
    x = v.as_float(fn, "values", values, ndim=2, shape_doc="[B, T]")
    m = v.as_mask(fn, mask, like=x, like_name="values")
    v.choice(fn, "agg", agg, AGGREGATION_MODES)
    v.finite(fn, "values", x, m)
    return _aggregate(fn, x, m, agg, check_max_tokens(fn, max_tokens))


def check_max_tokens(fn: str, max_tokens: int | None) -> int | None:
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int | np.integer) or max_tokens <= 0
    ):
        raise ValueError(f"{fn}: 'max_tokens' must be a positive int or None, got {max_tokens}")
    return max_tokens


def _aggregate(fn: str, x: FloatArray, m: BoolArray, mode: str, max_tokens: int | None) -> float:
    """The reduction itself, on validated inputs (shared by the losses that aggregate)."""
    v.choice(fn, "agg", mode, AGGREGATION_MODES)
    batch, length = x.shape
    if batch == 0:
        raise ValueError(f"{fn}: 'mask' must have shape [B, T] with B >= 1, got {v._shape_str(m.shape)}")
    row_sums = [sum(float(x[b, t]) for t in range(length) if m[b, t]) for b in range(batch)]
    row_lengths = [int(m[b].sum()) for b in range(batch)]
    if mode == "seq-mean-token-mean":
        v.no_empty_rows(fn, m, mode)
        return float(sum(s / n for s, n in zip(row_sums, row_lengths, strict=True)) / batch)
    if mode == "token-mean":
        v.not_empty(fn, m)
        return float(sum(row_sums) / sum(row_lengths))
    if mode == "seq-mean-token-sum":
        return float(sum(row_sums) / batch)
    # "seq-mean-token-sum-norm"
    norm = length if max_tokens is None else int(max_tokens)
    return float(sum(row_sums) / (batch * norm))


def policy_loss(
    logp: Any,
    logp_old: Any,
    advantages: Any,
    mask: Any,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    agg: str = "seq-mean-token-mean",
    *,
    max_tokens: int | None = None,
    weights: Any = None,
) -> float:
    r"""Token-level PPO policy loss of RLHF: minus the clipped surrogate, averaged per ``agg``.

    .. math::

        \mathcal{L}(\theta) = -\frac{1}{B}\sum_{b=1}^{B} \frac{1}{|o_b|} \sum_{t=1}^{|o_b|}
        \min\big(r_{b,t} A_{b,t},\ \mathrm{clip}(r_{b,t}, 1-\epsilon, 1+\epsilon) A_{b,t}\big),
        \quad r_{b,t} = \frac{\pi_\theta(o_{b,t} \mid q_b, o_{b,<t})}{\pi_{old}(o_{b,t} \mid q_b, o_{b,<t})}

    Source: DeepSeekMath (Shao et al. 2024) eq. 1, the seed's token-level form of Schulman et al. 2017 eq. 7;
    clip-higher from DAPO (Yu et al. 2025) eq. 8; dual clip from Ye et al. 2020.

    Shapes: ``logp``, ``logp_old``, ``advantages``, ``mask`` [B, T] -> float.

    Conventions: ``agg`` is one of :data:`AGGREGATION_MODES` (see :func:`aggregate`); the default is the seed's
    per-sequence 1/|o| average. verl, OpenRLHF and TRL PPO default to ``"token-mean"``. Masked positions may
    hold anything (NaN included). The log-ratio is not clamped (verl/OpenRLHF clamp it to +-20 before ``exp``;
    that only matters where the ratio is astronomically far from 1).

    ``weights`` ([B, T], default None = 1): per-token weights multiplied into the clipped per-token objective
    before the aggregation, and carrying no gradient: the decoupled PPO of Hilton et al. 2021 (the behaviour
    policy's weight :math:`\pi_{prox}/\pi_{behav}`) and truncated importance sampling applied to PPO (Yao et al.
    2025: ``rollout_is_weights``), as verl's and OpenRLHF's ``rollout_is_weights`` arguments do.
    """
    fn = "policy_loss"
    new, old, adv = _ratio_inputs(fn, logp, logp_old, advantages)
    if new.ndim != 2:
        raise ValueError(f"{fn}: 'logp' must have shape [B, T], got {v._shape_str(new.shape)}")
    m = v.as_mask(fn, mask, like=new, like_name="logp")
    w = None
    if weights is not None:
        w = v.as_float(fn, "weights", weights)
        v.same_shape(fn, "weights", w, "logp", new)
    v.choice(fn, "agg", agg, AGGREGATION_MODES)
    _clip_bounds(fn, clip_eps, clip_eps_high, dual_clip)
    _ratio_inputs_finite(fn, new, old, adv, m)
    if w is not None:
        v.finite(fn, "weights", w, m)
    # Fill masked slots with a harmless 0 so that NaN there cannot reach any valid position.
    new, old, adv = (np.where(m, arr, 0.0) for arr in (new, old, adv))
    per_token = ppo_clip_objective(new, old, adv, clip_eps, clip_eps_high=clip_eps_high, dual_clip=dual_clip)
    if w is not None:
        per_token = per_token * np.where(m, w, 0.0)
    return -_aggregate(fn, per_token, m, agg, check_max_tokens(fn, max_tokens))


PG_FORMS = ("logp", "ratio")
"""How :func:`pg_loss` writes its per-token term: ``-w A log pi`` or ``-w A exp(log pi - sg(log pi))``."""


def pg_loss(
    logp: Any,
    advantages: Any,
    mask: Any,
    weights: Any = None,
    agg: str = "seq-mean-token-mean",
    *,
    form: str = "logp",
    max_tokens: int | None = None,
) -> float:
    r"""Plain policy-gradient (REINFORCE) loss of a trainer step: no ratio to an old policy, no clip.

    .. math::

        \mathcal{L}(\theta) = -\operatorname*{agg}_{b,t}\Big(\mathrm{sg}(w_{b,t})\,A_{b,t}\,
        \log\pi_\theta(o_{b,t} \mid q_b, o_{b,<t})\Big),
        \qquad
        \nabla_\theta\mathcal{L} = -\operatorname*{agg}_{b,t}\big(w_{b,t} A_{b,t}\,\nabla_\theta\log\pi_\theta\big)

    where :math:`\operatorname{agg}` is one of the four token aggregations of :func:`aggregate` and
    :math:`\mathrm{sg}` is the stop-gradient: the weights (importance-sampling corrections, see
    ``rollout_is_weights``) and the advantages are data, never differentiated.

    Source: Williams 1992, "Simple statistical gradient-following algorithms for connectionist reinforcement
    learning", §3 (the REINFORCE update :math:`\Delta w = \alpha (r - b)\,\partial\ln\pi/\partial w`); GPG
    (Chu et al. 2025, arXiv 2504.02546) runs it with GRPO advantages and no ratio or clip.

    Shapes: ``logp``, ``advantages``, ``mask`` and ``weights`` (if given) [B, T] -> float.

    Conventions:
        - ``form="logp"`` (default; verl ``gpg``): the per-token term is :math:`-w A \log\pi`, so the loss value
          depends on the log-probabilities. ``form="ratio"`` (verl's bypass ``reinforce`` mode, the on-policy
          limit of PPO): :math:`-w A\,e^{\log\pi - \mathrm{sg}(\log\pi)}`, whose value is :math:`-w A`
          (the ratio is 1) and whose gradient is the same as ``form="logp"``. This NumPy reference returns the
          value; the gradient is the formula above (the oracle checks it).
        - ``weights=None`` means :math:`w = 1` (plain REINFORCE); verl's bypass mode passes its truncated
          importance-sampling weights here.
        - ``agg``: the default is the seed's per-sequence 1/|o| mean; verl's ``gpg`` uses ``"token-mean"``, its
          ``reinforce`` mode ``"seq-mean-token-sum"``.
        - Masked positions may hold anything (NaN included).
    """
    fn = "pg_loss"
    new = v.as_float(fn, "logp", logp, ndim=2, shape_doc="[B, T]")
    adv = v.as_float(fn, "advantages", advantages)
    v.same_shape(fn, "advantages", adv, "logp", new)
    m = v.as_mask(fn, mask, like=new, like_name="logp")
    if weights is None:
        w = np.ones_like(new)
    else:
        w = v.as_float(fn, "weights", weights)
        v.same_shape(fn, "weights", w, "logp", new)
    v.choice(fn, "agg", agg, AGGREGATION_MODES)
    v.choice(fn, "form", form, PG_FORMS)
    mt = check_max_tokens(fn, max_tokens)
    for name, arr in (("logp", new), ("advantages", adv), ("weights", w)):
        v.finite(fn, name, arr, m)
    batch, length = new.shape
    per_token = np.zeros((batch, length))
    for b in range(batch):
        for t in range(length):
            if not m[b, t]:
                continue
            if form == "logp":
                per_token[b, t] = w[b, t] * adv[b, t] * new[b, t]
            else:  # exp(logp - sg(logp)) = 1 in value
                per_token[b, t] = w[b, t] * adv[b, t]
    return -_aggregate(fn, per_token, m, agg, mt)
