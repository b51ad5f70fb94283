"""Diagnosis: say *why* a property failed, in the words of the conventions real code uses.

Each failing property gets its own diagnosis:

- the candidate raised, returned None or something that is not a number: say exactly that;
- ``masked_slots``: a NaN/inf leak through multiply-by-mask (harmless with finite padding), or a formula that
  reads masked slots (then named by its variant);
- ``masked_outputs``: what is written at masked positions (the carried value of a recursion, the unmasked
  per-token value, or something else);
- ``edge_cases``: what the candidate did on the degenerate input vs the reference (an empty row counted as zero
  or excluded from the batch mean, NaN from 0/0, a value where the reference refuses);
- ``values`` / ``stability`` / ``dtype``: computation in float32 only, then the documented conventions and known
  bug classes of the formula's family (:mod:`rlhf_oracle.properties.variants`), alone and combined, with fitted
  constants (dual-clip c, clamp bounds);
- ``gradients``: a zero gradient, NaN at masked positions, a constant factor, a clip that does not stop it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st

from . import precision
from . import strategies as S
from . import tolerances as tol
from .calls import Context, candidate_call, compare, outputs, reference_outputs, rounded, sample_cases
from .gradients import GradientVariant
from .precision import quiet
from .registry import FormulaSpec
from .report import Failure
from .strategies import Case
from .variants import Variant, resolve

__all__ = ["diagnose", "grad_diagnosis"]


def diagnose(ctx: Context, failure: Failure) -> list[str]:
    """The diagnosis of one failing property."""
    if failure.kind == "raised":
        if failure.prop == "edge_cases":
            return [f"the candidate {failure.message}"]
        notes = [f"the candidate {failure.message} on a valid input (the reference accepts it)"]
        if failure.prop in ("values", "stability"):
            notes += _where_it_runs(ctx, failure)
        return notes
    if failure.kind == "none":
        return ["the candidate returned None instead of a tensor (a missing `return`?)"]
    if failure.kind in ("structure", "shape", "no_grad"):
        return [failure.message]
    if failure.kind == "grad":
        return failure.diagnosis or ["the gradient differs from the analytic reference gradient"]
    if failure.prop == "masked_slots":
        return _masked_slots(ctx, failure)
    if failure.prop == "masked_outputs":
        return _masked_outputs(ctx, failure)
    if failure.prop == "edge_cases":
        return _edge(ctx, failure)
    return _values(ctx, failure)


# ----------------------------------------------------------------------------------------------------------------
# values, stability, dtype


def _exp_note(spec: FormulaSpec, dtype: torch.dtype) -> str:
    if not spec.exponentiates:
        return ""
    finfo = torch.finfo(dtype)
    return (
        f" (exp overflows in {str(dtype).replace('torch.', '')} above {math.log(finfo.max):.1f}; verl #891: clamp "
        "the log-ratio before exp)"
    )


def _values(ctx: Context, failure: Failure) -> list[str]:
    spec = ctx.spec
    dtype = failure.dtype or ctx.dtype
    notes: list[str] = []
    actual = failure.actual
    if actual is None:
        return [failure.message]
    if failure.expected is None and failure.kind == "nonfinite":
        # the reference refuses this input (the exact value overflows float64): no variant can be compared
        notes = [
            "the exact value is beyond float64's range on this input (the reference refuses it with a clear "
            "ValueError); the candidate returned a non-finite value silently: raise a clear error, or clamp the "
            "log-ratio before exp (verl and OpenRLHF clamp to +-20; a finite clamped value passes)"
            + _exp_note(spec, dtype)
        ]
        return notes + ([f"regime: {spec.stability_note}"] if spec.stability_note else [])
    low = precision.low_precision(ctx, failure, dtype)
    if low is not None:
        low_dtype, matches_ref = low
        notes.append(
            f"float32-only computation: the candidate computes in {str(low_dtype).replace('torch.', '')} although "
            f"its inputs are {str(dtype).replace('torch.', '')} (an upcast/downcast inside, e.g. `.float()`)"
            + ("; at that precision it matches the reference" if matches_ref else "")
        )
        if matches_ref:
            return notes
        dtype = low_dtype
    if precision.float32_hyper_parameters(ctx, failure, dtype):
        notes.append(
            "matches the reference with its hyper-parameters rounded to float32: a constant becomes a float32 tensor "
            "whatever the input dtype (e.g. torch.where(cond, 1.0, 1.05) or torch.tensor(eps) without dtype=); "
            "create it in the inputs' dtype"
        )
        return notes
    matched = _variant_matches(ctx, failure, dtype)
    if not any(line.startswith("matches ") and not line.startswith("matches no documented") for line in matched):
        if precision.float32_inside(ctx, failure, dtype):
            notes.append(
                "float32-only computation: the output is float64 but matches the reference only at float32 "
                "precision (an upcast/downcast inside, e.g. `.float()` on the inputs)"
            )
            return notes
    if failure.kind == "nonfinite" and not any(
        line.startswith("matches ") and not line.startswith("matches no documented") for line in matched
    ):
        notes.append("non-finite output where the reference is finite" + _exp_note(spec, dtype))
    notes += matched
    if failure.prop == "stability" and spec.stability_note:
        notes.append(f"regime: {spec.stability_note}")
    return notes


def _where_it_runs(ctx: Context, failure: Failure) -> list[str]:
    """On inputs where the candidate does not raise, what does it compute? (A raise on a small input, e.g. a
    variance of one token inside GAE, must not hide the convention it follows on the others.)"""
    dtype = failure.dtype or ctx.dtype
    ran = 0
    for case in sample_cases(_strategy(ctx, failure), 24):
        rc = rounded(case, dtype)
        try:
            actual = outputs(candidate_call(ctx.fn, case, dtype, ctx.device, ctx.accepted))
            expected = reference_outputs(ctx.spec, rc)
        except Exception:
            continue
        ran += 1
        ratio, k, idx, problem = compare(ctx.spec, rc, expected, actual, dtype)
        if problem is not None:
            return [f"where it runs: {problem}"]
        if ratio <= 1.0:
            continue
        probe = replace(failure, kind="value", case=case, rounded=rc, expected=expected, actual=actual, index=idx,
                        output=k, ratio=ratio)  # fmt: skip
        return ["where it runs, it differs too: " + line for line in _values(ctx, probe)]
    if not ran:
        return ["it raised on every input tried: no value to compare with the reference"]
    return [f"where it runs ({ran} of 24 inputs tried), it agrees with the reference"]


def _variant_matches(ctx: Context, failure: Failure, dtype: torch.dtype) -> list[str]:
    spec, rc, actual = ctx.spec, failure.rounded, failure.actual
    if actual is None:
        return []
    matches: list[tuple[int, Variant]] = []
    closest: tuple[float, Variant] | None = None
    actual_finite = all(np.all(np.isfinite(a)) for a in actual)
    for raw in spec.variants:
        try:
            with quiet():
                v = resolve(raw, rc, actual)
                expected = outputs(v.compute(rc))
        except Exception:
            continue
        if actual_finite and any(not np.all(np.isfinite(e)) for e in expected):
            continue
        ratio, _, _, problem = compare(spec, rc, expected, actual, dtype, cap_scale=True)
        if problem is not None:
            continue
        if ratio <= 1.0:
            matches.append((v.deviations, v))
        elif closest is None or ratio < closest[0]:
            closest = (ratio, v)
    drawn = {k: v for k, v in rc.kwargs.items() if k in spec.conventions and not isinstance(v, np.ndarray)}
    current = _convention_text(spec, {**drawn, **ctx.conventions})
    if len(matches) > 1:
        matches = _confirm(ctx, failure, matches, dtype)
    if matches:
        fewest = min(d for d, _ in matches)
        best = [v for d, v in matches if d == fewest]
        lines = []
        seen: set[str] = set()
        for v in best:
            if v.name in seen:
                continue
            seen.add(v.name)
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


def _strategy(ctx: Context, failure: Failure) -> st.SearchStrategy[Case]:
    if failure.prop == "stability":
        return S.stability_cases(ctx.spec.id, ctx.conventions, ctx.accepted)
    return ctx.spec.cases(ctx.conventions, ctx.accepted)


def _confirm(
    ctx: Context, failure: Failure, matches: list[tuple[int, Variant]], dtype: torch.dtype, n: int = 24
) -> list[tuple[int, Variant]]:
    """A shrunk counter-example is often too small to tell variants apart (with one valid token and one pad,
    "a pad counted" and "divided by T" agree). Keep the variants that also reproduce the candidate on ``n``
    more cases; if none survives, keep them all."""
    survivors = list(matches)
    run_dtype = failure.dtype or ctx.dtype
    for case in sample_cases(_strategy(ctx, failure), n):
        if len(survivors) <= 1:
            break
        rc = rounded(case, run_dtype)
        try:
            actual = outputs(candidate_call(ctx.fn, case, run_dtype, ctx.device, ctx.accepted))
        except Exception:
            continue
        finite = all(np.all(np.isfinite(a)) for a in actual)
        kept = []
        for d, v in survivors:
            try:
                with quiet():
                    expected = outputs(v.compute(rc))
            except Exception:
                continue
            if finite and any(not np.all(np.isfinite(e)) for e in expected):
                continue
            ratio, *_ = compare(ctx.spec, rc, expected, actual, dtype, cap_scale=True)
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
# masked slots and masked outputs


def _masked_slots(ctx: Context, failure: Failure) -> list[str]:
    spec, case = ctx.spec, failure.case
    dtype = failure.dtype or ctx.dtype
    changed = f"with {case.fill} in the masked positions of {', '.join(case.per_token)} the result changes" + (
        " (non-finite)" if failure.kind == "nonfinite" else ""
    )
    garbage = case.refilled("keep", rng_seed=1)
    try:
        zeros = outputs(candidate_call(ctx.fn, case.refilled("zero"), dtype, ctx.device, ctx.accepted))
        finite = outputs(candidate_call(ctx.fn, garbage, dtype, ctx.device, ctx.accepted))
        same, *_ = compare(spec, rounded(garbage, dtype), zeros, finite, dtype)
    except Exception:
        return [changed]
    if same <= 1.0:
        return [
            "NaN/inf leak from masked slots: "
            + changed
            + ", while any finite values there give the same result: masked values reach the result through "
            "multiply-by-mask (NaN * 0 = NaN, inf * 0 = NaN; OpenRLHF PR #1240). Use torch.where on the inputs. "
            "Harmless when the padding is finite (waive with waive=('masked_slots',))."
        ]
    rg = rounded(garbage, dtype)
    notes = [changed + "; it also changes with finite values there: the formula reads masked slots"]
    expected_g = reference_outputs(spec, rg)
    notes += _variant_matches(ctx, replace(failure, prop="values", case=garbage, rounded=rg, expected=expected_g,
                                           actual=finite), dtype)  # fmt: skip
    return notes


def _masked_outputs(ctx: Context, failure: Failure) -> list[str]:
    rc = failure.rounded
    assert rc.mask is not None and failure.actual is not None
    a = failure.actual[failure.output]
    m = rc.mask
    bad = (~m) & (a != 0)
    n_bad, n_masked = int(bad.sum()), int((~m).sum())
    notes = [
        f"writes non-zero values at {n_bad} of {n_masked} masked positions; the contract is exactly 0 there "
        "(waive with waive=('masked_outputs',) if the caller masks them again)"
    ]
    carried = np.zeros_like(a)
    has_next = np.zeros_like(m)
    for b in range(m.shape[0]):
        nxt, have = 0.0, False
        for t in reversed(range(m.shape[1])):
            if m[b, t]:
                nxt, have = a[b, t], True
            else:
                carried[b, t], has_next[b, t] = nxt, have
    if np.all(np.isclose(a[bad], carried[bad], rtol=1e-9, atol=0)):
        notes.append(
            "each masked position holds the value of the next valid position: the recursion's carry is written "
            "out (verl compute_gae_advantage_return carries lastgaelam through masked tokens)"
        )
    elif ctx.spec.masked_output_note:
        notes.append(ctx.spec.masked_output_note)
    return notes


# ----------------------------------------------------------------------------------------------------------------
# edge cases


def _edge(ctx: Context, failure: Failure) -> list[str]:
    case, rc = failure.case, failure.rounded
    actual = failure.actual
    if failure.kind != "accepted" or actual is None:
        return _values(ctx, failure) if failure.kind in ("value", "nonfinite") else [failure.message]
    notes = [f"{case.edge}: {failure.message}"]
    if not all(np.all(np.isfinite(x)) for x in actual):
        notes.append("NaN/inf from a division by an empty count (0/0) instead of a clear error")
        return notes
    assert rc.mask is not None
    if not rc.mask.any() and all(np.all(x == 0) for x in actual):
        notes.append("an all-masked batch gives 0 (the empty sum, with a guarded or +eps denominator)")
    probes = [rc] if rc.mask.any() else []
    if not probes:  # probe "one empty row among valid ones" on a few maths cases
        dtype = failure.dtype or ctx.dtype
        for c in sample_cases(ctx.spec.cases(ctx.conventions, ctx.accepted), 12):
            if c.mask is not None and c.mask.shape[0] >= 2:
                probes.append(rounded(S.edge_case(c, "empty row", 0), dtype))
    for probe in probes[:4]:
        verdict = _empty_row_convention(ctx, failure, probe)
        if verdict:
            notes.append(verdict)
            break
    return notes


def _empty_row_convention(ctx: Context, failure: Failure, rc: Case) -> str | None:
    """Is an empty row excluded from the batch mean, or counted as a zero term? (None: neither, or unknown.)"""
    assert rc.mask is not None
    dtype = failure.dtype or ctx.dtype
    try:
        actual = outputs(candidate_call(ctx.fn, rc, dtype, ctx.device, ctx.accepted))
    except Exception:
        return None
    rows = np.flatnonzero(rc.mask.any(1))
    if rows.size == 0 or rows.size == rc.mask.shape[0]:
        return None
    named = rc.named()
    kept = rc.with_inputs(**{n: np.asarray(named[n])[rows] for n in S._batched(rc)})
    kept = replace(kept, mask=rc.mask[rows])
    try:
        ref_kept = reference_outputs(ctx.spec, kept)
    except Exception:
        return None
    if len(ref_kept) != len(actual) or not all(e.ndim == 0 for e in ref_kept):
        return None
    b = rc.mask.shape[0]
    excluded = [np.asarray(e) for e in ref_kept]
    as_zero = [np.asarray(e) * rows.size / b for e in ref_kept]
    if compare(ctx.spec, kept, excluded, actual, dtype)[0] <= 1.0:
        return "empty rows excluded: the result equals the reference on the non-empty rows (verl agg_loss)"
    if compare(ctx.spec, kept, as_zero, actual, dtype)[0] <= 1.0:
        return (
            "empty row counted as zero: its 1/|o| term is 0 (a +eps or clamp(min=1) denominator) and it still "
            "counts in the batch size B"
        )
    return None


# ----------------------------------------------------------------------------------------------------------------
# gradients


def _matching_readings(case: Case, name: str, actual: np.ndarray, readings: Sequence[GradientVariant],
                       w: np.ndarray, allowed: np.ndarray) -> list[str]:  # fmt: skip
    """The gradient-only readings whose gradient of ``name`` the candidate's matches within ``allowed``."""
    out = []
    for reading in readings:
        try:
            with np.errstate(all="ignore"):
                g = reading.gradient(case, w).get(name)
        except NotImplementedError:
            continue
        if g is not None and float(tol.error_ratio(actual, g, allowed).max(initial=0.0)) <= 1.0:
            out.append(f"the gradient matches {reading.name}: {reading.description}")
    return out


