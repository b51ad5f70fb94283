"""One ``check_<formula>`` per catalogue formula, and error parity; the engine lives in
:mod:`rlhf_oracle.properties.engine`, the diagnosis in :mod:`.diagnosis`, the report in :mod:`.report`.

``check_<formula>(candidate, *, adapter=None, dtype=torch.float64, device="cpu", max_examples=None,
waive=(), **conventions)`` runs every named property of the formula (values and gradients first, then
edge_cases, masked_slots, masked_outputs, stability, dtype) and raises :class:`OracleMismatch` (an
``AssertionError``) when a property that is not waived fails; :func:`run_check` returns the
:class:`CheckReport` without raising (the CLI uses it); :func:`check_error_parity` checks that a candidate
refuses bad inputs exactly like the reference (same exception type and message).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from hypothesis import given

from . import strategies as S
from .calls import Mismatch, candidate_call, hypothesis_settings
from .engine import check, run_check
from .registry import REGISTRY, get
from .report import CheckReport, Failure, OracleMismatch, PropertyResult

__all__ = [
    "CHECKS",
    "CheckReport",
    "OracleMismatch",
    "PropertyResult",
    "check",
    "check_error_parity",
    "formulas",
    "make_check",
    "run_check",
]


def make_check(formula: str) -> Callable[..., CheckReport]:
    """The ``check_<formula>`` function of a registered formula."""
    spec = REGISTRY[formula]

    def check_formula(candidate: Callable[..., Any], **options: Any) -> CheckReport:
        __tracebackhide__ = True
        return check(formula, candidate, **options)

    check_formula.__name__ = check_formula.__qualname__ = f"check_{formula}"
    check_formula.__doc__ = (
        f"Check ``candidate`` against ``reference.{formula}`` ({spec.paper}, {spec.equation}).\n\n"
        f"Conventions (keyword arguments passed to the reference and, when accepted, the candidate): "
        f"{', '.join(spec.conventions) or 'none'}. Differentiable inputs checked by autograd: "
        f"{', '.join(spec.differentiable) or 'none'}. Options: adapter, dtype, device, max_examples, waive, strict, "
        f"properties (see run_check). Raises OracleMismatch with a shrunk counter-example and a diagnosis per "
        f"failing property; returns the CheckReport otherwise."
    )
    return check_formula


CHECKS: dict[str, Callable[..., CheckReport]] = {f: make_check(f) for f in REGISTRY}
"""Formula id -> its ``check_<formula>`` function."""

globals().update({f"check_{f}": fn for f, fn in CHECKS.items()})
__all__ += [f"check_{f}" for f in REGISTRY]


def __getattr__(name: str) -> Any:  # formulas registered after import (families added later)
    if name.startswith("check_") and name[6:] in REGISTRY:
        return make_check(name[6:])
    raise AttributeError(name)


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
            candidate_call(candidate, case, dtype, device, None)
        except Exception as exc:
            if type(exc) is type(ref_exc) and _normalise_message(str(exc)) == _normalise_message(str(ref_exc)):
                return
            got = f"{type(exc).__name__}: {exc}"
        else:
            got = "no exception"
        msg = f"{bad.what}: reference raises {type(ref_exc).__name__}: {ref_exc}; candidate: {got}"
        raise Mismatch(Failure("errors", "errors", case, case, msg, diagnosis=[msg]))

    stats = {"n": 0}

    @hypothesis_settings(max_examples)
    @given(S.bad_cases(formula))
    def run(bad: S.BadCase) -> None:
        stats["n"] += 1
        body(bad)

    try:
        run()
    except Mismatch as exc:
        report.properties.append(
            PropertyResult("error parity", False, stats["n"], note=exc.failure.message, failure=exc.failure)
        )
    else:
        report.properties.append(PropertyResult("error parity", True, stats["n"]))
    return report


def formulas() -> Iterable[str]:
    """The formula ids, in catalogue order."""
    return iter(REGISTRY)
