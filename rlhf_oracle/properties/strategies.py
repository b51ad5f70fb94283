"""Hypothesis strategies of every property's inputs, for any registered formula.

The maths inputs of a formula are drawn by its family module (``FormulaSpec.strategy``, through
:func:`cases`); the other properties' inputs are built here from them, the same way for every formula:

- :func:`cases` - a :class:`Case` (inputs + hyper-parameters) for a formula of the catalogue;
- :func:`edge_cases` - an empty row, one valid token, all masked, or B = 1;
- :func:`masked_slot_cases` - NaN, +-inf or 1e30 in every masked input slot;
- :func:`stability_cases` - the maths cases pushed to the formula's extreme regime;
- :func:`bad_cases` - a :class:`BadCase`: a valid case with exactly one thing broken (shape, dtype, NaN at a
  valid position, an out-of-range hyper-parameter, the formula's own invalid input).

The building blocks (:func:`masks`, :func:`float_arrays`, :func:`log_ratios`, :func:`logits`,
:func:`advantages_like`, :func:`fill_masked`) are in :mod:`rlhf_oracle.properties.cases`, re-exported here for
your own ``@given`` tests.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from hypothesis import strategies as st

from .cases import (
    FILLS,
    MASK_LAYOUTS,
    MATHS_FILLS,
    NONFINITE_FILLS,
    Accepted,
    BadCase,
    Case,
    Draw,
    Fixed,
    advantages_like,
    fill_masked,
    float_arrays,
    log_ratios,
    logits,
    mask_layout,
    masks,
)
from .registry import FormulaSpec, get

__all__ = [
    "EDGE_KINDS",
    "FILLS",
    "MASK_LAYOUTS",
    "MATHS_FILLS",
    "NONFINITE_FILLS",
    "BadCase",
    "Case",
    "advantages_like",
    "bad_cases",
    "cases",
    "edge_case",
    "edge_cases",
    "fill_masked",
    "float_arrays",
    "has_stability",
    "log_ratios",
    "logits",
    "mask_layout",
    "masked_slot_cases",
    "masks",
    "stability_cases",
]


def cases(formula: str, fixed: Fixed | None = None, accepted: Accepted = None) -> st.SearchStrategy[Case]:
    """Valid inputs of ``formula``.

    ``fixed``: keyword arguments held constant (conventions such as ``agg="token-mean"``); they also steer the
    generation (e.g. ``log_ratio_clamp`` allows far log-ratios, ``score_position="after_last"`` keeps a pad slot).
    ``accepted``: the keyword names the candidate accepts (``None``: all); hyper-parameters it does not accept
    are left at the reference default instead of being drawn.
    """
    return get(formula).cases(fixed, accepted)


# ----------------------------------------------------------------------------------------------------------------
# the other properties' inputs, built from the maths cases

EDGE_KINDS = ("empty row", "one valid token", "all masked", "B = 1")
"""The degenerate inputs of the ``edge_cases`` property (formulas with a mask)."""


def has_stability(formula: str) -> bool:
    """Whether ``formula`` has an extreme regime (a ``stability`` property)."""
    return get(formula).stability is not None


@st.composite
def _stability(draw: Draw, spec: FormulaSpec, fixed: Fixed, accepted: Accepted) -> Case:
    assert spec.stability is not None
    return spec.stability(draw(spec.cases(fixed, accepted)), draw)


def stability_cases(formula: str, fixed: Fixed | None = None, accepted: Accepted = None) -> st.SearchStrategy[Case]:
    """Inputs of the ``stability`` property: the maths cases pushed to the extreme regime of ``formula``."""
    spec = get(formula)
    if spec.stability is None:
        raise ValueError(f"stability_cases: {formula!r} has no extreme regime")
    return _stability(spec, dict(fixed or {}), accepted)


@st.composite
def _masked_slots(draw: Draw, formula: str, fixed: Fixed, accepted: Accepted) -> Case:
    case: Case = draw(cases(formula, fixed, accepted))
    return case.refilled(str(draw(st.sampled_from(NONFINITE_FILLS))), rng_seed=draw(st.integers(0, 3)))


def masked_slot_cases(formula: str, fixed: Fixed | None = None, accepted: Accepted = None) -> st.SearchStrategy[Case]:
    """Inputs of the ``masked_slots`` property: maths cases with NaN, +-inf or 1e30 in every masked input slot."""
    return _masked_slots(formula, dict(fixed or {}), accepted)


def _batched(case: Case) -> list[str]:
    assert case.mask is not None
    b = case.mask.shape[0]
    return [n for n, v in case.named().items() if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == b]


def edge_case(case: Case, kind: str, row: int = 0, position: int = 0) -> Case:
    """``case`` made degenerate: one row all masked, a single valid token in the batch, every token masked, or
    only the first row (B = 1; the first group of ``group_size`` rows for the group formulas)."""
    assert case.mask is not None
    m = case.mask.copy()
    b, t = m.shape
    if kind == "empty row" and b == 1:
        kind = "all masked"
    if kind == "B = 1":  # one prompt: for the group formulas its whole group (one row is not a valid batch there)
        named = case.named()
        first = int(named.get("group_size", 1))
        return replace(case.with_inputs(**{n: np.asarray(named[n])[:first] for n in _batched(case)}), mask=m[:first],
                       edge=kind)  # fmt: skip
    if kind == "empty row":
        m[row % b] = False
    elif kind == "one valid token":
        keep = np.zeros_like(m)
        last = t - 2 if case.kwargs.get("score_position") == "after_last" else t - 1
        keep[row % b, min(position, max(last, 0))] = True
        m = keep
    elif kind == "all masked":
        m[:] = False
    else:
        raise ValueError(f"unknown edge case {kind!r}; known: {EDGE_KINDS}")
    return replace(case.with_inputs(mask=m), mask=m, edge=kind)


@st.composite
def _edge(draw: Draw, formula: str, fixed: Fixed, accepted: Accepted) -> Case:
    case = draw(cases(formula, fixed, accepted))
    assert case.mask is not None
    kind = str(draw(st.sampled_from(EDGE_KINDS)))
    return edge_case(case, kind, draw(st.integers(0, 7)), draw(st.integers(0, 9)))


def edge_cases(formula: str, fixed: Fixed | None = None, accepted: Accepted = None) -> st.SearchStrategy[Case]:
    """Inputs of the ``edge_cases`` property: an empty row, one valid token, all masked, or B = 1."""
    return _edge(formula, dict(fixed or {}), accepted)


# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# bad inputs


def _break_shape(spec: FormulaSpec, case: Case, name: str) -> Case:
    """One extra leading axis (wrong rank, or a shape that no longer matches the other inputs), unless the
    formula says otherwise (the entropy, whose rank is free: an empty vocabulary axis)."""
    if spec.break_shape is not None:
        return spec.break_shape(case, name)
    return case.with_inputs(**{name: np.asarray(case.named()[name])[None]})


@st.composite
def _bad_case(draw: Draw, formula: str) -> BadCase:
    spec = get(formula)
    case = draw(spec.cases())
    named = case.named()
    inert = set(spec.inert(case))
    float_names = [n for n, v in named.items()
                   if isinstance(v, np.ndarray) and v.dtype == np.float64 and n not in inert]  # fmt: skip
    options: list[str] = []
    if float_names:
        options += ["shape", "int_dtype", "nan_valid"]
    if spec.bad_hyper:
        options.append("hyper")
    own = spec.bad_input(case, draw) if spec.bad_input is not None else None
    if own is not None:
        options.append("own")
    what = draw(st.sampled_from(options))
    if what == "own":
        assert own is not None
        return own
    if what == "shape":
        name = draw(st.sampled_from(float_names))
        return BadCase(_break_shape(spec, case, name), f"'{name}' with a wrong shape")
    if what == "int_dtype":
        name = draw(st.sampled_from(float_names))
        value = np.clip(np.nan_to_num(np.asarray(named[name]), nan=0.0, posinf=0.0, neginf=0.0), -1e6, 1e6)
        value = value.astype(np.int64)
        return BadCase(case.with_inputs(**{name: value}), f"'{name}' as int64")
    if what == "nan_valid":
        name = draw(st.sampled_from(float_names))
        value = np.array(named[name], copy=True)
        if value.size == 0:
            return BadCase(_break_shape(spec, case, name), f"'{name}' with a wrong shape")
        mask_name = f"{name.removesuffix('_logp')}_mask"  # ptx_logp is masked by ptx_mask
        if mask_name in named and mask_name != "mask" and named[mask_name] is not None:
            valid = np.flatnonzero(named[mask_name])
        elif case.mask is not None and name in case.per_token:
            valid = np.flatnonzero(case.mask)
        else:
            valid = np.arange(value.size)
        if valid.size == 0:
            return BadCase(_break_shape(spec, case, name), f"'{name}' with a wrong shape")
        pos = int(valid[draw(st.integers(0, valid.size - 1))])
        value.reshape(-1)[pos] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        return BadCase(case.with_inputs(**{name: value}), f"'{name}' non-finite at a valid position")
    name, value = draw(st.sampled_from(spec.bad_hyper))
    return BadCase(case.with_inputs(**{name: value}), f"'{name}'={value!r}")


def bad_cases(formula: str) -> st.SearchStrategy[BadCase]:
    """A valid case of ``formula`` with exactly one thing broken: a wrong shape, an int64 array where a float one
    is expected, NaN/inf at a valid position, an out-of-range hyper-parameter, or the formula's own invalid input
    (an all-zero mask row where it divides by |o|, a ranking of one answer). The reference raises
    ``ValueError``/``TypeError`` on each."""
    return _bad_case(formula)