def grad_diagnosis(
    case: Case,
    name: str,
    expected: np.ndarray,
    actual: np.ndarray,
    *,
    stopped: bool = False,
    readings: Sequence[GradientVariant] = (),
    w: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
) -> list[str]:
    """Why the gradient of input ``name`` differs; ``stopped``: the formula puts a stop-gradient on it;
    ``readings``: the formula's known gradient-only variants, matched against ``actual`` within ``allowed``
    (``w``: the output weights the gradient was taken with)."""
    out = [] if w is None or allowed is None else _matching_readings(case, name, actual, readings, w, allowed)
    if out:
        return out  # a known reading explains it: the generic guesses below would only add noise
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
    if finite.size and np.allclose(finite, finite[0], rtol=1e-6, atol=0) and finite[0] != 1.0:
        f = float(finite[0])
        if abs(1.0 - f) < 1e-6:
            out.append(
                f"the gradient is the reference gradient times 1 - {1.0 - f:.3g}: a guard such as + 1e-8 in a "
                "token-count denominator (verl masked_mean / agg_loss), below float32 resolution"
            )
        else:
            out.append(f"the gradient is the reference gradient times {f:.6g} (a different normaliser/sign)")
    if stopped and np.any(actual[np.isfinite(actual)]):
        out.append(
            f"gradient flows into '{name}', which the formula stops (sg: it is data, e.g. importance weights): "
            "detach it"
        )
    elif np.any((expected == 0) & (actual != 0) & np.isfinite(actual)):
        out.append("non-zero gradient where the reference's is exactly 0 (a clip that does not stop the gradient?)")
    return out
