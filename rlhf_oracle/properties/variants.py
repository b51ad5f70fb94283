"""Variants for the diagnosis: the generic machinery (a :class:`Variant`, constants fitted to the candidate's
output, documented conventions, sign flips). The variants of each formula live in its family module
(:mod:`rlhf_oracle.properties.formulas`), the ones shared by several formulas in :mod:`rlhf_oracle.properties.axes`.

When a candidate disagrees with the reference, the check evaluates each variant of the formula on the same
inputs and names those that the candidate matches instead ("matches agg='token-mean', not
'seq-mean-token-mean'"). Variants that are documented conventions carry the keyword arguments that select them
in the reference (``kwargs``), so the report can say how to accept them; the others are known bug classes, each
with the public issue it comes from (see ``shared/research/framework-conventions.md``).

Every variant is a plain function of a :class:`~rlhf_oracle.properties.cases.Case` (already rounded to the
candidate's dtype), built on the reference where it can be, and written out where the variant is a bug that the
reference cannot express.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cases import Case

__all__ = [
    "Fitted",
    "Variant",
    "by_name",
    "convention",
    "fit_constant",
    "fmt",
    "negated",
    "resolve",
    "unused",
    "where",
    "with_kwargs",
]


@dataclass(frozen=True)
class Variant:
    """One alternative reading of a formula."""

    name: str
    """Short name used in the diagnosis, e.g. ``"agg='token-mean'"`` or ``"min instead of max"``."""
    description: str
    """What it computes and who does it (framework, issue)."""
    compute: Callable[[Case], Any] = field(repr=False)
    kwargs: Mapping[str, Any] | None = None
    """Keyword arguments that select this variant in the reference, when it is a documented convention."""
    deviations: int = 1
    """How many independent changes from the reference (the diagnosis prefers the fewest)."""

    def resolve(self, case: Case, actual: list[np.ndarray] | None = None) -> Variant:
        """The variant made concrete for ``case`` (composed ones are named once the case's conventions are known,
        fitted ones fit their constant to ``actual``); NotImplementedError where it does not apply."""
        return self


def fmt(c: float) -> str:
    return f"{c:.6g}"


def _fit_error(out: Any, actual: list[np.ndarray]) -> float:
    """How far a variant's output is from the candidate's (max relative difference; inf if incomparable)."""
    outs = out if isinstance(out, tuple) else (out,)
    if len(outs) != len(actual):
        return math.inf
    worst = 0.0
    with np.errstate(all="ignore"):
        for o, a in zip(outs, actual, strict=True):
            o = np.asarray(o, dtype=np.float64)
            if o.shape != a.shape:
                return math.inf
            same = (o == a) | (np.isnan(o) & np.isnan(a))
            d = np.where(same, 0.0, np.abs(o - a) / (1.0 + np.abs(a)))
            worst = max(worst, float(np.nan_to_num(d, nan=np.inf).max(initial=0.0)))
    return worst


def fit_constant(
    compute: Callable[[Case, float], Any], case: Case, actual: list[np.ndarray], grid: list[float]
) -> float | None:
    """The constant of ``grid`` (refined between its neighbours by ternary search) whose variant output is
    closest to the candidate's; None if no value gives a finite comparison."""
    scored = []
    for c in sorted(set(grid)):
        try:
            scored.append((_fit_error(compute(case, c), actual), c))
        except Exception:
            continue
    scored = [(e, c) for e, c in scored if math.isfinite(e)]
    if not scored:
        return None
    best_err, best = min(scored)
    if best_err == 0.0:
        return best
    values = sorted(c for _, c in scored)
    i = values.index(best)
    lo, hi = values[max(i - 1, 0)], values[min(i + 1, len(values) - 1)]
    for _ in range(40):
        m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        try:
            e1, e2 = _fit_error(compute(case, m1), actual), _fit_error(compute(case, m2), actual)
        except Exception:
            break
        if e1 <= e2:
            hi = m2
        else:
            lo = m1
    mid = (lo + hi) / 2
    try:
        if _fit_error(compute(case, mid), actual) < best_err:
            return mid
    except Exception:
        pass
    return best


def _call_with(compute: Callable[[Case, float], Any], constant: float, case: Case) -> Any:
    return compute(case, constant)


@dataclass(frozen=True)
class Fitted(Variant):
    """A variant with one constant fitted to the candidate's output: a dual-clip c, a clamp bound. ``name`` and
    ``description`` are templates with ``{c}``."""

    param_compute: Callable[[Case, float], Any] | None = field(default=None, repr=False)
    grid: Callable[[Case, list[np.ndarray]], list[float]] | None = field(default=None, repr=False)

    def resolve(self, case: Case, actual: list[np.ndarray] | None = None) -> Variant:
        assert self.param_compute is not None and self.grid is not None
        if actual is None:
            raise NotImplementedError("a fitted variant needs the candidate's output")
        compute = self.param_compute
        c = fit_constant(compute, case, actual, self.grid(case, actual))
        if c is None:
            raise NotImplementedError("no constant fits")
        return Variant(
            self.name.format(c=fmt(c)),
            self.description.format(c=fmt(c)),
            functools.partial(_call_with, compute, c),
            None,
            self.deviations,
        )


def with_kwargs(case: Case, **changes: Any) -> dict[str, Any]:
    return {**case.kwargs, **changes}


def convention(fn: Callable[..., Any], name: str, value: Any, description: str) -> Variant:
    return Variant(
        f"{name}={value!r}",
        description,
        lambda c: fn(*c.args, **with_kwargs(c, **{name: value})),
        kwargs={name: value},
    )


def negated(fn: Callable[..., Any], what: str) -> Variant:
    return Variant("sign flipped", what, lambda c: _neg(fn(*c.args, **c.kwargs)))


def _neg(x: Any) -> Any:
    if isinstance(x, tuple):
        return tuple(-np.asarray(v) for v in x)
    return -np.asarray(x, dtype=np.float64)


def by_name(fn: Callable[[Case, str], Any], name: str, case: Case) -> Any:
    return fn(case, name)


def where(m: np.ndarray, x: Any) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.where(m, np.asarray(x, dtype=np.float64), 0.0)


def unused(c: Case) -> Any:
    """The ``compute`` of a variant that :meth:`Variant.resolve` replaces."""
    raise NotImplementedError


def resolve(variant: Variant, case: Case, actual: list[np.ndarray] | None = None) -> Variant:
    """The variant made concrete for ``case``: composed variants are named once the current aggregation mode is
    known, fitted constants (dual-clip c, clamp bounds) are fitted to the candidate's output ``actual``."""
    return variant.resolve(case, actual)
