"""Known convention variants and bug classes of every formula, evaluated in NumPy for the diagnosis.

When a candidate disagrees with the reference, the check evaluates each variant of the formula on the same
inputs and names those that the candidate matches instead ("matches agg='token-mean', not
'seq-mean-token-mean'"). Variants that are documented conventions carry the keyword arguments that select them
in the reference (``kwargs``), so the report can say how to accept them; the others are known bug classes, each
with the public issue it comes from (see ``shared/research/framework-conventions.md``).

Every variant is a plain function of a :class:`~rlhf_oracle.properties.strategies.Case` (already rounded to the
candidate's dtype), built on the reference where it can be, and written out where the variant is a bug that the
reference cannot express.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlhf_oracle import reference as R

from .strategies import Case

__all__ = ["VARIANTS", "Variant"]


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


def _fmt(c: float) -> str:
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

    def fit(self, case: Case, actual: list[np.ndarray] | None) -> Variant:
        assert self.param_compute is not None and self.grid is not None
        if actual is None:
            raise NotImplementedError("a fitted variant needs the candidate's output")
        compute = self.param_compute
        c = fit_constant(compute, case, actual, self.grid(case, actual))
        if c is None:
            raise NotImplementedError("no constant fits")
        return Variant(
            self.name.format(c=_fmt(c)),
            self.description.format(c=_fmt(c)),
            functools.partial(_call_with, compute, c),
            None,
            self.deviations,
        )


def _kw(case: Case, **changes: Any) -> dict[str, Any]:
    return {**case.kwargs, **changes}


def _convention(fn: Callable[..., Any], name: str, value: Any, description: str) -> Variant:
    return Variant(
        f"{name}={value!r}",
        description,
        lambda c: fn(*c.args, **_kw(c, **{name: value})),
        kwargs={name: value},
    )


def _negated(fn: Callable[..., Any], what: str) -> Variant:
    return Variant("sign flipped", what, lambda c: _neg(fn(*c.args, **c.kwargs)))


def _neg(x: Any) -> Any:
    if isinstance(x, tuple):
        return tuple(-np.asarray(v) for v in x)
    return -np.asarray(x, dtype=np.float64)


def _by_name(fn: Callable[[Case, str], Any], name: str, case: Case) -> Any:
    return fn(case, name)


def _where(m: np.ndarray, x: Any) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.where(m, np.asarray(x, dtype=np.float64), 0.0)


# ----------------------------------------------------------------------------------------------------------------
# aggregation axis (shared by aggregate, policy_loss, ptx_loss, value_loss)

AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
_AGG_WHO = {
    "seq-mean-token-mean": "per-sequence 1/|o| average (the seed, GRPO eq. 3, TRL loss_type='grpo')",
    "token-mean": "sum m l / sum m over the batch (DAPO; verl, OpenRLHF and TRL PPO default)",
    "seq-mean-token-sum": "mean over rows of the per-row token sum",
    "seq-mean-token-sum-norm": "sum / (B L), constant normaliser (Dr. GRPO; verl uses the padded T as L)",
}


def _agg(x: np.ndarray, m: np.ndarray, mode: str, max_tokens: int | None) -> float:
    """Masked aggregation (masked slots of x may be garbage); NaN where a row/batch has no token."""
    xs = _where(m, x)
    with np.errstate(all="ignore"):
        if mode == "seq-mean-token-mean":
            return float(np.mean(xs.sum(1) / m.sum(1)))
        if mode == "token-mean":
            return float(xs.sum() / m.sum())
        if mode == "seq-mean-token-sum":
            return float(np.mean(xs.sum(1)))
        norm = x.shape[1] if max_tokens is None else max_tokens
        return float(np.mean(xs.sum(1)) / norm)


def _agg_eps(x: np.ndarray, m: np.ndarray, mode: str, max_tokens: int | None) -> float:
    xs = _where(m, x)
    with np.errstate(all="ignore"):
        if mode == "seq-mean-token-mean":
            return float(np.mean(xs.sum(1) / (m.sum(1) + 1e-8)))
        if mode == "token-mean":
            return float(xs.sum() / (m.sum() + 1e-8))
    raise NotImplementedError


def _agg_fixed(mode: str, x: np.ndarray, m: np.ndarray, _current: str, max_tokens: int | None) -> float:
    return _agg(x, m, mode, max_tokens)


def _first_pad_extended(m: np.ndarray) -> np.ndarray:
    ext = m.copy()
    for b in range(m.shape[0]):
        valid = np.flatnonzero(m[b])
        if valid.size and valid[-1] + 1 < m.shape[1]:
            ext[b, valid[-1] + 1] = True
    return ext


@dataclass(frozen=True)
class _AggAxis:
    name: str
    description: str
    fn: Callable[[np.ndarray, np.ndarray, str, int | None], float]
    kwargs: Mapping[str, Any] | None


def _agg_axis(current: str, arg: str) -> list[_AggAxis]:
    """Aggregation alternatives to ``current``; x is the per-token value computed on the raw inputs."""
    axis = [
        _AggAxis(
            f"{arg}={mode!r}",
            _AGG_WHO[mode],
            functools.partial(_agg_fixed, mode),
            {arg: mode},
        )
        for mode in AGG_MODES
        if mode != current
    ]
    axis += [
        _AggAxis(
            "|o| over the batch",
            "each row's token sum divided by the batch's token count instead of the row's, then averaged over "
            "rows (= token-mean / B)",
            lambda x, m, _mode, _mt: _agg(x, m, "token-mean", None) / x.shape[0],
            None,
        ),
        _AggAxis(
            "first pad counted (as 0)",
            "the slot after the last valid token is counted in |o| with a zero value (a mask extended by one: "
            "TRL's padding_mask_p1 / DS-Chat PR #672 off-by-one)",
            lambda x, m, mode, mt: _agg(_where(m, x), _first_pad_extended(m), mode, mt),
            None,
        ),
        _AggAxis(
            "first pad counted (its values used)",
            "the slot after the last valid token is counted as valid, with whatever its inputs hold (a mask "
            "extended by one: TRL's padding_mask_p1 / DS-Chat PR #672 off-by-one)",
            lambda x, m, mode, mt: _agg(x, _first_pad_extended(m), mode, mt),
            None,
        ),
        _AggAxis(
            "+1e-8 in the token-count denominator",
            "token counts guarded with + 1e-8 (verl masked_mean / agg_loss, OpenRLHF sample mode): a relative "
            "change of about 1e-8/|o|, below float32 resolution but visible in float64",
            _agg_eps,
            None,
        ),
        _AggAxis(
            "unmasked mean",
            "plain mean over all B*T positions, padding included (verl #3805: an all-ones response mask)",
            lambda x, m, _mode, _mt: float(np.mean(x)),
            None,
        ),
        _AggAxis(
            "padded length as |o|",
            "each row's token sum divided by the padded length T (pad tokens counted in |o|)",
            lambda x, m, _mode, _mt: float(np.mean(_where(m, x).sum(1) / x.shape[1])),
            None,
        ),
    ]
    return axis


# ----------------------------------------------------------------------------------------------------------------
# PPO clip axis


DUAL_CLIP_GRID = [1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 10.0]
"""Where the dual-clip constant c is searched (then refined between neighbours): Ye et al. 2020 use 3."""

CLAMP_GRID = [1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0]
"""Where a clamp bound is searched (then refined): verl and OpenRLHF clamp log-ratios to +-20, estimators to +-10."""


def _ppo_np(c: Case, variant: str, dual_c: float | None = None, clamp: float | None = None) -> np.ndarray:
    n = c.named()
    logp, old, adv = (np.asarray(n[k], dtype=np.float64) for k in ("logp", "logp_old", "advantages"))
    eps = float(n.get("clip_eps", 0.2))
    eps_high = n.get("clip_eps_high")
    high = eps if eps_high is None else float(eps_high)
    dual = n.get("dual_clip")
    with np.errstate(all="ignore"):
        delta = (old - logp) if variant == "ratio inverted" else (logp - old)
        if clamp is not None:
            delta = np.clip(delta, -clamp, clamp)
        ratio = np.exp(delta)
        if variant == "clip bounds swapped":
            low_b, high_b = 1 - high, 1 + eps
        elif variant == "symmetric clip":
            low_b, high_b = 1 - eps, 1 + eps
        else:
            low_b, high_b = 1 - eps, 1 + high
        unclipped = ratio * adv
        clipped = np.clip(ratio, low_b, high_b) * adv
        if variant == "no clip":
            obj = unclipped
        elif variant == "max instead of min":
            obj = np.maximum(unclipped, clipped)
        else:
            obj = np.minimum(unclipped, clipped)
        if variant == "dual clip always on":
            dual = dual_c
        if dual is not None and variant != "dual clip missing":
            if variant == "dual clip on positive A":
                obj = np.maximum(obj, dual * adv)
            else:
                obj = np.where(adv < 0, np.maximum(obj, dual * adv), obj)
    out: np.ndarray = obj
    return out


_PPO_AXIS: dict[str, str] = {
    "max instead of min": "max(r A, clip(r) A): the pessimistic bound inverted (objective and loss signs mixed)",
    "clip bounds swapped": "clip(r, 1 - eps_high, 1 + eps_low): clip_eps and clip_eps_high exchanged",
    "symmetric clip": "clip_eps_high ignored: symmetric clip(r, 1 - eps, 1 + eps)",
    "no clip": "plain r A (no clipping)",
    "ratio inverted": "r = pi_old / pi = exp(logp_old - logp)",
    "dual clip on positive A": "max(., c A) applied to every advantage, not only A < 0 (tianshou #433)",
    "dual clip missing": "dual_clip ignored",
    "dual clip always on": "dual clip max(min(r A, clip(r) A), c A) applied for A < 0 although not asked "
    "(verl compute_policy_loss_vanilla: clip_ratio_c = 3 always on; Ye et al. 2020)",
}

_CLAMP_TEXT = (
    "log-ratio clamped to [-{c}, {c}] before exp (verl and OpenRLHF clamp to +-20): the ratio saturates at "
    "e^{c}, so far from the old policy the loss and its gradient are not those of PPO"
)


def _ppo_applies(c: Case, variant: str) -> bool:
    n = c.named()
    if variant in ("clip bounds swapped", "symmetric clip"):
        return n.get("clip_eps_high") is not None
    if variant in ("dual clip on positive A", "dual clip missing"):
        return n.get("dual_clip") is not None
    if variant == "dual clip always on":
        return n.get("dual_clip") is None
    return True


def _ppo_name(obj: str | None, dual_c: float | None, clamp: float | None) -> tuple[list[str], list[str]]:
    parts, descriptions = [], []
    if obj == "dual clip always on":
        parts.append(f"dual clip always on (c={_fmt(dual_c or 0.0)})")
        descriptions.append(_PPO_AXIS[obj].replace("c A", f"{_fmt(dual_c or 0.0)} A"))
    elif obj:
        parts.append(obj)
        descriptions.append(_PPO_AXIS[obj])
    if clamp is not None:
        parts.append(f"log-ratio clamp at {_fmt(clamp)}")
        descriptions.append(_CLAMP_TEXT.format(c=_fmt(clamp)))
    return parts, descriptions


def _ppo_fit(
    c: Case, actual: list[np.ndarray] | None, obj: str | None, clamp: bool, evaluate: Callable[..., Any]
) -> tuple[float | None, float | None]:
    """Fit the dual-clip c and/or the clamp bound of a PPO variant to the candidate's output."""
    if actual is None:
        raise NotImplementedError
    dual_c: float | None = None
    bound: float | None = None
    if obj == "dual clip always on":
        dual_c = fit_constant(lambda cs, k: evaluate(cs, k, None), c, actual, DUAL_CLIP_GRID)
        if dual_c is None:
            raise NotImplementedError
    if clamp:
        bound = fit_constant(lambda cs, k: evaluate(cs, dual_c, k), c, actual, CLAMP_GRID)
        if bound is None:
            raise NotImplementedError
    return dual_c, bound


