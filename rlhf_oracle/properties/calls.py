"""The calls under every property: the candidate called on a case (in its dtype and device), the reference on
the same rounded inputs, the comparison under the tolerance policy, the search, and the :class:`Context` of one
check. :mod:`.props` (the property bodies), :mod:`.diagnosis` and :mod:`.engine` build on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from . import profiles
from . import tolerances as tol
from .cases import Case
from .gradients import kink_band
from .registry import FormulaSpec
from .report import Failure, PropertyResult

__all__ = [
    "Context",
    "Mismatch",
    "Problem",
    "call",
    "candidate_call",
    "compare",
    "hypothesis_settings",
    "is_float_array",
    "output_dtypes",
    "outputs",
    "reference_outputs",
    "rounded",
    "sample_cases",
    "search",
]


class Mismatch(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


# ----------------------------------------------------------------------------------------------------------------
# conversions


def is_float_array(x: Any) -> bool:
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
    if is_float_array(x):
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


class Problem(str):
    """A structural problem of the candidate's result (not a wrong number), with its kind: ``"structure"`` (a
    different number of outputs) or ``"shape"``."""

    kind: str

    def __new__(cls, kind: str, text: str) -> Problem:
        self = super().__new__(cls, text)
        self.kind = kind
        return self


def compare(
    spec: FormulaSpec,
    case: Case,
    expected: list[np.ndarray],
    actual: list[np.ndarray],
    dtype: torch.dtype,
    *,
    where: str = "valid",
    cap_scale: bool = False,
) -> tuple[float, int, tuple[int, ...] | None, Problem | None]:
    """(worst ratio, output number, worst index, structural problem or None).

    ``where``: ``"valid"`` compares [B, T] outputs at valid positions only (masked positions are the
    ``masked_outputs`` property's), ``"masked"`` only at masked positions, ``"all"`` everywhere.
    ``cap_scale``: the tolerance scale is capped by the size of the two values compared (a variant of the
    diagnosis must reproduce the candidate's value, whatever the reference's conditioning on that input: a k3
    at Delta = -100 has terms of 1e43, which must not make -100 and 10 "equal")."""
    if len(actual) != len(expected):
        hint = " (use adapters.first or adapters.take(i))" if len(actual) > len(expected) else ""
        text = f"returns {len(actual)} output(s), the reference {len(expected)}{hint}"
        return math.inf, 0, None, Problem("structure", text)
    cond, scale = spec.tolerance(case)
    worst, worst_out, worst_idx = 0.0, 0, None
    for k, (e, a) in enumerate(zip(expected, actual, strict=True)):
        if a.shape != e.shape:
            return math.inf, k, None, Problem("shape", f"output {k} has shape {a.shape}, the reference's is {e.shape}")
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


def call(ctx: Context, prop: str, case: Case, rc: Case, dtype: torch.dtype, expected: Any) -> tuple[Any, list[Any]]:
    """Call the candidate; a raise, None or an unreadable result becomes a Failure of ``prop``."""
    try:
        out = candidate_call(ctx.fn, case, dtype, ctx.device, ctx.accepted)
    except Exception as exc:
        msg = f"raised {type(exc).__name__}: {exc}{drawn_hint(ctx, case)}"
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


def drawn_hint(ctx: Context, case: Case) -> str:
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


def secondary_examples(max_examples: int | None) -> int:
    """The non-maths properties search with a third of the maths ones' effort (at least 10 examples): their
    inputs are the maths cases pushed into one regime, so fewer draws reach it."""
    n = max_examples if max_examples is not None else profiles.active_settings().max_examples
    return max(10, n // 3)
