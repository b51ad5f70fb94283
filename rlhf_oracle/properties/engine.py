"""The check engine: run every named property of a formula on a candidate and collect the verdicts.

Properties (see :data:`~rlhf_oracle.properties.report.PROPERTIES`), each a separate hypothesis search with its own
inputs, verdict, shrunk counter-example and diagnosis:

- ``values`` and ``gradients`` (the maths): finite, non-degenerate inputs; never waivable;
- ``edge_cases``: empty rows, one valid token, all masked, B = 1 (formulas with a mask);
- ``masked_slots``: NaN / inf / 1e30 in masked input positions;
- ``masked_outputs``: what is written at masked positions of ``[B, T]`` outputs (contract: exactly 0);
- ``stability``: the extreme regime of the formula (log-ratios to +-50, logit spreads 1e3-1e4, reward gaps
  1e4, estimator values beyond +-10);
- ``dtype``: float32 and bf16 inputs within the written rounding budget (when the check runs in float64).

Convention keyword arguments (``agg="token-mean"``, ``kind="k3"`` ...) are passed to the reference, and to the
candidate when its signature accepts them; a candidate that does not take the keyword is assumed to implement it.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, given, settings, target
from hypothesis import strategies as st

from . import profiles
from . import strategies as S
from . import tolerances as tol
from .adapters import NO_GRAD_ATTR, Adapter, accepted_kwargs, compose
from .gradients import kink_band, weights_for
from .registry import FormulaSpec, get
from .report import PROPERTIES, WAIVABLE, CheckReport, Failure, PropertyResult
from .strategies import Case

__all__ = ["Context", "Mismatch", "candidate_call", "check", "outputs", "reference_outputs", "rounded", "run_check"]

_LOW_DTYPES = (torch.float32, torch.bfloat16)


class Mismatch(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


# ----------------------------------------------------------------------------------------------------------------
# conversions


def _is_float_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating)


def _to_torch(x: Any, dtype: torch.dtype, device: str) -> Any:
    if isinstance(x, np.ndarray):
        if np.issubdtype(x.dtype, np.floating):
            return torch.tensor(x, dtype=dtype, device=device)
        if x.dtype == np.bool_:
            return torch.tensor(x, dtype=torch.bool, device=device)
        return torch.tensor(x, device=device)
    return x


def _round(x: Any, dtype: torch.dtype) -> Any:
    if _is_float_array(x):
        return torch.tensor(x, dtype=dtype).to(torch.float64).numpy()
    return x


def rounded(case: Case, dtype: torch.dtype) -> Case:
    """The case with every float array rounded to ``dtype`` and back (what a ``dtype`` candidate sees)."""
    if dtype == torch.float64:
        return case
    return case.with_inputs(**{k: _round(v, dtype) for k, v in case.named().items()})


def candidate_call(
    fn: Callable[..., Any],
    case: Case,
    dtype: torch.dtype,
    device: str,
    accepted: frozenset[str] | None,
    leaves: Mapping[str, torch.Tensor] | None = None,
) -> Any:
    leaves = leaves or {}
    args = [leaves.get(n, _to_torch(a, dtype, device)) for n, a in zip(case.arg_names, case.args, strict=True)]
    kwargs = {
        k: leaves.get(k, _to_torch(v, dtype, device))
        for k, v in case.kwargs.items()
        if accepted is None or k in accepted
    }
    return fn(*args, **kwargs)


def outputs(out: Any) -> list[np.ndarray]:
    """The candidate's (or reference's) result as float64 arrays; a TypeError names what cannot be read."""
    if out is None:
        raise TypeError("the result is None")
    if isinstance(out, torch.Tensor):
        return [out.detach().to("cpu", torch.float64).numpy()]
    if isinstance(out, tuple | list):
        return [o for item in out for o in outputs(item)]
    if isinstance(out, bool | str | dict) or not isinstance(out, int | float | np.ndarray | np.generic):
        raise TypeError(f"an output of type {type(out).__name__} is not a number, a tensor or an array")
    return [np.asarray(out, dtype=np.float64)]


def output_dtypes(out: Any) -> list[torch.dtype | None]:
    if isinstance(out, torch.Tensor):
        return [out.dtype]
    if isinstance(out, tuple | list):
        return [d for item in out for d in output_dtypes(item)]
    return [None]


def reference_outputs(spec: FormulaSpec, case: Case) -> list[np.ndarray]:
    with np.errstate(all="ignore"):  # masked slots may hold NaN/inf: the reference ignores them, quietly
        return outputs(spec.reference(*case.args, **case.kwargs))


# ----------------------------------------------------------------------------------------------------------------
# comparison


def compare(
    spec: FormulaSpec,
    case: Case,
    expected: list[np.ndarray],
    actual: list[np.ndarray],
    dtype: torch.dtype,
    *,
    where: str = "valid",
    cap_scale: bool = False,
) -> tuple[float, int, tuple[int, ...] | None, str | None]:
    """(worst ratio, output number, worst index, structural problem or None).

    ``where``: ``"valid"`` compares [B, T] outputs at valid positions only (masked positions are the
    ``masked_outputs`` property's), ``"masked"`` only at masked positions, ``"all"`` everywhere.
    ``cap_scale``: the tolerance scale is capped by the size of the two values compared (a variant of the
    diagnosis must reproduce the candidate's value, whatever the reference's conditioning on that input: a k3
    at Delta = -100 has terms of 1e43, which must not make -100 and 10 "equal")."""
    if len(actual) != len(expected):
        hint = " (use adapters.first or adapters.take(i))" if len(actual) > len(expected) else ""
        return math.inf, 0, None, f"returns {len(actual)} output(s), the reference {len(expected)}{hint}"
    cond, scale = spec.tolerance(case)
    worst, worst_out, worst_idx = 0.0, 0, None
    for k, (e, a) in enumerate(zip(expected, actual, strict=True)):
        if a.shape != e.shape:
            return math.inf, k, None, f"output {k} has shape {a.shape}, the reference's is {e.shape}"
        s = np.broadcast_to(scale, e.shape) if np.ndim(scale) else scale
        if cap_scale:
            with np.errstate(all="ignore"):
                size = np.nan_to_num(np.abs(e) + np.abs(a) + 1.0, nan=np.inf, posinf=np.inf)
            s = np.minimum(s, size)
        allowed = tol.bound(dtype, e, cond, s)
        ratio = tol.error_ratio(a, e, allowed)
        if spec.value_alternative is not None and k == 0:
            with kink_band(tol.for_dtype(dtype).machine_eps):
                alt = spec.value_alternative(case)
            ratio = np.where(np.isnan(alt), ratio, np.minimum(ratio, tol.error_ratio(a, np.nan_to_num(alt), allowed)))
        if where != "all" and spec.per_token_output and case.mask is not None and ratio.shape == case.mask.shape:
            ratio = np.where(case.mask if where == "valid" else ~case.mask, ratio, 0.0)
        if ratio.size and float(ratio.max()) > worst:
            worst = float(ratio.max())
            worst_out = k
            worst_idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(ratio)), ratio.shape))
    return worst, worst_out, worst_idx, None


# ----------------------------------------------------------------------------------------------------------------
# the property bodies


@dataclass
class Context:
    spec: FormulaSpec
    fn: Callable[..., Any]
    accepted: frozenset[str] | None
    conventions: dict[str, Any]
    dtype: torch.dtype
    device: str
    maths_failed: bool = False
    strict: bool = False
    """Findings (a value where the reference refuses the input) fail the check instead of being reported."""
    findings: dict[str, Failure] = field(default_factory=dict)
    """The first finding of each property (non-strict mode)."""
    compute_dtype: torch.dtype | None = None
    """The dtype the candidate really computes in, when it is lower than ``dtype`` (a float32-only candidate
    checked in float64): the non-maths properties judge it at that precision, so that its rounding does not hide
    their own findings (the maths properties report it)."""


def _call(ctx: Context, prop: str, case: Case, rc: Case, dtype: torch.dtype, expected: Any) -> tuple[Any, list[Any]]:
    """Call the candidate; a raise, None or an unreadable result becomes a Failure of ``prop``."""
    try:
        out = candidate_call(ctx.fn, case, dtype, ctx.device, ctx.accepted)
    except Exception as exc:
        msg = f"raised {type(exc).__name__}: {exc}{_drawn_hint(ctx, case)}"
        raise Mismatch(Failure(prop, "raised", case, rc, msg, expected=expected, dtype=dtype)) from exc
    if out is None:
        msg = "returned None (a missing return statement?)"
        raise Mismatch(Failure(prop, "none", case, rc, msg, expected=expected, dtype=dtype))
    try:
        actual = outputs(out)
    except TypeError as exc:
        msg = f"{exc}: it returns {type(out).__name__}; keep the loss with adapters.first or adapters.take(key)"
        raise Mismatch(Failure(prop, "structure", case, rc, msg, expected, dtype=dtype)) from exc
    return out, actual


def _drawn_hint(ctx: Context, case: Case) -> str:
    """Which drawn hyper-parameters the candidate was called with, and how to fix one it does not support."""
    drawn = {
        k: v
        for k, v in case.kwargs.items()
        if k not in ctx.conventions
        and (ctx.accepted is None or k in ctx.accepted)
        and (v is None or isinstance(v, bool | int | float | str))
    }
    if not drawn:
        return ""
    shown = ", ".join(f"{k}={v!r}" for k, v in drawn.items())
    name = next(iter(drawn))
    return (
        f" (called with the drawn {shown}; if your function does not support one of them, fix it: "
        f"check(..., {name}=<value>) or --{name.replace('_', '-')} <value> on the CLI)"
    )


def _dtype_body(ctx: Context, case: Case, dtype: torch.dtype) -> float:
    try:
        candidate_call(ctx.fn, case, ctx.dtype, ctx.device, ctx.accepted)
    except Exception:
        return 0.0  # raising on this input at all is the values property's finding
    return _values_body(ctx, case, "dtype", dtype)


def _values_body(ctx: Context, case: Case, prop: str = "values", dtype: torch.dtype | None = None) -> float:
    dtype = dtype or ctx.dtype
    judge = ctx.compute_dtype if prop in ("stability", "edge_cases") and ctx.compute_dtype is not None else dtype
    rc = rounded(case, judge)
    expected = reference_outputs(ctx.spec, rc)
    _, actual = _call(ctx, prop, case, rc, dtype, expected)
    ratio, k, idx, problem = compare(ctx.spec, rc, expected, actual, judge)
    if problem is not None:
        kind = "structure" if "output(s)" in problem else "shape"
        raise Mismatch(Failure(prop, kind, case, rc, problem, expected, actual, dtype=dtype))
    target(min(ratio, 1e12), label=f"{prop}: error / allowed error")
    if ratio > 1.0:
        e, a = expected[k][idx] if idx else expected[k], actual[k][idx] if idx else actual[k]
        kind = "nonfinite" if np.isfinite(e) and not np.isfinite(a) else "value"
        msg = f"output {k} differs at index {idx}: expected {float(e)!r}, got {float(a)!r}"
        raise Mismatch(Failure(prop, kind, case, rc, msg, expected, actual, idx, k, ratio, dtype=dtype))
    return ratio


def _stability_body(ctx: Context, case: Case) -> float:
    """The extreme regime: the exact value, or a ValueError that refuses the input; never a silent wrong value."""
    rc = rounded(case, ctx.dtype)
    try:
        reference_outputs(ctx.spec, rc)
    except ValueError as exc:  # the exact value is beyond float64 (an unclamped k3 at |Delta| = 1e4)
        try:
            out = candidate_call(ctx.fn, case, ctx.dtype, ctx.device, ctx.accepted)
            actual = outputs(out)
        except Exception:
            return 0.0  # refusing is right
        if all(np.all(np.isfinite(a)) for a in actual):
            return 0.0  # a finite (clamped) answer is a documented convention, judged where the value exists
        msg = (
            f"returned a non-finite value where the exact value is beyond every float's range (the reference "
            f"raises ValueError: {exc}); raise a clear error or clamp the log-ratio before exp"
        )
        raise Mismatch(Failure("stability", "nonfinite", case, rc, msg, None, actual, dtype=ctx.dtype)) from None
    try:
        candidate_call(ctx.fn, case, ctx.dtype, ctx.device, ctx.accepted)
    except ValueError:
        return 0.0  # a clear refusal is an acceptable answer at the edge of the dtype's range
    except Exception:
        pass  # reported (with its message) by the values body below
    return _values_body(ctx, case, "stability")


def _masked_slots_body(ctx: Context, case: Case) -> float:
    """NaN/inf/1e30 in masked input slots must not change what the candidate computes with finite padding (its
    own result on the same case with zeros there: the maths is the values property's business), and for
    differentiable formulas the gradient must stay finite, exactly 0 at the masked inputs (a NaN there reaches the
    model's parameters through the backward pass)."""
    dtype = ctx.dtype
    rc = rounded(case, dtype)
    clean = case.refilled("zero")
    try:
        baseline = outputs(candidate_call(ctx.fn, clean, dtype, ctx.device, ctx.accepted))
    except Exception:
        return 0.0  # raising on the finite version is the values property's finding
    _, actual = _call(ctx, "masked_slots", case, rc, dtype, baseline)
    ratio, k, idx, problem = compare(ctx.spec, rc, baseline, actual, dtype)
    if problem is not None:
        return 0.0
    target(min(ratio, 1e12), label="masked_slots: change / allowed error")
    if ratio > 1.0:
        e, a = baseline[k][idx] if idx else baseline[k], actual[k][idx] if idx else actual[k]
        kind = "nonfinite" if np.isfinite(e) and not np.isfinite(a) else "value"
        msg = (
            f"output {k} at index {idx} is {float(a)!r} with {case.fill} in the masked slots and {float(e)!r} with "
            "zeros there"
        )
        raise Mismatch(Failure("masked_slots", kind, case, rc, msg, baseline, actual, idx, k, ratio, dtype=dtype))
    if ctx.spec.gradient is None or getattr(ctx.fn, NO_GRAD_ATTR, False):
        return ratio
    return max(ratio, _masked_grad_body(ctx, case, rc))


def _masked_grad_body(ctx: Context, case: Case, rc: Case) -> float:
    named = case.named()
    leaves = {
        name: torch.tensor(named[name], dtype=ctx.dtype, device=ctx.device, requires_grad=True)
        for name in ctx.spec.differentiable
        if _is_float_array(named.get(name)) and name in case.per_token
    }
    if not leaves or case.mask is None:
        return 0.0
    try:
        out = candidate_call(ctx.fn, case, ctx.dtype, ctx.device, ctx.accepted, leaves)
        first = out[0] if isinstance(out, tuple | list) else out
        if not isinstance(first, torch.Tensor) or not first.requires_grad:
            return 0.0
        w = torch.tensor(weights_for(tuple(first.shape)), dtype=first.dtype, device=first.device)
        grads = torch.autograd.grad((first * w).sum(), list(leaves.values()), allow_unused=True)
    except Exception:
        return 0.0
    for (name, leaf), g in zip(leaves.items(), grads, strict=True):
        if g is None:
            continue
        actual = g.detach().to("cpu", torch.float64).numpy()
        bad = ~case.mask & (~np.isfinite(actual) | (actual != 0))
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            msg = (
                f"d(sum w*out)/d {name} is {float(actual[idx])!r} at masked position {idx} with {case.fill} in the "
                "masked slots (it must be exactly 0)"
            )
            failure = Failure("masked_slots", "grad", case, rc, msg, np.zeros_like(actual), actual, idx, 0,
                              math.inf, dtype=ctx.dtype)  # fmt: skip
            from .diagnosis import grad_diagnosis

            failure.diagnosis = grad_diagnosis(rc, name, np.zeros_like(actual), actual)
            raise Mismatch(failure)
        del leaf
    return 0.0


def _masked_outputs_body(ctx: Context, case: Case) -> float:
    rc = rounded(case, ctx.dtype)
    expected = reference_outputs(ctx.spec, rc)
    try:
        actual = outputs(candidate_call(ctx.fn, case, ctx.dtype, ctx.device, ctx.accepted))
    except Exception:
        return 0.0  # raising on a valid input is the values property's finding
    ratio, k, idx, problem = compare(ctx.spec, rc, expected, actual, ctx.dtype, where="masked")
    if problem is not None:
        return 0.0  # structural problems are the values property's
    if ratio > 1.0:
        a = actual[k][idx] if idx else actual[k]
        msg = f"output {k} holds {float(a)!r} at masked position {idx}; the contract is exactly 0 there"
        raise Mismatch(Failure("masked_outputs", "masked_output", case, rc, msg, expected, actual, idx, k, ratio))
    return ratio


def _edge_body(ctx: Context, case: Case) -> float:
    """Compare what the candidate does on a degenerate input with what the reference does."""
    rc = rounded(case, ctx.dtype)
    try:
        expected: list[np.ndarray] | None = reference_outputs(ctx.spec, rc)
        ref_error: Exception | None = None
    except (ValueError, TypeError) as exc:
        expected, ref_error = None, exc
    try:
        out = candidate_call(ctx.fn, case, ctx.dtype, ctx.device, ctx.accepted)
    except Exception as exc:
        if ref_error is not None:
            return 0.0  # both refuse
        msg = f"raised {type(exc).__name__}: {exc} on an edge input ({case.edge}) that the reference accepts"
        raise Mismatch(Failure("edge_cases", "raised", case, rc, msg, expected, dtype=ctx.dtype)) from exc
    try:
        actual = outputs(out)
    except TypeError as exc:
        raise Mismatch(Failure("edge_cases", "structure", case, rc, str(exc), expected, dtype=ctx.dtype)) from exc
    if ref_error is not None:
        shown = ", ".join(np.array2string(a, precision=6, threshold=8) for a in actual)
        msg = (
            f"returned {shown} on an edge input ({case.edge}) where the reference raises "
            f"{type(ref_error).__name__}: {ref_error}"
        )
        finding = Failure("edge_cases", "accepted", case, rc, msg, None, actual, dtype=ctx.dtype)
        if ctx.strict:
            raise Mismatch(finding)
        ctx.findings.setdefault("edge_cases", finding)  # its choice, not a wrong number: reported, not failed
        return 0.0
    assert expected is not None
    if ctx.maths_failed:
        return 0.0  # both return a value; its maths is the values property's finding
    return _values_body(ctx, case, "edge_cases")


def _grad_body(ctx: Context, case: Case, prop: str = "gradients") -> float:
    from .diagnosis import grad_diagnosis

    spec = ctx.spec
    assert spec.gradient is not None
    rc = rounded(case, ctx.dtype)
    named = case.named()
    leaves = {
        name: torch.tensor(named[name], dtype=ctx.dtype, device=ctx.device, requires_grad=True)
        for name in spec.differentiable
        if _is_float_array(named.get(name))
    }
    if not leaves:
        return 0.0
    try:
        out = candidate_call(ctx.fn, case, ctx.dtype, ctx.device, ctx.accepted, leaves)
    except Exception as exc:
        msg = f"raised {type(exc).__name__}: {exc} when called with inputs that require grad"
        raise Mismatch(Failure(prop, "raised", case, rc, msg, dtype=ctx.dtype)) from exc
    first_out = out[0] if isinstance(out, tuple | list) else out
    if not isinstance(first_out, torch.Tensor) or not first_out.requires_grad:
        if prop != "gradients":
            return 0.0  # the gradients property reports it
        raise Mismatch(
            Failure(
                "gradients",
                "no_grad",
                case,
                rc,
                "the output is not differentiable with respect to "
                f"{', '.join(leaves)} (detached: .item(), NumPy, torch.no_grad, or a Python float)",
                dtype=ctx.dtype,
            )
        )
    w = weights_for(tuple(first_out.shape))
    w_t = torch.tensor(w, dtype=first_out.dtype, device=first_out.device)
    w_used = w_t.to("cpu", torch.float64).numpy()
    grads = torch.autograd.grad((first_out * w_t).sum(), list(leaves.values()), allow_unused=True)
    with kink_band(tol.for_dtype(ctx.dtype).machine_eps):
        expected = spec.gradient(rc, w_used)
    cond = spec.tolerance(rc)[0]
    worst = 0.0
    for (name, leaf), g in zip(leaves.items(), grads, strict=True):
        actual = np.zeros(leaf.shape) if g is None else g.detach().to("cpu", torch.float64).numpy()
        exp, alt, terms = expected[name]
        magnitude = _input_magnitude(rc)
        # relative to the largest gradient component (1/size where the whole gradient is 0) or to the size of the
        # terms that cancel in it, times the input magnitude (exp/log-softmax errors grow with it)
        # (the other one-sided value at a kink counts too: at a kink the candidate may return either side)
        largest = max(
            float(np.max(np.abs(exp), initial=0.0)), float(np.max(np.abs(alt[np.isfinite(alt)]), initial=0.0))
        )
        largest = largest or 1.0 / max(exp.size, 1)
        if terms is not None:
            largest = max(largest, float(np.max(terms, initial=0.0)))
        gscale = largest * (1.0 + magnitude)
        allowed = tol.bound(ctx.dtype, exp, cond, gscale, grad=True).copy()
        if rc.mask is not None and name in rc.per_token:
            allowed = np.where(rc.mask, allowed, 0.0)  # exactly 0 (and finite) at masked positions
        ratio = tol.error_ratio(actual, _nearest_subgradient(actual, exp, alt), allowed)
        r = float(ratio.max(initial=0.0))
        if r > 1.0:
            idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(ratio)), ratio.shape))
            msg = (
                f"d(sum w*out)/d {name} differs at index {idx}: expected {float(exp[idx])!r}, "
                f"got {float(actual[idx])!r}"
            )
            failure = Failure(prop, "grad", case, rc, msg, exp, actual, idx, 0, r, dtype=ctx.dtype)
            failure.diagnosis = grad_diagnosis(rc, name, exp, actual)
            raise Mismatch(failure)
        worst = max(worst, r)
    target(min(worst, 1e12), label="gradient error / allowed error")
    return worst