@dataclass(frozen=True)
class _PPOElementwise(Variant):
    """A PPO objective variant (with an optional log-ratio clamp) whose constants are fitted per output."""

    obj: str | None = None
    clamp: bool = False

    def resolve(self, case: Case, actual: list[np.ndarray] | None) -> Variant:
        obj = self.obj
        if obj is not None and not _ppo_applies(case, obj):
            raise NotImplementedError

        def evaluate(cs: Case, dual_c: float | None, bound: float | None) -> np.ndarray:
            return _ppo_np(cs, obj or "reference", dual_c, bound)

        dual_c, bound = (None, None)
        if obj == "dual clip always on" or self.clamp:
            dual_c, bound = _ppo_fit(case, actual, obj, self.clamp, evaluate)
        parts, descriptions = _ppo_name(obj, dual_c, bound)
        return Variant(
            " + ".join(parts),
            "; ".join(descriptions),
            lambda cs: evaluate(cs, dual_c, bound),
            None,
            self.deviations,
        )


def _ppo_objective_variants() -> list[Variant]:
    out: list[Variant] = []
    for obj in [*_PPO_AXIS, None]:
        for clamp in (False, True):
            deviations = (obj is not None) + clamp
            if deviations:
                out.append(_PPOElementwise("", "", _unused, None, deviations, obj, clamp))
    out.append(_negated(R.ppo_clip_objective, "-min(r A, clip(r) A): the loss instead of the objective"))
    return out


