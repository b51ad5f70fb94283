"""Policy losses of GRPO-era trainers beyond PPO-Clip: CISPO, SAPO and GSPO.

Each keeps the token-level form of :func:`rlhf_oracle.reference.policy_loss` (a per-token term, masked, then one of
the four aggregations) and changes the per-token term. Several are defined by their *gradient*: a stop-gradient
``sg()`` sits inside the term, so this NumPy reference returns the value and documents the gradient; the oracle
checks both.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _validation as v
from ._validation import BoolArray, FloatArray
from .policy import AGGREGATION_MODES, _aggregate, _ratio_inputs, _ratio_inputs_finite, check_max_tokens


def _exp(x: float) -> float:
    """e^x, +inf beyond the float64 range (as ``np.exp``) instead of ``math.exp``'s OverflowError."""
    return math.exp(x) if x < 709.0 else math.inf


def _token_inputs(
    fn: str, logp: Any, logp_old: Any, advantages: Any, mask: Any, agg: str, max_tokens: int | None
) -> tuple[FloatArray, FloatArray, FloatArray, BoolArray, int | None]:
    """Validated [B, T] inputs of a token-level loss, masked slots replaced by 0 (NaN there is harmless)."""
    new, old, adv = _ratio_inputs(fn, logp, logp_old, advantages)
    if new.ndim != 2:
        raise ValueError(f"{fn}: 'logp' must have shape [B, T], got {v._shape_str(new.shape)}")
    m = v.as_mask(fn, mask, like=new, like_name="logp")
    v.choice(fn, "agg", agg, AGGREGATION_MODES)
    mt = check_max_tokens(fn, max_tokens)
    return new, old, adv, m, mt


