"""KL divergence between the policy and the reference (SFT) policy: sample estimators and the exact value."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _validation as v
from ._validation import FloatArray
from .logprobs import _log_softmax

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp: Any, logp_ref: Any, kind: str = "k1", *, log_ratio_clamp: float | None = None) -> FloatArray:
    r"""Per-token sample estimators of :math:`\mathrm{KL}(\pi_\theta \,\|\, \pi_{ref})` from tokens drawn from pi.

    With :math:`\Delta = \log\pi_\theta(o_t|\cdot) - \log\pi_{ref}(o_t|\cdot)` and
    :math:`r = \pi_{ref}/\pi_\theta = e^{-\Delta}`:

    .. math::

        k_1 = \Delta = -\log r, \qquad
        k_2 = \tfrac12 \Delta^2 = \tfrac12 (\log r)^2, \qquad
        k_3 = (r - 1) - \log r = e^{-\Delta} - 1 + \Delta

    Source: J. Schulman, "Approximating KL Divergence" (2020), http://joschu.net/blog/kl-approx.html;
    k3 is DeepSeekMath eq. 4.

    Properties (checked in tests and in :mod:`rlhf_oracle.derivations`): under samples of pi,
    :math:`E[k_1] = E[k_3] = \mathrm{KL}(\pi\|\pi_{ref})`; k2 is biased (it estimates an f-divergence that agrees
    with KL to second order); ``k2 >= 0`` and ``k3 >= 0`` per token while k1 is negative for about half the tokens.

    Conventions:
        - sign: Delta is ``logp - logp_ref`` (policy minus reference), so k1 > 0 where the policy put more mass on
          the sampled token than the reference did. Flipping it is a known bug class.
        - ``log_ratio_clamp = c``: Delta is clipped to ``[-c, c]`` before the estimator (verl and OpenRLHF use
          c = 20 in k3 so that ``exp`` cannot overflow). ``None`` (default): no clamp.
        - a k3 whose ``exp`` overflows float64 (Delta < -709.78) raises a ValueError instead of returning inf.

    Shapes: ``logp``, ``logp_ref`` any common shape (usually [B, T]) -> same shape.
    """
    fn = "kl_estimate"
    lp = v.as_float(fn, "logp", logp)
    lr = v.as_float(fn, "logp_ref", logp_ref)
    v.same_shape(fn, "logp_ref", lr, "logp", lp)
    v.choice(fn, "kind", kind, KL_ESTIMATORS)
    v.finite(fn, "logp", lp)
    v.finite(fn, "logp_ref", lr)
    delta = lp - lr
    if log_ratio_clamp is not None:
        c = v.positive(fn, "log_ratio_clamp", log_ratio_clamp)
        delta = np.clip(delta, -c, c)
    if kind == "k1":
        return delta
    if kind == "k2":
        k2: FloatArray = 0.5 * delta**2
        return k2
    # k3 = (r - 1) - log r, with r - 1 written as expm1(-Delta): same value, no cancellation in r - 1.
    with np.errstate(over="ignore"):
        r_minus_1 = np.expm1(-delta)
    if not np.all(np.isfinite(r_minus_1)):
        worst = float(np.max(-delta))
        raise ValueError(f"{fn}: k3 overflows at logp_ref - logp = {worst}; pass log_ratio_clamp")
    k3: FloatArray = r_minus_1 - (-delta)
    return k3


def kl_exact(logits: Any, logits_ref: Any) -> FloatArray:
    r"""Exact KL divergence over the full vocabulary at every position.

    .. math::

        \mathrm{KL}(\pi \,\|\, \pi_{ref})(s_t) = \sum_{v=1}^{V} p_v \,(\log p_v - \log q_v),
        \qquad p = \mathrm{softmax}(z), \ q = \mathrm{softmax}(z_{ref})

    Source: the definition. This is what the sample estimators of :func:`kl_estimate` estimate, and what TRL's
    legacy ``kl_penalty="full"`` computed.

    Shapes: ``logits``, ``logits_ref`` [..., V] (usually [B, T, V]) -> [...].
    """
    fn = "kl_exact"
    z = v.as_float(fn, "logits", logits)
    z_ref = v.as_float(fn, "logits_ref", logits_ref)
    if z.ndim < 1 or z.shape[-1] < 1:
        raise ValueError(f"{fn}: 'logits' must have shape [..., V] with V >= 1, got {v._shape_str(z.shape)}")
    v.same_shape(fn, "logits_ref", z_ref, "logits", z)
    v.finite(fn, "logits", z)
    v.finite(fn, "logits_ref", z_ref)
    log_p = _log_softmax(z)
    log_q = _log_softmax(z_ref)
    kl: FloatArray = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
    return kl