def _unused(c: Case) -> Any:
    raise NotImplementedError


def _ppo_grad_variants() -> list[Variant]:
    def unclipped(c: Case) -> np.ndarray:
        n = c.named()
        return np.asarray(np.exp(n["logp"] - n["logp_old"]) * n["advantages"])

    def wrt_ratio(c: Case) -> np.ndarray:
        n = c.named()
        g = R.ppo_clip_grad(*c.args, **c.kwargs)
        r = np.exp(np.asarray(n["logp"]) - np.asarray(n["logp_old"]))
        return np.asarray(g / r)

    def of_max(c: Case) -> np.ndarray:
        n = c.named()
        r = np.exp(np.asarray(n["logp"]) - np.asarray(n["logp_old"]))
        adv = np.asarray(n["advantages"])
        eps = float(n.get("clip_eps", 0.2))
        high = eps if n.get("clip_eps_high") is None else float(n["clip_eps_high"])
        inside = (r >= 1 - eps) & (r <= 1 + high)
        active = inside | ((adv > 0) & (r > 1 + high)) | ((adv < 0) & (r < 1 - eps))
        return np.asarray(np.where(active, r * adv, 0.0))

    return [
        Variant("no zero where the clip binds", "r A everywhere: the clip does not stop the gradient", unclipped),
        Variant("d/dr instead of d/dlog pi", "A (or 0): the derivative with respect to the ratio r", wrt_ratio),
        Variant("gradient of max instead of min", "the gradient of max(r A, clip(r) A)", of_max),
        _negated(R.ppo_clip_grad, "the gradient of the loss -L instead of the objective L"),
    ]


def _policy_loss_variants() -> list[Variant]:
    out: list[Variant] = []
    agg_default = "seq-mean-token-mean"

    def agg_axes(c: Case) -> list[_AggAxis]:
        return _agg_axis(c.kwargs.get("agg", agg_default), "agg")

    n_agg = len(_agg_axis(agg_default, "agg"))
    for obj in [*_PPO_AXIS, None]:
        for clamp in (False, True):
            for agg_index in [*range(n_agg), None]:
                for sign in (1.0, -1.0):
                    deviations = (obj is not None) + clamp + (agg_index is not None) + (sign < 0)
                    if deviations == 0 or deviations > 3:
                        continue
                    out.append(_NamedLazy("", "", _unused, None, deviations, obj, agg_index, sign, agg_axes, clamp))
    return out


@dataclass(frozen=True)
class _NamedLazy(Variant):
    """A composed variant (objective x log-ratio clamp x aggregation x sign) whose aggregation part is named once
    the current mode is known and whose constants (dual-clip c, clamp bound) are fitted to the candidate."""

    obj: str | None = None
    agg_index: int | None = None
    sign: float = 1.0
    agg_axes: Callable[[Case], list[_AggAxis]] | None = field(default=None, repr=False)
    clamp: bool = False

    def resolve(self, case: Case, actual: list[np.ndarray] | None = None) -> Variant:
        assert self.agg_axes is not None
        if self.obj is not None and not _ppo_applies(case, self.obj):
            raise NotImplementedError
        axis = self.agg_axes(case)[self.agg_index] if self.agg_index is not None else None
        compute_base = self.compute
        obj, sign, is_ppo = self.obj, self.sign, self.compute is _unused

        def evaluate(cs: Case, dual_c: float | None, bound: float | None) -> float:
            if not is_ppo:
                return float(compute_base(cs))
            per_token = _ppo_np(cs, obj or "reference", dual_c, bound)
            m = np.asarray(cs.named()["mask"], dtype=bool)
            mode, mt = cs.kwargs.get("agg", "seq-mean-token-mean"), cs.kwargs.get("max_tokens")
            value = axis.fn(per_token, m, mode, mt) if axis is not None else _agg(per_token, m, mode, mt)
            return -sign * value

        dual_c, bound = (None, None)
        if is_ppo and (obj == "dual clip always on" or self.clamp):
            dual_c, bound = _ppo_fit(case, actual, obj, self.clamp, evaluate)
        parts: list[str] = []
        descriptions: list[str] = []
        kwargs: dict[str, Any] | None = {}
        if is_ppo:
            parts, descriptions = _ppo_name(obj, dual_c, bound)
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
        return Variant(
            " + ".join(parts),
            "; ".join(descriptions),
            lambda cs: evaluate(cs, dual_c, bound),
            kwargs or None,
            self.deviations,
        )


def _aggregate_like_variants(
    formula: str, fn: Callable[..., float], default: str, arg: str, per_token: Callable[[Case], np.ndarray]
) -> list[Variant]:
    def agg_axes(c: Case) -> list[_AggAxis]:
        return _agg_axis(c.kwargs.get(arg, default), arg)

    out: list[Variant] = []
    n_axis = len(_agg_axis(default, arg))
    for agg_index in [*range(n_axis), None]:
        for sign in (1.0, -1.0):
            deviations = (agg_index is not None) + (sign < 0)
            if deviations == 0:
                continue

            def compute(c: Case, agg_index: int | None = agg_index, sign: float = sign) -> float:
                m = np.asarray(c.named()["mask"], dtype=bool)
                x = per_token(c)
                mode, mt = c.kwargs.get(arg, default), c.kwargs.get("max_tokens")
                value = agg_axes(c)[agg_index].fn(x, m, mode, mt) if agg_index is not None else _agg(x, m, mode, mt)
                base_sign = -1.0 if formula == "ptx_loss" else 1.0
                return sign * base_sign * value

            out.append(_NamedLazy("", "", compute, None, deviations, None, agg_index, sign, agg_axes))
    return out