def _finite_masked(
    fn: str, new: FloatArray, old: FloatArray, adv: FloatArray, m: BoolArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    _ratio_inputs_finite(fn, new, old, adv, m)
    return np.where(m, new, 0.0), np.where(m, old, 0.0), np.where(m, adv, 0.0)


def cispo_loss(
    logp: Any,
    logp_old: Any,
    advantages: Any,
    mask: Any,
    weight_max: float = 5.0,
    weight_min: float | None = None,
    agg: str = "token-mean",
    *,
    max_tokens: int | None = None,
) -> float:
    r"""CISPO: REINFORCE with the importance ratio clipped and detached, so that no token's gradient vanishes.

    .. math::

        \mathcal{L}(\theta) = -\operatorname*{agg}_{b,t}\Big(\mathrm{sg}\big(\mathrm{clip}(r_{b,t},
        w_{min}, w_{max})\big)\,A_{b,t}\,\log\pi_\theta(o_{b,t} \mid q_b, o_{b,<t})\Big),
        \qquad r_{b,t} = e^{\log\pi_\theta - \log\pi_{old}}

    Gradient: :math:`-\operatorname{agg}\big(\mathrm{clip}(r, w_{min}, w_{max})\,A\,\nabla\log\pi\big)`; unlike
    PPO-Clip it is never zeroed by the clip (the clip only bounds the weight).

    Source: MiniMax-M1 (MiniMax 2025, arXiv 2506.13585) §3, the CISPO objective with the clipped IS weight; the
    paper tunes only the upper bound (no effective lower bound). ScaleRL (Khatri et al. 2025, arXiv 2510.13786)
    uses :math:`w_{max} = 5`.

    Shapes: ``logp``, ``logp_old``, ``advantages``, ``mask`` [B, T] -> float.

    Conventions (the bounds are in ratio space):
        - ``weight_max`` (default 5.0, ScaleRL): TRL's ``loss_type="cispo"`` caps at ``epsilon_high`` with no lower
          bound (``weight_min=None``); verl's ``cispo`` clips to ``[1 - clip_ratio_low, 1 + clip_ratio_high]``
          (0.8 and 1.2 by default: ``weight_min=0.8, weight_max=1.2``).
        - ``agg`` (default ``"token-mean"``, as TRL and verl).
        - The log-ratio is not clamped (verl clamps it to +-20 before ``exp``: only astronomically far ratios
          differ).
    """
    fn = "cispo_loss"
    new, old, adv, m, mt = _token_inputs(fn, logp, logp_old, advantages, mask, agg, max_tokens)
    hi = v.positive(fn, "weight_max", weight_max)
    lo = None if weight_min is None else v.non_negative(fn, "weight_min", weight_min)
    if lo is not None and lo >= hi:
        raise ValueError(f"{fn}: 'weight_min' must be < weight_max = {hi}, got {weight_min}")
    new, old, adv = _finite_masked(fn, new, old, adv, m)
    batch, length = new.shape
    per_token = np.zeros((batch, length))
    for b in range(batch):
        for t in range(length):
            if not m[b, t]:
                continue
            ratio = _exp(new[b, t] - old[b, t])
            weight = min(ratio, hi) if lo is None else min(max(ratio, lo), hi)
            per_token[b, t] = weight * adv[b, t] * new[b, t]
    return -_aggregate(fn, per_token, m, agg, mt)


def sapo_loss(
    logp: Any,
    logp_old: Any,
    advantages: Any,
    mask: Any,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    agg: str = "seq-mean-token-mean",
    *,
    max_tokens: int | None = None,
) -> float:
    r"""SAPO: the hard clip of PPO replaced by a smooth sigmoid gate on the ratio.

    .. math::

        \mathcal{L}(\theta) = -\operatorname*{agg}_{b,t}\Big(\frac{4}{\tau_{b,t}}\,
        \sigma\big(\tau_{b,t}(r_{b,t} - 1)\big)\,A_{b,t}\Big),
        \qquad \tau_{b,t} = \begin{cases}\tau_{pos} & A_{b,t} > 0\\ \tau_{neg} & A_{b,t} \le 0\end{cases}

    Gradient per token: :math:`-4\,\sigma(1-\sigma)\,r\,A\,\nabla\log\pi` with :math:`\sigma = \sigma(\tau(r-1))`;
    at :math:`r = 1` it is :math:`-A\,\nabla\log\pi`, the REINFORCE gradient (sympy: ``sapo_gate_gradient``), and
    it decays smoothly, instead of vanishing at a bound, as r leaves 1.

    Source: Gao et al. 2025 (Qwen), "Soft Adaptive Policy Optimization", arXiv 2511.20347, the gate
    :math:`f(r;\tau) = \frac{4}{\tau}\sigma(\tau(r-1))`; :math:`\tau_{pos} = 1.0`, :math:`\tau_{neg} = 1.05` in
    TRL (``sapo_temperature_pos/neg``) and verl (``tau_pos/neg``).

    Shapes: ``logp``, ``logp_old``, ``advantages``, ``mask`` [B, T] -> float.

    Conventions: ``agg`` default ``"seq-mean-token-mean"`` (verl forces it for ``sapo``; TRL's ``grpo`` path);
    the gate's constant :math:`4/\tau` makes the gradient at r = 1 exactly REINFORCE's; verl clamps the log-ratio
    to +-20 before ``exp`` (TRL does not). The value at r = 1 is :math:`-\frac{2}{\tau}A`, not :math:`-A`: the
    gate is defined by its gradient, and frameworks agree on the constant.
    """
    fn = "sapo_loss"
    new, old, adv, m, mt = _token_inputs(fn, logp, logp_old, advantages, mask, agg, max_tokens)
    t_pos = v.positive(fn, "tau_pos", tau_pos)
    t_neg = v.positive(fn, "tau_neg", tau_neg)
    new, old, adv = _finite_masked(fn, new, old, adv, m)
    batch, length = new.shape
    per_token = np.zeros((batch, length))
    for b in range(batch):
        for t in range(length):
            if not m[b, t]:
                continue
            tau = t_pos if adv[b, t] > 0 else t_neg
            x = tau * (_exp(new[b, t] - old[b, t]) - 1.0)
            gate = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
            per_token[b, t] = 4.0 / tau * gate * adv[b, t]
    return -_aggregate(fn, per_token, m, agg, mt)


def gspo_sequence_log_ratio(logp: FloatArray, logp_old: FloatArray, m: BoolArray) -> FloatArray:
    r""":math:`\log s_b = \frac{1}{|o_b|}\sum_t m_{b,t}(\log\pi_\theta - \log\pi_{old})`, [B] (0 for an empty row)."""
    batch, length = logp.shape
    out = np.zeros(batch)
    for b in range(batch):
        n = int(m[b].sum())
        if n:
            out[b] = math.fsum(float(logp[b, t] - logp_old[b, t]) for t in range(length) if m[b, t]) / n
    return out


def gspo_loss(
    logp: Any,
    logp_old: Any,
    advantages: Any,
    mask: Any,
    clip_eps: float = 3e-4,
    clip_eps_high: float | None = 4e-4,
    agg: str = "seq-mean-token-mean",
    *,
    log_ratio_clamp: float | None = None,
    max_tokens: int | None = None,
) -> float:
    r"""GSPO: the PPO clip applied to the sequence ratio (the geometric mean of the token ratios), GSPO-token form.

    .. math::

        s_b = \exp\Big(\frac{1}{|o_b|}\sum_{t} m_{b,t}\log\frac{\pi_\theta(o_{b,t}\mid\cdot)}
        {\pi_{old}(o_{b,t}\mid\cdot)}\Big),\qquad
        s_{b,t} = \mathrm{sg}(s_b)\,\frac{\pi_\theta(o_{b,t}\mid\cdot)}{\mathrm{sg}(\pi_\theta(o_{b,t}\mid\cdot))}

    .. math::

        \mathcal{L}(\theta) = -\operatorname*{agg}_{b,t}\min\big(s_{b,t} A_{b,t},\
        \mathrm{clip}(s_{b,t}, 1 - \epsilon, 1 + \epsilon_{high}) A_{b,t}\big)

    The value of :math:`s_{b,t}` is :math:`s_b`; its gradient with respect to :math:`\log\pi_\theta(o_{b,t})` is
    :math:`s_b`. Gradient per token: :math:`-w_{b,t}\,s_b A_{b,t}` where the unclipped branch is active, 0 where
    the clip binds (:math:`w` the aggregation weight). When :math:`A_{b,t} = A_b` for every token, this is GSPO
    itself (eq. 5, with the full gradient :math:`\nabla s_b = \frac{s_b}{|o_b|}\sum_t\nabla\log\pi_t`) in value
    and gradient under ``agg="seq-mean-token-mean"`` (sympy: ``gspo_token_equals_gspo``).

    Source: Zheng et al. 2025 (Qwen), "Group Sequence Policy Optimization", arXiv 2507.18071, eq. 5 (GSPO) and
    eq. 14-15 (GSPO-token); clip ranges :math:`3\times10^{-4}` (left) and :math:`4\times10^{-4}` (right).

    Shapes: ``logp``, ``logp_old``, ``advantages``, ``mask`` [B, T] -> float.

    Conventions:
        - ``agg``: the paper averages per sequence (``"seq-mean-token-mean"``); verl's ``gspo`` defaults to
          ``"token-mean"`` (each sequence weighted by its length), TRL weights sequences by length unless
          ``loss_type="grpo"``; OpenRLHF forces the per-sequence mean.
        - ``log_ratio_clamp = c``: the token log-ratio :math:`\log s_{b,t}` is clamped to :math:`[-c, c]` before
          ``exp`` (verl clamps it from above at 10); where it binds, the gradient is 0.
        - ``clip_eps_high=None`` means symmetric bounds. An empty row contributes nothing (and is refused where
          the aggregation divides by its length).
    """
    fn = "gspo_loss"
    new, old, adv, m, mt = _token_inputs(fn, logp, logp_old, advantages, mask, agg, max_tokens)
    low = v.positive(fn, "clip_eps", clip_eps)
    if low >= 1:
        raise ValueError(f"{fn}: 'clip_eps' must be < 1, got {clip_eps}")
    high = low if clip_eps_high is None else v.positive(fn, "clip_eps_high", clip_eps_high)
    c = None if log_ratio_clamp is None else v.positive(fn, "log_ratio_clamp", log_ratio_clamp)
    new, old, adv = _finite_masked(fn, new, old, adv, m)
    log_s = gspo_sequence_log_ratio(new, old, m)
    batch, length = new.shape
    per_token = np.zeros((batch, length))
    for b in range(batch):
        x = log_s[b] if c is None else min(max(log_s[b], -c), c)
        s = _exp(x)
        clipped = min(max(s, 1.0 - low), 1.0 + high)
        for t in range(length):
            if m[b, t]:
                per_token[b, t] = min(s * adv[b, t], clipped * adv[b, t])
    return -_aggregate(fn, per_token, m, agg, mt)
