r"""The tolerance policy: how close a candidate must come to the reference, per dtype, and why.

A check compares the candidate's output :math:`a` with the reference output :math:`e` element by element:

.. math::

    |a_i - e_i| \le \mathrm{rtol}(\text{dtype}) \cdot \kappa \cdot \big(|e_i| + s_i\big)

- :math:`\mathrm{rtol}` depends on the dtype only (the constants below, each with its reason).
- :math:`\kappa \ge 1` is the *conditioning* of the formula on this input: how many rounding errors can pile up
  (:func:`sum_cond` for a reduction over n terms, :func:`recursion_cond` for GAE's backward recursion,
  :func:`exp_cond` for a ratio ``exp(x)`` whose argument carries an absolute error proportional to ``|x|``).
- :math:`s_i \ge 0` is the *magnitude of the terms* whose rounding errors end up in :math:`e_i` (e.g. for a mean
  of values of both signs, the mean of their absolute values; for ``k3 = e^{-D} - 1 + D`` near D = 0, the size
  of the terms ``1 + |D|``, not the tiny result). It makes the bound absolute where the result cancels.

Every per-formula :math:`\kappa` and :math:`s` lives in the formula's family module
(:attr:`rlhf_oracle.properties.registry.FormulaSpec.tolerance`), next to the formula it describes.

The reference always runs on the *inputs the candidate saw*: the float64 master inputs are rounded to the
candidate's dtype and back to float64 before the reference evaluates them. The tolerance therefore covers only
the candidate's arithmetic, never the rounding of its inputs, which is what lets float32 and bf16 be tight
(a bf16 candidate is compared with the exact result on bf16 inputs, not with the result on the float64 inputs,
from which bf16 input rounding alone can move a loss by percents).

Exact requirements, whatever the dtype: per-token outputs are exactly 0 at masked positions (their scale is 0),
and an output is never NaN/inf where the reference's is finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "BFLOAT16",
    "FLOAT16",
    "FLOAT32",
    "FLOAT64",
    "GRAD_FACTOR",
    "DtypeTolerance",
    "bound",
    "error_ratio",
    "exp_cond",
    "finite",
    "for_dtype",
    "recursion_cond",
    "subnormal_floor",
    "sum_cond",
    "valid",
]


@dataclass(frozen=True)
class DtypeTolerance:
    """The relative tolerance of one dtype and the reason for its value."""

    dtype: str
    machine_eps: float
    """Spacing of the dtype's numbers at 1 (2^-52, 2^-23, 2^-7, 2^-10)."""
    rtol: float
    reason: str


FLOAT64 = DtypeTolerance(
    "float64",
    2.0**-52,
    1e-10,
    "Candidate and reference both compute in float64, so legitimate differences are reordered sums and libm "
    "functions accurate to ~1 ulp: a few eps (2.2e-16) per operation, times the conditioning. 1e-10 is about "
    "4.5e5 eps: six orders of margin for implementation freedom, yet any convention difference (an extra pad "
    "token, a different normaliser, a clip bound) moves the result by far more than 1e-10 relative.",
)
FLOAT32 = DtypeTolerance(
    "float32",
    2.0**-23,
    1e-5,
    "float32 eps is 1.2e-7; a formula is a chain of a handful of elementwise operations (exp, log1p, clamp, "
    "products, each correctly rounded or within 1-2 ulp in torch's CPU and CUDA kernels), so its elementwise "
    "error is a few eps; 1e-5 is ~84 eps, which absorbs fused/reordered kernels (e.g. logsumexp via max-shift "
    "vs via log_softmax) and GPU reductions, while the conditioning factor accounts for longer sums. It matches "
    "the default rtol of torch.testing.assert_close for float32 (1.3e-6) widened by the operation count.",
)
BFLOAT16 = DtypeTolerance(
    "bfloat16",
    2.0**-7,
    2.0**-6,
    "bf16 keeps 8 significant bits (eps = 2^-7, unit roundoff 2^-8). Each elementwise operation performed in "
    "bf16 rounds its result once (relative error <= 2^-8); a formula chains about four of them before the "
    "result is rounded to bf16 for output (another 2^-8), so 2^-6 = 4 x 2^-8 covers the chain. Reductions "
    "accumulate in float32 inside torch for bf16 inputs, so they add only the conditioning factor. This is the "
    "accuracy a bf16 training run actually gets; the comparison is with the reference on the bf16-rounded "
    "inputs, so input rounding is not counted.",
)
FLOAT16 = DtypeTolerance(
    "float16",
    2.0**-10,
    2.0**-8,
    "fp16 keeps 11 significant bits (unit roundoff 2^-11); same reasoning as bf16: about four roundings, 2^-9, "
    "doubled for the narrower exponent range near its limits.",
)

