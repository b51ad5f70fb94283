"""The reward model's losses: everything the oracle knows about ``reward_model_loss`` (pairwise Bradley-Terry,
with the Llama 2 margin) and ``ranking_loss`` (InstructGPT's K answers, all C(K,2) pairs, normalised).

- inputs: rewards of both signs, gaps small and large, no/scalar/array margins; rankings of K = 2..6 answers,
  ordered or not; the extreme regime: reward gaps of 1e2-1e4 (sigmoid underflows to 0, log(0) = -inf);
- the tolerance: softplus of a difference of rewards, error ~ eps * |D|, reduced over the pairs;
- the gradients: (sigma(D) - 1)/B, with the size of the terms that cancel for D >> 0;
- the variants: the margin's sign or absence, chosen and rejected swapped, a batch sum, the naive log-sigmoid,
  the sign; the K/2 normaliser of the seed, no normaliser, reversed rows, adjacent pairs, the K-way softmax.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import strategies as st

from rlhf_oracle import reference as R

from .. import tolerances as tol
from ..axes.sigmoid import NAIVE_TEXT, log_sigmoid, naive_neg_log_sigmoid, sigmoid
from ..cases import Accepted, BadCase, Case, Draw, Fixed, Params, extreme_gap, float_arrays, floats
from ..gradients import Grad
from ..registry import Conditioning, FormulaSpec, register
from ..variants import Variant, negated

__all__ = ["RANKING_LOSS", "REWARD_MODEL_LOSS"]

# ----------------------------------------------------------------------------------------------------------------
# inputs


@st.composite
def _pair_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b = draw(st.integers(1, 8))
    chosen = draw(float_arrays((b,), -20.0, 20.0))
    gap = draw(st.one_of(float_arrays((b,), -5.0, 5.0), float_arrays((b,), -60.0, 60.0)))
    p = Params("reward_model_loss", draw, fixed, accepted)
    kind = draw(st.sampled_from(["none", "scalar", "array"]))
    if kind == "scalar":
        p("margin", floats(0.0, 2.0))
    elif kind == "array":
        p("margin", float_arrays((b,), 0.0, 2.0))
    return Case("reward_model_loss", (chosen, chosen - gap), ("chosen", "rejected"), p.finish())


@st.composite
def _ranking_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, k = draw(st.integers(1, 4)), draw(st.integers(2, 6))
    rewards = draw(st.one_of(float_arrays((b, k), -5.0, 5.0), float_arrays((b, k), -50.0, 50.0)))
    if draw(st.booleans()):
        rewards = -np.sort(-rewards, axis=1)  # consistently ranked rows (the usual case)
    return Case("ranking_loss", (rewards,), ("rewards",), dict(fixed))


def _pair_extreme(c: Case, draw: Draw) -> Case:
    return extreme_gap(c, draw, "chosen", "rejected")


def _ranking_extreme(c: Case, draw: Draw) -> Case:
    r = np.asarray(c.args[0], dtype=np.float64)
    scale = float(draw(st.sampled_from([1e2, 1e3, 5e3])))
    return c.with_inputs(rewards=-np.sort(-r, axis=1) * scale)


def _one_answer(c: Case, draw: Draw) -> BadCase:
    """K = 1: no pair to compare."""
    return BadCase(c.with_inputs(rewards=np.asarray(c.named()["rewards"])[:, :1]), "'rewards' with K=1")


# ----------------------------------------------------------------------------------------------------------------
# the maths: tolerances and gradients


def _tol_pair(c: Case) -> Conditioning:
    n = c.named()
    gap = np.abs(tol.finite(n["chosen"])) + np.abs(tol.finite(n["rejected"]))
    return tol.sum_cond(gap.size), float(np.mean(1.0 + gap))


def _tol_ranking(c: Case) -> Conditioning:
    r = tol.finite(c.args[0])
    return tol.sum_cond(r.size * r.shape[1]), float(1.0 + 2.0 * np.max(np.abs(r)))


def _margin(c: Case) -> np.ndarray | float:
    m = c.arg("margin")
    return 0.0 if m is None else np.asarray(m, dtype=np.float64)


def _pair_gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    n = c.named()
    ch, rj = np.asarray(n["chosen"], dtype=np.float64), np.asarray(n["rejected"], dtype=np.float64)
    d = ch - rj - _margin(c)
    g = w * (sigmoid(d) - 1.0) / ch.shape[0]  # d/dDelta -log sigmoid = sigmoid - 1 (derivations)
    terms = np.abs(w) * np.ones_like(d) / ch.shape[0]  # sigmoid(D) - 1 cancels terms of size 1 for D >> 0
    nan = np.full(d.shape, np.nan)
    return {"chosen": Grad(g, nan, terms), "rejected": Grad(-g, nan, terms)}


def _ranking_gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    r = np.asarray(c.args[0], dtype=np.float64)
    b, k = r.shape
    g = np.zeros_like(r)
    norm = math.comb(k, 2)
    for row in range(b):
        for i in range(k):
            for j in range(i + 1, k):
                s = float(sigmoid(np.asarray(r[row, i] - r[row, j]))) - 1.0
                g[row, i] += s
                g[row, j] -= s
    terms = np.abs(w) * (k - 1) * np.ones_like(r) / (norm * b)  # each element sums K-1 terms sigmoid - 1
    return {"rewards": Grad(w * g / (norm * b), np.full(r.shape, np.nan), terms)}


# ----------------------------------------------------------------------------------------------------------------
# variants


def _pair(c: Case, *, margin_sign: float = -1.0, swap: bool = False, reduce: str = "mean") -> float:
    n = c.named()
    ch, rj = np.asarray(n["chosen"], dtype=np.float64), np.asarray(n["rejected"], dtype=np.float64)
    if swap:
        ch, rj = rj, ch
    losses = -log_sigmoid(ch - rj + margin_sign * _margin(c))
    return float(losses.sum() if reduce == "sum" else losses.mean())


def _pair_naive(c: Case) -> float:
    n = c.named()
    d = np.asarray(n["chosen"], dtype=np.float64) - np.asarray(n["rejected"], dtype=np.float64) - _margin(c)
    return float(np.mean(naive_neg_log_sigmoid(d)))


_PAIR_VARIANTS = [
    Variant("margin sign flipped", "r_c - r_r + m", lambda c: _pair(c, margin_sign=1.0)),
    Variant("margin ignored", "margin dropped (OpenRLHF LogExpLoss)", lambda c: _pair(c, margin_sign=0.0)),
    Variant("chosen and rejected swapped", "-log sigmoid(r_r - r_c - m)", lambda c: _pair(c, swap=True)),
    Variant("sum over the batch", "sum instead of mean over the pairs", lambda c: _pair(c, reduce="sum")),
    Variant("log(sigmoid) computed naively", NAIVE_TEXT, _pair_naive),
    negated(R.reward_model_loss, "log sigmoid(...) (the log-likelihood, not the loss)"),
]


def _ranking(c: Case, *, norm: str = "binom", reverse: bool = False, reduce: str = "mean", pairs: str = "all") -> float:
    r = np.asarray(c.args[0], dtype=np.float64)
    if reverse:
        r = r[:, ::-1]
    k = r.shape[1]
    totals = []
    for row in r:
        if pairs == "softmax":
            z = row - row.max()
            totals.append(-(z[0] - np.log(np.exp(z).sum())))
            continue
        index = [(i, i + 1) for i in range(k - 1)] if pairs == "adjacent" else list(itertools.combinations(range(k), 2))
        s = float(sum(-log_sigmoid(np.asarray(row[i] - row[j])) for i, j in index))
        divisor = {"binom": math.comb(k, 2), "half": k / 2, "none": 1.0, "pairs": len(index)}[norm]
        totals.append(s / divisor)
    return float(np.sum(totals) if reduce == "sum" else np.mean(totals))


def _ranking_naive(c: Case) -> float:
    r = np.asarray(c.args[0], dtype=np.float64)
    k = r.shape[1]
    i, j = np.triu_indices(k, 1)
    return float(np.mean(naive_neg_log_sigmoid(r[:, i] - r[:, j]).sum(1) / math.comb(k, 2)))


_RANKING_VARIANTS = [
    Variant("K/2 normaliser", "1/(K/2) instead of 1/C(K,2) (the seed's wording; off by a factor K-1)",
            lambda c: _ranking(c, norm="half")),
    Variant("no normaliser", "the sum over the C(K,2) pairs, not their mean", lambda c: _ranking(c, norm="none")),
    Variant("rows read worst to best", "columns in reverse order", lambda c: _ranking(c, reverse=True)),
    Variant("sum over the batch", "sum instead of mean over prompts", lambda c: _ranking(c, reduce="sum")),
    Variant("adjacent pairs only", "only the K-1 neighbouring comparisons",
            lambda c: _ranking(c, pairs="adjacent", norm="pairs")),
    Variant("K-way softmax cross-entropy", "-log softmax(r)[best] (lm-human-preferences PickBest)",
            lambda c: _ranking(c, pairs="softmax")),
    negated(R.ranking_loss, "the log-likelihood instead of the loss"),
    Variant("log(sigmoid) computed naively", NAIVE_TEXT, _ranking_naive),
]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# the registry entries

REWARD_MODEL_LOSS = register(
    FormulaSpec(
        id="reward_model_loss",
        reference=R.reward_model_loss,
        torch_name="reward_model_loss",
        strategy=_pair_cases,
        tolerance=_tol_pair,
        tolerance_note="softplus(-D) has absolute error ~ eps * |D| when D is itself a difference of rewards.",
        differentiable=("chosen", "rejected"),
        gradient=_pair_gradient,
        paper="Ouyang et al. 2022 (InstructGPT); Touvron et al. 2023 (Llama 2) margin",
        equation="InstructGPT eq. 1; Llama 2 eq. 2",
        docs_page="reward-model",
        derivations=("neg_log_sigmoid_grad", "neg_log_sigmoid_symmetry", "neg_log_sigmoid_convexity"),
        conventions=("margin",),
        variants=tuple(_PAIR_VARIANTS),
        stability=_pair_extreme,
        stability_note="reward gaps of 1e4: sigmoid underflows to 0, log(0) = -inf",
    )
)

RANKING_LOSS = register(
    FormulaSpec(
        id="ranking_loss",
        reference=R.ranking_loss,
        torch_name="ranking_loss",
        strategy=_ranking_cases,
        tolerance=_tol_ranking,
        tolerance_note="C(K,2) softplus terms of reward gaps up to 2 max|r|, reduced over B*K^2.",
        differentiable=("rewards",),
        gradient=_ranking_gradient,
        paper="Ouyang et al. 2022 (InstructGPT)",
        equation="eq. 1",
        docs_page="reward-model",
        derivations=("ranking_normaliser", "neg_log_sigmoid_grad"),
        conventions=(),
        variants=tuple(_RANKING_VARIANTS),
        stability=_ranking_extreme,
        stability_note="reward gaps of 1e2-1e4 inside a ranked row",
        bad_input=_one_answer,
    )
)
