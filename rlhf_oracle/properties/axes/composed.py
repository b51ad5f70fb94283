"""Variants composed over several axes: a PPO objective variant x a log-ratio clamp x an aggregation
alternative x the sign (``policy_loss``), or an aggregation alternative x the sign of any masked mean
(``aggregate``, ``ptx_loss``, ``value_loss``). The aggregation part is named once the case's mode is known; the
constants (dual-clip c, clamp bound) are fitted to the candidate's output."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import tolerances as tol
from ..cases import Case
from ..variants import Variant, unused
from . import aggregation as agg
from . import ppo

__all__ = ["Composed", "aggregate_like_variants"]


@dataclass(frozen=True)
class Composed(Variant):
    """A composed variant (objective x log-ratio clamp x aggregation x sign); ``compute`` is :func:`unused` for
    the PPO objective, else the whole value of a non-PPO variant."""

    obj: str | None = None
    agg_index: int | None = None
    sign: float = 1.0
    agg_axes: Callable[[Case], list[agg.AggAxis]] | None = field(default=None, repr=False)
    clamp: bool = False
    arg: str = "agg"

    def resolve(self, case: Case, actual: list[np.ndarray] | None = None) -> Variant:
        assert self.agg_axes is not None
        if self.obj is not None and not ppo.applies(case, self.obj):
            raise NotImplementedError
        axis = self.agg_axes(case)[self.agg_index] if self.agg_index is not None else None
        compute_base = self.compute
        obj, sign, is_ppo, arg = self.obj, self.sign, self.compute is unused, self.arg

        def evaluate(cs: Case, dual_c: float | None, bound: float | None) -> float:
            if not is_ppo:
                return float(compute_base(cs))
            per_token = ppo.objective(cs, obj or "reference", dual_c, bound)
            m = np.asarray(cs.named()["mask"], dtype=bool)
            if cs.arg("weights", absent=None) is not None:  # per-token weights (decoupled PPO, TIS): every variant
                per_token = per_token * tol.valid(cs, "weights")
            mode, mt = agg.settings(cs, arg)
            value = axis.fn(per_token, m, mode, mt) if axis is not None else agg.value(per_token, m, mode, mt)
            return -sign * value

        dual_c, bound = (None, None)
        if is_ppo and (obj == "dual clip always on" or self.clamp):
            dual_c, bound = ppo.fit(case, actual, obj, self.clamp, evaluate)
        parts: list[str] = []
        descriptions: list[str] = []
        kwargs: dict[str, Any] | None = {}
        if is_ppo:
            parts, descriptions = ppo.name(obj, dual_c, bound)
            if parts:
                kwargs = None
        if axis is not None:
            parts.append(axis.name)
            descriptions.append(axis.description)
            if axis.kwargs is None:
                kwargs = None
            elif kwargs is not None:
                kwargs.update(axis.kwargs)
        if self.sign < 0:
            parts.append("sign flipped")
            descriptions.append("the objective J returned instead of the loss -J")
            kwargs = None
        return Variant(" + ".join(parts), "; ".join(descriptions), lambda cs: evaluate(cs, dual_c, bound),
                       kwargs or None, self.deviations)  # fmt: skip


def axes_of(arg: str) -> Callable[[Case], list[agg.AggAxis]]:
    """The aggregation alternatives to the case's own mode of argument ``arg``."""

    def alternatives(c: Case) -> list[agg.AggAxis]:
        return agg.alternatives(str(c.arg(arg)), arg)

    return alternatives


N_ALTERNATIVES = len(agg.alternatives(agg.MODES[0], "agg"))
"""How many aggregation alternatives there are to any mode."""


def aggregate_like_variants(arg: str, per_token: Callable[[Case], np.ndarray], base_sign: float = 1.0) -> list[Variant]:
    """Aggregation alternatives x sign of ``base_sign * aggregate(per_token(case), mask, case's arg)``."""
    out: list[Variant] = []
    alternatives = axes_of(arg)
    for agg_index in [*range(N_ALTERNATIVES), None]:
        for sign in (1.0, -1.0):
            deviations = (agg_index is not None) + (sign < 0)
            if deviations == 0:
                continue

            def compute(c: Case, agg_index: int | None = agg_index, sign: float = sign) -> float:
                m = np.asarray(c.named()["mask"], dtype=bool)
                x = per_token(c)
                mode, mt = agg.settings(c, arg)
                if agg_index is None:
                    value = agg.value(x, m, mode, mt)
                else:
                    value = alternatives(c)[agg_index].fn(x, m, mode, mt)
                return sign * base_sign * value

            out.append(Composed("", "", compute, None, deviations, None, agg_index, sign, alternatives, arg=arg))
    return out