_BY_DTYPE = {torch.float64: FLOAT64, torch.float32: FLOAT32, torch.bfloat16: BFLOAT16, torch.float16: FLOAT16}

GRAD_FACTOR = 4.0
"""Gradients get ``GRAD_FACTOR`` times the value tolerance: the backward pass re-runs the forward chain and adds
about as many roundings again (products with the upstream gradient, the sums of ``expand`` in reductions), and
analytic reference gradients are compared with autograd's, which evaluates the derivative through a different
but equivalent expression (e.g. ``softmax - onehot`` vs the derivative of ``logsumexp``)."""


def for_dtype(dtype: torch.dtype) -> DtypeTolerance:
    """The tolerance of ``dtype`` (float64, float32, bfloat16, float16)."""
    try:
        return _BY_DTYPE[dtype]
    except KeyError:
        raise ValueError(f"no tolerance policy for dtype {dtype}; use one of {list(_BY_DTYPE)}") from None


def sum_cond(n: int) -> float:
    """Conditioning of a reduction over ``n`` terms: ``1 + log2(n)``.

    torch's reductions are pairwise/cascaded (error growth O(log n) eps, not O(n)) and accumulate bf16/fp16 in
    float32; the term magnitudes are already in the scale ``s``. A sequential loop in a low-precision dtype can
    exceed this for long rows, which is a genuine accuracy defect worth reporting.
    """
    return 1.0 + math.log2(max(int(n), 1))


def recursion_cond(length: int, gamma: float, lam: float) -> float:
    r"""Conditioning of GAE's backward recursion :math:`A_t = \delta_t + \gamma\lambda A_{t+1}`.

    An error made at step t is carried to earlier steps with weight :math:`(\gamma\lambda)^l`, so errors add up
    to at most :math:`\sum_l (\gamma\lambda)^l = 1/(1 - \gamma\lambda)`, and never more than the number of
    steps: :math:`\kappa = 1 + \min(T, 1/(1-\gamma\lambda))`.
    """
    gl = gamma * lam
    amplification = float(length) if gl >= 1.0 else min(float(length), 1.0 / (1.0 - gl))
    return 1.0 + amplification


def exp_cond(x: Any) -> Any:
    """Conditioning of ``exp(x)`` when ``x`` was itself computed with an absolute error ~ eps * |x|: ``1 + |x|``.

    (exp turns an absolute error in its argument into a relative error of its result.)
    """
    return 1.0 + np.abs(np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0))


def bound(dtype: torch.dtype, expected: np.ndarray, cond: float, scale: Any, *, grad: bool = False) -> np.ndarray:
    """The allowed absolute difference per element: ``rtol * cond * (|expected| + scale)``."""
    rtol = for_dtype(dtype).rtol * (GRAD_FACTOR if grad else 1.0)
    e = np.abs(np.nan_to_num(np.asarray(expected, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0))
    out: np.ndarray = rtol * cond * (e + np.asarray(scale, dtype=np.float64)) + subnormal_floor(dtype)
    return np.broadcast_to(out, e.shape)


def subnormal_floor(dtype: torch.dtype) -> float:
    """The absolute floor of every bound: the dtype's smallest normal number (``finfo.tiny``; 1.2e-38 for
    float32 and bf16, 2.2e-308 for float64). Below it numbers are subnormal and carry no relative precision,
    so a product like ``r * A`` of two small numbers may legitimately differ there by its last subnormal
    digits. Exact zeros stay exact: a bound of this size still refuses any value a formula could produce
    at a masked position."""
    return float(torch.finfo(dtype).tiny)


def error_ratio(actual: np.ndarray, expected: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """``|actual - expected| / allowed`` per element (<= 1 passes); ``inf`` where one side is non-finite and the
    other is not or they differ, 0 where both are the same non-finite value."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        diff = np.abs(a - e)
        ratio = np.where(allowed > 0, diff / np.where(allowed > 0, allowed, 1.0), np.where(diff == 0, 0.0, np.inf))
    same_nonfinite = ~np.isfinite(a) & ~np.isfinite(e) & ((a == e) | (np.isnan(a) & np.isnan(e)))
    one_nonfinite = np.isfinite(a) != np.isfinite(e)
    ratio = np.where(same_nonfinite, 0.0, ratio)
    ratio = np.where(one_nonfinite, np.inf, ratio)
    result: np.ndarray = np.where(np.isnan(ratio), np.inf, ratio)
    return result


def finite(x: Any) -> np.ndarray:
    """``x`` as float64 with NaN and +-inf set to 0 (the magnitude of an input, never of its padding)."""
    return np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def valid(case: Any, name: str) -> np.ndarray:
    """The finite values of input ``name`` of a :class:`~rlhf_oracle.properties.cases.Case`, 0 at its masked slots."""
    x = finite(case.named()[name])
    return np.where(case.mask, x, 0.0) if case.mask is not None and name in case.per_token else x
