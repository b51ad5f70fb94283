"""The named properties as objects: what each one searches, its body, where it applies, and whether it can be
waived (see :data:`~rlhf_oracle.properties.report.PROPERTIES` and ``WAIVABLE``):

- ``values`` and ``gradients`` (the maths): finite, non-degenerate inputs; never waivable;
- ``edge_cases``: empty rows, one valid token, all masked, B = 1 (formulas with a mask);
- ``masked_slots``: NaN / inf / 1e30 in masked input positions;
- ``masked_outputs``: what is written at masked positions of ``[B, T]`` outputs (contract: exactly 0);
- ``stability``: the extreme regime of the formula (``FormulaSpec.stability``);
- ``dtype``: float32 and bf16 inputs within the written rounding budget (when the check runs in float64).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis import target

from . import strategies as S
from . import tolerances as tol
from .adapters import NO_GRAD_ATTR
from .calls import (
    Context,
    Mismatch,
    call,
    candidate_call,
    compare,
    is_float_array,
    output_dtypes,
    outputs,
    reference_outputs,
    rounded,
    sample_cases,
    search,
)
from .cases import Case
from .diagnosis import grad_diagnosis
from .gradients import Grad, kink_band, weights_for
from .registry import FormulaSpec
from .report import PROPERTIES, WAIVABLE, Failure, PropertyResult

__all__ = ["PROPERTY_OBJECTS", "Property", "Run"]

_LOW_DTYPES = (torch.float32, torch.bfloat16)


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
    _, actual = call(ctx, prop, case, rc, dtype, expected)
    ratio, k, idx, problem = compare(ctx.spec, rc, expected, actual, judge)
    if problem is not None:
        kind = problem.kind
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
    _, actual = call(ctx, "masked_slots", case, rc, dtype, baseline)
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
        if is_float_array(named.get(name)) and name in case.per_token
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
    spec = ctx.spec
    assert spec.gradient is not None
    rc = rounded(case, ctx.dtype)
    named = case.named()
    leaves = {
        name: torch.tensor(named[name], dtype=ctx.dtype, device=ctx.device, requires_grad=True)
        for name in spec.differentiable
        if is_float_array(named.get(name))
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
        grad = expected[name]
        exp, alt, terms = grad.value, grad.alternative, grad.scale
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
        ratio = tol.error_ratio(actual, _nearest_subgradient(actual, grad), allowed)
        r = float(ratio.max(initial=0.0))
        if r > 1.0:
            idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(ratio)), ratio.shape))
            msg = (
                f"d(sum w*out)/d {name} differs at index {idx}: expected {float(exp[idx])!r}, "
                f"got {float(actual[idx])!r}"
            )
            failure = Failure(prop, "grad", case, rc, msg, exp, actual, idx, 0, r, dtype=ctx.dtype)
            failure.diagnosis = grad_diagnosis(
                rc, name, exp, actual, stopped=name in ctx.spec.stopped,
                readings=ctx.spec.gradient_variants, w=w_used, allowed=allowed,
            )  # fmt: skip
            raise Mismatch(failure)
        worst = max(worst, r)
    target(min(worst, 1e12), label="gradient error / allowed error")
    return worst


def _nearest_subgradient(actual: np.ndarray, grad: Grad) -> np.ndarray:
    """The point of the subgradient interval (:meth:`Grad.interval`) nearest to ``actual`` at a kink (any convex
    combination of the one-sided derivatives is a subgradient: torch.minimum/maximum give 0.5/0.5 at a tie), the
    expected value elsewhere (``alternative`` NaN)."""
    kink = np.isfinite(grad.alternative) & np.isfinite(actual)
    lo, hi = grad.interval()
    with np.errstate(all="ignore"):
        nearest = np.clip(actual, lo, hi)
    return np.where(kink, nearest, grad.value)


def _input_magnitude(case: Case) -> float:
    m = 0.0
    for name, v in case.named().items():
        if is_float_array(v) and v.size:
            x = np.where(case.mask, v, 0.0) if case.mask is not None and name in case.per_token else v
            x = x[np.isfinite(x)]
            if x.size:
                m = max(m, float(np.max(np.abs(x))))
    return min(m, 1e4)


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


# ----------------------------------------------------------------------------------------------------------------
# the properties


@dataclass
class Run:
    """One check's search settings and the results so far (a property may depend on the values' verdict)."""

    ctx: Context
    fixed: dict[str, Any]
    max_examples: int | None
    secondary: int
    """The non-maths properties' budget (:func:`~rlhf_oracle.properties.calls.secondary_examples`)."""
    results: dict[str, PropertyResult]

    @property
    def values_failed(self) -> bool:
        return self.results.get("values", PropertyResult("values", None)).passed is False


