"""Critic-free advantages: everything the oracle knows about ``rloo_advantages`` (Ahmadian et al. 2024),
``reinforce_pp_advantages`` and ``reinforce_pp_baseline_advantages`` (Hu 2025) and ``remax_advantages`` (Li et al.
2023).

- inputs: groups of 1-5 samples with verifiable 0/1 scores (often all equal inside a group) or real scores, groups
  of one where the candidate's conventions allow them; per-token rewards with a score at the last valid token and
  a small KL reward elsewhere, masks with holes, rows up to 300 tokens;
- the tolerance: group sums by the size of the terms (mean |s|), returns-to-go by the recursion's carried error,
  whitening by the spread (divided by sigma), as the GRPO advantages and ``whiten``;
- the variants the diagnosis names: the singleton conventions (refuse, 0, the score), the sample in its own
  baseline, a divisor n for n - 1, strided groups; Bessel vs population variance and OpenRLHF's variance floor,
  holes skipped vs zero-filled vs reset, the return carried into the next sequence, no whitening, the KL before
  vs after the baseline.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rlhf_oracle import reference as R

from .. import tolerances as tol
from ..axes.groups import WHITENINGS, draw_group_size, group_scores, returns_to_go, whiten_by
from ..cases import Accepted, Case, Draw, Fixed, Params, advantages_like, fill_padding, floats, masks
from ..registry import Conditioning, FormulaSpec, register
from ..variants import Variant, by_name, convention, where

__all__ = [
    "REINFORCE_PP_ADVANTAGES",
    "REINFORCE_PP_BASELINE_ADVANTAGES",
    "REMAX_ADVANTAGES",
    "RLOO_ADVANTAGES",
]

# ----------------------------------------------------------------------------------------------------------------
# inputs


def _token_rewards(draw: Draw, b: int, t: int, m: np.ndarray) -> np.ndarray:
    """A score at the last valid token plus a small per-token KL reward (the REINFORCE++/ReMax reward), or
    arbitrary per-token rewards (process rewards)."""
    if draw(st.booleans()):
        return np.asarray(draw(advantages_like((b, t))))
    kl = np.asarray(draw(hnp.arrays(np.float64, (b, t), elements=floats(-0.05, 0.05))))
    scores = np.asarray(draw(advantages_like((b,))))
    r = kl.copy()
    for i in range(b):
        valid = np.flatnonzero(m[i])
        if valid.size:
            r[i, valid[-1]] += scores[i]
    return r


def _length(draw: Draw, max_t: int) -> int:
    """Mostly short rows, sometimes long ones (the blockwise scan's several levels)."""
    return int(draw(st.one_of(st.integers(2, 10), st.integers(120, 300))) if max_t > 10 else draw(st.integers(2, 10)))


@st.composite
def _rloo_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    p = Params("rloo_advantages", draw, fixed, accepted)
    singleton = p("singleton", st.sampled_from(R.SINGLETON_RULES))
    group_size = draw_group_size(draw, singleton != "error")
    b = group_size * draw(st.integers(1, 3))
    scores = group_scores(draw, b, group_size)
    if (accepted is None or "mask" in accepted) and draw(st.booleans()):
        p.kwargs["mask"] = draw(masks(b, draw(st.integers(1, 6)), min_valid=1))
    return Case("rloo_advantages", (scores, group_size), ("scores", "group_size"), p.finish())


@st.composite
def _rpp_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = draw(st.integers(1, 4)), _length(draw, 300)
    m = draw(masks(b, t, min_valid=1))
    if int(m.sum()) < 2:  # the variance needs two valid tokens (one token is an edge case)
        m[0, :2] = True
    arrays = {"rewards": _token_rewards(draw, b, t, m)}
    fill = fill_padding(draw, arrays, m)
    p = Params("reinforce_pp_advantages", draw, fixed, accepted)
    p("gamma", st.sampled_from([1.0, 0.99, 0.9, 0.0]))
    p("unbiased", st.booleans())
    p("eps", st.sampled_from([1e-8, 1e-6]))
    args = (arrays["rewards"], m)
    return Case("reinforce_pp_advantages", args, ("rewards", "mask"), p.finish(), m, ("rewards",), fill)


@st.composite
def _rppb_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    group_size = draw_group_size(draw, True)
    b = group_size * draw(st.integers(1, 3))
    t = _length(draw, 300) if draw(st.integers(0, 4)) == 0 else draw(st.integers(2, 8))
    m = draw(masks(b, t, min_valid=1))
    if int(m.sum()) < 2:
        m[0, :2] = True
    scores = group_scores(draw, b, group_size)
    p = Params("reinforce_pp_baseline_advantages", draw, fixed, accepted)
    p("unbiased", st.booleans())
    p("eps", st.sampled_from([1e-8, 1e-6]))
    per_token: tuple[str, ...] = ()
    fill = "keep"
    if (accepted is None or "kl_rewards" in accepted) and draw(st.booleans()):
        p("kl_position", st.sampled_from(R.KL_POSITIONS))
        arrays = {"kl_rewards": np.asarray(draw(hnp.arrays(np.float64, (b, t), elements=floats(-0.1, 0.1))))}
        fill = fill_padding(draw, arrays, m)
        p.kwargs["kl_rewards"] = arrays["kl_rewards"]
        per_token = ("kl_rewards",)
    args = (scores, group_size, m)
    return Case("reinforce_pp_baseline_advantages", args, ("scores", "group_size", "mask"), p.finish(), m,
                per_token, fill)  # fmt: skip


@st.composite
def _remax_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = draw(st.integers(1, 4)), _length(draw, 300)
    m = draw(masks(b, t, min_valid=1))
    arrays = {"rewards": _token_rewards(draw, b, t, m)}
    fill = fill_padding(draw, arrays, m)
    baseline = np.asarray(draw(advantages_like((b,))))
    args = (arrays["rewards"], m, baseline)
    return Case("remax_advantages", args, ("rewards", "mask", "baseline_scores"), {}, m, ("rewards",), fill)


# ----------------------------------------------------------------------------------------------------------------
# the tolerances


def _row_broadcast(c: Case, per_row: np.ndarray) -> np.ndarray:
    mask = c.arg("mask", absent=None)
    return per_row if mask is None else np.where(np.asarray(mask, dtype=bool), per_row[:, None], 0.0)


def _tol_rloo(c: Case) -> Conditioning:
    s = tol.finite(c.named()["scores"])
    n = int(c.arg("group_size"))
    groups = np.abs(s.reshape(-1, n))
    factor = n / (n - 1) if n > 1 else 1.0
    size = (groups + groups.mean(1, keepdims=True)) * factor  # the mean's rounding: eps * mean|s| (not |mean|)
    return tol.sum_cond(n), _row_broadcast(c, size.reshape(-1))


def _whitened_scale(c: Case, x_abs: np.ndarray, x: np.ndarray, unbiased: bool, eps: float) -> np.ndarray:
    """(x - mu)/sigma: errors of size eps * (|x|'s terms + |mu|), divided by sigma."""
    assert c.mask is not None
    vals = x[c.mask]
    mu = float(vals.mean())
    var = float(vals.var(ddof=1 if unbiased else 0)) if vals.size > 1 else 0.0
    sigma = math.sqrt(var + eps)
    scale = (float(x_abs[c.mask].max()) + abs(mu)) / sigma
    return np.where(c.mask, scale, 0.0)


def _tol_rpp(c: Case) -> Conditioning:
    assert c.mask is not None
    r, gamma = tol.valid(c, "rewards"), float(c.arg("gamma"))
    scale = _whitened_scale(
        c,
        returns_to_go(np.abs(r), c.mask, gamma),
        returns_to_go(r, c.mask, gamma),
        bool(c.arg("unbiased")),
        float(c.arg("eps")),
    )
    cond = tol.recursion_cond(c.mask.shape[1], gamma, 1.0) + tol.sum_cond(int(c.mask.sum()))
    return cond, scale


def _group_centred(groups: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The reference's baseline: each group's scores minus the group mean."""
    centred: np.ndarray = groups - groups.mean(1, keepdims=True)
    return centred


def _rppb_x(
    c: Case, *, absolute: bool = False, centring: Callable[[np.ndarray, np.ndarray], np.ndarray] = _group_centred
) -> np.ndarray:
    """The value the REINFORCE++-baseline whitens (or the size of its terms, ``absolute``); ``centring(groups,
    scores)`` removes the baseline (a variant's own reading)."""
    assert c.mask is not None
    s = tol.finite(c.named()["scores"])
    n = int(c.arg("group_size"))
    k = tol.valid(c, "kl_rewards") if c.arg("kl_rewards") is not None else np.zeros(c.mask.shape)
    before = c.arg("kl_position") == "before"
    if before:
        s = s + (np.abs(k).sum(1) if absolute else np.where(c.mask, k, 0.0).sum(1))
    groups = s.reshape(-1, n)
    if absolute:
        centred = np.abs(groups) + np.abs(groups).mean(1, keepdims=True)
    else:
        with np.errstate(all="ignore"):
            centred = centring(groups, s)
    x = np.where(c.mask, centred.reshape(-1)[:, None], 0.0)
    if not before:
        kk = np.abs(k) if absolute else k
        x = x + returns_to_go(np.where(c.mask, kk, 0.0), c.mask, 1.0)
    return x


def _tol_rppb(c: Case) -> Conditioning:
    assert c.mask is not None
    scale = _whitened_scale(c, _rppb_x(c, absolute=True), _rppb_x(c, absolute=False), bool(c.arg("unbiased")),
                            float(c.arg("eps")))  # fmt: skip
    cond = tol.sum_cond(int(c.arg("group_size"))) + tol.recursion_cond(c.mask.shape[1], 1.0, 1.0)
    return cond + tol.sum_cond(int(c.mask.sum())), scale


def _tol_remax(c: Case) -> Conditioning:
    assert c.mask is not None
    r = tol.valid(c, "rewards")
    b = np.abs(tol.finite(c.named()["baseline_scores"]))
    size = returns_to_go(np.abs(r), c.mask, 1.0) + b[:, None]
    return tol.recursion_cond(c.mask.shape[1], 1.0, 1.0), np.where(c.mask, size, 0.0)


# ----------------------------------------------------------------------------------------------------------------
# variants


def _rloo_np(c: Case, variant: str) -> np.ndarray:
    s = np.asarray(c.named()["scores"], dtype=np.float64)
    n = int(c.arg("group_size"))
    groups = s.reshape(-1, n) if variant != "strided groups" else s.reshape(n, -1).T
    total = groups.sum(1, keepdims=True)
    with np.errstate(all="ignore"):
        if variant == "the sample in its own baseline":
            adv = groups - total / n
        elif variant == "divided by n, not n - 1":
            adv = groups - (total - groups) / n
        elif variant == "NaN for a group of one":
            if n != 1:
                raise NotImplementedError(variant)
            adv = groups - (total - groups) / (n - 1)
        elif variant == "strided groups":
            adv = groups - (total - groups) / (n - 1)
        else:
            raise NotImplementedError(variant)
    if variant == "strided groups":
        if n == 1:
            raise NotImplementedError(variant)
        flat = adv.T.reshape(-1)
    else:
        flat = adv.reshape(-1)
    return _row_broadcast(c, flat)


def _rloo_variants() -> list[Variant]:
    out = [
        convention(R.rloo_advantages, "singleton", "zero", "a group of one gets 0 (TRL RLOOTrainer, verl "
                   "rloo_vectorized)"),
        convention(R.rloo_advantages, "singleton", "score", "a group of one keeps its score (verl rloo)"),
    ]  # fmt: skip
    described = {
        "the sample in its own baseline": "s_i - mean of the whole group, the sample included (the GRPO/Dr. GRPO "
        "mean): (n-1)/n of the RLOO advantage, and a biased baseline",
        "divided by n, not n - 1": "the sum of the others divided by the group size n",
        "strided groups": "row i in group i mod n_groups instead of consecutive blocks",
        "NaN for a group of one": "the leave-one-out mean 0/0 of a group of one (TRL before its nan_to_num)",
    }
    out += [Variant(name, d, functools.partial(by_name, _rloo_np, name)) for name, d in described.items()]
    return out


def _rpp_np(c: Case, variant: str) -> np.ndarray:
    assert c.mask is not None
    r, m = where(c.mask, np.asarray(c.named()["rewards"], dtype=np.float64)), c.mask
    gamma, unbiased, eps = float(c.arg("gamma")), bool(c.arg("unbiased")), float(c.arg("eps"))
    g = np.zeros_like(r)
    if variant in ("zero-filled holes", "reset at holes"):
        for b in range(r.shape[0]):
            running = 0.0
            valid = np.flatnonzero(m[b])
            for t in range(valid[-1] if valid.size else -1, -1, -1):
                if m[b, t]:
                    running = r[b, t] + gamma * running
                    g[b, t] = running
                else:
                    running = gamma * running if variant == "zero-filled holes" else 0.0
    elif variant == "return carried into the next sequence":
        g = returns_to_go(r.reshape(1, -1), m.reshape(1, -1), gamma).reshape(r.shape)
    else:
        g = returns_to_go(r, m, gamma)
    if variant == "not whitened":
        return where(m, g)
    return whiten_by(g, m, variant if variant in WHITENINGS else "", unbiased, eps)


def _rpp_variants() -> list[Variant]:
    out = [
        convention(R.reinforce_pp_advantages, "unbiased", False, "population variance in the whitening"),
        convention(R.reinforce_pp_advantages, "unbiased", True, "Bessel-corrected variance (verl masked_whiten)"),
    ]
    described = {
        **WHITENINGS,
        "zero-filled holes": "the rewards multiplied by the mask and the return run through the holes, discounted "
        "once more per hole (OpenRLHF get_cumulative_returns); the same for gamma = 1",
        "reset at holes": "the running return restarted at every masked position (`running *= mask`): the tokens "
        "before a hole lose the rewards after it",
        "return carried into the next sequence": "one running return over the whole flattened batch, never reset "
        "between rows: the last token of a row gets the next row's return",
        "not whitened": "the return-to-go itself (no batch normalisation)",
    }
    out += [Variant(name, d, functools.partial(by_name, _rpp_np, name)) for name, d in described.items()]
    return out


def _rppb_np(c: Case, variant: str) -> np.ndarray:
    assert c.mask is not None
    n = int(c.arg("group_size"))
    if variant.startswith("a group of one keeps its score (verl)"):
        if n != 1:
            raise NotImplementedError(variant)
        x = _rppb_x(c, centring=lambda groups, s: groups)
    elif variant == "batch mean, not group mean":
        if n == 1:  # (for groups of one the same reading as the singleton convention, which names it)
            raise NotImplementedError(variant)
        x = _rppb_x(c, centring=lambda groups, s: groups - s.mean())
    elif variant == "divided by the group std":
        x = _rppb_x(c, centring=lambda groups, s: _group_centred(groups, s) / (groups.std(1, ddof=1, keepdims=True)
                                                                            + 1e-6))  # fmt: skip
    else:
        x = _rppb_x(c)
    m, unbiased, eps = c.mask, bool(c.arg("unbiased")), float(c.arg("eps"))
    if variant in ("not whitened", "divided by the group std"):
        return where(m, x)
    if variant == _VERL_SINGLETON:
        return whiten_by(x, m, "+1e-8 in the count (verl masked_whiten)", unbiased, eps)
    return whiten_by(x, m, variant if variant in WHITENINGS else "", unbiased, eps)


_VERL_SINGLETON = "a group of one keeps its score (verl), whitened by masked_whiten (+1e-8 in the count)"


def _rppb_variants() -> list[Variant]:
    out = [
        convention(R.reinforce_pp_baseline_advantages, "unbiased", False, "population variance (OpenRLHF)"),
        convention(R.reinforce_pp_baseline_advantages, "unbiased", True, "Bessel-corrected variance (verl)"),
        convention(R.reinforce_pp_baseline_advantages, "kl_position", "before", "the KL rewards summed into the "
                   "score before the group mean is removed (verl: scores = sum of token_level_rewards)"),
        convention(R.reinforce_pp_baseline_advantages, "kl_position", "after", "the group mean removed from the "
                   "score, the KL rewards added after it as a return-to-go (OpenRLHF)"),
    ]  # fmt: skip
    described = {
        **WHITENINGS,
        "a group of one keeps its score (verl)": "a group of one takes its mean as 0, so keeps its score before "
        "the whitening (verl's id2mean = 0)",
        "batch mean, not group mean": "the score minus the batch mean (OpenRLHF flash_reinforce)",
        "divided by the group std": "the GRPO advantage (group std) instead of the batch whitening",
        "not whitened": "the centred score itself (Dr. GRPO's advantage)",
    }
    out += [Variant(name, d, functools.partial(by_name, _rppb_np, name)) for name, d in described.items()]
    out.append(Variant(_VERL_SINGLETON, "verl's whole reading: a group of one keeps its score and masked_whiten "
                       "divides its mean and variance by n + 1e-8", functools.partial(by_name, _rppb_np,
                       _VERL_SINGLETON), deviations=2))  # fmt: skip
    return out


def _remax_np(c: Case, variant: str) -> np.ndarray:
    assert c.mask is not None
    m = c.mask
    r = where(m, np.asarray(c.named()["rewards"], dtype=np.float64))
    b = np.asarray(c.named()["baseline_scores"], dtype=np.float64)[:, None]
    if variant == "baseline not subtracted":
        return where(m, returns_to_go(r, m, 1.0))
    if variant == "baseline added":
        return where(m, returns_to_go(r, m, 1.0) + b)
    if variant == "token reward, not the return-to-go":
        return where(m, r - b)
    if variant == "whole-sequence sum at every token":
        return where(m, r.sum(1, keepdims=True) - b)
    if variant == "return carried into the next sequence":  # one return over the flattened batch
        return where(m, returns_to_go(r.reshape(1, -1), m.reshape(1, -1), 1.0).reshape(r.shape) - b)
    raise NotImplementedError(variant)


def _remax_variants() -> list[Variant]:
    described = {
        "baseline not subtracted": "the return-to-go alone (plain REINFORCE)",
        "baseline added": "the greedy score added instead of subtracted",
        "token reward, not the return-to-go": "r_t - b: the reward of the token only",
        "whole-sequence sum at every token": "the row's total reward minus b at every token (a sequence-level "
        "advantage: differs from the return-to-go where rewards are not all at the last token)",
        "return carried into the next sequence": "one running return over the flattened batch, never reset "
        "between rows",
    }
    return [Variant(name, d, functools.partial(by_name, _remax_np, name)) for name, d in described.items()]


# ----------------------------------------------------------------------------------------------------------------
# the registry entries

_GROUPS_PAPER = "Ahmadian et al. 2024 (RLOO); Kool et al. 2019"

RLOO_ADVANTAGES = register(
    FormulaSpec(
        id="rloo_advantages",
        reference=R.rloo_advantages,
        torch_name="rloo_advantages",
        strategy=_rloo_cases,
        tolerance=_tol_rloo,
        tolerance_note="s - sum(others)/(n - 1): the group sum's rounding ~ eps * mean|s| (not |mean|, which "
        "cancels), times n/(n - 1); reduced over the group.",
        differentiable=(),
        gradient=None,
        paper=_GROUPS_PAPER,
        equation="Ahmadian et al. 2024 eq. 9",
        docs_page="critic-free",
        derivations=("rloo_leave_one_out_identity", "rloo_baseline_unbiased"),
        conventions=("singleton",),
        variants=tuple(_rloo_variants()),
        bad_hyper=(("group_size", 0), ("singleton", "nan")),
    )
)

REINFORCE_PP_ADVANTAGES = register(
    FormulaSpec(
        id="reinforce_pp_advantages",
        reference=R.reinforce_pp_advantages,
        torch_name="reinforce_pp_advantages",
        strategy=_rpp_cases,
        tolerance=_tol_rpp,
        tolerance_note="return-to-go: errors ~ eps * (sum of |r| ahead) carried 1 + min(T, 1/(1 - gamma)) steps; "
        "then whitening: divided by sigma, reduced over the batch's valid tokens.",
        differentiable=(),
        gradient=None,
        paper="Hu 2025, REINFORCE++ (arXiv 2501.03262)",
        equation="§3: return-to-go of the KL-shaped token rewards, global advantage normalisation",
        docs_page="critic-free",
        derivations=(),
        conventions=("gamma", "unbiased", "eps"),
        variants=tuple(_rpp_variants()),
        per_token_output=True,
        bad_hyper=(("gamma", 1.5), ("eps", -1.0)),
    )
)

REINFORCE_PP_BASELINE_ADVANTAGES = register(
    FormulaSpec(
        id="reinforce_pp_baseline_advantages",
        reference=R.reinforce_pp_baseline_advantages,
        torch_name="reinforce_pp_baseline_advantages",
        strategy=_rppb_cases,
        tolerance=_tol_rppb,
        tolerance_note="group mean (eps * mean|s|) plus the KL return-to-go, then whitening: divided by sigma, "
        "reduced over the group, the row and the batch.",
        differentiable=(),
        gradient=None,
        paper="Hu 2025, REINFORCE++-baseline (arXiv 2501.03262)",
        equation="group-mean baseline, then global whitening",
        docs_page="critic-free",
        derivations=("batch_std_decomposition",),
        conventions=("unbiased", "eps", "kl_position"),
        variants=tuple(_rppb_variants()),
        per_token_output=True,
        bad_hyper=(("group_size", 0), ("eps", -1.0), ("kl_position", "middle")),
    )
)

REMAX_ADVANTAGES = register(
    FormulaSpec(
        id="remax_advantages",
        reference=R.remax_advantages,
        torch_name="remax_advantages",
        strategy=_remax_cases,
        tolerance=_tol_remax,
        tolerance_note="return-to-go: errors ~ eps * (sum of |r| ahead + |b|), carried over up to T steps.",
        differentiable=(),
        gradient=None,
        paper="Li et al. 2023, ReMax (arXiv 2310.10505)",
        equation="Algorithm 1: the greedy response's reward as the baseline",
        docs_page="critic-free",
        derivations=(),
        conventions=(),
        variants=tuple(_remax_variants()),
        per_token_output=True,
        masked_output_note="an advantage at a masked position (verl leaves the reverse cumulative sum at a hole)",
    )
)
