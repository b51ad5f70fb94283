"""KL(pi || pi_ref): Schulman's per-token sample estimators k1, k2, k3 and the exact full-vocabulary value."""

from __future__ import annotations

import math

import torch

from . import _validation as v
from .policy import AGGREGATION_MODES, _aggregate, _out_dtype

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")
KL_GRADIENTS = ("estimator", "k2")


def _estimate(
    delta: torch.Tensor, kind: str, out_dtype: torch.dtype, output_clamp: float | None = None, fn: str = "kl_estimate"
) -> torch.Tensor:
    """k1/k2/k3/abs of Delta = logp - logp_ref, computed in the accumulation dtype, clamped to +-``output_clamp``
    (if given), returned in ``out_dtype``.

    k3 = expm1(-Delta) + Delta: same value as exp(-Delta) - 1 + Delta, without the cancellation in r - 1. With an
    output clamp c, Delta is first bounded below by -(log(1 + c) + 1), where k3 > c already: the value (c) and
    the gradient (0) are unchanged and ``exp`` cannot overflow (no inf * 0 = NaN in backward). With value checks
    on, a k3 that is not finite in ``out_dtype`` (for finite Delta) raises.
    """
    if kind == "k1":
        est = delta
    elif kind == "k2":
        est = 0.5 * delta.square()
    elif kind == "abs":
        est = delta.abs()
    else:
        if output_clamp is not None:
            bound = math.log1p(output_clamp) + 1.0
            if bound < math.log(torch.finfo(delta.dtype).max):
                delta = delta.clamp(min=-bound)
        est = torch.expm1(-delta) + delta
    if output_clamp is not None:
        est = est.clamp(-output_clamp, output_clamp)
    est = est.to(out_dtype)
    if kind == "k3" and v.value_checks_enabled() and est.numel():
        bad = ~torch.isfinite(est)
        if bool(bad.any()):
            first = torch.nonzero(bad.reshape(-1))[0, 0]
            worst = float(-delta.reshape(-1)[first])
            raise ValueError(f"{fn}: k3 overflows at logp_ref - logp = {worst}; pass log_ratio_clamp or output_clamp")
    return est


def kl_estimate(
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    kind: str = "k1",
    *,
    log_ratio_clamp: float | None = None,
    output_clamp: float | None = None,
) -> torch.Tensor:
    r"""Per-token estimators of KL(pi || pi_ref) from samples of pi, with :math:`\Delta = \log\pi - \log\pi_{ref}`.

    :math:`k_1 = \Delta`, :math:`k_2 = \Delta^2/2`, :math:`k_3 = e^{-\Delta} - 1 + \Delta` (as ``expm1(-Delta) +
    Delta``), ``abs`` = :math:`|\Delta|`. ``log_ratio_clamp = c`` clips Delta to [-c, c] first (verl/OpenRLHF use
    20); ``output_clamp = c`` clips the estimate to [-c, c] (OpenRLHF, verl: 10). bf16/fp16 input is
    computed in float32 and rounded once (k3 has a cancellation near Delta = 0); a k3 that overflows the input
    dtype raises ``ValueError`` (value check). Schulman 2020, "Approximating KL Divergence"; see
    :func:`rlhf_oracle.reference.kl_estimate`.

    Shapes: ``logp``, ``logp_ref`` any common shape -> same shape.
    """
    fn = "kl_estimate"
    lp = v.as_float(fn, "logp", logp)
    lr = v.as_float(fn, "logp_ref", logp_ref)
    v.same_shape(fn, "logp_ref", lr, "logp", lp)
    v.choice(fn, "kind", kind, KL_ESTIMATORS)
    v.finite(fn, "logp", lp)
    v.finite(fn, "logp_ref", lr)
    out = None if output_clamp is None else v.positive(fn, "output_clamp", output_clamp)
    out_dtype = torch.promote_types(lp.dtype, lr.dtype)
    acc = v.acc_dtype(out_dtype)
    delta = lp.to(acc) - lr.to(acc)
    if log_ratio_clamp is not None:
        c = v.positive(fn, "log_ratio_clamp", log_ratio_clamp)
        delta = delta.clamp(-c, c)
    return _estimate(delta, kind, out_dtype, out)