@dataclass(frozen=True)
class Property:
    """A named property: ``applies(spec)`` is "" where it applies, else why not; ``run(run)`` searches."""

    name: str
    applies: Callable[[FormulaSpec], str]
    run: Callable[[Run], PropertyResult]

    @property
    def waivable(self) -> bool:
        return self.name in WAIVABLE


def _always(spec: FormulaSpec) -> str:
    return ""


def _masked(spec: FormulaSpec) -> str:
    return "" if spec.has_mask else "n/a: no mask"


def _run_values(r: Run) -> PropertyResult:
    ctx = r.ctx
    cases = ctx.spec.cases(r.fixed, ctx.accepted)
    result = search("values", cases, lambda c: _values_body(ctx, c), r.max_examples)
    ctx.maths_failed = result.passed is False
    ctx.compute_dtype = _compute_dtype(ctx, cases)
    return result


def _run_gradients(r: Run) -> PropertyResult:
    ctx = r.ctx
    if getattr(ctx.fn, NO_GRAD_ATTR, False):
        return PropertyResult("gradients", None, note="candidate not differentiable (NumPy)")
    if r.values_failed:
        return PropertyResult("gradients", None, note="skipped: the values differ")
    return search("gradients", ctx.spec.cases(r.fixed, ctx.accepted), lambda c: _grad_body(ctx, c), r.max_examples)


def _run_edge(r: Run) -> PropertyResult:
    ctx = r.ctx
    strategy = S.edge_cases(ctx.spec.id, r.fixed, ctx.accepted)
    return search("edge_cases", strategy, lambda c: _edge_body(ctx, c), r.secondary)


def _run_masked_slots(r: Run) -> PropertyResult:
    ctx = r.ctx
    strategy = S.masked_slot_cases(ctx.spec.id, r.fixed, ctx.accepted)
    return search("masked_slots", strategy, lambda c: _masked_slots_body(ctx, c), r.secondary)


def _run_masked_outputs(r: Run) -> PropertyResult:
    ctx = r.ctx
    strategy = ctx.spec.cases(r.fixed, ctx.accepted)
    return search("masked_outputs", strategy, lambda c: _masked_outputs_body(ctx, c), r.secondary)


def _run_stability(r: Run) -> PropertyResult:
    # the full maths budget: its regime is where real code differs, and a targeted search needs draws
    ctx = r.ctx
    strategy = S.stability_cases(ctx.spec.id, r.fixed, ctx.accepted)
    return search("stability", strategy, functools.partial(_stability_body, ctx), r.max_examples)


def _run_dtype(r: Run) -> PropertyResult:
    if r.values_failed:
        return PropertyResult("dtype", None, note="skipped: the values differ (the rounding budget is judged against "
                              "the same maths)")  # fmt: skip
    return _dtype_property(r.ctx, r.ctx.spec, r.fixed, r.ctx.accepted, r.secondary)


PROPERTY_OBJECTS: tuple[Property, ...] = (
    Property("values", _always, _run_values),
    Property("gradients", lambda s: "" if s.gradient is not None else "n/a: not differentiable in any framework",
             _run_gradients),
    Property("edge_cases", _masked, _run_edge),
    Property("masked_slots", _masked, _run_masked_slots),
    Property("masked_outputs", lambda s: "" if s.per_token_output else "n/a: no [B, T] output", _run_masked_outputs),
    Property("stability", lambda s: "" if s.stability is not None else "n/a: no extreme regime for this formula",
             _run_stability),
    Property("dtype", _always, _run_dtype),
)  # fmt: skip
"""Every property, in the report's order."""

assert tuple(p.name for p in PROPERTY_OBJECTS) == PROPERTIES
