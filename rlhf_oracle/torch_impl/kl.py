"""KL(pi || pi_ref): Schulman's per-token sample estimators k1, k2, k3 and the exact full-vocabulary value."""

from __future__ import annotations

import torch

from . import _validation as v

KL_ESTIMATORS = ("k1", "k2", "k3")


def _estimate(delta: torch.Tensor, kind: str, out_dtype: torch.dtype) -> torch.Tensor:
    """k1/k2/k3 of Delta = logp - logp_ref, computed in the accumulation dtype, returned in ``out_dtype``.

    k3 = expm1(-Delta) + Delta: same value as exp(-Delta) - 1 + Delta, without the cancellation in r - 1.
    With value checks on, a k3 that is not finite in ``out_dtype`` (for finite Delta) raises.
    """
    if kind == "k1":
        return delta.to(out_dtype)
    if kind == "k2":
        return (0.5 * delta.square()).to(out_dtype)
    k3 = (torch.expm1(-delta) + delta).to(out_dtype)
    if v.value_checks_enabled() and k3.numel():
        bad = ~torch.isfinite(k3)
        if bool(bad.any()):
            first = torch.nonzero(bad.reshape(-1))[0, 0]
            worst = float(-delta.reshape(-1)[first])
            raise ValueError(f"kl_estimate: k3 overflows at logp_ref - logp = {worst}; pass log_ratio_clamp")
    return k3


def kl_estimate(
    logp: torch.Tensor, logp_ref: torch.Tensor, kind: str = "k1", *, log_ratio_clamp: float | None = None
) -> torch.Tensor:
    r"""Per-token estimators of KL(pi || pi_ref) from samples of pi, with :math:`\Delta = \log\pi - \log\pi_{ref}`.

    :math:`k_1 = \Delta`, :math:`k_2 = \Delta^2/2`, :math:`k_3 = e^{-\Delta} - 1 + \Delta` (as ``expm1(-Delta) +
    Delta``). ``log_ratio_clamp = c`` clips Delta to [-c, c] first (verl/OpenRLHF use 20). bf16/fp16 input is
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
    out_dtype = torch.promote_types(lp.dtype, lr.dtype)
    acc = v.acc_dtype(out_dtype)
    delta = lp.to(acc) - lr.to(acc)
    if log_ratio_clamp is not None:
        c = v.positive(fn, "log_ratio_clamp", log_ratio_clamp)
        delta = delta.clamp(-c, c)
    return _estimate(delta, kind, out_dtype)


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
