"""The oracle in the loop: recompute a PPO step with the float64 NumPy reference and compare.

Every ``oracle_every`` PPO steps the training loop hands this module the tensors of that step (the inputs each
``rlhf_oracle.torch_impl`` call received and what it returned), converted with ``.detach().double().cpu().numpy()``.
The oracle feeds the same inputs, with the same keyword arguments, to the ``rlhf_oracle.reference`` twin and measures
the discrepancy of each quantity:

    discrepancy = max_i |torch_i - reference_i| / max(scale, tiny)

a normwise relative error in the infinity norm. ``scale`` is ``max_i |reference_i|`` for per-token arrays, and for a
scalar loss the mean magnitude of the terms it averages (so that cancellation in a loss near 0 does not inflate the
error: float32 summation error is bounded relative to the sum of |terms|, not to the sum).

Tolerance (``DemoConfig.oracle_rtol``, default 1e-4): the inputs are identical, so the only difference is float32
arithmetic. Unit roundoff is 2^-24 ~ 6e-8; the longest accumulations are the GAE recursion over at most
``max_new_tokens`` tokens and means over the B * L tokens of a batch (~1e3 terms, a worst-case n*u bound of 6e-5;
measured discrepancies are ~1e-7). Any convention slip is far above 1e-4: Bessel vs population variance in
``whiten`` over N tokens changes whitened advantages by ~1/(2N) (~7e-4 at N = 700), a score on the wrong token or a
wrong gamma/lambda changes rewards or advantages by O(1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlhf_oracle import reference as R

# Smallest scale a discrepancy is measured against: below it the comparison is absolute.
TINY = 1e-12

QUANTITIES = (
    "logprobs",
    "ref_logprobs",
    "kl",
    "rewards",
    "advantages",
    "returns",
    "whitened_advantages",
    "policy_loss",
    "entropy",
    "value_loss",
    "beta",
)
"""Every quantity the oracle checks, in the order it reports them (a corrupted upstream quantity is named first)."""


class OracleDivergenceError(RuntimeError):
    """A torch quantity differs from its float64 reference by more than the tolerance."""

    def __init__(self, step: int, diverged: dict[str, float], tolerance: float) -> None:
        self.step = step
        self.diverged = diverged
        self.tolerance = tolerance
        first = next(iter(diverged))
        others = ", ".join(f"'{q}' ({d:.3g})" for q, d in list(diverged.items())[1:])
        msg = (
            f"oracle: '{first}' diverged from the float64 reference at PPO step {step}: "
            f"max relative discrepancy {diverged[first]:.3g} > tolerance {tolerance:.3g}"
        )
        if others:
            msg += f"; also diverged: {others}"
        super().__init__(msg)


def to_numpy(x: Any) -> np.ndarray:
    """``.detach().double().cpu().numpy()`` for tensors; NumPy float64 for anything else."""
    if hasattr(x, "detach"):
        return np.asarray(x.detach().double().cpu().numpy())
    return np.asarray(x, dtype=np.float64)


def discrepancy(actual: Any, expected: Any, scale: float | None = None) -> float:
    """max |actual - expected| / max(scale, TINY), scale defaulting to max |expected| (normwise, inf-norm)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise ValueError(f"discrepancy: shapes differ: {a.shape} vs {e.shape}")
    if not np.all(np.isfinite(a)):
        return float("inf")
    s = float(np.max(np.abs(e))) if scale is None else float(scale)
    return float(np.max(np.abs(a - e))) / max(s, TINY) if a.size else 0.0


@dataclass
class StepRecord:
    """What the torch loop computed at one PPO step, as float64 NumPy arrays (see :func:`to_numpy`).

    Rollout (whole batch, [B, L] unless noted): ``logits`` [B, L, V] and ``ref_logits`` the policy's and the
    reference's; ``responses`` (ids), ``mask``; ``scores`` [B]; ``values``; the torch outputs ``logp``, ``logp_ref``,
    ``kl`` (per token, ``kl_kind``), ``rewards``, ``advantages``, ``returns``, ``whitened`` (what the policy loss used).
    Minibatch (the last of the step): ``mb_*`` inputs and the torch ``policy_loss``, ``entropy``, ``value_loss``.
    Controller: ``beta`` before and ``beta_next`` after its update, fed ``kl_sum`` (None when beta is fixed).
    """

    logits: np.ndarray
    ref_logits: np.ndarray
    responses: np.ndarray
    mask: np.ndarray
    scores: np.ndarray
    values: np.ndarray
    logp: np.ndarray
    logp_ref: np.ndarray
    kl: np.ndarray
    rewards: np.ndarray
    advantages: np.ndarray
    returns: np.ndarray
    whitened: np.ndarray
    mb_logits: np.ndarray
    mb_logp: np.ndarray
    mb_logp_old: np.ndarray
    mb_advantages: np.ndarray
    mb_mask: np.ndarray
    mb_values: np.ndarray
    mb_old_values: np.ndarray
    mb_returns: np.ndarray
    policy_loss: float
    entropy: float
    value_loss: float
    beta: float
    beta_next: float | None
    kl_sum: float
    n_episodes: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class OracleSettings:
    """The keyword arguments the torch loop passed; the reference gets exactly the same."""

    temperature: float
    kl_kind: str
    gamma: float
    lam: float
    whiten_advantages: bool
    whiten_unbiased: bool
    clip_eps: float
    clip_eps_high: float | None
    dual_clip: float | None
    loss_agg: str
    value_clip_eps: float | None
    value_agg: str
    target_kl: float | None
    kl_horizon: float
    rtol: float


