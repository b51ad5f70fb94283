"""KL divergence between the policy and the reference (SFT) policy: sample estimators and the exact value."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _validation as v
from ._validation import FloatArray
from .logprobs import _log_softmax
from .policy import AGGREGATION_MODES, _aggregate, check_max_tokens

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")
KL_GRADIENTS = ("estimator", "k2")


def kl_estimate(
    logp: Any,
    logp_ref: Any,
    kind: str = "k1",
    *,
    log_ratio_clamp: float | None = None,
    output_clamp: float | None = None,
) -> FloatArray:
    r"""Per-token sample estimators of :math:`\mathrm{KL}(\pi_\theta \,\|\, \pi_{ref})` from tokens drawn from pi.

    With :math:`\Delta = \log\pi_\theta(o_t|\cdot) - \log\pi_{ref}(o_t|\cdot)` and
    :math:`r = \pi_{ref}/\pi_\theta = e^{-\Delta}`:

    .. math::

        k_1 = \Delta = -\log r, \qquad
        k_2 = \tfrac12 \Delta^2 = \tfrac12 (\log r)^2, \qquad
        k_3 = (r - 1) - \log r = e^{-\Delta} - 1 + \Delta, \qquad
        \mathrm{abs} = |\Delta|

    Source: J. Schulman, "Approximating KL Divergence" (2020), http://joschu.net/blog/kl-approx.html;
    k3 is DeepSeekMath eq. 4.

    Properties (checked in tests and in :mod:`rlhf_oracle.derivations`): under samples of pi,
    :math:`E[k_1] = E[k_3] = \mathrm{KL}(\pi\|\pi_{ref})`; k2 is biased (it estimates an f-divergence that agrees
    with KL to second order); ``k2 >= 0`` and ``k3 >= 0`` per token while k1 is negative for about half the tokens.
    ``abs`` (verl's ``kl_penalty="abs"``, TRL's legacy ``kl_penalty="abs"``) is a distance, not an unbiased
    estimator: :math:`E|\Delta| \ge |E\Delta|`.

    Conventions:
        - sign: Delta is ``logp - logp_ref`` (policy minus reference), so k1 > 0 where the policy put more mass on
          the sampled token than the reference did. Flipping it is a known bug class.
        - ``log_ratio_clamp = c``: Delta is clipped to ``[-c, c]`` before the estimator (verl and OpenRLHF use
          c = 20 in k3 so that ``exp`` cannot overflow). ``None`` (default): no clamp.
        - ``output_clamp = c``: the estimate is clipped to ``[-c, c]`` after it is computed (OpenRLHF's
          ``compute_approx_kl`` clamps every kind to +-10, verl its ``low_var_kl`` to +-10). ``None`` (default):
          no clamp. Beyond the clamp the value is c and the gradient 0.
        - a k3 whose ``exp`` overflows float64 (Delta < -709.78) raises a ValueError instead of returning inf,
          unless ``output_clamp`` is given: then the value is exactly c (min(inf, c) = c).

    Shapes: ``logp``, ``logp_ref`` any common shape (usually [B, T]) -> same shape.
    """
    fn = "kl_estimate"
    lp = v.as_float(fn, "logp", logp)
    lr = v.as_float(fn, "logp_ref", logp_ref)
    v.same_shape(fn, "logp_ref", lr, "logp", lp)
    v.choice(fn, "kind", kind, KL_ESTIMATORS)
    v.finite(fn, "logp", lp)
    v.finite(fn, "logp_ref", lr)
    out = None if output_clamp is None else v.positive(fn, "output_clamp", output_clamp)
    delta = lp - lr
    if log_ratio_clamp is not None:
        c = v.positive(fn, "log_ratio_clamp", log_ratio_clamp)
        delta = np.clip(delta, -c, c)
    estimate = _estimator(fn, kind, delta, overflow_ok=out is not None)
    if out is not None:
        estimate = np.clip(estimate, -out, out)
    return estimate


def _estimator(fn: str, kind: str, delta: FloatArray, *, overflow_ok: bool = False) -> FloatArray:
    """k1, k2, k3 or abs of the (already clamped) log-ratio ``delta`` (k3 overflowing to +inf only when
    ``overflow_ok``: an output clamp follows)."""
    if kind == "k1":
        return delta
    if kind == "k2":
        k2: FloatArray = 0.5 * delta**2
        return k2
    if kind == "abs":
        return np.abs(delta)
    # k3 = (r - 1) - log r, with r - 1 written as expm1(-Delta): same value, no cancellation in r - 1.
    with np.errstate(over="ignore"):
        r_minus_1 = np.expm1(-delta)
    if not overflow_ok and not np.all(np.isfinite(r_minus_1)):
        worst = float(np.max(-delta))
        raise ValueError(f"{fn}: k3 overflows at logp_ref - logp = {worst}; pass log_ratio_clamp or output_clamp")
    k3: FloatArray = r_minus_1 - (-delta)
    return k3


def kl_loss(
    logp: Any,
    logp_ref: Any,
    mask: Any,
    kind: str = "k3",
    agg: str = "token-mean",
    *,
    grad: str = "estimator",
    logp_old: Any = None,
    log_ratio_clamp: float | None = None,
    output_clamp: float | None = None,
    max_tokens: int | None = None,
) -> float:
    r"""The KL penalty as a loss term (GRPO's :math:`\beta\,\mathbb{D}_{KL}`): the aggregate of a per-token
    estimator of :math:`\mathrm{KL}(\pi_\theta \,\|\, \pi_{ref})`, added to the policy loss instead of being folded
    into the reward.

    .. math::

        \mathcal{L}_{KL}(\theta) = \operatorname*{agg}_{b,t}\big(\rho_{b,t}\;\tilde k(\Delta_{b,t})\big),
        \qquad \Delta = \log\pi_\theta - \log\pi_{ref},
        \qquad \rho = \begin{cases} 1 & \text{no } \log\pi_{old} \\
        e^{\log\pi_\theta - \log\pi_{old}} & \text{given (not detached)} \end{cases}

    where :math:`\tilde k` has the value of :func:`kl_estimate` (``kind`` with its clamps) and, per ``grad``,
    its own gradient (``"estimator"``) or the gradient of :math:`k_2 = \frac12\Delta^2` (``"k2"``, the
    straight-through form :math:`k_2 - \mathrm{sg}(k_2) + \mathrm{sg}(k)`). The gradient per token, times the
    aggregation weight, is

    .. math::

        \frac{\partial}{\partial \log\pi_\theta}\big(\rho\,\tilde k\big) = \rho\,\big(\tilde k' +
        [\log\pi_{old}\ \text{given}]\;k\big),
        \qquad \tilde k' = \begin{cases} k'(\Delta) & \texttt{grad="estimator"} \\
        \Delta & \texttt{grad="k2"} \end{cases}

    with :math:`k_1' = 1`, :math:`k_2' = \Delta`, :math:`k_3' = 1 - e^{-\Delta}`, :math:`\mathrm{abs}' =
    \mathrm{sign}\,\Delta`, and 0 where a clamp is active. On samples of :math:`\pi_\theta`,
    :math:`\Delta\,\nabla\log\pi` is an unbiased estimate of :math:`\nabla\mathrm{KL}(\pi_\theta\|\pi_{ref})`
    (sympy: ``kl_estimator_gradients``, ``kl_loss_ratio_corrected``), which is why verl offers the
    straight-through kinds.

    Source: DeepSeekMath (Shao et al. 2024) eq. 3-4 (the KL term of GRPO's objective with k3); Schulman 2020 for
    the estimators; DeepSeek-V3.2 (2025) §"unbiased KL estimate" for the ratio-corrected term.

    Shapes: ``logp``, ``logp_ref``, ``mask`` and ``logp_old`` (if given) [B, T] -> float (to minimise; add
    ``beta *`` it to the policy loss).

    Conventions:
        - ``kind="k3"`` (default: GRPO's, verl's ``low_var_kl`` default for the loss, TRL ``beta > 0``); verl's
          ``kl_loss_type`` maps ``"kl"``/``"k1"`` -> k1, ``"mse"``/``"k2"`` -> k2, ``"low_var_kl"``/``"k3"`` -> k3,
          ``"abs"`` -> abs, and a ``"+"`` suffix (``"k3+"``) -> ``grad="k2"``. verl clamps k3's log-ratio to
          +-20 and its output to +-10 (``log_ratio_clamp=20, output_clamp=10``); OpenRLHF clamps every kind's
          output to +-10.
        - ``agg="token-mean"`` (default; verl aggregates with its ``loss_agg_mode``, OpenRLHF with the policy's
          ``aggregate_loss``; TRL adds the term per token inside the policy loss, so its ``loss_type`` applies).
        - ``logp_old`` (TRL ``use_bias_correction_kl=True``, DeepSeek-V3.2): each term times the
          **non-detached** ratio :math:`\pi_\theta/\pi_{old}`, so that the estimate is unbiased for samples of
          :math:`\pi_{old}`; at :math:`\pi_\theta = \pi_{old}` the value is unchanged but the gradient gains
          :math:`k`. OpenRLHF's ``unbiased_gradient`` (a detached ratio clamped at 10 times the k2 gradient) is
          not this term.
        - Masked positions may hold anything (NaN included); the reference's log-ratio is not clamped unless asked.
    """
    fn = "kl_loss"
    lp = v.as_float(fn, "logp", logp, ndim=2, shape_doc="[B, T]")
    lr = v.as_float(fn, "logp_ref", logp_ref)
    v.same_shape(fn, "logp_ref", lr, "logp", lp)
    m = v.as_mask(fn, mask, like=lp, like_name="logp")
    lo = None
    if logp_old is not None:
        lo = v.as_float(fn, "logp_old", logp_old)
        v.same_shape(fn, "logp_old", lo, "logp", lp)
    v.choice(fn, "kind", kind, KL_ESTIMATORS)
    v.choice(fn, "agg", agg, AGGREGATION_MODES)
    v.choice(fn, "grad", grad, KL_GRADIENTS)
    in_clamp = None if log_ratio_clamp is None else v.positive(fn, "log_ratio_clamp", log_ratio_clamp)
    out_clamp = None if output_clamp is None else v.positive(fn, "output_clamp", output_clamp)
    mt = check_max_tokens(fn, max_tokens)
    for name, arr in (("logp", lp), ("logp_ref", lr), ("logp_old", lo)):
        if arr is not None:
            v.finite(fn, name, arr, m)
    batch, length = lp.shape
    per_token = np.zeros((batch, length))
    for b in range(batch):
        for t in range(length):
            if not m[b, t]:
                continue
            delta = np.array(lp[b, t] - lr[b, t])
            if in_clamp is not None:
                delta = np.clip(delta, -in_clamp, in_clamp)
            k = float(_estimator(fn, kind, delta, overflow_ok=out_clamp is not None))
            if out_clamp is not None:
                k = min(max(k, -out_clamp), out_clamp)
            # grad="k2" changes the gradient only: k2 - sg(k2) + sg(k) has the value k
            if lo is not None:
                with np.errstate(over="ignore"):
                    k = k * float(np.exp(lp[b, t] - lo[b, t]))
            per_token[b, t] = k
    if not np.all(np.isfinite(per_token)):
        raise ValueError(f"{fn}: the ratio exp(logp - logp_old) overflows; the KL term is not finite")
    return _aggregate(fn, per_token, m, agg, mt)


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
