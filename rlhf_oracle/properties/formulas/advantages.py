"""Advantages: everything the oracle knows about ``gae`` (Schulman et al. 2016), ``whiten`` (the batch
normalisation of advantages and rewards) and ``grpo_advantages`` (DeepSeekMath's group-relative scores).

- inputs: per-token rewards and values with masks that have holes (multi-turn), gamma and lambda at their edges
  (0 and 1); values to whiten with offsets (a cancelling mean) and both variance conventions; groups of 2-5
  binary (verifiable) or real scores, often identical inside a group;
- the tolerance: the recursion's carried error (cond 1 + min(T, 1/(1 - gamma lam))); (x - mu)/sigma errors
  divided by sigma; group means by mean|s| (not |mean|, which is 0 when the scores cancel);
- the variants: holes zero-filled or unmasked, bootstrap past the end, gamma/lam swapped, advantages whitened
  inside GAE (verl); pads or rows in the statistics, eps outside the sqrt, +1e-8 in the count; strided groups,
  batch std, eps inside the sqrt, and the documented conventions (Bessel vs population, shift_mean, Dr. GRPO).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rlhf_oracle import reference as R

from .. import tolerances as tol
from ..cases import Accepted, Case, Draw, Fixed, Params, advantages_like, fill_padding, float_arrays, masks, shape_bt
from ..registry import Conditioning, FormulaSpec, register
from ..variants import Variant, by_name, convention, where

__all__ = ["GAE", "GRPO_ADVANTAGES", "WHITEN"]

# ----------------------------------------------------------------------------------------------------------------
# inputs


@st.composite
def _gae_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = shape_bt(draw, 4, 10)
    m = draw(masks(b, t, min_valid=1))
    arrays = {"rewards": draw(advantages_like((b, t))), "values": draw(advantages_like((b, t)))}
    fill = fill_padding(draw, arrays, m)
    p = Params("gae", draw, fixed, accepted)
    p("gamma", st.sampled_from([1.0, 0.99, 0.9, 0.0]))
    p("lam", st.sampled_from([0.95, 1.0, 0.0, 0.5]))
    args = (arrays["rewards"], arrays["values"], m)
    return Case("gae", args, ("rewards", "values", "mask"), p.finish(), m, ("rewards", "values"), fill)


@st.composite
def _whiten_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = draw(st.integers(1, 4)), draw(st.integers(2, 8))
    p = Params("whiten", draw, fixed, accepted)
    p("shift_mean", st.booleans())
    p("unbiased", st.booleans())
    m = draw(masks(b, t, min_valid=1))
    if int(m.sum()) < 2:  # a variance needs two valid tokens (one token is an edge case)
        m[0, :2] = True
    x = draw(st.one_of(advantages_like((b, t)), float_arrays((b, t), -1e3, 1e3)))
    scale_offset = draw(st.sampled_from([0.0, 100.0]))
    arrays = {"x": x + scale_offset}
    fill = fill_padding(draw, arrays, m)
    return Case("whiten", (arrays["x"], m), ("x", "mask"), p.finish(), m, ("x",), fill)


@st.composite
def _grpo_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    group_size = draw(st.integers(2, 5))
    n_groups = draw(st.integers(1, 3))
    b = group_size * n_groups
    if draw(st.booleans()):  # verifiable rewards: 0/1, often identical inside a group
        scores = draw(hnp.arrays(np.float64, (b,), elements=st.sampled_from([0.0, 1.0])))
    else:
        scores = draw(advantages_like((b,)))
    p = Params("grpo_advantages", draw, fixed, accepted)
    p("std_normalize", st.booleans())
    p("unbiased", st.booleans())
    p("eps", st.sampled_from([1e-6, 1e-4]))
    p("std_level", st.sampled_from(R.STD_LEVELS))
    if (accepted is None or "mask" in accepted) and draw(st.booleans()):
        t = draw(st.integers(1, 6))
        p.kwargs["mask"] = draw(masks(b, t, min_valid=1))
    return Case("grpo_advantages", (scores, group_size), ("scores", "group_size"), p.finish())


# ----------------------------------------------------------------------------------------------------------------
# the tolerances


def _tol_gae(c: Case) -> Conditioning:
    assert c.mask is not None
    r, v = np.abs(tol.valid(c, "rewards")), np.abs(tol.valid(c, "values"))
    row = (r + v).max(1, keepdims=True) if r.size else np.zeros((r.shape[0], 1))
    cond = tol.recursion_cond(c.mask.shape[1], float(c.arg("gamma")), float(c.arg("lam")))
    return cond, np.where(c.mask, row, 0.0)


def _tol_whiten(c: Case) -> Conditioning:
    assert c.mask is not None
    vals = tol.valid(c, "x")[c.mask]
    mu = float(vals.mean())
    var = float(vals.var(ddof=1 if c.arg("unbiased") else 0))
    sigma = math.sqrt(var + float(c.arg("eps")))
    scale = (float(np.max(np.abs(vals))) + abs(mu)) / sigma
    if not c.arg("shift_mean"):
        scale += abs(mu)
    return tol.sum_cond(vals.size), np.where(c.mask, scale, 0.0)


def _tol_grpo(c: Case) -> Conditioning:
    s = tol.finite(c.named()["scores"])
    g = int(c.arg("group_size"))
    groups = s.reshape(-1, g)
    # a mean's rounding error is eps * mean|s| (the policy: the size of the terms summed), not eps * |mean|,
    # which is 0 when the scores cancel
    size = np.abs(groups) + np.abs(groups).mean(1, keepdims=True)
    if c.arg("std_normalize"):
        ddof = 1 if c.arg("unbiased") else 0
        std = groups.std(1, ddof=ddof, keepdims=True) if c.arg("std_level") == "group" else s.std(ddof=ddof)
        size = size / (std + float(c.arg("eps")))
    flat = size.reshape(-1)
    mask = c.arg("mask")
    scale = flat if mask is None else np.where(np.asarray(mask, dtype=bool), flat[:, None], 0.0)
    return tol.sum_cond(g), scale


# ----------------------------------------------------------------------------------------------------------------
# variants


def _whiten_np(c: Case, variant: str) -> np.ndarray:
    n = c.named()
    x, m = np.asarray(n["x"], dtype=np.float64), np.asarray(n["mask"], dtype=bool)
    shift_mean, unbiased, eps = bool(c.arg("shift_mean")), bool(c.arg("unbiased")), float(c.arg("eps"))
    with np.errstate(all="ignore"):
        if variant == "pads in the statistics":
            vals = x.reshape(-1)
            mu, var = vals.mean(), vals.var(ddof=1 if unbiased else 0)
            out = (x - mu) / np.sqrt(var + eps)
            return where(m, out + (0 if shift_mean else mu))
        if variant == "per-row statistics":
            out = np.zeros_like(x)
            for b in range(x.shape[0]):
                vals = x[b][m[b]]
                mu, var = vals.mean(), vals.var(ddof=1 if unbiased else 0)
                out[b] = (x[b] - mu) / np.sqrt(var + eps) + (0 if shift_mean else mu)
            return where(m, out)
        vals = x[m]
        mu, var = vals.mean(), vals.var(ddof=1 if unbiased else 0)
        if variant == "Bessel factor n/(n-1) rounded to float32":
            if not unbiased:
                raise NotImplementedError(variant)
            var = vals.var() * float(np.float32(vals.size) / np.float32(vals.size - 1))
            return where(m, (x - mu) / np.sqrt(var + eps) + (0 if shift_mean else mu))
        if variant == "x / sigma":
            return where(m, x / np.sqrt(var + eps))
        if variant == "eps outside the sqrt":
            return where(m, (x - mu) / (np.sqrt(var) + eps) + (0 if shift_mean else mu))
        if variant == "+1e-8 in the count":
            k = vals.size
            mu = vals.sum() / (k + 1e-8)
            var = ((vals - mu) ** 2).sum() / (k + 1e-8) * (k / (k - 1) if unbiased else 1.0)
            return where(m, (x - mu) / np.sqrt(var + eps) + (0 if shift_mean else mu))
    raise NotImplementedError(variant)


def _gae_np(c: Case, variant: str) -> tuple[np.ndarray, np.ndarray]:
    n = c.named()
    r, v = np.asarray(n["rewards"], dtype=np.float64), np.asarray(n["values"], dtype=np.float64)
    m = np.asarray(n["mask"], dtype=bool)
    gamma, lam = float(c.arg("gamma")), float(c.arg("lam"))
    if variant == "gamma and lam swapped":
        gamma, lam = lam, gamma
    adv = np.zeros_like(r)
    if variant == "carry not reset between rows":  # one recursion over the flattened batch's valid tokens
        m1 = m.reshape(1, -1)
        one = Case("gae", (where(m, r).reshape(1, -1), where(m, v).reshape(1, -1), m1), ("rewards", "values", "mask"),
                   {"gamma": gamma, "lam": lam}, m1, ("rewards", "values"))  # fmt: skip
        a1, _ = _gae_np(one, "")
        adv = a1.reshape(r.shape)
        return adv, where(m, adv + v)
    if variant == "returns as the reward-to-go":
        adv, _ = R.gae(r, v, m, gamma=gamma, lam=lam)
        ret, _ = R.gae(r, np.zeros_like(v), m, gamma=gamma, lam=1.0)
        return np.asarray(adv), np.asarray(ret)
    with np.errstate(all="ignore"):
        for b in range(r.shape[0]):
            if variant in ("zero-filled holes", "unmasked"):
                rb = r[b] if variant == "unmasked" else where(m[b], r[b])
                vb = v[b] if variant == "unmasked" else where(m[b], v[b])
                positions: list[int] = list(range(r.shape[1]))
            else:
                rb, vb = r[b], v[b]
                positions = [int(t) for t in np.flatnonzero(m[b])]
            next_v, next_a = 0.0, 0.0
            if variant == "bootstrap past the end" and positions and positions[-1] + 1 < r.shape[1]:
                next_v = float(v[b, positions[-1] + 1])
            for t in reversed(positions):
                delta = rb[t] + gamma * next_v - vb[t]
                next_a = delta + gamma * lam * next_a
                adv[b, t] = next_a
                next_v = vb[t]
    adv = where(m, adv)
    return adv, where(m, adv + v)


def _gae_variants() -> list[Variant]:
    described = {
        "zero-filled holes": "masked positions zero-filled but not skipped: the recursion runs through the holes "
        "with r = V = 0 there (TRL/OpenRLHF-style masking applied to multi-turn masks; verl PR #2337)",
        "unmasked": "masked rewards/values used as if valid (ROLL PR #447: unmasked V passed to GAE)",
        "bootstrap past the end": "V after the last valid token read from the next (pad) slot instead of 0 "
        "(DS-Chat PR #672 off-by-one)",
        "gamma and lam swapped": "gamma and lambda exchanged",
        "carry not reset between rows": "the recursion's carry (A_next, V_next) not reset at the end of a row: "
        "one recursion over the flattened batch, each row's last token bootstrapping from the next row",
        "returns as the reward-to-go": "returns = the discounted sum of the rewards ahead (Monte Carlo), not "
        "A + V (the lambda-return that GAE's advantages belong to)",
    }
    out = [Variant(name, d, functools.partial(by_name, _gae_np, name)) for name, d in described.items()]

    def whitened(c: Case, unbiased: bool, guard: bool = False) -> tuple[np.ndarray, np.ndarray]:
        adv, ret = R.gae(*c.args, **c.kwargs)
        m = np.asarray(c.named()["mask"], dtype=bool)
        if guard:
            wc = Case("whiten", (adv, m), ("x", "mask"), {"unbiased": unbiased}, m, ("x",))
            return _whiten_np(wc, "+1e-8 in the count"), ret
        return np.asarray(R.whiten(adv, m, unbiased=unbiased)), ret

    out += [
        Variant(
            "advantages whitened inside GAE (Bessel)",
            "the advantages come back already whitened over the batch's valid tokens (mean 0, Bessel-corrected "
            "variance), returns = raw A + V (verl compute_gae_advantage_return calls masked_whiten)",
            lambda c: whitened(c, True),
        ),
        Variant(
            "advantages whitened inside GAE (Bessel, counts + 1e-8)",
            "the advantages come back already whitened over the batch's valid tokens by verl's masked_whiten "
            "(Bessel-corrected variance, mean and variance over n + 1e-8), returns = raw A + V "
            "(verl compute_gae_advantage_return)",
            lambda c: whitened(c, True, guard=True),
        ),
        Variant(
            "advantages whitened inside GAE (population variance)",
            "the advantages come back already whitened (population variance), returns = raw A + V",
            lambda c: whitened(c, False),
        ),
    ]
    return out


def _whiten_variants() -> list[Variant]:
    out = [
        convention(R.whiten, "unbiased", False, "population variance (lm-human-preferences tf.nn.moments, OpenRLHF)"),
        convention(R.whiten, "unbiased", True, "Bessel-corrected variance (TRL, verl masked_whiten)"),
        convention(R.whiten, "shift_mean", False, "(x - mu)/sigma + mu: the mean kept (TRL whiten_rewards)"),
        convention(R.whiten, "shift_mean", True, "(x - mu)/sigma"),
    ]
    described = {
        "x / sigma": "x / sigma for shift_mean=False (THUDM/slime #1369)",
        "pads in the statistics": "mean and variance over all B*T positions, pads included",
        "per-row statistics": "mean and variance per row instead of over the batch",
        "eps outside the sqrt": "(x - mu) / (sigma + eps)",
        "+1e-8 in the count": "mean and variance divided by n + 1e-8 (verl masked_mean inside masked_whiten): a "
        "relative change of about 1e-8/n, below float32 resolution",
        "Bessel factor n/(n-1) rounded to float32": "the variance times mask_sum / (mask_sum - 1) of a boolean "
        "mask's integer count, which torch divides in float32 (TRL's and verl's masked_var given a bool mask)",
    }
    out += [Variant(name, d, functools.partial(by_name, _whiten_np, name)) for name, d in described.items()]
    return out


def _grpo_np(c: Case, variant: str) -> np.ndarray:
    s = np.asarray(c.named()["scores"], dtype=np.float64)
    g = int(c.arg("group_size"))
    std_normalize, unbiased, eps = bool(c.arg("std_normalize")), bool(c.arg("unbiased")), float(c.arg("eps"))
    groups = s.reshape(-1, g) if variant != "strided groups" else s.reshape(g, -1).T
    mean = groups.mean(1, keepdims=True)
    ddof = 1 if unbiased else 0
    batch = c.arg("std_level") == "batch"
    with np.errstate(all="ignore"):
        if variant == "batch std of the centred scores (REINFORCE++-baseline)":
            if not batch:
                raise NotImplementedError(variant)
            std = (groups - mean).std(ddof=ddof)
        elif variant == "Bessel factor n/(n-1) rounded to float32 (TRL nanstd)":
            if not unbiased:
                raise NotImplementedError(variant)
            k = s.size if batch else g
            factor = float(np.float32(k) / np.float32(k - 1))  # an int64 count divided in torch: float32
            std = np.sqrt((s.var() if batch else groups.var(1, keepdims=True)) * factor)
        elif variant == "statistics in float32 (verl group_mean_std)":
            g32 = (s.reshape(1, -1) if batch else groups).astype(np.float32)
            mean32 = g32.sum(1, dtype=np.float32, keepdims=True) / np.float32(g32.shape[1])
            d32 = g32 - mean32
            var32 = (d32 * d32).sum(1, dtype=np.float32, keepdims=True) / np.float32(g32.shape[1] - ddof)
            mean = mean32.astype(np.float64) if not batch else mean
            # std + eps is a float32 tensor plus a Python float: float32, then divides the float64 scores
            std = (np.sqrt(var32) + np.float32(eps)).astype(np.float64) - eps
        elif variant == "eps inside the sqrt":
            std = np.sqrt((s.var(ddof=ddof) if batch else groups.var(1, ddof=ddof, keepdims=True)) + eps) - eps
        else:
            std = s.std(ddof=ddof) if batch else groups.std(1, ddof=ddof, keepdims=True)
        adv = (groups - mean) / (std + eps) if std_normalize else groups - mean
    flat = adv.reshape(-1) if variant != "strided groups" else adv.T.reshape(-1)
    mask = c.arg("mask")
    if variant == "mask ignored":
        if mask is None:
            raise NotImplementedError(variant)
        return np.broadcast_to(flat[:, None], np.shape(mask)).copy()
    if mask is None:
        return np.asarray(flat)
    return where(np.asarray(mask, dtype=bool), flat[:, None])


def _grpo_variants() -> list[Variant]:
    out = [
        convention(R.grpo_advantages, "unbiased", False, "population std"),
        convention(R.grpo_advantages, "unbiased", True, "Bessel-corrected std (torch.std: verl, TRL)"),
        convention(R.grpo_advantages, "std_normalize", False, "mean-centred only (Dr. GRPO)"),
        convention(R.grpo_advantages, "std_normalize", True, "normalised by the group std (DeepSeekMath)"),
        convention(R.grpo_advantages, "std_level", "batch", "group mean but the std of the raw scores over the "
                   "batch (TRL scale_rewards='batch', Lite PPO)"),
        convention(R.grpo_advantages, "std_level", "group", "the std of the group (TRL scale_rewards='group')"),
    ]  # fmt: skip
    described = {
        "strided groups": "row i in group i mod n_groups instead of consecutive blocks",
        "batch std of the centred scores (REINFORCE++-baseline)": "the std of the group-centred scores over the "
        "batch, not of the raw scores: smaller by the between-group variance",
        "eps inside the sqrt": "sqrt(var + eps) instead of std + eps",
        "mask ignored": "the row's advantage broadcast over every position, padding included (the mask not applied)",
        "statistics in float32 (verl group_mean_std)": "the group mean and std of the scores cast to float32 "
        "(verl's grpo_vectorized: group_mean_std works in float32), applied to the float64 scores",
        "Bessel factor n/(n-1) rounded to float32 (TRL nanstd)": "the population variance times count / (count - 1) "
        "of an integer count, which torch divides in float32 (TRL's nanstd): a float64 result off by one float32 "
        "rounding",
    }
    out += [Variant(name, d, functools.partial(by_name, _grpo_np, name)) for name, d in described.items()]
    return out


# ----------------------------------------------------------------------------------------------------------------
# the registry entries

GAE = register(
    FormulaSpec(
        id="gae",
        reference=R.gae,
        torch_name="gae",
        strategy=_gae_cases,
        tolerance=_tol_gae,
        tolerance_note="backward recursion: errors of size eps * max_t(|r_t| + |V_t|) per step, carried with weight "
        "(gamma lam)^l: cond = 1 + min(T, 1/(1 - gamma lam)).",
        differentiable=(),
        gradient=None,
        paper="Schulman et al. 2016, High-Dimensional Continuous Control Using GAE",
        equation="eq. 16 (and Schulman et al. 2017 eqs. 11-12)",
        docs_page="advantages",
        derivations=("gae_lambda_one", "gae_lambda_zero"),
        conventions=("gamma", "lam"),
        variants=tuple(_gae_variants()),
        per_token_output=True,
        bad_hyper=(("gamma", 1.5), ("lam", -0.1)),
    )
)

WHITEN = register(
    FormulaSpec(
        id="whiten",
        reference=R.whiten,
        torch_name="whiten",
        strategy=_whiten_cases,
        tolerance=_tol_whiten,
        tolerance_note="(x - mu)/sigma: mean and variance errors ~ eps (max|x| + |mu|), divided by sigma; reduced "
        "over n.",
        differentiable=(),
        gradient=None,
        paper="common RLHF practice (openai/lm-human-preferences utils.whiten; TRL/verl masked_whiten)",
        equation="n/a (normalisation)",
        docs_page="advantages",
        derivations=(),
        conventions=("shift_mean", "unbiased", "eps"),
        variants=tuple(_whiten_variants()),
        per_token_output=True,
        bad_hyper=(("eps", -1.0),),
    )
)

GRPO_ADVANTAGES = register(
    FormulaSpec(
        id="grpo_advantages",
        reference=R.grpo_advantages,
        torch_name="grpo_advantages",
        strategy=_grpo_cases,
        tolerance=_tol_grpo,
        tolerance_note="(s - mean)/(std + eps): errors ~ eps (|s| + |mean|), divided by std + eps (a tiny std "
        "amplifies them: the group-of-identical-scores case), reduced over the group.",
        differentiable=(),
        gradient=None,
        paper="Shao et al. 2024 (DeepSeekMath) outcome supervision; Liu et al. 2025 (Dr. GRPO) without the std",
        equation="DeepSeekMath §4.1.2",
        docs_page="advantages",
        derivations=(),
        conventions=("std_normalize", "unbiased", "eps", "std_level"),
        variants=tuple(_grpo_variants()),
        bad_hyper=(("group_size", 1), ("eps", -1.0), ("std_level", "token")),
    )
)
