"""The aggregation axis: how per-token values become one scalar (``agg=`` of the losses and of
``aggregate``), shared by ``aggregate``, ``policy_loss``, ``ptx_loss``, ``value_loss``, the distributed check and
the in-loop oracle.

The modes are the reference's (:data:`rlhf_oracle.reference.AGGREGATION_MODES`); here they get their value on
inputs whose masked slots may hold anything, their gradient weights, the magnitude the tolerance scales by,
their strategy, the alternatives the diagnosis names, and the bad input that only the per-row mean refuses.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from rlhf_oracle import reference as R

from ..cases import BadCase, Case, Draw, Params
from ..variants import where

__all__ = [
    "MODES",
    "AggAxis",
    "abs_scale",
    "alternatives",
    "case_weights",
    "draw_mode",
    "empty_row",
    "value",
    "weights",
]

MODES: tuple[str, ...] = R.AGGREGATION_MODES
"""The aggregation modes, read from the reference."""

WHO = {
    "seq-mean-token-mean": "per-sequence 1/|o| average (the seed, GRPO eq. 3, TRL loss_type='grpo')",
    "token-mean": "sum m l / sum m over the batch (DAPO; verl, OpenRLHF and TRL PPO default)",
    "seq-mean-token-sum": "mean over rows of the per-row token sum",
    "seq-mean-token-sum-norm": "sum / (B L), constant normaliser (Dr. GRPO; verl uses the padded T as L)",
}
"""Who uses each mode (the diagnosis's words)."""

PER_ROW = "seq-mean-token-mean"
"""The mode that divides by each row's token count |o| (an empty row is an error there)."""


def value(x: np.ndarray, m: np.ndarray, mode: str, max_tokens: int | None) -> float:
    """Masked aggregation (masked slots of x may be garbage); NaN where a row/batch has no token."""
    xs = where(m, x)
    with np.errstate(all="ignore"):
        if mode == "seq-mean-token-mean":
            return float(np.mean(xs.sum(1) / m.sum(1)))
        if mode == "token-mean":
            return float(xs.sum() / m.sum())
        if mode == "seq-mean-token-sum":
            return float(np.mean(xs.sum(1)))
        norm = x.shape[1] if max_tokens is None else max_tokens
        return float(np.mean(xs.sum(1)) / norm)


def weights(m: np.ndarray, mode: str, max_tokens: int | None) -> np.ndarray:
    """d aggregate / d values: the weight of every token under ``mode``."""
    b, t = m.shape
    mf = m.astype(np.float64)
    with np.errstate(all="ignore"):
        if mode == "seq-mean-token-mean":
            return np.asarray(mf / (b * mf.sum(1, keepdims=True)))
        if mode == "token-mean":
            return np.asarray(mf / mf.sum())
        if mode == "seq-mean-token-sum":
            return np.asarray(mf / b)
        return np.asarray(mf / (b * (t if max_tokens is None else max_tokens)))


def settings(c: Case, arg: str = "agg") -> tuple[str, int | None]:
    """(mode, max_tokens) of the case, the reference's defaults applied."""
    return str(c.arg(arg)), c.arg("max_tokens", absent=None)


def abs_scale(c: Case, per_token: np.ndarray, arg: str = "agg") -> float:
    """The tolerance scale of an aggregation: the same aggregation of |per-token magnitude|, every row counted."""
    assert c.mask is not None
    m = c.mask
    mode, mt = settings(c, arg)
    x = np.where(m, np.abs(per_token), 0.0)
    if mode == "seq-mean-token-mean":
        return float(np.mean(x.sum(1) / np.maximum(m.sum(1), 1)))
    if mode == "token-mean":
        return float(x.sum() / max(int(m.sum()), 1))
    if mode == "seq-mean-token-sum":
        return float(np.mean(x.sum(1)))
    return float(np.mean(x.sum(1)) / (m.shape[1] if mt is None else mt))


def case_weights(c: Case, arg: str = "agg") -> np.ndarray:
    """:func:`weights` of the case's own aggregation ``arg``, 0 at its masked slots."""
    assert c.mask is not None
    return np.where(c.mask, weights(c.mask, *settings(c, arg)), 0.0)


def draw_mode(p: Params, t: int, name: str = "agg") -> str:
    """Draw the aggregation ``name`` (and ``max_tokens`` where the formula takes it and the mode uses it)."""
    mode = str(p(name, st.sampled_from(MODES)))
    if mode == "seq-mean-token-sum-norm" and p.takes("max_tokens"):
        p("max_tokens", st.sampled_from([None, t, 2 * t + 3]))
    return mode


def empty_row(c: Case, draw: Draw, arg: str = "agg") -> BadCase | None:
    """An all-zero mask row, where the mode divides by the row's token count (the reference refuses it)."""
    if c.mask is None or settings(c, arg)[0] != PER_ROW:
        return None
    m = c.mask.copy()
    row = draw(st.integers(0, m.shape[0] - 1))
    m[row] = False
    return BadCase(c.with_inputs(mask=m), f"'mask' row {row} all zero")


# ----------------------------------------------------------------------------------------------------------------
# variants


def _value_eps(x: np.ndarray, m: np.ndarray, mode: str, max_tokens: int | None) -> float:
    xs = where(m, x)
    with np.errstate(all="ignore"):
        if mode == "seq-mean-token-mean":
            return float(np.mean(xs.sum(1) / (m.sum(1) + 1e-8)))
        if mode == "token-mean":
            return float(xs.sum() / (m.sum() + 1e-8))
    raise NotImplementedError


def _fixed(mode: str, x: np.ndarray, m: np.ndarray, _current: str, max_tokens: int | None) -> float:
    return value(x, m, mode, max_tokens)


def _first_pad_extended(m: np.ndarray) -> np.ndarray:
    ext = m.copy()
    for b in range(m.shape[0]):
        valid = np.flatnonzero(m[b])
        if valid.size and valid[-1] + 1 < m.shape[1]:
            ext[b, valid[-1] + 1] = True
    return ext


@dataclass(frozen=True)
class AggAxis:
    """One alternative aggregation: ``fn(x, mask, current_mode, max_tokens)``; ``kwargs`` select it in the
    reference when it is a documented mode."""

    name: str
    description: str
    fn: Callable[[np.ndarray, np.ndarray, str, int | None], float]
    kwargs: Mapping[str, Any] | None


def alternatives(current: str, arg: str) -> list[AggAxis]:
    """Aggregation alternatives to ``current``; x is the per-token value computed on the raw inputs."""
    axis = [AggAxis(f"{arg}={mode!r}", WHO[mode], functools.partial(_fixed, mode), {arg: mode})
            for mode in MODES if mode != current]  # fmt: skip
    axis += [
        AggAxis(
            "|o| over the batch",
            "each row's token sum divided by the batch's token count instead of the row's, then averaged over "
            "rows (= token-mean / B)",
            lambda x, m, _mode, _mt: value(x, m, "token-mean", None) / x.shape[0],
            None,
        ),
        AggAxis(
            "first pad counted (as 0)",
            "the slot after the last valid token is counted in |o| with a zero value (a mask extended by one: "
            "TRL's padding_mask_p1 / DS-Chat PR #672 off-by-one)",
            lambda x, m, mode, mt: value(where(m, x), _first_pad_extended(m), mode, mt),
            None,
        ),
        AggAxis(
            "first pad counted (its values used)",
            "the slot after the last valid token is counted as valid, with whatever its inputs hold (a mask "
            "extended by one: TRL's padding_mask_p1 / DS-Chat PR #672 off-by-one)",
            lambda x, m, mode, mt: value(x, _first_pad_extended(m), mode, mt),
            None,
        ),
        AggAxis(
            "+1e-8 in the token-count denominator",
            "token counts guarded with + 1e-8 (verl masked_mean / agg_loss, OpenRLHF sample mode): a relative "
            "change of about 1e-8/|o|, below float32 resolution but visible in float64",
            _value_eps,
            None,
        ),
        AggAxis(
            "unmasked mean",
            "plain mean over all B*T positions, padding included (verl #3805: an all-ones response mask)",
            lambda x, m, _mode, _mt: float(np.mean(x)),
            None,
        ),
        AggAxis(
            "padded length as |o|",
            "each row's token sum divided by the padded length T (pad tokens counted in |o|)",
            lambda x, m, _mode, _mt: float(np.mean(where(m, x).sum(1) / x.shape[1])),
            None,
        ),
    ]
    return axis