def reference_step(rec: StepRecord, s: OracleSettings) -> dict[str, Any]:
    """Every checked quantity recomputed by ``rlhf_oracle.reference`` from the record's inputs."""
    out: dict[str, Any] = {}
    tokens = rec.responses.astype(np.int64)
    out["logprobs"] = R.token_logprobs(rec.logits, tokens, temperature=s.temperature)
    out["ref_logprobs"] = R.token_logprobs(rec.ref_logits, tokens, temperature=s.temperature)
    m = rec.mask.astype(bool)
    out["kl"] = np.where(m, R.kl_estimate(rec.logp, rec.logp_ref, s.kl_kind), 0.0)
    out["rewards"] = R.kl_shaped_rewards(
        rec.scores, rec.logp, rec.logp_ref, m, rec.beta, kind=s.kl_kind, score_position="last"
    )
    adv, ret = R.gae(rec.rewards, rec.values, m, gamma=s.gamma, lam=s.lam)
    out["advantages"], out["returns"] = adv, ret
    if s.whiten_advantages:
        out["whitened_advantages"] = R.whiten(rec.advantages, m, shift_mean=True, unbiased=s.whiten_unbiased)
    else:
        out["whitened_advantages"] = np.where(m, rec.advantages, 0.0)
    mb_m = rec.mb_mask.astype(bool)
    out["policy_loss"] = R.policy_loss(
        rec.mb_logp,
        rec.mb_logp_old,
        rec.mb_advantages,
        mb_m,
        clip_eps=s.clip_eps,
        clip_eps_high=s.clip_eps_high,
        dual_clip=s.dual_clip,
        agg=s.loss_agg,
    )
    out["entropy"] = R.aggregate(R.entropy_from_logits(rec.mb_logits, temperature=s.temperature), mb_m, s.loss_agg)
    out["value_loss"] = R.value_loss(
        rec.mb_values, rec.mb_old_values, rec.mb_returns, mb_m, clip_eps=s.value_clip_eps, agg=s.value_agg
    )
    if rec.beta_next is not None and s.target_kl is not None:
        out["beta"] = R.adaptive_kl_update(rec.beta, rec.kl_sum, s.target_kl, rec.n_episodes, s.kl_horizon)
    return out


def _loss_scale(rec: StepRecord, s: OracleSettings) -> float:
    """Mean |term| of the policy loss: |ratio * A| over the minibatch's valid tokens."""
    m = rec.mb_mask.astype(bool)
    ratio = np.exp(np.clip(rec.mb_logp - rec.mb_logp_old, -50.0, 50.0))
    return float(np.mean(np.abs(ratio * rec.mb_advantages)[m]))


def check_step(step: int, rec: StepRecord, s: OracleSettings) -> dict[str, float]:
    """Discrepancy of every quantity; raises :class:`OracleDivergenceError` naming those above ``s.rtol``."""
    ref = reference_step(rec, s)
    torch_out: dict[str, Any] = {
        "logprobs": np.where(rec.mask.astype(bool), rec.logp, 0.0),
        "ref_logprobs": np.where(rec.mask.astype(bool), rec.logp_ref, 0.0),
        "kl": np.where(rec.mask.astype(bool), rec.kl, 0.0),
        "rewards": rec.rewards,
        "advantages": rec.advantages,
        "returns": rec.returns,
        "whitened_advantages": rec.whitened,
        "policy_loss": rec.policy_loss,
        "entropy": rec.entropy,
        "value_loss": rec.value_loss,
        "beta": rec.beta_next,
    }
    m = rec.mask.astype(bool)
    ref["logprobs"] = np.where(m, ref["logprobs"], 0.0)
    ref["ref_logprobs"] = np.where(m, ref["ref_logprobs"], 0.0)
    scales: dict[str, float | None] = {"policy_loss": _loss_scale(rec, s)}
    result: dict[str, float] = {}
    for q in QUANTITIES:
        if q not in ref:
            continue
        result[q] = discrepancy(torch_out[q], ref[q], scales.get(q))
    diverged = {q: d for q, d in result.items() if not d <= s.rtol}
    if diverged:
        raise OracleDivergenceError(step, diverged, s.rtol)
    return result