# ----------------------------------------------------------------------------------------------------------------
# value loss


def _value_per_token(c: Case, variant: str) -> np.ndarray:
    n = c.named()
    v, old, ret = (np.asarray(n[k], dtype=np.float64) for k in ("values", "old_values", "returns"))
    eps = n.get("clip_eps", 0.2)
    with np.errstate(all="ignore"):
        unclipped = (v - ret) ** 2
        if eps is None or variant == "no value clip":
            return np.asarray(0.5 * unclipped)
        clipped = (old + np.clip(v - old, -eps, eps) - ret) ** 2
        if variant == "min instead of max":
            return np.asarray(0.5 * np.minimum(unclipped, clipped))
        if variant == "no 1/2 factor":
            return np.asarray(np.maximum(unclipped, clipped))
        if variant == "clipped term only":
            return np.asarray(0.5 * clipped)
        return np.asarray(0.5 * np.maximum(unclipped, clipped))


_VALUE_AXIS = {
    "min instead of max": "1/2 min(...) of the clipped and unclipped errors: optimistic, the clip never binds "
    "(openai/baselines #765, ray #19291)",
    "no value clip": "1/2 (V - R)^2 without clipping (clip_eps=None)",
    "no 1/2 factor": "max(...) without the factor 1/2",
    "clipped term only": "1/2 (V_old + clip(V - V_old) - R)^2 alone",
}


def _value_loss_variants() -> list[Variant]:
    out: list[Variant] = []

    def agg_axes(c: Case) -> list[_AggAxis]:
        return _agg_axis(c.kwargs.get("agg", "token-mean"), "agg")

    for variant, description in _VALUE_AXIS.items():

        def compute(c: Case, variant: str = variant) -> float:
            m = np.asarray(c.named()["mask"], dtype=bool)
            return _agg(_value_per_token(c, variant), m, c.kwargs.get("agg", "token-mean"), c.kwargs.get("max_tokens"))

        kwargs = {"clip_eps": None} if variant == "no value clip" else None
        out.append(Variant(variant, description, compute, kwargs))
    for agg_index in range(len(_agg_axis("token-mean", "agg"))):

        def compute_agg(c: Case, agg_index: int = agg_index) -> float:
            m = np.asarray(c.named()["mask"], dtype=bool)
            axis = agg_axes(c)[agg_index]
            return axis.fn(
                _value_per_token(c, "reference"), m, c.kwargs.get("agg", "token-mean"), c.kwargs.get("max_tokens")
            )

        out.append(_NamedLazy("", "", compute_agg, None, 1, None, agg_index, 1.0, agg_axes))
    return out


# ----------------------------------------------------------------------------------------------------------------
# KL


def _delta(c: Case) -> np.ndarray:
    n = c.named()
    return np.asarray(n["logp"], dtype=np.float64) - np.asarray(n["logp_ref"], dtype=np.float64)


