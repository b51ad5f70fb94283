"""Off-policy corrections: importance weights for the tokens an inference engine (vLLM, SGLang) sampled, as the
trainer's own policy sees them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _validation as v
from ._validation import FloatArray

IS_LEVELS = ("token", "sequence")
IS_MODES = ("truncate", "mask", "reject")
SEQ_RATIOS = ("product", "geometric")


def rollout_is_weights(
    logp_old: Any,
    logp_rollout: Any,
    mask: Any,
    level: str = "token",
    mode: str = "truncate",
    upper: float = 2.0,
    lower: float | None = None,
    *,
    seq_ratio: str = "product",
) -> FloatArray:
    r"""Importance weights that correct the mismatch between the inference engine that sampled the tokens
    (vLLM, SGLang: :math:`\mu`) and the trainer's own probabilities of them (:math:`\pi_{old}`).

    .. math::

        \rho_{b,t} = \frac{\pi_{old}(o_{b,t}\mid\cdot)}{\mu(o_{b,t}\mid\cdot)} = e^{\log\pi_{old} - \log\mu}
        \quad(\text{token}),\qquad
        \rho_b = \prod_t \rho_{b,t}\ (\text{product})\ \text{ or }\
        \Big(\prod_t \rho_{b,t}\Big)^{1/|o_b|}\ (\text{geometric})\quad(\text{sequence, broadcast})

    then ``"truncate"``: :math:`\min(\rho, C_{hi})` (and :math:`\max(\cdot, C_{lo})` when ``lower`` is given;
    truncated IS, TIS); ``"mask"``: :math:`\rho\,\mathbb 1[C_{lo} \le \rho \le C_{hi}]` (masked IS, MIS / IcePop);
    ``"reject"``: :math:`\mathbb 1[C_{lo} \le \rho \le C_{hi}]` (rejection sampling). The weights are data: they
    multiply the per-token loss (``pg_loss(weights=)``, ``policy_loss(weights=)``) and carry no gradient.

    Source: Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training" (TIS, the
    token truncation at C); Li 2025, "When Speed Kills Stability" (MIS and the geometric sequence test); the Ling
    team's IcePop 2025 (token masking outside [0.5, 5]).

    Shapes: ``logp_old``, ``logp_rollout``, ``mask`` [B, T] -> [B, T], 0 at masked positions.

    Conventions:
        - ``level="token"``, ``mode="truncate"``, ``upper=2.0``: verl's token TIS with its default cap C = 2.
          TRL (``vllm_importance_sampling_correction``, on by default with vLLM) uses ``mode="mask"`` at
          ``level="sequence"`` with the product and ``upper=3.0``; OpenRLHF's band is [0.5, 5.0].
        - ``seq_ratio``: ``"product"`` (verl, TRL: :math:`\exp\sum_t\log\rho_t`) or ``"geometric"`` (Li 2025,
          verl's ``seq_mean``: :math:`\exp\frac{1}{|o|}\sum_t\log\rho_t`); ignored at the token level.
        - The comparison with the bounds is made in log space, so a product that overflows float64 is still
          truncated to ``upper`` (or masked) exactly; the bounds are inclusive.
        - An empty row gets no weight (all 0).
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
    batch, length = old.shape
    log_rho = np.zeros((batch, length))
    for b in range(batch):
        valid = [t for t in range(length) if m[b, t]]
        if level == "token":
            for t in valid:
                log_rho[b, t] = float(old[b, t] - rollout[b, t])
        elif valid:
            total = math.fsum(float(old[b, t] - rollout[b, t]) for t in valid)
            row = total if seq_ratio == "product" else total / len(valid)
            for t in valid:
                log_rho[b, t] = row
    log_hi = math.log(hi)
    log_lo = -math.inf if not lo else math.log(lo)
    weights = np.zeros((batch, length))
    for b in range(batch):
        for t in range(length):
            if not m[b, t]:
                continue
            x = log_rho[b, t]
            inside = log_lo <= x <= log_hi
            if mode == "truncate":
                weights[b, t] = hi if x > log_hi else (lo if lo is not None and x < log_lo else math.exp(x))
            elif mode == "mask":
                weights[b, t] = math.exp(x) if inside else 0.0
            else:  # "reject"
                weights[b, t] = 1.0 if inside else 0.0
    return weights