def _nearest_subgradient(actual: np.ndarray, expected: np.ndarray, alternative: np.ndarray) -> np.ndarray:
    """The point of the segment [expected, alternative] nearest to ``actual`` at a kink (any convex combination of
    the two one-sided derivatives is a subgradient: torch.minimum/maximum give 0.5/0.5 at a tie), ``expected``
    elsewhere (``alternative`` NaN)."""
    kink = np.isfinite(alternative) & np.isfinite(actual)
    with np.errstate(all="ignore"):
        lo, hi = np.minimum(expected, alternative), np.maximum(expected, alternative)
        nearest = np.clip(actual, lo, hi)
    return np.where(kink, nearest, expected)


def _input_magnitude(case: Case) -> float:
    m = 0.0
    for name, v in case.named().items():
        if _is_float_array(v) and v.size:
            x = np.where(case.mask, v, 0.0) if case.mask is not None and name in case.per_token else v
            x = x[np.isfinite(x)]
            if x.size:
                m = max(m, float(np.max(np.abs(x))))
    return min(m, 1e4)


# ----------------------------------------------------------------------------------------------------------------
# searching


def hypothesis_settings(max_examples: int | None) -> settings:
    base = profiles.active_settings()
    return settings(
        base,
        max_examples=max_examples if max_examples is not None else base.max_examples,
        deadline=None,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


def search(
    name: str, strategy: st.SearchStrategy[Case], body: Callable[[Case], float], max_examples: int | None
) -> PropertyResult:
    stats = {"n": 0, "worst": 0.0, "failed": False}

    @hypothesis_settings(max_examples)
    @given(strategy)
    def run(case: Case) -> None:
        if not stats["failed"]:
            stats["n"] += 1
        try:
            stats["worst"] = max(stats["worst"], body(case))
        except Mismatch:
            stats["failed"] = True
            raise

    try:
        run()
    except Mismatch as exc:
        f = exc.failure
        return PropertyResult(name, False, int(stats["n"]), f.ratio, f.message, failure=f)
    return PropertyResult(name, True, int(stats["n"]), float(stats["worst"]))


def sample_cases(strategy: st.SearchStrategy[Case], n: int) -> list[Case]:
    """``n`` cases drawn deterministically (generation only, no shrinking)."""
    out: list[Case] = []

    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(case: Case) -> None:
        out.append(case)

    collect()
    return out


def _secondary_examples(max_examples: int | None) -> int:
    """The non-maths properties search with a third of the maths ones' effort (at least 10 examples): their
    inputs are the maths cases pushed into one regime, so fewer draws reach it."""
    n = max_examples if max_examples is not None else profiles.active_settings().max_examples
    return max(10, n // 3)


# ----------------------------------------------------------------------------------------------------------------
# entry points


def _check_conventions(spec: FormulaSpec, conventions: Mapping[str, Any]) -> None:
    params = inspect.signature(spec.reference).parameters
    unknown = [k for k in conventions if k not in params]
    if unknown:
        raise TypeError(
            f"check_{spec.id}: unknown convention keyword(s) {unknown}; reference.{spec.id} takes {[p for p in params]}"
        )
    if not conventions:
        return
    # values: the reference refuses a bad one (clip_eps=-0.1, agg="bogus") on any input; ask it on one drawn case
    # now, so the error names the convention instead of surfacing later as a mismatch blamed on the candidate
    try:
        (case,) = sample_cases(spec.cases(fixed=dict(conventions)), 1)
    except Exception as exc:  # the strategy itself could not use the value
        raise ValueError(f"check_{spec.id}: invalid convention value(s) {dict(conventions)}: {exc}") from None
    try:
        spec.reference(*case.args, **case.kwargs)
    except (ValueError, TypeError) as exc:
        if any(repr(k) in str(exc) or f"'{k}'" in str(exc) for k in conventions):
            raise ValueError(f"check_{spec.id}: invalid convention: {exc}") from None


def _import_ref(fn: Any) -> str:
    """``module:qualname`` if ``fn`` can be imported back by that name (not a lambda, a local or ``__main__``)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname or module.startswith("_rlhf_oracle"):
        return ""
    return f"{module}:{qualname}"


def validate_conventions(formula: str, conventions: Mapping[str, Any]) -> None:
    """Raise (TypeError/ValueError, naming the convention) if ``conventions`` are unknown or invalid for ``formula``."""
    _check_conventions(get(formula), conventions)


def _check_names(arg: str, names: Iterable[str], allowed: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out = tuple(names)
    bad = [n for n in out if n not in allowed]
    if bad:
        raise ValueError(f"{arg}: unknown propert(y/ies) {bad}; choose from {list(allowed)}")
    return out


def applicable(spec: FormulaSpec) -> dict[str, str]:
    """Property -> "" when it applies to ``spec``, else why not."""
    masked = spec.has_mask
    return {
        "values": "",
        "gradients": "" if spec.gradient is not None else "n/a: not differentiable in any framework",
        "edge_cases": "" if masked else "n/a: no mask",
        "masked_slots": "" if masked else "n/a: no mask",
        "masked_outputs": "" if spec.per_token_output else "n/a: no [B, T] output",
        "stability": "" if S.has_stability(spec.id) else "n/a: no extreme regime for this formula",
        "dtype": "",
    }


def run_check(
    formula: str,
    candidate: Callable[..., Any],
    *,
    adapter: Adapter | Sequence[Adapter] | None = None,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    max_examples: int | None = None,
    gradients: bool = True,
    strict: bool = False,
    ignore_masked_outputs: bool = False,
    waive: Iterable[str] = (),
    properties: Iterable[str] | None = None,
    mask_layout: str = "any",
    **conventions: Any,
) -> CheckReport:
    """Run every property of ``formula`` on ``candidate`` and return the report (never raises on a mismatch).

    ``waive``: properties (of :data:`~rlhf_oracle.properties.report.WAIVABLE`) that still run and are shown, as
    ``waived``, but do not fail the check (``ignore_masked_outputs=True`` waives ``masked_outputs``).
    ``properties``: run only these (default: all that apply). ``mask_layout``: the masks the candidate's trainer
    produces (:data:`~rlhf_oracle.properties.strategies.MASK_LAYOUTS`): ``"any"`` (default: left, right or
    floating spans, with holes half the time, as multi-turn masks have), ``"contiguous"`` (one span per row, no
    holes), ``"right"`` (right-padded: the span starts at 0), ``"left"`` (left-padded).
    ``strict``: what the candidate returns where the reference refuses the input (NaN or 0 on an all-masked
    batch) is reported as ``differs`` and passes by default; ``strict=True`` makes it fail."""
    if not isinstance(strict, bool):
        raise TypeError(f"run_check: 'strict' must be a bool, got {strict!r}")
    spec = get(formula)
    if mask_layout not in S.MASK_LAYOUTS:
        raise ValueError(f"run_check: 'mask_layout' must be one of {S.MASK_LAYOUTS}, got {mask_layout!r}")
    _check_conventions(spec, conventions)
    waived = set(_check_names("waive", waive, WAIVABLE))
    if ignore_masked_outputs:
        waived.add("masked_outputs")
    selected = set(_check_names("properties", properties, PROPERTIES)) if properties is not None else set(PROPERTIES)
    if not gradients:
        selected.discard("gradients")
    importable = _import_ref(candidate)
    if adapter is not None:
        candidate = compose(*adapter)(candidate) if isinstance(adapter, Sequence) else adapter(candidate)
    accepted = accepted_kwargs(candidate)
    ctx = Context(spec, candidate, accepted, dict(conventions), dtype, str(device), strict=strict)
    name = getattr(candidate, "__qualname__", getattr(candidate, "__name__", repr(candidate)))
    report = CheckReport(formula, dict(conventions), dtype, str(device), name, waived=tuple(sorted(waived)),
                         candidate_import=importable, accepted=accepted, adapted=adapter is not None)  # fmt: skip
    fixed = dict(conventions)
    n2 = _secondary_examples(max_examples)
    why_not = applicable(spec)

    def add(result: PropertyResult) -> None:
        result.waived = result.name in waived
        if result.passed and result.name in ctx.findings:
            result.finding = ctx.findings[result.name]
        report.properties.append(result)

    with S.mask_layout(mask_layout):  # the masks the strategies draw (holes or not, which padding)
        for prop in PROPERTIES:
            if why_not[prop]:
                add(PropertyResult(prop, None, note=why_not[prop]))
                continue
            if prop not in selected:
                add(PropertyResult(prop, None, note="not run (disabled by the caller)"))
                continue
            if prop == "values":
                add(search("values", spec.cases(fixed, accepted), lambda c: _values_body(ctx, c), max_examples))
                ctx.maths_failed = report.properties[-1].passed is False
                ctx.compute_dtype = _compute_dtype(ctx, spec.cases(fixed, accepted))
            elif prop == "gradients":
                if getattr(candidate, NO_GRAD_ATTR, False):
                    add(PropertyResult("gradients", None, note="candidate not differentiable (NumPy)"))
                elif report.properties[0].passed is False:
                    add(PropertyResult("gradients", None, note="skipped: the values differ"))
                else:
                    add(search("gradients", spec.cases(fixed, accepted), lambda c: _grad_body(ctx, c), max_examples))
            elif prop == "edge_cases":
                add(search(prop, S.edge_cases(formula, fixed, accepted), lambda c: _edge_body(ctx, c), n2))
            elif prop == "masked_slots":
                add(
                    search(
                        prop, S.masked_slot_cases(formula, fixed, accepted), lambda c: _masked_slots_body(ctx, c), n2
                    )
                )
            elif prop == "masked_outputs":
                add(search(prop, spec.cases(fixed, accepted), lambda c: _masked_outputs_body(ctx, c), n2))
            elif prop == "stability":
                # the full maths budget: its regime is where real code differs, and a targeted search needs draws
                body = functools.partial(_stability_body, ctx)
                add(search(prop, S.stability_cases(formula, fixed, accepted), body, max_examples))
            elif prop == "dtype":
                if report.properties[0].passed is False:
                    add(PropertyResult("dtype", None, note="skipped: the values differ (the rounding budget is judged "
                                       "against the same maths)"))  # fmt: skip
                else:
                    add(_dtype_property(ctx, spec, fixed, accepted, n2))

        from .diagnosis import diagnose

        for p in report.properties:
            for f in (p.failure, p.finding):
                if f is not None and not f.diagnosis:
                    f.diagnosis = diagnose(ctx, f)
    return report


def _compute_dtype(ctx: Context, strategy: st.SearchStrategy[Case]) -> torch.dtype | None:
    """The lowest floating dtype among the candidate's outputs on a maths input, if below the check's dtype."""
    for case in sample_cases(strategy, 3):
        try:
            out = candidate_call(ctx.fn, case, ctx.dtype, ctx.device, ctx.accepted)
        except Exception:
            continue
        dts = [d for d in output_dtypes(out) if d is not None and d.is_floating_point]
        if dts:
            low = min(dts, key=lambda d: d.itemsize)
            return low if low.itemsize < ctx.dtype.itemsize else None
    return None


def _dtype_property(
    ctx: Context, spec: FormulaSpec, fixed: dict[str, Any], accepted: frozenset[str] | None, n: int
) -> PropertyResult:
    dtypes = [d for d in _LOW_DTYPES if d.itemsize < ctx.dtype.itemsize and (spec.bf16 or d != torch.bfloat16)]
    if str(ctx.device).startswith("cpu") is False and not torch.cuda.is_available():
        dtypes = []
    if not dtypes:
        return PropertyResult("dtype", None, note="n/a: the check already runs in the lowest dtype")
    total, worst = 0, 0.0
    for d in dtypes:
        body: Callable[[Case], float] = functools.partial(_dtype_body, ctx, dtype=d)
        result = search("dtype", spec.cases(fixed, accepted), body, n)
        total += result.examples
        worst = max(worst, result.worst)
        if result.passed is False:
            result.examples = total
            result.note = f"{str(d).replace('torch.', '')}: {result.note}"
            return result
    names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
    return PropertyResult("dtype", True, total, worst, note=names)


def check(formula: str, candidate: Callable[..., Any], **options: Any) -> CheckReport:
    """:func:`run_check`, raising :class:`~rlhf_oracle.properties.report.OracleMismatch` (an AssertionError) when a
    property that is not waived fails."""
    __tracebackhide__ = True
    return run_check(formula, candidate, **options).raise_for_failure()
