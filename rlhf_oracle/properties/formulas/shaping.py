"""DAPO's data shaping: everything the oracle knows about ``overlong_penalty`` (the soft overlong punishment, DAPO
eq. 13) and ``dynamic_sampling_mask`` (dynamic sampling, eq. 11).

- inputs: lengths at and around the penalty's kinks (L_max - L_cache, L_max, one past each) and far beyond, for
  DAPO's 20480/4096 and small limits, a buffer as long as the limit; groups of 1-5 scores, 0/1 or real, often all
  equal (the groups the mask drops), tolerances 0 and > 0;
- the tolerance: one subtraction and a division for the penalty; the mask is a boolean, exact;
- the variants: the cap of the penalty (verl's reward manager has none), the ramp's divisor, the hard punishment,
  the sign and the factor; singleton groups kept (verl), the test inverted, OpenRLHF's mean-in-range filter, a std
  compared with tol instead of the spread.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from hypothesis import strategies as st

from rlhf_oracle import reference as R

from .. import tolerances as tol
from ..axes.groups import draw_group_size, group_scores
from ..cases import Accepted, BadCase, Case, Draw, Fixed, Params
from ..registry import Conditioning, FormulaSpec, register
from ..variants import Variant, by_name

__all__ = ["DYNAMIC_SAMPLING_MASK", "OVERLONG_PENALTY"]

# ----------------------------------------------------------------------------------------------------------------
# inputs


@st.composite
def _overlong_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    p = Params("overlong_penalty", draw, fixed, accepted)
    max_length = int(draw(st.sampled_from([16, 20, 512, 20480])))
    cache_length = int(draw(st.sampled_from([1, 4, max_length // 4, max_length // 5, max_length])))
    p("factor", st.sampled_from([1.0, 0.5, 2.0]))
    expected = max_length - cache_length
    kinks = [0, expected, expected + 1, max_length - 1, max_length, max_length + 1, 2 * max_length]
    b = draw(st.integers(1, 8))
    lengths = draw(st.lists(st.one_of(st.sampled_from(kinks), st.integers(0, 2 * max_length)), min_size=b,
                            max_size=b))  # fmt: skip
    arr = np.asarray(lengths, dtype=np.float64)
    args = (arr, max_length, cache_length)
    return Case("overlong_penalty", args, ("lengths", "max_length", "cache_length"), p.finish())


@st.composite
def _dynamic_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    group_size = draw_group_size(draw, True)
    b = group_size * draw(st.integers(1, 4))
    scores = group_scores(draw, b, group_size)
    p = Params("dynamic_sampling_mask", draw, fixed, accepted)
    p("tol", st.sampled_from([0.0, 0.0, 1e-6, 0.5]))
    return Case("dynamic_sampling_mask", (scores, group_size), ("scores", "group_size"), p.finish())


def _bad_lengths(c: Case, draw: Draw) -> BadCase:
    """A negative, non-finite or mis-shaped length (an integer array of lengths is valid: the generic int64 break
    does not apply, so 'lengths' is broken here)."""
    n = np.array(c.named()["lengths"], dtype=np.float64, copy=True)
    kind = draw(st.sampled_from(["negative", "nan", "shape"]))
    if kind == "shape":
        return BadCase(c.with_inputs(lengths=n[None]), "'lengths' with a wrong shape")
    n[draw(st.integers(0, n.size - 1))] = -1.0 if kind == "negative" else math.nan
    return BadCase(c.with_inputs(lengths=n), f"'lengths' {kind} at one row")


# ----------------------------------------------------------------------------------------------------------------
# the tolerances


def _tol_overlong(c: Case) -> Conditioning:
    n = tol.finite(c.named()["lengths"])
    l_max, l_cache = float(c.arg("max_length")), float(c.arg("cache_length"))
    return 2.0, float(c.arg("factor")) * (l_max + n) / l_cache


def _tol_exact(c: Case) -> Conditioning:
    return 1.0, 0.0


# ----------------------------------------------------------------------------------------------------------------
# variants


def _overlong_np(c: Case, variant: str) -> np.ndarray:
    n = np.asarray(c.named()["lengths"], dtype=np.float64)
    l_max, l_cache, f = float(c.arg("max_length")), float(c.arg("cache_length")), float(c.arg("factor"))
    expected = l_max - l_cache
    if variant == "no cap beyond max_length (verl DAPO reward manager)":
        return np.minimum(-(n - expected) / l_cache * f, 0.0)
    if variant == "ramp over max_length, not cache_length":
        return np.where(n <= expected, 0.0, np.where(n <= l_max, (expected - n) / l_max * f, -f))
    if variant == "penalty only beyond max_length (hard punishment)":
        return np.where(n > l_max, -f, 0.0)
    if variant == "sign flipped":
        return -np.asarray(R.overlong_penalty(n, int(l_max), int(l_cache), f))
    if variant == "factor ignored":
        return np.asarray(R.overlong_penalty(n, int(l_max), int(l_cache), 1.0))
    raise NotImplementedError(variant)


def _overlong_variants() -> list[Variant]:
    described = {
        "no cap beyond max_length (verl DAPO reward manager)": "min(-(|y| - L)/L_cache f, 0): below -f past L_max "
        "(verl's DAPO reward manager; its truncation at L_max never produces such a length)",
        "ramp over max_length, not cache_length": "the excess divided by L_max instead of L_cache",
        "penalty only beyond max_length (hard punishment)": "-f beyond L_max and 0 below: DAPO's overlong "
        "punishment without the soft ramp",
        "sign flipped": "a bonus instead of a penalty",
        "factor ignored": "the penalty factor f read as 1",
    }
    return [Variant(name, d, functools.partial(by_name, _overlong_np, name)) for name, d in described.items()]


def _dynamic_np(c: Case, variant: str) -> np.ndarray:
    s = np.asarray(c.named()["scores"], dtype=np.float64)
    n = int(c.arg("group_size"))
    t = float(c.arg("tol"))
    groups = s.reshape(-1, n)
    spread = groups.max(1) - groups.min(1)
    if variant == "a group of one kept (verl)":
        if n != 1:
            raise NotImplementedError(variant)
        keep = np.ones(groups.shape[0], dtype=bool)
    elif variant == "inverted: the all-equal groups kept":
        keep = ~(spread > t)
    elif variant == "mean strictly inside (0, 1) (OpenRLHF dynamic_filtering_range)":
        mean = groups.mean(1)
        keep = (mean > 0.0) & (mean < 1.0)
    elif variant == "std > tol (Bessel)":
        if n == 1:
            raise NotImplementedError(variant)
        keep = groups.std(1, ddof=1) > t
    else:
        raise NotImplementedError(variant)
    return np.repeat(keep, n)


def _dynamic_variants() -> list[Variant]:
    described = {
        "a group of one kept (verl)": "verl's filter needs two trajectories to call a group constant: groups of "
        "one are kept",
        "inverted: the all-equal groups kept": "the test inverted: the groups that carry no gradient kept",
        "mean strictly inside (0, 1) (OpenRLHF dynamic_filtering_range)": "a group kept when its mean reward is in "
        "the open range (0, 1): the same set for 0/1 rewards only",
        "std > tol (Bessel)": "the group's Bessel std compared with tol instead of its spread",
    }
    return [Variant(name, d, functools.partial(by_name, _dynamic_np, name)) for name, d in described.items()]


# ----------------------------------------------------------------------------------------------------------------
# the registry entries

OVERLONG_PENALTY = register(
    FormulaSpec(
        id="overlong_penalty",
        reference=R.overlong_penalty,
        torch_name="overlong_penalty",
        strategy=_overlong_cases,
        tolerance=_tol_overlong,
        tolerance_note="(L - |y|)/L_cache * f: one subtraction and a division, errors ~ eps * f (L_max + |y|) / "
        "L_cache.",
        differentiable=(),
        gradient=None,
        paper="Yu et al. 2025, DAPO (arXiv 2503.14476)",
        equation="eq. 13 (soft overlong punishment)",
        docs_page="critic-free",
        derivations=("overlong_penalty_continuous",),
        conventions=("factor",),
        variants=tuple(_overlong_variants()),
        bf16=False,
        bad_hyper=(("max_length", 0), ("cache_length", -1), ("factor", -1.0), ("cache_length", 10**6)),
        bad_input=_bad_lengths,
        inert=lambda c: ("lengths",),  # integer or floating: broken by bad_input, not by the float-array breaks
    )
)

DYNAMIC_SAMPLING_MASK = register(
    FormulaSpec(
        id="dynamic_sampling_mask",
        reference=R.dynamic_sampling_mask,
        torch_name="dynamic_sampling_mask",
        strategy=_dynamic_cases,
        tolerance=_tol_exact,
        tolerance_note="a boolean: exact (max - min compared with tol on the same inputs).",
        differentiable=(),
        gradient=None,
        paper="Yu et al. 2025, DAPO (arXiv 2503.14476)",
        equation="eq. 11 (dynamic sampling: 0 < #correct < G)",
        docs_page="critic-free",
        derivations=(),
        conventions=("tol",),
        variants=tuple(_dynamic_variants()),
        bad_hyper=(("group_size", 0), ("tol", -1.0)),
    )
)
