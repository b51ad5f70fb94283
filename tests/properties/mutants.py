"""Deliberately wrong torch implementations, each reproducing a real bug class, plus correct third-party-style
variants that follow another documented convention.

Each :class:`Mutant` names the formula, the check options to use, and the words the diagnosis must contain.
Written independently of torch_impl (plain, readable torch), so that the oracle is tested on code it has never
seen. The bug classes and their sources are in ``shared/research/framework-conventions.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhf_oracle import torch_impl as ti
from rlhf_oracle.properties import adapters

Tensor = torch.Tensor


@dataclass(frozen=True)
class Mutant:
    name: str
    formula: str
    fn: Callable[..., Any]
    bug: str
    """The bug class in words, and where it was seen."""
    diagnosis: str | None
    """A substring the diagnosis must contain (None: no documented convention applies)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Options of the check (conventions, dtype, adapter)."""
    prop: str = "values"
    """The named property that must catch it (and carry the diagnosis)."""


# ----------------------------------------------------------------------------------------------------------------
# plain building blocks (correct)


def _where0(mask: Tensor, x: Tensor) -> Tensor:
    return torch.where(mask.bool(), x, torch.zeros_like(x))


def _objective(
    logp: Tensor,
    logp_old: Tensor,
    adv: Tensor,
    clip_eps: float,
    clip_eps_high: float | None,
    dual_clip: float | None,
    *,
    pick: Callable[[Tensor, Tensor], Tensor] = torch.minimum,
    swap_bounds: bool = False,
    dual_on_all: bool = False,
    straight_through_clip: bool = False,
) -> Tensor:
    high = clip_eps if clip_eps_high is None else clip_eps_high
    low_bound, high_bound = (1 - high, 1 + clip_eps) if swap_bounds else (1 - clip_eps, 1 + high)
    ratio = torch.exp(logp - logp_old)
    clipped_ratio = ratio.clamp(low_bound, high_bound)
    if straight_through_clip:  # same values, but the gradient flows as if never clipped
        clipped_ratio = ratio + (clipped_ratio - ratio).detach()
    obj = pick(ratio * adv, clipped_ratio * adv)
    if dual_clip is not None:
        dual = torch.maximum(obj, dual_clip * adv)
        obj = dual if dual_on_all else torch.where(adv < 0, dual, obj)
    return obj


def _seq_mean_token_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    m = mask.bool()
    return (_where0(m, per_token).sum(-1) / m.sum(-1)).mean()


def _policy_loss(
    reduce: Callable[[Tensor, Tensor], Tensor] = _seq_mean_token_mean, mask_inputs: bool = True, **variant: Any
) -> Callable[..., Tensor]:
    def policy_loss(
        logp: Tensor,
        logp_old: Tensor,
        advantages: Tensor,
        mask: Tensor,
        clip_eps: float = 0.2,
        clip_eps_high: float | None = None,
        dual_clip: float | None = None,
    ) -> Tensor:
        m = mask.bool()
        if mask_inputs:
            logp, logp_old, advantages = (_where0(m, x) for x in (logp, logp_old, advantages))
        obj = _objective(logp, logp_old, advantages, clip_eps, clip_eps_high, dual_clip, **variant)
        return -reduce(obj, m)

    return policy_loss


def _last_valid(mask: Tensor) -> Tensor:
    t = mask.shape[-1]
    positions = torch.arange(t, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, -1).max(-1).values


# ----------------------------------------------------------------------------------------------------------------
# policy-loss mutants


def _first_pad_counted(per_token: Tensor, mask: Tensor) -> Tensor:
    last = _last_valid(mask)
    ext = mask.bool().clone()
    rows = torch.arange(mask.shape[0])
    ok = last + 1 < mask.shape[1]
    ext[rows[ok], (last + 1)[ok]] = True  # TRL padding_mask_p1 / DS-Chat #672: one pad slot counted
    return (_where0(ext, per_token).sum(-1) / ext.sum(-1)).mean()


def _batch_token_count(per_token: Tensor, mask: Tensor) -> Tensor:
    m = mask.bool()
    return (_where0(m, per_token).sum(-1) / m.sum()).mean()  # |o| = tokens of the whole batch


def _token_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    m = mask.bool()
    return _where0(m, per_token).sum() / m.sum()


def _multiply_by_mask(per_token: Tensor, mask: Tensor) -> Tensor:
    mf = mask.to(per_token.dtype)
    return ((per_token * mf).sum(-1) / mf.sum(-1)).mean()  # NaN * 0 = NaN (OpenRLHF PR #1240)


def _policy_loss_nan_grad(
    logp: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
) -> Tensor:
    # where() on the output only: right values, but NaN inputs at masked slots poison the backward pass
    obj = _objective(logp, logp_old, advantages, clip_eps, clip_eps_high, dual_clip)
    return -_seq_mean_token_mean(obj, mask)


# ----------------------------------------------------------------------------------------------------------------
# KL


def _kl(kind_override: str | None = None, flip: bool = False, guard: bool = True) -> Callable[..., Tensor]:
    def kl_estimate(
        logp: Tensor, logp_ref: Tensor, kind: str = "k1", *, log_ratio_clamp: float | None = None
    ) -> Tensor:
        delta = logp_ref - logp if flip else logp - logp_ref
        kind = kind_override or kind
        if kind == "k1":
            return delta
        if kind == "k2":
            return 0.5 * delta**2
        if kind == "abs":
            return delta.abs()
        if guard and log_ratio_clamp is not None:
            delta = delta.clamp(-log_ratio_clamp, log_ratio_clamp)
        return torch.exp(-delta) - 1 + delta  # without the guard: exp overflows in float32 (verl #891)

    return kl_estimate


def _kl_shaped_first_pad(
    scores: Tensor, logp: Tensor, logp_ref: Tensor, mask: Tensor, beta: float, kind: str = "k1"
) -> Tensor:
    m = mask.bool()
    rewards = _where0(m, -beta * _kl()(logp, logp_ref, kind))
    last = _last_valid(m)
    slot = (last + 1).clamp(max=m.shape[1] - 1)  # TRL: the first pad, or the last slot without a pad
    rewards[torch.arange(m.shape[0]), slot] += scores
    return rewards


# ----------------------------------------------------------------------------------------------------------------
# GAE


def _gae(bootstrap_past_end: bool = False, skip_holes: bool = True) -> Callable[..., tuple[Tensor, Tensor]]:
    def gae(
        rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
    ) -> tuple[Tensor, Tensor]:
        m = mask.bool()
        r, v = _where0(m, rewards), _where0(m, values)
        adv = torch.zeros_like(r)
        for b in range(r.shape[0]):
            positions = torch.nonzero(m[b]).flatten().tolist() if skip_holes else list(range(r.shape[1]))
            if not skip_holes and not m[b].any():
                positions = []
            next_v = torch.zeros((), dtype=r.dtype)
            next_a = torch.zeros((), dtype=r.dtype)
            valid = torch.nonzero(m[b]).flatten().tolist()
            if bootstrap_past_end and valid and valid[-1] + 1 < r.shape[1]:
                next_v = values[b, valid[-1] + 1]  # reads the pad slot's value (DS-Chat #672)
            for t in reversed(positions):
                delta = r[b, t] + gamma * next_v - v[b, t]
                next_a = delta + gamma * lam * next_a
                adv[b, t] = next_a
                next_v = v[b, t]
        adv = _where0(m, adv)
        return adv, _where0(m, adv + v)

    return gae


# ----------------------------------------------------------------------------------------------------------------
# whiten, value loss, reward model


def _whiten(pads_in_stats: bool = False, population: bool = False) -> Callable[..., Tensor]:
    def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, unbiased: bool = True, *, eps: float = 1e-8) -> Tensor:
        m = mask.bool()
        vals = x.reshape(-1) if pads_in_stats else x[m]
        mu = vals.mean()
        var = vals.var(correction=0 if population else int(unbiased))
        w = (x - mu) * torch.rsqrt(var + eps)
        if not shift_mean:
            w = w + mu
        return _where0(m, w)

    return whiten


def _value_loss(pick: Callable[[Tensor, Tensor], Tensor] = torch.maximum) -> Callable[..., Tensor]:
    def value_loss(
        values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_eps: float | None = 0.2
    ) -> Tensor:
        m = mask.bool()
        v, old, ret = (_where0(m, x) for x in (values, old_values, returns))
        unclipped = (v - ret) ** 2
        if clip_eps is None:
            per_token = 0.5 * unclipped
        else:
            clipped = (old + (v - old).clamp(-clip_eps, clip_eps) - ret) ** 2
            per_token = 0.5 * pick(unclipped, clipped)
        return _token_mean(per_token, m)

    return value_loss


def _ranking_loss_k_over_2(rewards: Tensor) -> Tensor:
    k = rewards.shape[1]
    i, j = torch.triu_indices(k, k, offset=1)
    pair = torch.nn.functional.logsigmoid(rewards[:, i] - rewards[:, j]).sum(-1)
    return (-pair / (k / 2)).mean()  # the seed's K/2 instead of C(K, 2)


# ----------------------------------------------------------------------------------------------------------------
# correct third-party styles


def _trl_style_loss(
    ratio: Tensor, advantages: Tensor, mask: Tensor, cliprange: float = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """TRL PPO style: takes the ratio, names the clip 'cliprange', token-mean, returns (loss, stats)."""
    m = mask.bool()
    ratio, advantages = torch.where(m, ratio, 1.0), _where0(m, advantages)
    pg = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - cliprange, 1 + cliprange))
    loss = _where0(m, pg).sum() / m.sum()
    return loss, {"clipfrac": (_where0(m, (pg > -advantages * ratio).to(pg.dtype))).sum() / m.sum()}


def _objective_not_loss(
    logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float = 0.2
) -> Tensor:
    return -_policy_loss()(logp, logp_old, advantages, mask, clip_eps)


def _numpy_reference_copy(*args: Any, **kwargs: Any) -> Any:
    from rlhf_oracle import reference

    return reference.gae(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# stability classes: right on moderate inputs, wrong (or non-finite) in the extreme regime


def _policy_loss_clamped(bound: float) -> Callable[..., Tensor]:
    """verl/OpenRLHF style: the log-ratio clamped before exp, token-mean aggregation."""

    def policy_loss(logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float = 0.2) -> Tensor:
        m = mask.bool()
        delta = torch.where(m, logp - logp_old, 0.0).clamp(-bound, bound)
        ratio = torch.exp(delta)
        adv = _where0(m, advantages)
        per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_eps, 1 + clip_eps))
        return _where0(m, per_token).sum() / m.sum()

    return policy_loss


def _kl_output_clamped(logp: Tensor, logp_ref: Tensor, kind: str = "k1") -> Tensor:
    """OpenRLHF compute_approx_kl style: every estimator's output clamped to +-10."""
    delta = logp - logp_ref
    if kind == "k1":
        value = delta
    elif kind == "k2":
        value = 0.5 * delta**2
    else:
        value = torch.exp(-delta) - 1 + delta
    return value.clamp(-10.0, 10.0)


