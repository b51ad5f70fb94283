"""Precision slips the diagnosis recognises before it compares convention variants: a candidate that computes
below the dtype it was given (a float32 output, or a float64 output computed in float32 inside) and constants
created as float32 tensors whatever the input dtype. Each answers: does the candidate match the reference once
that slip is accounted for?"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from .calls import Context, candidate_call, compare, output_dtypes, reference_outputs, rounded
from .report import Failure

__all__ = ["float32_hyper_parameters", "float32_inside", "low_precision", "quiet"]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Evaluate candidate conventions without leaking their NumPy warnings (a variant's degenerate statistic on a
    one-token row, an overflow in a fitted clamp) into the user's test output: they are the oracle's business."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def float32_hyper_parameters(ctx: Context, failure: Failure, dtype: torch.dtype) -> bool:
    """Whether the candidate's float64 output is the reference's with the float hyper-parameters rounded to
    float32 (and the reference itself is not: some hyper-parameter is not a float32 number)."""
    rc = failure.rounded
    if dtype != torch.float64 or rc is None or failure.actual is None:
        return False
    rounded32 = {k: float(np.float32(v)) for k, v in rc.named().items()
                 if isinstance(v, float) and math.isfinite(v) and float(np.float32(v)) != v}  # fmt: skip
    if not rounded32:
        return False
    changed = rc.with_inputs(**rounded32)
    try:
        with quiet():
            expected = reference_outputs(ctx.spec, changed)
    except Exception:
        return False
    ratio, _, _, problem = compare(ctx.spec, changed, expected, failure.actual, dtype)
    return problem is None and ratio <= 1.0


def float32_inside(ctx: Context, failure: Failure, dtype: torch.dtype) -> bool:
    """Whether a float64 output agrees with the reference on the float32-rounded inputs within float32's
    tolerance (the candidate computed in float32 and cast the result back)."""
    if dtype != torch.float64 or failure.actual is None:
        return False
    try:
        rl = rounded(failure.case, torch.float32)
        with quiet():
            expected = reference_outputs(ctx.spec, rl)
    except Exception:
        return False
    ratio, _, _, problem = compare(ctx.spec, rl, expected, failure.actual, torch.float32)
    return problem is None and ratio <= 1.0


def low_precision(ctx: Context, failure: Failure, dtype: torch.dtype) -> tuple[torch.dtype, bool] | None:
    """If the candidate computes below ``dtype``: (that dtype, whether it then matches the reference)."""
    if dtype != torch.float64:
        return None
    try:
        out = candidate_call(ctx.fn, failure.case, dtype, ctx.device, ctx.accepted)
    except Exception:
        return None
    dts = [d for d in output_dtypes(out) if d is not None and d.is_floating_point]
    lowest = min(dts, key=lambda d: d.itemsize) if dts else None
    if lowest is None or lowest.itemsize >= 8:
        return None  # (a float64 result computed in float32 inside is not distinguishable from a small error)
    low = lowest
    rl = rounded(failure.case, low)
    ratio, _, _, problem = compare(ctx.spec, rl, reference_outputs(ctx.spec, rl), failure.actual, low)
    return low, problem is None and ratio <= 1.0