def kl_loss(
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "k3",
    agg: str = "token-mean",
    *,
    grad: str = "estimator",
    logp_old: torch.Tensor | None = None,
    log_ratio_clamp: float | None = None,
    output_clamp: float | None = None,
    max_tokens: int | None = None,
) -> torch.Tensor:
    r"""The KL penalty as a loss term, :math:`\mathrm{agg}(\rho\,\tilde k(\Delta))`, a 0-dim tensor.

    :math:`\tilde k` has the value of :func:`kl_estimate` and the gradient of the estimator (``grad="estimator"``)
    or of :math:`k_2` (``grad="k2"``: ``k2 - k2.detach() + k.detach()``, verl's "+" kinds); ``logp_old`` given:
    :math:`\rho = e^{\log\pi - \log\pi_{old}}`, not detached (TRL ``use_bias_correction_kl``), else 1.
    ``logp_ref`` and ``logp_old`` are detached; masked positions are replaced by 0 first. See
    :func:`rlhf_oracle.reference.kl_loss`.
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
    max_tokens = v.optional_positive_int(fn, "max_tokens", max_tokens)
    for name, arr in (("logp", lp), ("logp_ref", lr), ("logp_old", lo)):
        if arr is not None:
            v.finite(fn, name, arr, m)
    out_dtype = _out_dtype(lp, lr) if lo is None else _out_dtype(lp, lr, lo)
    acc = v.acc_dtype(out_dtype)
    new = torch.where(m, lp, 0.0).to(acc)
    raw = new - torch.where(m, lr.detach(), 0.0).to(acc)
    delta = raw if in_clamp is None else raw.clamp(-in_clamp, in_clamp)
    term = _estimate(delta, kind, acc, out_clamp, fn)
    if grad == "k2":  # the value of k, the gradient of k2 = Delta^2 / 2
        k2 = 0.5 * raw.square()
        term = k2 - k2.detach() + term.detach()
    if lo is not None:
        term = term * torch.exp(new - torch.where(m, lo.detach(), 0.0).to(acc))
        if v.value_checks_enabled() and not bool(torch.isfinite(term).all()):
            raise ValueError(f"{fn}: the ratio exp(logp - logp_old) overflows; the KL term is not finite")
    return _aggregate(fn, term, m, agg, max_tokens).to(out_dtype)


def kl_exact(logits: torch.Tensor, logits_ref: torch.Tensor) -> torch.Tensor:
    r"""Exact :math:`\mathrm{KL}(\pi\|\pi_{ref}) = \sum_v p_v (\log p_v - \log q_v)` at every position.

    ``p = softmax(logits)``, ``q = softmax(logits_ref)`` over the last axis, via ``log_softmax`` in the
    accumulation dtype (float32 for bf16/fp16; unlike :func:`token_logprobs` this is not chunked). Terms with
    p_v = 0 count 0. See :func:`rlhf_oracle.reference.kl_exact`.

    Shapes: ``logits``, ``logits_ref`` [..., V] -> [...].
    """
    fn = "kl_exact"
    z = v.as_float(fn, "logits", logits)
    z_ref = v.as_float(fn, "logits_ref", logits_ref)
    if z.ndim < 1 or z.shape[-1] < 1:
        raise ValueError(f"{fn}: 'logits' must have shape [..., V] with V >= 1, got {v.shape_str(z.shape)}")
    v.same_shape(fn, "logits_ref", z_ref, "logits", z)
    v.finite(fn, "logits", z)
    v.finite(fn, "logits_ref", z_ref)
    out_dtype = torch.promote_types(z.dtype, z_ref.dtype)
    acc = v.acc_dtype(out_dtype)
    log_p = torch.log_softmax(z.to(acc), dim=-1)
    log_q = torch.log_softmax(z_ref.to(acc), dim=-1)
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), 0.0)
    return terms.sum(dim=-1).to(out_dtype)
