"""One check per formula: does a candidate function compute what the reference computes?

``check_<formula>(candidate, *, adapter=None, dtype=torch.float64, device="cpu", max_examples=None,
**convention_kwargs)`` runs hypothesis over valid inputs of the formula and compares the candidate with the
reference (values; gradients by autograd where the formula is differentiable), steering the search toward the
largest error with ``hypothesis.target``. On failure it raises :class:`OracleMismatch` (an ``AssertionError``)
whose message gives the formula, the convention, the shrunk counter-example, expected vs actual at the worst
index, a snippet that calls the reference on those inputs, and a diagnosis: which documented convention or known
bug the candidate matches instead. On success it returns a :class:`CheckReport`.

Convention keyword arguments (``agg="token-mean"``, ``kind="k3"``, ``score_position="after_last"`` ...) are
passed to the reference, and to the candidate when its signature accepts them; a candidate that does not take
the keyword is assumed to implement that convention.

:func:`run_check` does the same without raising (the CLI uses it); :func:`check_error_parity` checks that a
candidate refuses bad inputs exactly like the reference (same exception type and message).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, given, settings, target
from hypothesis import strategies as st

from . import profiles
from . import strategies as S
from . import tolerances as tol
from .adapters import NO_GRAD_ATTR, Adapter, accepted_kwargs, compose
from .gradients import weights_for
from .registry import REGISTRY, FormulaSpec, get
from .strategies import Case
from .variants import Variant, resolve

__all__ = [
    "CheckReport",
    "OracleMismatch",
    "PropertyResult",
    "check",
    "check_error_parity",
    "run_check",
]


# ----------------------------------------------------------------------------------------------------------------
# results


@dataclass
class PropertyResult:
    """One property of a check (values, gradients, overflow)."""

    name: str
    passed: bool | None
    """None when skipped."""
    examples: int = 0
    worst: float = 0.0
    """Largest error / allowed error seen (<= 1 passes)."""
    note: str = ""


@dataclass
class Failure:
    """A shrunk counter-example and what was wrong with it."""

    prop: str
    kind: str
    """``value``, ``nonfinite``, ``raised``, ``shape``, ``structure``, ``no_grad``."""
    case: Case
    rounded: Case
    message: str
    expected: Any = None
    actual: Any = None
    index: tuple[int, ...] | None = None
    output: int = 0
    ratio: float = math.inf
    diagnosis: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    """The outcome of a check."""

    formula: str
    conventions: dict[str, Any]
    dtype: torch.dtype
    device: str
    candidate: str
    properties: list[PropertyResult] = field(default_factory=list)
    failure: Failure | None = None

    @property
    def passed(self) -> bool:
        return self.failure is None

    def message(self) -> str:
        return _format_failure(self) if self.failure else f"{self.formula}: all properties pass"

    def raise_for_failure(self) -> CheckReport:
        if self.failure is not None:
            raise OracleMismatch(self)
        return self


class OracleMismatch(AssertionError):
    """A candidate disagrees with the reference; ``.report`` holds the details."""

    def __init__(self, report: CheckReport) -> None:
        super().__init__(report.message())
        self.report = report


class _Mismatch(Exception):
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


def _candidate_call(
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


def _outputs(out: Any) -> list[np.ndarray]:
    if isinstance(out, torch.Tensor):
        return [out.detach().to("cpu", torch.float64).numpy()]
    if isinstance(out, tuple | list):
        return [o for item in out for o in _outputs(item)]
    try:
        return [np.asarray(out, dtype=np.float64)]
    except (TypeError, ValueError):
        raise TypeError(f"an output of type {type(out).__name__} is not a number or an array") from None


# ----------------------------------------------------------------------------------------------------------------
# comparison


def _compare(
    spec: FormulaSpec,
    case: Case,
    expected: list[np.ndarray],
    actual: list[np.ndarray],
    dtype: torch.dtype,
    ignore_masked: bool,
) -> tuple[float, int, tuple[int, ...] | None, str | None]:
    """(worst ratio, output number, worst index, structural problem or None)."""
    if len(actual) != len(expected):
        hint = " (use adapters.first or adapters.take(i))" if len(actual) > len(expected) else ""
        return math.inf, 0, None, f"returns {len(actual)} output(s), the reference {len(expected)}{hint}"
    cond, scale = spec.tolerance(case)
    worst, worst_out, worst_idx = 0.0, 0, None
    for k, (e, a) in enumerate(zip(expected, actual, strict=True)):
        if a.shape != e.shape:
            return math.inf, k, None, f"output {k} has shape {a.shape}, the reference's is {e.shape}"
        allowed = tol.bound(dtype, e, cond, np.broadcast_to(scale, e.shape) if np.ndim(scale) else scale)
        ratio = tol.error_ratio(a, e, allowed)
        if spec.value_alternative is not None and k == 0:
            alt = spec.value_alternative(case)
            ratio = np.where(np.isnan(alt), ratio, np.minimum(ratio, tol.error_ratio(a, np.nan_to_num(alt), allowed)))
        if ignore_masked and spec.per_token_output and case.mask is not None and ratio.shape == case.mask.shape:
            ratio = np.where(case.mask, ratio, 0.0)
        if ratio.size and float(ratio.max()) > worst:
            worst = float(ratio.max())
            worst_out = k
            worst_idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(ratio)), ratio.shape))
    return worst, worst_out, worst_idx, None


# ----------------------------------------------------------------------------------------------------------------
# the properties


@dataclass
class _Context:
    spec: FormulaSpec
    fn: Callable[..., Any]
    accepted: frozenset[str] | None
    conventions: dict[str, Any]
    dtype: torch.dtype
    device: str
    ignore_masked: bool


def _reference(spec: FormulaSpec, case: Case) -> list[np.ndarray]:
    with np.errstate(all="ignore"):  # masked slots may hold NaN/inf: the reference ignores them, quietly
        return _outputs(spec.reference(*case.args, **case.kwargs))


def _values_body(ctx: _Context, case: Case) -> float:
    rc = rounded(case, ctx.dtype)
    expected = _reference(ctx.spec, rc)
    try:
        out = _candidate_call(ctx.fn, case, ctx.dtype, ctx.device, ctx.accepted)
    except Exception as exc:  # the candidate must accept every valid input
        raise _Mismatch(
            Failure("values", "raised", case, rc, f"raised {type(exc).__name__}: {exc}", expected=expected)
        ) from exc
    try:
        actual = _outputs(out)
    except TypeError as exc:
        msg = f"{exc}: it returns {type(out).__name__}; keep the loss with adapters.first or adapters.take(key)"
        raise _Mismatch(Failure("values", "structure", case, rc, msg, expected)) from exc
    ratio, k, idx, problem = _compare(ctx.spec, rc, expected, actual, ctx.dtype, ctx.ignore_masked)
    if problem is not None:
        kind = "structure" if "output(s)" in problem else "shape"
        raise _Mismatch(Failure("values", kind, case, rc, problem, expected, actual))
    target(min(ratio, 1e12), label="error / allowed error")
    if ratio > 1.0:
        e, a = expected[k][idx] if idx else expected[k], actual[k][idx] if idx else actual[k]
        kind = "nonfinite" if np.isfinite(e) and not np.isfinite(a) else "value"
        msg = f"output {k} differs at index {idx}: expected {float(e)!r}, got {float(a)!r}"
        raise _Mismatch(Failure("values", kind, case, rc, msg, expected, actual, idx, k, ratio))
    return ratio


def _grad_body(ctx: _Context, case: Case) -> float:
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
    out = _candidate_call(ctx.fn, case, ctx.dtype, ctx.device, ctx.accepted, leaves)
    first_out = out[0] if isinstance(out, tuple | list) else out
    if not isinstance(first_out, torch.Tensor) or not first_out.requires_grad:
        raise _Mismatch(
            Failure(
                "gradients",
                "no_grad",
                case,
                rc,
                "the output is not differentiable with respect to "
                f"{', '.join(leaves)} (detached: .item(), NumPy, torch.no_grad, or a Python float)",
            )
        )
    w = weights_for(tuple(first_out.shape))
    w_t = torch.tensor(w, dtype=first_out.dtype, device=first_out.device)
    w_used = w_t.to("cpu", torch.float64).numpy()
    grads = torch.autograd.grad((first_out * w_t).sum(), list(leaves.values()), allow_unused=True)
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
        ratio = tol.error_ratio(actual, exp, allowed)
        ratio_alt = tol.error_ratio(actual, np.nan_to_num(alt, nan=np.inf), allowed)
        ratio = np.where(np.isnan(alt), ratio, np.minimum(ratio, ratio_alt))
        r = float(ratio.max(initial=0.0))
        if r > 1.0:
            idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(ratio)), ratio.shape))
            msg = (
                f"d(sum w*out)/d {name} differs at index {idx}: expected {float(exp[idx])!r}, "
                f"got {float(actual[idx])!r}"
            )
            failure = Failure("gradients", "grad", case, rc, msg, exp, actual, idx, 0, r)
            failure.diagnosis = _grad_diagnosis(rc, name, exp, actual)
            raise _Mismatch(failure)
        worst = max(worst, r)
    target(min(worst, 1e12), label="gradient error / allowed error")
    return worst


def _input_magnitude(case: Case) -> float:
    m = 0.0
    for name, v in case.named().items():
        if _is_float_array(v) and v.size:
            x = np.where(case.mask, v, 0.0) if case.mask is not None and name in case.per_token else v
            x = x[np.isfinite(x)]
            if x.size:
                m = max(m, float(np.max(np.abs(x))))
    return min(m, 1e4)


def _grad_diagnosis(case: Case, name: str, expected: np.ndarray, actual: np.ndarray) -> list[str]:
    out = []
    if not np.any(actual) and np.any(expected):
        out.append("the gradient is zero everywhere: the output does not depend on the input through autograd")
    if case.mask is not None and name in case.per_token:
        bad = ~case.mask & (~np.isfinite(actual) | (actual != 0))
        if bad.any():
            out.append(
                "non-zero or NaN gradient at masked positions: the masked inputs reach the backward pass "
                "(0 * NaN = NaN; mask the inputs with torch.where before computing, not only the output)"
            )
    with np.errstate(all="ignore"):
        ratio = actual / np.where(expected == 0, np.nan, expected)
    finite = ratio[np.isfinite(ratio)]
    if finite.size and np.allclose(finite, finite[0], rtol=1e-6) and not np.isclose(finite[0], 1.0):
        out.append(f"the gradient is the reference gradient times {finite[0]:.6g} (a different normaliser/sign)")
    if np.any((expected == 0) & (actual != 0) & np.isfinite(actual)):
        out.append("non-zero gradient where the reference's is exactly 0 (a clip that does not stop the gradient?)")
    return out


def _overflow_body(ctx: _Context, case: Case) -> float:
    """kl_estimate far out: the right value or a ValueError, never a silent inf/NaN."""
    rc = rounded(case, ctx.dtype)
    try:
        expected: list[np.ndarray] | None = _reference(ctx.spec, rc)
    except ValueError:
        expected = None
    try:
        out = _candidate_call(ctx.fn, case, ctx.dtype, ctx.device, ctx.accepted)
    except ValueError:
        return 0.0  # refusing is allowed (the torch twin refuses in its own dtype)
    except Exception as exc:
        raise _Mismatch(Failure("overflow", "raised", case, rc, f"raised {type(exc).__name__}: {exc}")) from exc
    actual = _outputs(out)
    if any(not np.all(np.isfinite(a)) for a in actual):
        bad_at = tuple(int(i) for i in np.argwhere(~np.isfinite(actual[0]))[0]) if actual[0].ndim else ()
        raise _Mismatch(
            Failure(
                "overflow",
                "nonfinite",
                case,
                rc,
                f"returned a non-finite value at index {bad_at} instead of raising ValueError or the finite result",
                expected,
                actual,
                bad_at,
            )
        )
    if expected is None:
        return 0.0
    ratio, k, idx, problem = _compare(ctx.spec, rc, expected, actual, ctx.dtype, ctx.ignore_masked)
    if problem is None and ratio > 1.0:
        e, a = expected[k][idx or ()], actual[k][idx or ()]
        raise _Mismatch(Failure("overflow", "value", case, rc, f"expected {e!r}, got {a!r}", expected, actual, idx))
    return ratio


def _hypothesis_settings(max_examples: int | None) -> settings:
    base = profiles.active_settings()
    return settings(
        base,
        max_examples=max_examples if max_examples is not None else base.max_examples,
        deadline=None,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


def _search(
    name: str, strategy: st.SearchStrategy[Case], body: Callable[[Case], float], max_examples: int | None
) -> tuple[PropertyResult, Failure | None]:
    stats = {"n": 0, "worst": 0.0, "failed": False}

    @_hypothesis_settings(max_examples)
    @given(strategy)
    def run(case: Case) -> None:
        if not stats["failed"]:
            stats["n"] += 1
        try:
            stats["worst"] = max(stats["worst"], body(case))
        except _Mismatch:
            stats["failed"] = True
            raise

    try:
        run()
    except _Mismatch as exc:
        f = exc.failure
        return PropertyResult(name, False, int(stats["n"]), f.ratio, f.message), f
    return PropertyResult(name, True, int(stats["n"]), float(stats["worst"])), None


# ----------------------------------------------------------------------------------------------------------------
# diagnosis


def _diagnose(ctx: _Context, failure: Failure) -> list[str]:
    spec, rc = ctx.spec, failure.rounded
    notes: list[str] = []
    if failure.kind == "raised":
        return [f"the candidate {failure.message} on a valid input (the reference accepts it)"]
    if failure.kind in ("structure", "shape", "no_grad"):
        return [failure.message]
    if failure.prop == "gradients":
        return failure.diagnosis or ["the gradient differs from the analytic reference gradient"]
    actual = failure.actual
    if failure.kind == "nonfinite" and failure.case.fill in ("nan", "inf", "huge") and failure.case.per_token:
        clean = failure.case.refilled("zero")
        try:
            again = _outputs(_candidate_call(ctx.fn, clean, ctx.dtype, ctx.device, ctx.accepted))
            ratio, *_ = _compare(spec, rounded(clean, ctx.dtype), _reference(spec, rounded(clean, ctx.dtype)), again,
                                 ctx.dtype, ctx.ignore_masked)  # fmt: skip
        except Exception:
            ratio = math.inf
        leak = (
            f"NaN/inf leak from masked slots: with {failure.case.fill} in the masked positions of "
            f"{', '.join(failure.case.per_token)} the output is not finite"
        )
        if ratio <= 1.0:
            # Zeros hide it. Finite garbage there tells a NaN * 0 leak (harmless with finite padding) from a
            # formula that reads the masked slots (e.g. GAE bootstrapping from the first pad), which then shows.
            garbage = failure.case.refilled("keep", rng_seed=1)
            rg = rounded(garbage, ctx.dtype)
            actual_g: list[np.ndarray] | None = None
            try:
                actual_g = _outputs(_candidate_call(ctx.fn, garbage, ctx.dtype, ctx.device, ctx.accepted))
                expected_g = _reference(spec, rg)
                ratio_g, *_ = _compare(spec, rg, expected_g, actual_g, ctx.dtype, ctx.ignore_masked)
            except Exception:
                ratio_g = math.inf
            if ratio_g <= 1.0:
                notes.append(
                    leak + ", and with zeros (or any finite values) there it matches the reference: values at masked "
                    "positions reach the result (multiply-by-mask, NaN * 0 = NaN; OpenRLHF PR #1240). Use "
                    "torch.where on the inputs."
                )
                return notes
            notes.append(leak + "; with finite values there it still differs: the formula reads masked slots")
            if actual_g is not None:  # (the ratio may be inf: a non-zero output where the reference is exactly 0)
                notes += _variant_matches(ctx, replace(failure, case=garbage, rounded=rg, expected=expected_g,
                                                       actual=actual_g))  # fmt: skip
            return notes
        notes.append(leak + " (and it also differs with zeros there, see below)")
    if failure.kind == "nonfinite" and not notes:
        finfo = torch.finfo(ctx.dtype)
        notes.append(
            f"non-finite output where the reference is finite: an overflow in {ctx.dtype} (exp overflows above "
            f"{math.log(finfo.max):.1f}; verl #891: clamp the log-ratio before exp, e.g. log_ratio_clamp=20)"
        )
    if spec.per_token_output and rc.mask is not None and failure.expected is not None and actual is not None:
        e, a = failure.expected[failure.output], actual[failure.output]
        if e.shape == rc.mask.shape:
            cond, scale = spec.tolerance(rc)
            masked_ratio = tol.error_ratio(a, e, tol.bound(ctx.dtype, e, cond, scale))
            if np.all(masked_ratio[rc.mask] <= 1.0):
                notes.append(
                    "differs only at masked positions: the contract requires exactly 0 there (pass "
                    "ignore_masked_outputs=True to accept other values)"
                )
                return notes
    notes += _variant_matches(ctx, failure)
    return notes


def _variant_matches(ctx: _Context, failure: Failure) -> list[str]:
    spec, rc, actual = ctx.spec, failure.rounded, failure.actual
    if actual is None:
        return []
    matches: list[tuple[int, Variant]] = []
    closest: tuple[float, Variant] | None = None
    for raw in spec.variants:
        try:
            v = resolve(raw, rc)
            expected = _outputs(v.compute(rc))
        except Exception:
            continue
        if any(not np.all(np.isfinite(e)) for e in expected):
            continue
        ratio, _, _, problem = _compare(spec, rc, expected, actual, ctx.dtype, ctx.ignore_masked)
        if problem is not None:
            continue
        if ratio <= 1.0:
            matches.append((v.deviations, v))
        elif closest is None or ratio < closest[0]:
            closest = (ratio, v)
    current = _convention_text(spec, ctx.conventions)
    if len(matches) > 1:
        matches = _confirm(ctx, matches)
    if matches:
        fewest = min(d for d, _ in matches)
        best = [v for d, v in matches if d == fewest]
        lines = []
        for v in best:
            line = f"matches {v.name}, not {current}: {v.description}"
            if v.kwargs:
                call = ", ".join(f"{k}={val!r}" for k, val in v.kwargs.items())
                line += f". If that convention is intended, call the check with {call}."
            lines.append(line)
        return lines
    text = f"matches no documented convention of {spec.id} (checked {len(spec.variants)} variants)"
    if closest is not None and math.isfinite(closest[0]):
        text += f"; closest: {closest[1].name} (error {closest[0]:.3g} x the tolerance)"
    return [text]


def _sample(strategy: st.SearchStrategy[Case], n: int) -> list[Case]:
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


def _confirm(ctx: _Context, matches: list[tuple[int, Variant]], n: int = 24) -> list[tuple[int, Variant]]:
    """A shrunk counter-example is often too small to tell variants apart (with one valid token and one pad,
    "a pad counted" and "divided by T" agree). Keep the variants that also reproduce the candidate on ``n``
    more cases; if none survives, keep them all."""
    survivors = list(matches)
    for case in _sample(ctx.spec.cases(ctx.conventions, ctx.accepted), n):
        if len(survivors) <= 1:
            break
        rc = rounded(case, ctx.dtype)
        try:
            actual = _outputs(_candidate_call(ctx.fn, case, ctx.dtype, ctx.device, ctx.accepted))
        except Exception:
            continue
        if any(not np.all(np.isfinite(a)) for a in actual):
            continue
        kept = []
        for d, v in survivors:
            try:
                expected = _outputs(v.compute(rc))
            except Exception:
                continue
            ratio, *_ = _compare(ctx.spec, rc, expected, actual, ctx.dtype, ctx.ignore_masked)
            if ratio <= 1.0:
                kept.append((d, v))
        if kept:
            survivors = kept
    return survivors


def _convention_text(spec: FormulaSpec, conventions: Mapping[str, Any]) -> str:
    sig = inspect.signature(spec.reference)
    parts = []
    for name in spec.conventions:
        if name in conventions:
            parts.append(f"{name}={conventions[name]!r}")
        elif name in sig.parameters and sig.parameters[name].default is not inspect.Parameter.empty:
            parts.append(f"{name}={sig.parameters[name].default!r}")
    return "the reference (" + ", ".join(parts) + ")" if parts else "the reference"


# ----------------------------------------------------------------------------------------------------------------
# formatting


def _array_text(x: Any) -> str:
    if isinstance(x, np.ndarray):
        body = np.array2string(x, separator=", ", floatmode="unique", threshold=10**6, max_line_width=110)
        body = body.replace("nan", "np.nan").replace("inf", "np.inf")
        if x.dtype == np.bool_:
            return f"np.array({body})"
        if np.issubdtype(x.dtype, np.integer):
            return f"np.array({body}, dtype=np.int64)"
        return f"np.array({body}, dtype=np.float64)"
    return repr(x)


def _snippet(spec: FormulaSpec, case: Case) -> str:
    lines = ["import numpy as np", "from rlhf_oracle import reference as R", ""]
    for name, value in case.named().items():
        lines.append(f"{name} = {_array_text(value)}")
    call_args = ", ".join(case.arg_names)
    kw = ", ".join(f"{k}={k}" for k in case.kwargs)
    lines.append(f"expected = R.{spec.id}({call_args}{', ' + kw if kw else ''})")
    return "\n".join(lines)


def _format_failure(report: CheckReport) -> str:
    f = report.failure
    assert f is not None
    spec = get(report.formula)
    conv = ", ".join(f"{k}={v!r}" for k, v in report.conventions.items()) or "reference defaults"
    lines = [
        f"rlhf_oracle: {report.candidate} does not match reference.{spec.id} "
        f"[property: {f.prop}; dtype: {str(report.dtype).replace('torch.', '')}; device: {report.device}]",
        f"  formula:    {spec.id} ({spec.paper}, {spec.equation}; docs: {spec.docs_page})",
        f"  convention: {conv}; drawn hyper-parameters: "
        + (", ".join(f"{k}={v!r}" for k, v in f.case.kwargs.items() if not isinstance(v, np.ndarray)) or "none"),
        f"  problem:    {f.message}",
    ]
    if f.expected is not None and f.actual is not None and f.kind in ("value", "nonfinite", "grad"):
        exp = f.expected[f.output] if isinstance(f.expected, list) else f.expected
        act = f.actual[f.output] if isinstance(f.actual, list) else f.actual
        if isinstance(exp, np.ndarray) and exp.size <= 64:
            lines.append(f"  expected:   {_array_text(exp)}")
            lines.append(f"  actual:     {_array_text(np.asarray(act))}")
        lines.append(f"  worst index: {f.index} (error = {f.ratio:.3g} x the allowed error)")
    lines.append("  diagnosis:")
    lines += [f"    - {d}" for d in f.diagnosis]
    lines.append(f"  counter-example (shrunk; masked slots hold {f.case.fill!r}; inputs as the candidate saw them):")
    lines += ["    " + ln for ln in _snippet(spec, f.rounded).splitlines()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# entry points


def _check_conventions(spec: FormulaSpec, conventions: Mapping[str, Any]) -> None:
    params = inspect.signature(spec.reference).parameters
    unknown = [k for k in conventions if k not in params]
    if unknown:
        raise TypeError(
            f"check_{spec.id}: unknown convention keyword(s) {unknown}; reference.{spec.id} takes {[p for p in params]}"
        )


def run_check(
    formula: str,
    candidate: Callable[..., Any],
    *,
    adapter: Adapter | Sequence[Adapter] | None = None,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    max_examples: int | None = None,
    gradients: bool = True,
    ignore_masked_outputs: bool = False,
    **conventions: Any,
) -> CheckReport:
    """Run every property of ``formula`` on ``candidate`` and return the report (never raises on mismatch)."""
    spec = get(formula)
    _check_conventions(spec, conventions)
    if adapter is not None:
        candidate = compose(*adapter)(candidate) if isinstance(adapter, Sequence) else adapter(candidate)
    accepted = accepted_kwargs(candidate)
    ctx = _Context(spec, candidate, accepted, dict(conventions), dtype, str(device), ignore_masked_outputs)
    name = getattr(candidate, "__qualname__", getattr(candidate, "__name__", repr(candidate)))
    report = CheckReport(formula, dict(conventions), dtype, str(device), name)

    def body_values(case: Case) -> float:
        return _values_body(ctx, case)

    result, failure = _search("values", spec.cases(conventions, accepted), body_values, max_examples)
    report.properties.append(result)

    if spec.gradient is not None:
        if not gradients:
            report.properties.append(PropertyResult("gradients", None, note="disabled"))
        elif getattr(candidate, NO_GRAD_ATTR, False):
            report.properties.append(PropertyResult("gradients", None, note="candidate not differentiable (NumPy)"))
        elif failure is None:

            def body_grad(case: Case) -> float:
                return _grad_body(ctx, case)

            gresult, failure = _search("gradients", spec.cases(conventions, accepted), body_grad, max_examples)
            report.properties.append(gresult)
        else:
            report.properties.append(PropertyResult("gradients", None, note="skipped after a value failure"))

    if formula == "kl_estimate" and failure is None and conventions.get("log_ratio_clamp") is None:
        fixed = dict(conventions)
        if "kind" not in fixed and (accepted is None or "kind" in accepted):
            fixed["kind"] = "k3"

        def body_overflow(case: Case) -> float:
            return _overflow_body(ctx, case)

        strategy = S.kl_overflow_cases(fixed, accepted)
        oresult, failure = _search("overflow", strategy, body_overflow, max_examples)
        report.properties.append(oresult)

    if failure is not None:
        failure.diagnosis = _diagnose(ctx, failure)
        report.failure = failure
    return report


def check(
    formula: str,
    candidate: Callable[..., Any],
    *,
    adapter: Adapter | Sequence[Adapter] | None = None,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    max_examples: int | None = None,
    gradients: bool = True,
    ignore_masked_outputs: bool = False,
    **conventions: Any,
) -> CheckReport:
    """:func:`run_check`, raising :class:`OracleMismatch` (an AssertionError) on failure."""
    return run_check(
        formula,
        candidate,
        adapter=adapter,
        dtype=dtype,
        device=device,
        max_examples=max_examples,
        gradients=gradients,
        ignore_masked_outputs=ignore_masked_outputs,
        **conventions,
    ).raise_for_failure()


def _make_check(formula: str) -> Callable[..., CheckReport]:
    spec = REGISTRY[formula]

    def check_formula(
        candidate: Callable[..., Any],
        *,
        adapter: Adapter | Sequence[Adapter] | None = None,
        dtype: torch.dtype = torch.float64,
        device: str = "cpu",
        max_examples: int | None = None,
        gradients: bool = True,
        ignore_masked_outputs: bool = False,
        **conventions: Any,
    ) -> CheckReport:
        return check(
            formula,
            candidate,
            adapter=adapter,
            dtype=dtype,
            device=device,
            max_examples=max_examples,
            gradients=gradients,
            ignore_masked_outputs=ignore_masked_outputs,
            **conventions,
        )

    check_formula.__name__ = check_formula.__qualname__ = f"check_{formula}"
    check_formula.__doc__ = (
        f"Check ``candidate`` against ``reference.{formula}`` ({spec.paper}, {spec.equation}).\n\n"
        f"Conventions (keyword arguments passed to the reference and, when accepted, the candidate): "
        f"{', '.join(spec.conventions) or 'none'}. Differentiable inputs checked by autograd: "
        f"{', '.join(spec.differentiable) or 'none'}. Raises OracleMismatch with a shrunk counter-example and a "
        f"diagnosis on failure; returns the CheckReport otherwise."
    )
    return check_formula


check_token_logprobs = _make_check("token_logprobs")
check_entropy_from_logits = _make_check("entropy_from_logits")
check_ppo_clip_objective = _make_check("ppo_clip_objective")
check_ppo_clip_grad = _make_check("ppo_clip_grad")
check_aggregate = _make_check("aggregate")
check_policy_loss = _make_check("policy_loss")
check_kl_estimate = _make_check("kl_estimate")
check_kl_exact = _make_check("kl_exact")
check_kl_shaped_rewards = _make_check("kl_shaped_rewards")
check_rlhf_objective = _make_check("rlhf_objective")
check_ptx_loss = _make_check("ptx_loss")
check_reward_model_loss = _make_check("reward_model_loss")
check_ranking_loss = _make_check("ranking_loss")
check_gae = _make_check("gae")
check_whiten = _make_check("whiten")
check_value_loss = _make_check("value_loss")
check_adaptive_kl_update = _make_check("adaptive_kl_update")
check_grpo_advantages = _make_check("grpo_advantages")

CHECKS: dict[str, Callable[..., CheckReport]] = {f: globals()[f"check_{f}"] for f in REGISTRY}
"""Formula id -> its ``check_<formula>`` function."""

__all__ += [f"check_{f}" for f in REGISTRY] + ["CHECKS"]


# ----------------------------------------------------------------------------------------------------------------
# error parity


def _normalise_message(text: str) -> str:
    return text.replace("torch.", "")


def check_error_parity(
    formula: str,
    candidate: Callable[..., Any],
    *,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    max_examples: int | None = None,
) -> CheckReport:
    """On :func:`~rlhf_oracle.properties.strategies.bad_cases`, the candidate must raise the same exception type
    with the same message as the reference (dtype names compared without the ``torch.`` prefix)."""
    spec = get(formula)
    name = getattr(candidate, "__qualname__", repr(candidate))
    report = CheckReport(formula, {}, dtype, str(device), name)

    def body(bad: S.BadCase) -> None:
        case = bad.case
        try:
            with np.errstate(all="ignore"):
                spec.reference(*case.args, **case.kwargs)
        except (ValueError, TypeError) as exc:
            ref_exc: Exception = exc
        else:
            return  # the reference accepts it (e.g. a harmless mutation): nothing to compare
        try:
            _candidate_call(candidate, case, dtype, device, None)
        except Exception as exc:
            if type(exc) is type(ref_exc) and _normalise_message(str(exc)) == _normalise_message(str(ref_exc)):
                return
            got = f"{type(exc).__name__}: {exc}"
        else:
            got = "no exception"
        msg = f"{bad.what}: reference raises {type(ref_exc).__name__}: {ref_exc}; candidate: {got}"
        raise _Mismatch(Failure("errors", "errors", case, case, msg, diagnosis=[msg]))

    stats = {"n": 0}

    @_hypothesis_settings(max_examples)
    @given(S.bad_cases(formula))
    def run(bad: S.BadCase) -> None:
        stats["n"] += 1
        body(bad)

    try:
        run()
    except _Mismatch as exc:
        report.properties.append(PropertyResult("error parity", False, stats["n"], note=exc.failure.message))
        report.failure = exc.failure
    else:
        report.properties.append(PropertyResult("error parity", True, stats["n"]))
    return report


def formulas() -> Iterable[str]:
    """The formula ids, in catalogue order."""
    return iter(REGISTRY)