def _k(kind: str, delta: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        if kind == "k1":
            return delta
        if kind == "k2":
            return np.asarray(0.5 * delta**2)
        return np.asarray(np.expm1(-delta) + delta)


_KL_FORMS = {
    "flipped": "{kind} of logp_ref - logp instead of logp - logp_ref (KL sign flipped)",
    "negated": "minus the {kind} estimator",
    "abs": "|k1| = |logp - logp_ref| (TRL legacy kl_penalty='abs', verl 'abs')",
    "no half": "(logp - logp_ref)^2 without the 1/2 of k2",
}


@dataclass(frozen=True)
class _KLVariant(Variant):
    """A KL estimator variant: the estimator (k1/k2/k3 or a form), optionally with the log-ratio clamped before it
    and/or its output clamped, with both bounds fitted to the candidate's output."""

    kind: str = "k1"
    form: str = ""
    in_clamp: bool = False
    out_clamp: bool = False

    def evaluate(self, c: Case, in_bound: float | None, out_bound: float | None, follow: bool = False) -> np.ndarray:
        """The variant on ``c``; ``follow``: use the case's own estimator (a clamp-only variant)."""
        kind = c.kwargs.get("kind", "k1") if follow else self.kind
        delta = _delta(c)
        if in_bound is not None:
            delta = np.clip(delta, -in_bound, in_bound)
        elif not self.in_clamp and self.form != "clamp ignored":
            delta = _clamped(c, delta)
        with np.errstate(all="ignore"):
            if self.form == "flipped":
                value = _k(kind, -delta)
            elif self.form == "negated":
                value = -_k(kind, delta)
            elif self.form == "abs":
                value = np.abs(delta)
            elif self.form == "no half":
                value = delta**2
            else:
                value = _k(kind, delta)
        return np.asarray(np.clip(value, -out_bound, out_bound) if out_bound is not None else value)

    def resolve(self, case: Case, actual: list[np.ndarray] | None) -> Variant:
        if self.form == "clamp ignored" and case.kwargs.get("log_ratio_clamp") is None:
            raise NotImplementedError
        in_bound: float | None = None
        out_bound: float | None = None
        if (self.in_clamp or self.out_clamp) and actual is None:
            raise NotImplementedError
        if self.out_clamp:
            assert actual is not None
            data = [float(x) for x in np.unique(np.abs(actual[0][np.isfinite(actual[0])]))[-3:]]
            out_bound = fit_constant(lambda cs, b: self.evaluate(cs, None, b), case, actual, CLAMP_GRID + data)
            if out_bound is None:
                raise NotImplementedError
        if self.in_clamp:
            assert actual is not None
            in_bound = fit_constant(lambda cs, b: self.evaluate(cs, b, out_bound), case, actual, CLAMP_GRID)
            if in_bound is None:
                raise NotImplementedError
        current = case.kwargs.get("kind", "k1")
        deviations = self.deviations
        parts: list[str] = []
        text: list[str] = []
        kwargs: dict[str, Any] | None = None
        if self.form in ("flipped", "negated"):
            parts.append(
                f"kind={self.kind!r} " + ("with the log-ratio flipped" if self.form == "flipped" else "negated")
            )
            text.append(_KL_FORMS[self.form].format(kind=self.kind))
        elif self.form in ("abs", "no half"):
            parts.append("|k1|" if self.form == "abs" else "k2 without the 1/2")
            text.append(_KL_FORMS[self.form])
        elif self.form == "clamp ignored":
            parts.append("log_ratio_clamp ignored")
            text.append(
                "no clamp of the log-ratio before exp: exp(-Delta) overflows float32/bf16 beyond |Delta| = 88.7 "
                "(verl #891, OpenRLHF #525: clamp before exp, not after)"
            )
        else:
            deviations = int(self.kind != current) + self.in_clamp + self.out_clamp
            if deviations == 0:
                raise NotImplementedError  # the reference itself
            kwargs = {}
            if self.kind != current:
                parts.append(f"kind={self.kind!r}")
                text.append(f"the {self.kind} estimator")
                kwargs["kind"] = self.kind
        if in_bound is not None:
            parts.append(f"log-ratio clamp at {_fmt(in_bound)}")
            text.append(
                f"log-ratio clamped to [-{_fmt(in_bound)}, {_fmt(in_bound)}] before the estimator (verl, OpenRLHF: 20)"
            )
            if kwargs is not None:
                kwargs["log_ratio_clamp"] = in_bound
        if out_bound is not None:
            parts.append(f"output clamp at +-{_fmt(out_bound)}")
            text.append(
                f"the estimate clamped to [-{_fmt(out_bound)}, {_fmt(out_bound)}] (OpenRLHF compute_approx_kl clamps "
                "every estimator to +-10; verl low_var_kl too): beyond it the KL and its gradient are cut off"
            )
            kwargs = None
        follow = self.form == "" and self.kind == current
        return Variant(" + ".join(parts), "; ".join(text),
                       lambda cs: self.evaluate(cs, in_bound, out_bound, follow), kwargs or None,
                       deviations)  # fmt: skip


def _kl_estimate_variants() -> list[Variant]:
    out: list[Variant] = []
    for kind in ("k1", "k2", "k3"):
        for in_clamp in (False, True):
            for out_clamp in (False, True):
                # the kind counts as a deviation only when it differs from the case's (decided at resolve time;
                # here 1 + clamps is an upper bound, used for ranking the matches)
                out.append(_KLVariant("", "", _unused, None, 1 + in_clamp + out_clamp, kind, "", in_clamp, out_clamp))
        out.append(_KLVariant("", "", _unused, None, 2 if kind != "k1" else 1, kind, "flipped"))
        out.append(_KLVariant("", "", _unused, None, 2, kind, "negated"))
    out.append(_KLVariant("", "", _unused, None, 1, "k1", "abs"))
    out.append(_KLVariant("", "", _unused, None, 1, "k2", "no half"))
    out.append(_KLVariant("", "", _unused, None, 1, "k3", "clamp ignored"))
    return out


def _clamped(c: Case, delta: np.ndarray) -> np.ndarray:
    clamp = c.kwargs.get("log_ratio_clamp")
    return np.clip(delta, -clamp, clamp) if clamp is not None else delta


def _kl_exact_variants() -> list[Variant]:
    def reverse(c: Case) -> np.ndarray:
        z, zr = c.args
        return np.asarray(R.kl_exact(zr, z))

    def raw(c: Case) -> np.ndarray:
        z, zr = (np.asarray(a, dtype=np.float64) for a in c.args)
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return np.asarray(np.sum(p * (z - zr), -1))

    return [
        Variant("KL(pi_ref || pi)", "the reverse (forward-in-ref) KL: arguments exchanged", reverse),
        _negated(R.kl_exact, "-KL"),
        Variant("unnormalised logits", "sum p (z - z_ref): logits used as log-probabilities", raw),
    ]


def _score_slot(m: np.ndarray, position: str, trl_fallback: bool = True) -> list[int]:
    slots = []
    for b in range(m.shape[0]):
        valid = np.flatnonzero(m[b])
        last = int(valid[-1])
        if position == "last":
            slots.append(last)
        else:
            slots.append(min(last + 1, m.shape[1] - 1) if trl_fallback else last + 1)
    return slots


def _shaped(
    c: Case, *, kind: str | None = None, flip: bool = False, sign: float = -1.0, position: str | None = None
) -> np.ndarray:
    n = c.named()
    m = np.asarray(n["mask"], dtype=bool)
    kind = kind or n.get("kind", "k1")
    position = position or n.get("score_position", "last")
    delta = _delta(c)
    kl = _k(kind, -delta if flip else delta)
    out = _where(m, sign * float(n["beta"]) * kl)
    scores = np.asarray(n["scores"], dtype=np.float64)
    for b, slot in enumerate(_score_slot(m, position)):
        out[b, slot] += scores[b]
    return out


def _kl_shaped_rewards_variants() -> list[Variant]:
    out: list[Variant] = []
    for kind in ("k1", "k2", "k3"):
        out.append(
            Variant(
                f"kind={kind!r}",
                f"the {kind} estimator in the reward",
                functools.partial(_shaped, kind=kind),
                {"kind": kind},
            )
        )
        out.append(
            Variant(
                f"kind={kind!r} with the log-ratio flipped",
                f"{kind} of logp_ref - logp (KL sign flipped)",
                functools.partial(_shaped, kind=kind, flip=True),
            )
        )
    out.append(Variant("penalty added", "+beta kl instead of -beta kl", lambda c: _shaped(c, sign=1.0)))
    out.append(
        Variant(
            "score_position='after_last'",
            "score on the slot after the last valid token, the first pad (TRL PPO, DS-Chat; TRL falls back to the "
            "last slot when the row has no pad)",
            lambda c: _shaped(c, position="after_last"),
            {"score_position": "after_last"},
        )
    )
    out.append(
        Variant(
            "score_position='last'",
            "score on the last valid token, the EOS (verl, OpenRLHF)",
            lambda c: _shaped(c, position="last"),
            {"score_position": "last"},
        )
    )

    def no_score(c: Case) -> np.ndarray:
        return _shaped(c.with_inputs(scores=np.zeros_like(np.asarray(c.named()["scores"], dtype=np.float64))))

    out.append(Variant("score missing", "the sequence score is not added", no_score))

    def estimate_clamped(c: Case, bound: float) -> np.ndarray:
        n = c.named()
        m = np.asarray(n["mask"], dtype=bool)
        with np.errstate(all="ignore"):
            k = _k(
                c.kwargs.get("kind", "k1"), np.asarray(n["logp"], np.float64) - np.asarray(n["logp_ref"], np.float64)
            )
            correction = float(n["beta"]) * _where(m, k - np.clip(k, -bound, bound))
        return np.asarray(_shaped(c) + correction)

    def clamp_grid(c: Case, actual: list[np.ndarray]) -> list[float]:
        return CLAMP_GRID

    out.append(
        Fitted(
            "KL estimate clamped to +-{c}",
            "the per-token estimate clamped to [-{c}, {c}] before the penalty (OpenRLHF compute_approx_kl clamps "
            "every estimator to +-10): beyond it the penalty stops growing",
            _unused,
            param_compute=estimate_clamped,
            grid=clamp_grid,
        )
    )
    return out


def _rlhf_objective_variants() -> list[Variant]:
    def build(c: Case, *, beta_sign: float = -1.0, ptx_sign: float = -1.0, token_mean: bool = False) -> float:
        n = c.named()
        m = np.asarray(n["mask"], dtype=bool)
        lr = _where(m, _delta(c))
        per_seq = lr.sum(1)
        if token_mean:
            with np.errstate(all="ignore"):
                per_seq = per_seq / m.sum(1)
        value = float(np.mean(np.asarray(n["scores"]) + beta_sign * float(n["beta"]) * per_seq))
        gamma = float(n.get("gamma", 0.0))
        if gamma != 0.0:
            value += ptx_sign * gamma * R.ptx_loss(n["ptx_logp"], n["ptx_mask"])
        return value

    return [
        Variant(
            "KL penalty sign flipped",
            "+beta log(pi/pi_ref): the penalty rewards moving away",
            lambda c: build(c, beta_sign=1.0),
        ),
        Variant(
            "ptx term sign flipped",
            "+gamma L_ptx: the pretraining loss added instead of its log-likelihood",
            lambda c: build(c, ptx_sign=1.0),
        ),
        Variant(
            "per-token mean KL",
            "the KL term averaged over the sequence's tokens instead of summed",
            lambda c: build(c, token_mean=True),
        ),
        _negated(R.rlhf_objective, "the loss -J instead of the objective J"),
    ]


# ----------------------------------------------------------------------------------------------------------------
# reward model


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(-np.logaddexp(0.0, -np.asarray(x, dtype=np.float64)))


def _rm(c: Case, *, margin_sign: float = -1.0, swap: bool = False, reduce: str = "mean") -> float:
    n = c.named()
    ch, rj = np.asarray(n["chosen"], dtype=np.float64), np.asarray(n["rejected"], dtype=np.float64)
    if swap:
        ch, rj = rj, ch
    margin = n.get("margin")
    m = 0.0 if margin is None else np.asarray(margin, dtype=np.float64)
    losses = -_log_sigmoid(ch - rj + margin_sign * m)
    return float(losses.sum() if reduce == "sum" else losses.mean())


def _rm_naive(c: Case) -> float:
    n = c.named()
    d = np.asarray(n["chosen"], dtype=np.float64) - np.asarray(n["rejected"], dtype=np.float64)
    if n.get("margin") is not None:
        d = d - np.asarray(n["margin"], dtype=np.float64)
    return float(np.mean(_naive_neg_log_sigmoid(d)))


def _reward_model_variants() -> list[Variant]:
    return [
        Variant("margin sign flipped", "r_c - r_r + m", lambda c: _rm(c, margin_sign=1.0)),
        Variant("margin ignored", "margin dropped (OpenRLHF LogExpLoss)", lambda c: _rm(c, margin_sign=0.0)),
        Variant("chosen and rejected swapped", "-log sigmoid(r_r - r_c - m)", lambda c: _rm(c, swap=True)),
        Variant("sum over the batch", "sum instead of mean over the pairs", lambda c: _rm(c, reduce="sum")),
        Variant("log(sigmoid) computed naively", _NAIVE_TEXT["sigmoid"], _rm_naive),
        _negated(R.reward_model_loss, "log sigmoid(...) (the log-likelihood, not the loss)"),
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
        s = float(sum(-_log_sigmoid(np.asarray(row[i] - row[j])) for i, j in index))
        divisor = {"binom": math.comb(k, 2), "half": k / 2, "none": 1.0, "pairs": len(index)}[norm]
        totals.append(s / divisor)
    return float(np.sum(totals) if reduce == "sum" else np.mean(totals))


def _ranking_variants() -> list[Variant]:
    return [
        Variant(
            "K/2 normaliser",
            "1/(K/2) instead of 1/C(K,2) (the seed's wording; off by a factor K-1)",
            lambda c: _ranking(c, norm="half"),
        ),
        Variant("no normaliser", "the sum over the C(K,2) pairs, not their mean", lambda c: _ranking(c, norm="none")),
        Variant("rows read worst to best", "columns in reverse order", lambda c: _ranking(c, reverse=True)),
        Variant("sum over the batch", "sum instead of mean over prompts", lambda c: _ranking(c, reduce="sum")),
        Variant(
            "adjacent pairs only",
            "only the K-1 neighbouring comparisons",
            lambda c: _ranking(c, pairs="adjacent", norm="pairs"),
        ),
        Variant(
            "K-way softmax cross-entropy",
            "-log softmax(r)[best] (lm-human-preferences PickBest)",
            lambda c: _ranking(c, pairs="softmax"),
        ),
        _negated(R.ranking_loss, "the log-likelihood instead of the loss"),
        Variant("log(sigmoid) computed naively", _NAIVE_TEXT["sigmoid"], _ranking_naive),
    ]


def _ranking_naive(c: Case) -> float:
    r = np.asarray(c.args[0], dtype=np.float64)
    k = r.shape[1]
    i, j = np.triu_indices(k, 1)
    return float(np.mean(_naive_neg_log_sigmoid(r[:, i] - r[:, j]).sum(1) / math.comb(k, 2)))


# ----------------------------------------------------------------------------------------------------------------
# advantages


def _gae_np(c: Case, variant: str) -> tuple[np.ndarray, np.ndarray]:
    n = c.named()
    r, v = np.asarray(n["rewards"], dtype=np.float64), np.asarray(n["values"], dtype=np.float64)
    m = np.asarray(n["mask"], dtype=bool)
    gamma, lam = float(n.get("gamma", 1.0)), float(n.get("lam", 0.95))
    if variant == "gamma and lam swapped":
        gamma, lam = lam, gamma
    adv = np.zeros_like(r)
    with np.errstate(all="ignore"):
        for b in range(r.shape[0]):
            if variant in ("zero-filled holes", "unmasked"):
                rb = r[b] if variant == "unmasked" else _where(m[b], r[b])
                vb = v[b] if variant == "unmasked" else _where(m[b], v[b])
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
    adv = _where(m, adv)
    return adv, _where(m, adv + v)


def _gae_variants() -> list[Variant]:
    described = {
        "zero-filled holes": "masked positions zero-filled but not skipped: the recursion runs through the holes "
        "with r = V = 0 there (TRL/OpenRLHF-style masking applied to multi-turn masks; verl PR #2337)",
        "unmasked": "masked rewards/values used as if valid (ROLL PR #447: unmasked V passed to GAE)",
        "bootstrap past the end": "V after the last valid token read from the next (pad) slot instead of 0 "
        "(DS-Chat PR #672 off-by-one)",
        "gamma and lam swapped": "gamma and lambda exchanged",
    }
    out = [Variant(name, d, functools.partial(_by_name, _gae_np, name)) for name, d in described.items()]

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


def _whiten_np(c: Case, variant: str) -> np.ndarray:
    n = c.named()
    x, m = np.asarray(n["x"], dtype=np.float64), np.asarray(n["mask"], dtype=bool)
    shift_mean, unbiased = bool(n.get("shift_mean", True)), bool(n.get("unbiased", True))
    eps = float(n.get("eps", 1e-8))
    with np.errstate(all="ignore"):
        if variant == "pads in the statistics":
            vals = x.reshape(-1)
            mu, var = vals.mean(), vals.var(ddof=1 if unbiased else 0)
            out = (x - mu) / np.sqrt(var + eps)
            return _where(m, out + (0 if shift_mean else mu))
        if variant == "per-row statistics":
            out = np.zeros_like(x)
            for b in range(x.shape[0]):
                vals = x[b][m[b]]
                mu, var = vals.mean(), vals.var(ddof=1 if unbiased else 0)
                out[b] = (x[b] - mu) / np.sqrt(var + eps) + (0 if shift_mean else mu)
            return _where(m, out)
        vals = x[m]
        mu, var = vals.mean(), vals.var(ddof=1 if unbiased else 0)
        if variant == "x / sigma":
            return _where(m, x / np.sqrt(var + eps))
        if variant == "eps outside the sqrt":
            return _where(m, (x - mu) / (np.sqrt(var) + eps) + (0 if shift_mean else mu))
        if variant == "+1e-8 in the count":
            n = vals.size
            mu = vals.sum() / (n + 1e-8)
            var = ((vals - mu) ** 2).sum() / (n + 1e-8) * (n / (n - 1) if unbiased else 1.0)
            return _where(m, (x - mu) / np.sqrt(var + eps) + (0 if shift_mean else mu))
    raise NotImplementedError(variant)


def _whiten_variants() -> list[Variant]:
    out = [
        _convention(R.whiten, "unbiased", False, "population variance (lm-human-preferences tf.nn.moments, OpenRLHF)"),
        _convention(R.whiten, "unbiased", True, "Bessel-corrected variance (TRL, verl masked_whiten)"),
        _convention(R.whiten, "shift_mean", False, "(x - mu)/sigma + mu: the mean kept (TRL whiten_rewards)"),
        _convention(R.whiten, "shift_mean", True, "(x - mu)/sigma"),
    ]
    described = {
        "x / sigma": "x / sigma for shift_mean=False (THUDM/slime #1369)",
        "pads in the statistics": "mean and variance over all B*T positions, pads included",
        "per-row statistics": "mean and variance per row instead of over the batch",
        "eps outside the sqrt": "(x - mu) / (sigma + eps)",
        "+1e-8 in the count": "mean and variance divided by n + 1e-8 (verl masked_mean inside masked_whiten): a "
        "relative change of about 1e-8/n, below float32 resolution",
    }
    out += [Variant(name, d, functools.partial(_by_name, _whiten_np, name)) for name, d in described.items()]
    return out


def _grpo_np(c: Case, variant: str) -> np.ndarray:
    n = c.named()
    s = np.asarray(n["scores"], dtype=np.float64)
    g = int(n["group_size"])
    std_normalize, unbiased = bool(n.get("std_normalize", True)), bool(n.get("unbiased", True))
    eps = float(n.get("eps", 1e-6))
    groups = s.reshape(-1, g) if variant != "strided groups" else s.reshape(g, -1).T
    mean = groups.mean(1, keepdims=True)
    ddof = 1 if unbiased else 0
    with np.errstate(all="ignore"):
        if variant == "batch std":
            std = s.std(ddof=ddof)
        elif variant == "eps inside the sqrt":
            std = np.sqrt(groups.var(1, ddof=ddof, keepdims=True) + eps) - eps
        else:
            std = groups.std(1, ddof=ddof, keepdims=True)
        adv = (groups - mean) / (std + eps) if std_normalize else groups - mean
    flat = adv.reshape(-1) if variant != "strided groups" else adv.T.reshape(-1)
    mask = n.get("mask")
    if mask is None:
        return np.asarray(flat)
    return _where(np.asarray(mask, dtype=bool), flat[:, None])


def _grpo_variants() -> list[Variant]:
    out = [
        _convention(R.grpo_advantages, "unbiased", False, "population std"),
        _convention(R.grpo_advantages, "unbiased", True, "Bessel-corrected std (torch.std: verl, TRL)"),
        _convention(R.grpo_advantages, "std_normalize", False, "mean-centred only (Dr. GRPO)"),
        _convention(R.grpo_advantages, "std_normalize", True, "normalised by the group std (DeepSeekMath)"),
    ]
    described = {
        "strided groups": "row i in group i mod n_groups instead of consecutive blocks",
        "batch std": "group mean but batch std (TRL scale_rewards='batch')",
        "eps inside the sqrt": "sqrt(var + eps) instead of std + eps",
    }
    out += [Variant(name, d, functools.partial(_by_name, _grpo_np, name)) for name, d in described.items()]
    return out


def _adaptive_variants() -> list[Variant]:
    def build(c: Case, *, clip: bool = True, scale: bool = True) -> float:
        beta, kl, target, n_steps, horizon = c.args
        e = kl / target - 1.0
        if clip:
            e = min(max(e, -0.2), 0.2)
        return float(beta * (1.0 + e * (n_steps / horizon if scale else 1.0)))

    return [
        Variant("error not clipped", "e = KL/target - 1 without the +-0.2 clip", lambda c: build(c, clip=False)),
        Variant("n_steps/horizon ignored", "beta (1 + e): one full step per update", lambda c: build(c, scale=False)),
    ]


_NAIVE_TEXT = {
    "logprobs": "log of the softmax probabilities: softmax underflows to exactly 0 for tokens more than ~745 "
    "(float64) / ~104 (float32) nats below the best, and log(0) = -inf; use log_softmax or z - logsumexp(z)",
    "entropy": "-sum p log p with p = softmax(z): p underflows to 0 for very unlikely tokens and 0 * log 0 = "
    "0 * -inf = NaN; use logsumexp(z) - sum p z",
    "sigmoid": "log(sigmoid(x)) computed naively: sigmoid underflows to 0 for x below ~-745 (float64) / ~-104 "
    "(float32) and log(0) = -inf (an infinite loss at large reward gaps); use logsigmoid / softplus",
}


def _softmax_naive(z: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        e = np.exp(z - z.max(-1, keepdims=True))
        return np.asarray(e / e.sum(-1, keepdims=True))


def _naive_logprobs(c: Case) -> np.ndarray:
    z = np.asarray(c.args[0], dtype=np.float64) / float(c.kwargs.get("temperature", 1.0))
    tokens = np.asarray(c.args[1])
    with np.errstate(all="ignore"):
        p = np.take_along_axis(_softmax_naive(z), tokens[..., None], -1)[..., 0]
        return np.asarray(np.log(p))


def _naive_entropy(c: Case) -> np.ndarray:
    z = np.asarray(c.args[0], dtype=np.float64) / float(c.kwargs.get("temperature", 1.0))
    p = _softmax_naive(z)
    with np.errstate(all="ignore"):
        return np.asarray(-(p * np.log(p)).sum(-1))


def _naive_neg_log_sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.asarray(-np.log(1.0 / (1.0 + np.exp(-x))))


def _logprob_variants(fn: Callable[..., Any], what: str) -> list[Variant]:
    def no_temp(c: Case) -> Any:
        return fn(*c.args, **_kw(c, temperature=1.0))

    def times_temp(c: Case) -> Any:
        return fn(*c.args, **_kw(c, temperature=1.0 / float(c.kwargs.get("temperature", 1.0))))

    out = [
        Variant("temperature ignored", "logits not divided by the temperature", no_temp),
        Variant("logits multiplied by the temperature", "z * T instead of z / T", times_temp),
        _negated(fn, f"minus the {what}"),
    ]
    if fn is R.token_logprobs:
        out.append(
            Variant("probabilities", "pi(o_t) instead of log pi(o_t)", lambda c: np.exp(fn(*c.args, **c.kwargs)))
        )
        out.append(Variant("log(softmax(z)) computed naively", _NAIVE_TEXT["logprobs"], _naive_logprobs))
    elif fn is R.entropy_from_logits:
        out.append(Variant("-sum p log p computed naively", _NAIVE_TEXT["entropy"], _naive_entropy))
    else:
        out.append(
            Variant("in bits", "log2 instead of the natural log", lambda c: fn(*c.args, **c.kwargs) / math.log(2))
        )
    return out


VARIANTS: dict[str, list[Variant]] = {
    "token_logprobs": _logprob_variants(R.token_logprobs, "log-probability (the NLL)"),
    "entropy_from_logits": _logprob_variants(R.entropy_from_logits, "entropy"),
    "ppo_clip_objective": _ppo_objective_variants(),
    "ppo_clip_grad": _ppo_grad_variants(),
    "aggregate": _aggregate_like_variants(
        "aggregate", R.aggregate, "seq-mean-token-mean", "mode", lambda c: np.asarray(c.args[0], dtype=np.float64)
    ),
    "policy_loss": _policy_loss_variants(),
    "kl_estimate": _kl_estimate_variants(),
    "kl_exact": _kl_exact_variants(),
    "kl_shaped_rewards": _kl_shaped_rewards_variants(),
    "rlhf_objective": _rlhf_objective_variants(),
    "ptx_loss": _aggregate_like_variants(
        "ptx_loss", R.ptx_loss, "token-mean", "agg", lambda c: np.asarray(c.args[0], dtype=np.float64)
    ),
    "reward_model_loss": _reward_model_variants(),
    "ranking_loss": _ranking_variants(),
    "gae": _gae_variants(),
    "whiten": _whiten_variants(),
    "value_loss": _value_loss_variants(),
    "adaptive_kl_update": _adaptive_variants(),
    "grpo_advantages": _grpo_variants(),
}
"""Formula id -> its known variants (conventions and bug classes)."""


def resolve(variant: Variant, case: Case, actual: list[np.ndarray] | None = None) -> Variant:
    """The variant made concrete for ``case``: composed variants are named once the current aggregation mode is
    known, fitted constants (dual-clip c, clamp bounds) are fitted to the candidate's output ``actual``."""
    if isinstance(variant, _NamedLazy | _PPOElementwise | _KLVariant):
        return variant.resolve(case, actual)
    if isinstance(variant, Fitted):
        return variant.fit(case, actual)
    return variant