def _naive_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    p = torch.softmax(logits / temperature, dim=-1)
    return torch.log(p.gather(-1, tokens[..., None]).squeeze(-1))  # log(0) = -inf once softmax underflows


def _naive_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    p = torch.softmax(logits / temperature, dim=-1)
    return -(p * torch.log(p)).sum(-1)  # 0 * log 0 = NaN


def _naive_rm_loss(chosen: Tensor, rejected: Tensor, margin: Any = None) -> Tensor:
    d = chosen - rejected - (0.0 if margin is None else margin)
    return -torch.log(torch.sigmoid(d)).mean()  # sigmoid underflows to 0: an infinite loss at large gaps


# ----------------------------------------------------------------------------------------------------------------
# padding classes: right on valid tokens, wrong on masked positions or degenerate batches


def _gae_writes_carry(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """verl style: the carried lastgaelam is written at masked positions (holes and padding)."""
    m = mask.to(rewards.dtype)
    r, v = _where0(mask.bool(), rewards), _where0(mask.bool(), values)
    next_v = torch.zeros(r.shape[0], dtype=r.dtype)
    last = torch.zeros(r.shape[0], dtype=r.dtype)
    out = []
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_v - v[:, t]
        new = delta + gamma * lam * last
        next_v = v[:, t] * m[:, t] + (1 - m[:, t]) * next_v
        last = new * m[:, t] + (1 - m[:, t]) * last
        out.append(last)
    adv = torch.stack(out[::-1], dim=1)
    return adv, _where0(mask.bool(), adv + v)


def _agg_empty_rows_as_zero(values: Tensor, mask: Tensor, agg: str = "seq-mean-token-mean") -> Tensor:
    m = mask.bool()
    return (_where0(m, values).sum(-1) / m.sum(-1).clamp(min=1)).mean()  # an empty row adds 0 and counts in B


def _agg_multiply_by_mask(values: Tensor, mask: Tensor, agg: str = "seq-mean-token-mean") -> Tensor:
    mf = mask.to(values.dtype)
    return ((values * mf).sum(-1) / mf.sum(-1)).mean()  # NaN * 0 = NaN


def _kl_shaped_penalty_everywhere(
    scores: Tensor, logp: Tensor, logp_ref: Tensor, mask: Tensor, beta: float, kind: str = "k1"
) -> Tensor:
    m = mask.bool()
    rewards = -beta * _kl()(logp, logp_ref, kind)  # the penalty is not masked: padding gets -beta kl too
    last = _last_valid(m)
    rewards[torch.arange(m.shape[0]), last] += scores
    return rewards


def _kl_loss(
    *, detach_ratio: bool = False, ignore_old: bool = False, straight_through: bool = True, flip: bool = False
) -> Callable[..., Tensor]:
    """GRPO's KL loss term beta * agg(k3), token-mean, as TRL (ratio-corrected) and verl ("k3+") write it, with one
    bug switched on."""

    def kl_loss(
        logp: Tensor, logp_ref: Tensor, mask: Tensor, kind: str = "k3", agg: str = "token-mean", *,
        grad: str = "estimator", logp_old: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        m = mask.bool()
        delta = _where0(m, logp - logp_ref.detach())
        delta = -delta if flip else delta
        k = torch.expm1(-delta) + delta
        if grad == "k2" and straight_through:  # verl: backward of k2, forward of k
            k2 = 0.5 * delta.square()
            k = k2 - k2.detach() + k.detach()
        if logp_old is not None and not ignore_old:
            ratio = torch.exp(_where0(m, logp - logp_old))
            k = k * (ratio.detach() if detach_ratio else ratio)
        return _where0(m, k).sum() / m.sum()

    return kl_loss


def _actor_loss(
    *, entropy_sign: float = -1.0, kl_with_policy_agg: bool = False, drop_kl: bool = False
) -> Callable[..., Tensor]:
    """A verl-style actor loss on the twin's terms (policy + kl_coef KL - entropy_coef H), with one bug on."""

    def actor_loss(
        logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, *, loss: str = "ppo",
        logp_ref: Tensor | None = None, kl_coef: float = 0.0, kl_kind: str = "k3", kl_ratio: bool = False,
        entropy: Tensor | None = None,
        entropy_coef: float = 0.0, agg: str = "seq-mean-token-mean", kl_agg: str | None = None,
        entropy_agg: str | None = None, max_tokens: int | None = None, **loss_options: Any,
    ) -> Tensor:  # fmt: skip
        policy = {"ppo": ti.policy_loss, "cispo": ti.cispo_loss, "gspo": ti.gspo_loss, "sapo": ti.sapo_loss}
        if loss == "pg":
            total = ti.pg_loss(logp, advantages, mask, agg=agg, max_tokens=max_tokens, **loss_options)
        else:
            total = policy[loss](logp, logp_old, advantages, mask, agg=agg, max_tokens=max_tokens, **loss_options)
        if kl_coef > 0 and logp_ref is not None and not drop_kl:
            mode = agg if kl_with_policy_agg else (kl_agg or agg)
            old = logp_old if kl_ratio else None
            total = total + kl_coef * ti.kl_loss(
                logp, logp_ref, mask, kl_kind, mode, max_tokens=max_tokens, logp_old=old
            )
        if entropy_coef > 0 and entropy is not None:
            bonus = ti.aggregate(entropy, mask, entropy_agg or agg, max_tokens=max_tokens)
            total = total + entropy_sign * entropy_coef * bonus
        return total

    return actor_loss


def _pg_loss(
    *, detach_weights: bool = True, ratio_without_sg: bool = False, ignore_weights: bool = False,
    reduce: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Callable[..., Tensor]:  # fmt: skip
    """REINFORCE / GPG loss -sg(w) A log pi, seq-mean-token-mean, with one bug switched on."""

    def pg_loss(
        logp: Tensor, advantages: Tensor, mask: Tensor, weights: Tensor | None = None,
        agg: str = "seq-mean-token-mean", *, form: str = "logp",
    ) -> Tensor:  # fmt: skip
        m = mask.bool()
        logp = _where0(m, logp)
        coef = _where0(m, advantages)
        if weights is not None and not ignore_weights:
            w = _where0(m, weights)
            coef = coef * (w.detach() if detach_weights else w)
        if form == "logp":
            term = logp
        else:  # exp(logp - sg(logp)); the bug: no sg, so the ratio is the constant 1
            term = torch.exp(logp - (logp if ratio_without_sg else logp.detach()))
        per_token = -coef * term
        if reduce is not None:
            return reduce(per_token, m)
        return (_where0(m, per_token).sum(-1) / m.sum(-1)).mean()

    return pg_loss


def _seq_mean_token_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    m = mask.bool()
    return (_where0(m, per_token).sum(-1) / m.sum(-1)).mean()


def _cispo(*, detach: bool = True, relative_cap: bool = False, lower: bool = True) -> Callable[..., Tensor]:
    """CISPO, token-mean: -sg(clip(r, lo, hi)) A log pi, with one bug switched on."""

    def cispo_loss(
        logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, weight_max: float = 5.0,
        weight_min: float | None = None,
    ) -> Tensor:  # fmt: skip
        m = mask.bool()
        logp, logp_old, adv = _where0(m, logp), _where0(m, logp_old), _where0(m, advantages)
        ratio = torch.exp(logp - logp_old)
        hi = 1.0 + weight_max if relative_cap else weight_max
        w = torch.clamp(ratio, min=weight_min if lower else None, max=hi)
        per_token = -(w.detach() if detach else w) * adv * logp
        return _token_mean(per_token, m)

    return cispo_loss


def _sapo(*, swap: bool = False, four_over_tau: bool = True, log_gate: bool = False) -> Callable[..., Tensor]:
    """SAPO, seq-mean-token-mean: -(4/tau) sigmoid(tau (r - 1)) A, with one bug switched on."""

    def sapo_loss(
        logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, tau_pos: float = 1.0, tau_neg: float = 1.05
    ) -> Tensor:  # fmt: skip
        m = mask.bool()
        logp, logp_old, adv = _where0(m, logp), _where0(m, logp_old), _where0(m, advantages)
        pos, neg = (tau_neg, tau_pos) if swap else (tau_pos, tau_neg)
        tau = torch.where(adv > 0, torch.full_like(adv, pos), torch.full_like(adv, neg))
        x = tau * (logp - logp_old) if log_gate else tau * (torch.exp(logp - logp_old) - 1)
        gate = torch.sigmoid(x) * (4 / tau if four_over_tau else 1.0)
        return _seq_mean_token_mean(-gate * adv, m)

    return sapo_loss


def _gspo(
    *, product: bool = False, token_ratio: bool = False, padded: bool = False, full_grad: bool = False
) -> Callable[..., Tensor]:
    """GSPO-token, seq-mean-token-mean, symmetric-or-not clip on the sequence ratio, with one bug switched on."""

    def gspo_loss(
        logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float = 3e-4,
        clip_eps_high: float | None = 4e-4,
    ) -> Tensor:  # fmt: skip
        m = mask.bool()
        logp, logp_old, adv = _where0(m, logp), _where0(m, logp_old), _where0(m, advantages)
        high = clip_eps if clip_eps_high is None else clip_eps_high
        log_r = _where0(m, logp - logp_old)
        if token_ratio:
            ratio = torch.exp(log_r)
        else:
            n = m.shape[1] if padded else m.sum(-1, keepdim=True)
            seq = log_r.sum(-1, keepdim=True) / (1 if product else n)
            if full_grad:  # s_i with its full gradient broadcast to every token (right only for constant A)
                ratio = torch.exp(seq).expand_as(logp)
            else:
                ratio = torch.exp(logp - logp.detach() + seq.detach())
        per_token = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + high) * adv)
        return _seq_mean_token_mean(-per_token, m)

    return gspo_loss


def _rollout_is(*, inverted: bool = False, geometric: bool = False, truncate: bool = False,
                unmasked: bool = False) -> Callable[..., Tensor]:  # fmt: skip
    """Sequence-level masked IS (TRL's default with vLLM: product, band [0, 3]) with one bug switched on."""

    def rollout_is_weights(
        logp_old: Tensor, logp_rollout: Tensor, mask: Tensor, level: str = "sequence", mode: str = "mask",
        upper: float = 3.0, lower: float | None = None,
    ) -> Tensor:  # fmt: skip
        m = mask.bool()
        log_rho = _where0(m, (logp_rollout - logp_old) if inverted else (logp_old - logp_rollout))
        seq = log_rho.sum(-1, keepdim=True)
        if geometric:
            seq = seq / m.sum(-1, keepdim=True).clamp(min=1)
        rho = torch.exp(seq).expand_as(log_rho)
        lo = 0.0 if lower is None else lower
        if truncate:
            w = rho.clamp(max=upper)
        else:
            w = torch.where((rho >= lo) & (rho <= upper), rho, torch.zeros_like(rho))
        return w.detach() if unmasked else _where0(m, w).detach()

    return rollout_is_weights


def _weighted_ppo(*, detach: bool = True) -> Callable[..., Tensor]:
    """PPO with per-token (decoupled / TIS) weights, seq-mean-token-mean, eps 0.2."""

    def policy_loss(
        logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float = 0.2,
        *, weights: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        m = mask.bool()
        logp, logp_old, adv = _where0(m, logp), _where0(m, logp_old), _where0(m, advantages)
        ratio = torch.exp(logp - logp_old)
        per_token = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
        if weights is not None:
            w = _where0(m, weights)
            per_token = per_token * (w.detach() if detach else w)
        return _seq_mean_token_mean(-per_token, m)

    return policy_loss


# ----------------------------------------------------------------------------------------------------------------
# critic-free advantages and DAPO shaping (plain loops over groups and tokens: readable, not fast)


def _rloo(
    *, self_in_baseline: bool = False, divide_by_n: bool = False, singleton: str = "nan"
) -> Callable[..., Tensor]:
    """RLOO as TRL/OpenRLHF write it, (sum - s) / (n - 1), with one bug switched on; a group of one gets NaN (TRL
    before its nan_to_num), 0 or its score."""

    def rloo_advantages(scores: Tensor, group_size: int) -> Tensor:
        groups = scores.view(-1, group_size)
        total = groups.sum(-1, keepdim=True)
        n = group_size
        if n == 1 and singleton != "nan":
            return (groups if singleton == "score" else torch.zeros_like(groups)).reshape(-1)
        if self_in_baseline:
            baseline = total / n
        else:
            baseline = (total - groups) / (n if divide_by_n else (n - 1))
        return (groups - baseline).reshape(-1)

    return rloo_advantages


def _returns(rewards: Tensor, mask: Tensor, gamma: float, *, holes: str = "skip", carry_rows: bool = False) -> Tensor:
    """Return-to-go by a reverse loop over tokens; ``holes``: "skip" (carried past), "reset" (verl's old
    ``running *= mask``); ``carry_rows``: one running return over the flattened batch (never reset per row)."""
    m = mask.bool()
    out = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    carried = torch.zeros((), dtype=rewards.dtype)
    for b in reversed(range(rewards.shape[0])) if carry_rows else [None]:
        rows = [b] if b is not None else list(range(rewards.shape[0]))
        run = carried.expand(len(rows)).clone() if carry_rows else running
        for t in reversed(range(rewards.shape[1])):
            valid = m[rows, t]
            new = rewards[rows, t] + gamma * run
            out[rows, t] = torch.where(valid, new, torch.zeros_like(new))
            if holes == "reset":
                run = torch.where(valid, new, torch.zeros_like(new))
            else:
                run = torch.where(valid, new, run)
        if carry_rows:
            carried = run[0]
    return out


def _masked_whiten(x: Tensor, mask: Tensor, unbiased: bool = True, eps: float = 1e-8) -> Tensor:
    m = mask.bool()
    vals = x[m]
    mean = vals.mean()
    var = vals.var(unbiased=unbiased)
    return _where0(m, (x - mean) / torch.sqrt(var + eps))


def _reinforce_pp(*, holes: str = "skip", carry_rows: bool = False, whiten: bool = True) -> Callable[..., Tensor]:
    """REINFORCE++ as verl writes it (return-to-go, masked_whiten with Bessel), with one bug switched on."""

    def reinforce_pp_advantages(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
        g = _returns(_where0(mask.bool(), rewards), mask, gamma, holes=holes, carry_rows=carry_rows)
        return _masked_whiten(g, mask) if whiten else _where0(mask.bool(), g)

    return reinforce_pp_advantages


def _orl_reinforce_pp(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """OpenRLHF's reinforce: rewards times the mask, a plain reverse loop, population variance floored at 1e-8."""
    m = mask.to(rewards.dtype)
    r = _where0(mask.bool(), rewards) * m
    ret = torch.zeros_like(r)
    running = torch.zeros(r.shape[0], dtype=r.dtype)
    for t in reversed(range(r.shape[1])):
        running = r[:, t] + gamma * running
        ret[:, t] = running
    n = m.sum()
    mean = (ret * m).sum() / n
    var = ((ret - mean) ** 2 * m).sum() / n
    return _where0(mask.bool(), (ret - mean) * var.clamp(min=1e-8).rsqrt())


def _rpp_baseline(*, kl_before: bool = False, group_std: bool = False, singleton_keeps: bool = False,
                  whiten: bool = True) -> Callable[..., Tensor]:  # fmt: skip
    """REINFORCE++-baseline, OpenRLHF order (group mean, then the KL as a return-to-go, then whitening), with one
    change switched on."""

    def reinforce_pp_baseline_advantages(scores: Tensor, group_size: int, mask: Tensor,
                                         kl_rewards: Tensor | None = None) -> Tensor:  # fmt: skip
        m = mask.bool()
        k = torch.zeros(m.shape, dtype=scores.dtype) if kl_rewards is None else _where0(m, kl_rewards)
        s = scores + k.sum(-1) if kl_before else scores
        groups = s.view(-1, group_size)
        if singleton_keeps and group_size == 1:
            centred = groups
        else:
            centred = groups - groups.mean(-1, keepdim=True)
            if group_std:  # (a group of one has no std: NaN, without torch's degrees-of-freedom warning)
                std = groups.std(-1, keepdim=True) if group_size > 1 else torch.full_like(groups, torch.nan)
                centred = centred / (std + 1e-6)
        x = _where0(m, centred.reshape(-1, 1).expand(m.shape))
        if not kl_before:
            x = x + _returns(k, m, 1.0)
        return _masked_whiten(x, m) if whiten and not group_std else x

    return reinforce_pp_baseline_advantages


def _remax(*, add: bool = False, token_only: bool = False, carry_rows: bool = False,
           at_holes: bool = False) -> Callable[..., Tensor]:  # fmt: skip
    """ReMax: return-to-go minus the greedy score, with one bug switched on (``at_holes``: verl's reverse cumsum of
    r * mask, whose value at a hole is the sum of the rewards after it)."""

    def remax_advantages(rewards: Tensor, mask: Tensor, baseline_scores: Tensor) -> Tensor:
        m = mask.bool()
        r = _where0(m, rewards)
        b = baseline_scores[:, None]
        if at_holes:
            g = r.flip(-1).cumsum(-1).flip(-1)
            return g - b * m.to(r.dtype)
        g = r if token_only else _returns(r, m, 1.0, carry_rows=carry_rows)
        return _where0(m, g + b if add else g - b)

    return remax_advantages


def _overlong(*, cap: bool = True, ramp_over_max: bool = False, hard: bool = False) -> Callable[..., Tensor]:
    """DAPO's overlong penalty written as the frameworks do (exceed length, min with 0), one change switched on."""

    def overlong_penalty(lengths: Tensor, max_length: int, cache_length: int, factor: float = 1.0) -> Tensor:
        n = lengths.to(torch.float64) if not lengths.is_floating_point() else lengths
        expected = max_length - cache_length
        if hard:
            return torch.where(n > max_length, -factor * torch.ones_like(n), torch.zeros_like(n))
        exceed = n - expected
        if cap:
            exceed = exceed.clamp(max=cache_length)
        penalty = -exceed / (max_length if ramp_over_max else cache_length) * factor
        return penalty.clamp(max=0.0)

    return overlong_penalty


def _dynamic(*, keep_singletons: bool = False, inverted: bool = False, mean_range: bool = False,
             bessel_std: bool = False) -> Callable[..., Tensor]:  # fmt: skip
    """Dynamic sampling: a group is kept when its scores are not all equal; one change switched on."""

    def dynamic_sampling_mask(scores: Tensor, group_size: int, tol: float = 0.0) -> Tensor:
        groups = scores.view(-1, group_size)
        if mean_range:
            mean = groups.mean(-1)
            keep = (mean > 0) & (mean < 1)
        elif bessel_std and group_size > 1:
            keep = groups.std(-1) > tol
        else:
            keep = (groups.max(-1).values - groups.min(-1).values) > tol
        if keep_singletons and group_size == 1:
            keep = torch.ones_like(keep)
        if inverted:
            keep = ~keep
        return keep.repeat_interleave(group_size)

    return dynamic_sampling_mask


def _grpo_batch_std(*, centred_std: bool = False) -> Callable[..., Tensor]:
    """GRPO with a batch-level std (TRL scale_rewards='batch'); ``centred_std``: the std of the group-centred scores
    (REINFORCE++-baseline's scale) instead of the raw scores'."""

    def grpo_advantages(scores: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
        groups = scores.view(-1, group_size)
        centred = groups - groups.mean(-1, keepdim=True)
        std = centred.reshape(-1).std() if centred_std else scores.std()
        return (centred / (std + eps)).reshape(-1)

    return grpo_advantages


# ----------------------------------------------------------------------------------------------------------------
# bugs the diagnosis used to misname (issue 18): each must now be named for what it is


def _ppo_no_lower_clip(logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float = 0.2
                       ) -> Tensor:  # fmt: skip
    m = mask.bool()
    r = torch.exp(_where0(m, logp - logp_old))
    a = _where0(m, advantages)
    return _seq_mean_token_mean(-torch.minimum(r * a, torch.clamp(r, max=1 + clip_eps) * a), m)


def _ppo_detached_clipped(logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float = 0.2
                          ) -> Tensor:  # fmt: skip
    m = mask.bool()
    r = torch.exp(_where0(m, logp - logp_old))
    a = _where0(m, advantages)
    return _seq_mean_token_mean(-torch.minimum(r * a, torch.clamp(r.detach(), 1 - clip_eps, 1 + clip_eps) * a), m)


def _k3_linear_sign(logp: Tensor, logp_ref: Tensor, kind: str = "k3") -> Tensor:
    d = logp_ref - logp
    return torch.exp(d) - 1 + d  # k3 is exp(d) - 1 - d


def _gae_carry_rows(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
                    ) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One recursion over the flattened batch: the carry is never reset at the end of a row."""
    m = mask.bool()
    r, v = _where0(m, rewards), _where0(m, values)
    adv = torch.zeros_like(r)
    next_v = torch.zeros((), dtype=r.dtype)
    last = torch.zeros((), dtype=r.dtype)
    for b in reversed(range(r.shape[0])):
        for t in reversed(range(r.shape[1])):
            if m[b, t]:
                last = r[b, t] + gamma * next_v - v[b, t] + gamma * lam * last
                adv[b, t] = last
                next_v = v[b, t]
    return adv, _where0(m, adv + v)


def _gae_reward_to_go(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
                      ) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Correct advantages, but returns = the discounted reward-to-go instead of A + V."""
    adv, _ = ti.gae(rewards, values, mask, gamma, lam)
    m = mask.bool()
    ret = torch.zeros_like(adv)
    running = torch.zeros(adv.shape[0], dtype=adv.dtype)
    for t in reversed(range(adv.shape[1])):
        running = torch.where(m[:, t], rewards[:, t] + gamma * running, running)
        ret[:, t] = torch.where(m[:, t], running, torch.zeros_like(running))
    return adv, ret


def _grpo_mask_ignored(scores: Tensor, group_size: int, std_normalize: bool = True, *, mask: Tensor | None = None,
                       eps: float = 1e-6) -> Tensor:  # fmt: skip
    g = scores.view(-1, group_size)
    centred = g - g.mean(-1, keepdim=True)
    adv = (centred / (g.std(-1, keepdim=True) + eps) if std_normalize else centred).reshape(-1)
    return adv if mask is None else adv[:, None].expand(mask.shape).clone()


def _grpo_float32_bessel(scores: Tensor, group_size: int, eps: float = 1e-4) -> Tensor:
    """TRL's nanstd: population variance times count / (count - 1) of an int64 count (a float32 division)."""
    g = scores.view(-1, group_size)
    count = torch.full((g.shape[0], 1), group_size, dtype=torch.int64)
    var = ((g - g.mean(-1, keepdim=True)) ** 2).mean(-1, keepdim=True) * (count / (count - 1))
    return ((g - g.mean(-1, keepdim=True)) / (torch.sqrt(var) + eps)).reshape(-1)


def _dpo_ref_added(logp_chosen: Tensor, logp_rejected: Tensor, ref_logp_chosen: Tensor, ref_logp_rejected: Tensor,
                   beta: float = 0.1) -> Tensor:  # fmt: skip
    h = (logp_chosen + ref_logp_chosen) - (logp_rejected + ref_logp_rejected)
    return -torch.nn.functional.logsigmoid(beta * h).mean()


MUTANTS: list[Mutant] = [
    Mutant("max instead of min", "policy_loss", _policy_loss(pick=torch.maximum), "sign/bound inversion",
           "max instead of min"),
    Mutant("clip on the wrong side", "policy_loss", _policy_loss(swap_bounds=True),
           "clip_ratio_low/high exchanged", "clip bounds swapped", {"clip_eps_high": 0.28}),
    Mutant("KL sign flipped", "kl_estimate", _kl(flip=True), "Delta = logp_ref - logp", "log-ratio flipped"),
    Mutant("k1 where k3 was meant", "kl_estimate", _kl(kind_override="k1"), "estimator ignored", "kind='k1'",
           {"kind": "k3"}),
    Mutant("padded token counted", "policy_loss", _policy_loss(reduce=_first_pad_counted),
           "TRL padding_mask_p1 / DS-Chat PR #672", "first pad counted"),
    Mutant("|o| over the batch", "policy_loss", _policy_loss(reduce=_batch_token_count),
           "row length replaced by the batch token count", "|o| over the batch"),
    Mutant("GAE bootstraps past the end", "gae", _gae(bootstrap_past_end=True), "DS-Chat PR #672",
           "bootstrap past the end"),
    Mutant("GAE runs through masked holes", "gae", _gae(skip_holes=False), "verl PR #2337 (multi-turn)",
           "zero-filled holes"),
    Mutant("value clip written as min", "value_loss", _value_loss(pick=torch.minimum), "openai/baselines #765",
           "min instead of max"),
    Mutant("whitening keeps the pads", "whiten", _whiten(pads_in_stats=True), "verl #3805",
           "pads in the statistics"),
    Mutant("K/2 normaliser", "ranking_loss", _ranking_loss_k_over_2, "the seed's wording", "K/2 normaliser"),
    Mutant("reward on the first pad", "kl_shaped_rewards", _kl_shaped_first_pad, "TRL #1893 / DS-Chat #672",
           "score_position='after_last'"),
    Mutant("k3 without a clamp before exp", "kl_estimate", _kl(guard=False), "verl #891, OpenRLHF #525",
           "clamp", {"kind": "k3", "log_ratio_clamp": 20.0, "dtype": torch.float32}, "stability"),
    Mutant("k3 overflows silently in float32", "kl_estimate", _kl(guard=False), "verl #891 (inf, then NaN grads)",
           "overflows in float32", {"kind": "k3", "dtype": torch.float32}, "stability"),
    Mutant("NaN leaks through multiply-by-mask", "policy_loss",
           _policy_loss(reduce=_multiply_by_mask, mask_inputs=False), "OpenRLHF PR #1240", "leak from masked slots",
           {}, "masked_slots"),
    Mutant("dual clip on positive advantages", "policy_loss", _policy_loss(dual_on_all=True), "tianshou #433",
           "dual clip on positive A", {"dual_clip": 3.0}),
    Mutant("population instead of Bessel std", "whiten", _whiten(population=True), "OpenRLHF vs TRL/verl",
           "unbiased=False"),
    Mutant("clip does not stop the gradient", "policy_loss", _policy_loss(straight_through_clip=True),
           "straight-through clamp", "non-zero gradient where the reference's is exactly 0", {}, "gradients"),
    Mutant("NaN gradient at masked slots", "policy_loss", _policy_loss_nan_grad, "where() on the output only",
           "gradient at masked positions", {}, "masked_slots"),
    # stability classes
    Mutant("log-ratio clamped at 20 (verl/OpenRLHF)", "policy_loss", _policy_loss_clamped(20.0),
           "verl compute_policy_loss_vanilla", "log-ratio clamp at 20", {"agg": "token-mean"}, "stability"),
    Mutant("log-ratio clamped at 7", "policy_loss", _policy_loss_clamped(7.0),
           "any bound", "log-ratio clamp at 7", {"agg": "token-mean"}, "stability"),
    Mutant("KL output clamped to +-10 (OpenRLHF)", "kl_estimate", _kl_output_clamped,
           "OpenRLHF compute_approx_kl", "output clamp at +-10", {"kind": "k3"}, "stability"),
    Mutant("log(softmax) computed naively", "token_logprobs", _naive_logprobs, "softmax underflow",
           "log(softmax(z)) computed naively", {}, "stability"),
    Mutant("entropy as -sum p log p", "entropy_from_logits", _naive_entropy, "0 * log 0 = NaN",
           "-sum p log p computed naively", {}, "stability"),
    Mutant("log(sigmoid) computed naively", "reward_model_loss", _naive_rm_loss, "sigmoid underflow",
           "log(sigmoid) computed naively", {}, "stability"),
    # padding classes
    Mutant("GAE writes its carry at masked positions (verl)", "gae", _gae_writes_carry,
           "verl compute_gae_advantage_return", "recursion's carry", {}, "masked_outputs"),
    Mutant("empty row counted as zero", "aggregate", _agg_empty_rows_as_zero, "clamp(min=1) denominator",
           "empty row counted as zero", {"agg": "seq-mean-token-mean", "strict": True}, "edge_cases"),
    # (a value where the reference refuses an empty row is a finding, reported as "differs"; strict fails it)
    Mutant("aggregate leaks NaN through multiply-by-mask", "aggregate", _agg_multiply_by_mask,
           "OpenRLHF PR #1240", "multiply-by-mask", {"agg": "seq-mean-token-mean"}, "masked_slots"),
    Mutant("KL penalty written at masked positions", "kl_shaped_rewards", _kl_shaped_penalty_everywhere,
           "penalty not masked", "masked positions", {}, "masked_outputs"),
    # kl_loss (the KL penalty as a loss term)
    Mutant("KL ratio correction detached", "kl_loss", _kl_loss(detach_ratio=True),
           "k3 * ratio.detach(): use_bias_correction_kl without its gradient", "the ratio detached",
           {"kind": "k3", "agg": "token-mean", "grad": "estimator"}, "gradients"),
    Mutant("straight-through KL gradient missing", "kl_loss", _kl_loss(straight_through=False),
           "verl 'k3+' computed as plain k3: the k2 gradient not substituted", "the other gradient",
           {"kind": "k3", "agg": "token-mean", "grad": "k2"}, "gradients"),
    Mutant("KL ratio correction dropped", "kl_loss", _kl_loss(ignore_old=True),
           "logp_old accepted but never multiplied in", "ratio missing",
           {"kind": "k3", "agg": "token-mean", "grad": "estimator"}),
    Mutant("KL loss with the log-ratio flipped", "kl_loss", _kl_loss(flip=True),
           "k3 of logp_ref - logp (the KL of the wrong direction)", "log-ratio flipped",
           {"kind": "k3", "agg": "token-mean", "grad": "estimator"}),
    # actor_loss (policy + KL - entropy)
    Mutant("entropy bonus added with the wrong sign", "actor_loss", _actor_loss(entropy_sign=1.0),
           "loss + c_H H: entropy penalised", "entropy added", {"loss": "ppo", "entropy_coef": 0.5}),
    Mutant("KL term aggregated like the policy", "actor_loss", _actor_loss(kl_with_policy_agg=True),
           "kl_agg ignored (OpenRLHF-style aggregate_loss for both)", "kl_agg='seq-mean-token-sum'",
           {"loss": "ppo", "kl_coef": 1.0, "agg": "seq-mean-token-sum", "kl_agg": "token-mean"}),
    Mutant("KL term dropped", "actor_loss", _actor_loss(drop_kl=True),
           "logp_ref passed but the KL never added", "KL term missing", {"loss": "cispo", "kl_coef": 1.0}),
    # pg_loss (REINFORCE / GPG)
    Mutant("importance weights not detached", "pg_loss", _pg_loss(detach_weights=False), "sg(w) missing",
           "gradient flows into 'weights'", {"agg": "seq-mean-token-mean"}, "gradients"),
    Mutant("ratio form without the stop-gradient", "pg_loss", _pg_loss(ratio_without_sg=True),
           "exp(logp - logp): sg() misplaced", "the gradient is zero everywhere",
           {"form": "ratio", "agg": "seq-mean-token-mean"}, "gradients"),
    Mutant("importance weights ignored", "pg_loss", _pg_loss(ignore_weights=True), "verl bypass without TIS",
           "weights ignored", {"agg": "seq-mean-token-mean"}),
    Mutant("pg loss token-mean where seq-mean-token-mean is asked", "pg_loss", _pg_loss(reduce=_token_mean),
           "verl gpg default", "agg='token-mean'", {"agg": "seq-mean-token-mean"}),
    # cispo_loss (MiniMax-M1)
    Mutant("CISPO weight not detached", "cispo_loss", _cispo(detach=False), "sg() missing on the clipped weight",
           None, {"agg": "token-mean"}, "gradients"),
    Mutant("CISPO cap read as an epsilon", "cispo_loss", _cispo(relative_cap=True),
           "TRL epsilon_high (absolute cap) read as verl's 1 + clip_ratio_high", "bound read as an epsilon",
           {"agg": "token-mean", "weight_max": 2.0}),
    Mutant("CISPO lower bound ignored", "cispo_loss", _cispo(lower=False), "verl bounds [0.8, 1.2] asked, cap only",
           "no lower bound", {"agg": "token-mean", "weight_min": 0.8, "weight_max": 1.2}),
    # sapo_loss (Qwen)
    Mutant("SAPO temperatures swapped", "sapo_loss", _sapo(swap=True), "tau_pos/tau_neg exchanged",
           "temperatures swapped", {"agg": "seq-mean-token-mean", "tau_pos": 1.0, "tau_neg": 3.0}),
    Mutant("SAPO gate without 4/tau", "sapo_loss", _sapo(four_over_tau=False), "the gate's constant dropped",
           "no 4/tau factor", {"agg": "seq-mean-token-mean"}),
    Mutant("SAPO gate on log r", "sapo_loss", _sapo(log_gate=True), "sigma(tau log r) for sigma(tau (r - 1))",
           "gate on log r", {"agg": "seq-mean-token-mean"}),
    # gspo_loss (Qwen)
    Mutant("GSPO product of token ratios", "gspo_loss", _gspo(product=True), "TRL RLOO's unnormalised ratio",
           "product of the token ratios", {"agg": "seq-mean-token-mean", "log_ratio_clamp": None}),
    Mutant("GSPO with token ratios", "gspo_loss", _gspo(token_ratio=True), "importance_sampling_level ignored",
           "token ratios (PPO)", {"agg": "seq-mean-token-mean", "log_ratio_clamp": None}),
    Mutant("GSPO mean over the padded length", "gspo_loss", _gspo(padded=True), "sum / T instead of sum / |o|",
           "mean over the padded length", {"agg": "seq-mean-token-mean", "log_ratio_clamp": None}),
    Mutant("GSPO full-gradient ratio with token advantages", "gspo_loss", _gspo(full_grad=True),
           "sg() missing: s_i differentiated, right only for constant A", None,
           {"agg": "seq-mean-token-mean", "log_ratio_clamp": None}, "gradients"),
    Mutant("PPO importance weights not detached", "policy_loss", _weighted_ppo(detach=False),
           "decoupled PPO weight differentiated", "gradient flows into 'weights'",
           {"agg": "seq-mean-token-mean", "clip_eps_high": None, "dual_clip": None}, "gradients"),
    # rollout_is_weights (TIS / MIS)
    Mutant("IS ratio inverted", "rollout_is_weights", _rollout_is(inverted=True), "mu / pi_old for pi_old / mu",
           "ratio inverted", {"level": "sequence", "mode": "mask", "upper": 3.0, "lower": None,
                              "seq_ratio": "product"}),
    Mutant("geometric mean where the product is asked", "rollout_is_weights", _rollout_is(geometric=True),
           "verl seq_mean vs TRL product", "seq_ratio='geometric'",
           {"level": "sequence", "mode": "mask", "upper": 3.0, "lower": None, "seq_ratio": "product"}),
    Mutant("truncation where masking is asked", "rollout_is_weights", _rollout_is(truncate=True),
           "TIS for MIS", "mode='truncate'",
           {"level": "sequence", "mode": "mask", "upper": 3.0, "lower": None, "seq_ratio": "product"}),
    Mutant("IS weights written at masked positions", "rollout_is_weights", _rollout_is(unmasked=True),
           "where() forgotten", "masked positions",
           {"level": "sequence", "mode": "mask", "upper": 3.0, "lower": None, "seq_ratio": "product"},
           "masked_outputs"),
    Mutant("RLOO baseline includes the sample itself", "rloo_advantages", _rloo(self_in_baseline=True),
           "the group mean as the baseline (a Dr. GRPO advantage)", "the sample in its own baseline"),
    Mutant("RLOO divides the others' sum by n", "rloo_advantages", _rloo(divide_by_n=True),
           "sum of the n - 1 others / n", "divided by n, not n - 1"),
    Mutant("RLOO gives NaN for a group of one", "rloo_advantages", _rloo(), "(s - s) / 0 for a singleton group "
           "(TRL before nan_to_num)", "NaN for a group of one", {"singleton": "zero"}),
    Mutant("REINFORCE++ return reset at holes", "reinforce_pp_advantages", _reinforce_pp(holes="reset"),
           "running_return *= mask (verl before its multi-turn fix)", "reset at holes"),
    Mutant("REINFORCE++ return carried into the next sequence", "reinforce_pp_advantages",
           _reinforce_pp(carry_rows=True), "one running return over the flattened batch",
           "return carried into the next sequence"),
    Mutant("REINFORCE++ not whitened", "reinforce_pp_advantages", _reinforce_pp(whiten=False),
           "the global normalisation forgotten", "not whitened"),
    Mutant("REINFORCE++ with OpenRLHF's floored population variance", "reinforce_pp_advantages", _orl_reinforce_pp,
           "clamp(min=1e-8).rsqrt() of the population variance where Bessel + eps is asked",
           "variance floored at 1e-8"),
    Mutant("REINFORCE++-baseline with the KL before the baseline", "reinforce_pp_baseline_advantages",
           _rpp_baseline(kl_before=True), "verl's order where OpenRLHF's is asked", "kl_position='before'"),
    Mutant("REINFORCE++-baseline divided by the group std", "reinforce_pp_baseline_advantages",
           _rpp_baseline(group_std=True), "GRPO's scale instead of the batch whitening", "divided by the group std"),
    Mutant("REINFORCE++-baseline keeps a singleton's score", "reinforce_pp_baseline_advantages",
           _rpp_baseline(singleton_keeps=True), "verl's group mean 0 for a group of one",
           "a group of one keeps its score"),
    Mutant("REINFORCE++-baseline not whitened", "reinforce_pp_baseline_advantages", _rpp_baseline(whiten=False),
           "the batch whitening forgotten", "not whitened"),
    Mutant("ReMax baseline added", "remax_advantages", _remax(add=True), "+ b for - b", "baseline added"),
    Mutant("ReMax on the token reward", "remax_advantages", _remax(token_only=True),
           "r_t - b without the return-to-go", "token reward, not the return-to-go"),
    Mutant("ReMax return carried into the next sequence", "remax_advantages", _remax(carry_rows=True),
           "one running return over the flattened batch", "return carried into the next sequence"),
    Mutant("ReMax advantage at the holes (verl)", "remax_advantages", _remax(at_holes=True),
           "the reverse cumsum of r * mask left at masked positions", "masked positions", {}, "masked_outputs"),
    Mutant("overlong penalty without the cap (verl)", "overlong_penalty", _overlong(cap=False),
           "min(-excess / buffer * f, 0): below -f past max_length", "no cap beyond max_length"),
    Mutant("overlong penalty ramp over max_length", "overlong_penalty", _overlong(ramp_over_max=True),
           "the excess divided by the limit instead of the buffer", "ramp over max_length"),
    Mutant("overlong penalty without the soft ramp", "overlong_penalty", _overlong(hard=True),
           "only the hard -f past the limit", "hard punishment"),
    Mutant("dynamic sampling keeps groups of one (verl)", "dynamic_sampling_mask", _dynamic(keep_singletons=True),
           "len(values) > 1 needed to call a group constant", "a group of one kept"),
    Mutant("dynamic sampling inverted", "dynamic_sampling_mask", _dynamic(inverted=True),
           "the groups with no gradient kept", "inverted"),
    Mutant("dynamic sampling by the mean reward (OpenRLHF)", "dynamic_sampling_mask", _dynamic(mean_range=True),
           "mean reward in (0, 1) on real-valued rewards", "mean strictly inside (0, 1)"),
    Mutant("batch std of the centred scores where TRL's batch std is asked", "grpo_advantages",
           _grpo_batch_std(centred_std=True), "REINFORCE++-baseline's scale for scale_rewards='batch'",
           "batch std of the centred scores", {"std_level": "batch"}),
    Mutant("PPO without the lower clip bound", "policy_loss", _ppo_no_lower_clip, "clamp(r, max=1 + eps) only",
           "lower clip bound missing"),
    Mutant("PPO ratio detached in the clipped branch", "policy_loss", _ppo_detached_clipped,
           "min(r A, clip(r.detach()) A): half the gradient inside the band", "ratio detached in the clipped branch",
           {}, "gradients"),
    Mutant("k3 with the linear term's sign flipped", "kl_estimate", _k3_linear_sign, "exp(d) - 1 + d",
           "k3 with its linear term's sign flipped", {"kind": "k3"}),
    Mutant("GAE carry not reset between rows", "gae", _gae_carry_rows, "one recursion over the flattened batch",
           "carry not reset between rows"),
    Mutant("GAE returns as the reward-to-go", "gae", _gae_reward_to_go, "Monte Carlo returns instead of A + V",
           "returns as the reward-to-go"),
    Mutant("GRPO ignores the mask", "grpo_advantages", _grpo_mask_ignored, "the advantage written at padding",
           "mask ignored"),
    Mutant("GRPO Bessel factor divided in float32", "grpo_advantages", _grpo_float32_bessel,
           "count / (count - 1) of an int64 count (TRL nanstd)", "Bessel factor n/(n-1) rounded to float32",
           {"eps": 1e-4}),
    Mutant("DPO with the reference terms added", "dpo_loss", _dpo_ref_added, "+ log pi_ref for - log pi_ref",
           "reference log-probs added"),
]  # fmt: skip
"""Wrong implementations: each must be rejected, with the named diagnosis."""


@dataclass(frozen=True)
class Variant3P:
    name: str
    formula: str
    fn: Callable[..., Any]
    diagnosis: str
    """What the default check must say."""
    accept_with: dict[str, Any]
    """Check options under which the function is correct."""
    default_options: dict[str, Any] = field(default_factory=dict)


THIRD_PARTY: list[Variant3P] = [
    Variant3P("verl rloo: a group of one keeps its score", "rloo_advantages", _rloo(singleton="score"),
              "singleton='score'", {"singleton": "score"}, {"singleton": "zero"}),
    Variant3P("TRL scale_rewards='batch'", "grpo_advantages", _grpo_batch_std(), "std_level='batch'",
              {"std_level": "batch"}),
    Variant3P("token-mean policy loss (verl/OpenRLHF default)", "policy_loss", _policy_loss(reduce=_token_mean),
              "matches agg='token-mean'", {"agg": "token-mean"}),
    Variant3P("population-variance whitening (OpenRLHF)", "whiten", _whiten(population=True), "unbiased=False",
              {"unbiased": False}),
    Variant3P("TRL-style loss on ratios returning (loss, stats)", "policy_loss", _trl_style_loss,
              "agg='token-mean'", {"agg": "token-mean", "adapter": [adapters.ratio_input, adapters.first,
                                                                  adapters.rename(clip_eps="cliprange")]},
              {"adapter": [adapters.ratio_input, adapters.first, adapters.rename(clip_eps="cliprange")]}),
    Variant3P("objective instead of loss", "policy_loss", _objective_not_loss, "sign flipped",
              {"adapter": adapters.negate}),
    Variant3P("TRL/verl score on the first pad", "kl_shaped_rewards", _kl_shaped_first_pad,
              "score_position='after_last'", {"score_position": "after_last"}),
]  # fmt: skip
"""Correct code under another documented convention: diagnosed by name, accepted with that convention."""
