r"""Reference gradients: the generic part (the expected-gradient record, the kink band, the output weights).
Each differentiable formula's gradient is in its family module (:mod:`rlhf_oracle.properties.formulas`).

For a formula :math:`f` with output :math:`y` and a fixed weight :math:`w` of the output's shape (1 for a scalar),
each gradient function returns :math:`\partial \sum w\, y / \partial x` for every differentiable input :math:`x`,
derived by hand from the reference formula (and cross-checked against float64 finite differences of the reference in
``tests/properties/test_reference_gradients.py``). The PPO ones are built on ``reference.ppo_clip_grad``, whose
piecewise form is proved in :mod:`rlhf_oracle.derivations`.

Where the formula has a kink (a clip bound, a max of two branches), the derivative is one-sided there and
every convex combination of the two sides is a valid subgradient (``torch.minimum``/``torch.maximum`` split the
gradient 0.5/0.5 at a tie): such positions are returned in ``alternative`` with the other one-sided value (NaN
where there is no kink), and a candidate may return any point between the two. A position counts as a kink when it
sits on it up to the rounding of the candidate's dtype (:func:`kink_band`): a bf16 ``exp`` rounds onto
``1 + eps`` where float64 lands a hair away.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Grad", "GradientVariant", "kink_band", "kink_rtol", "no_alt", "softmax", "weights_for"]

_KINK_RTOL: ContextVar[float] = ContextVar("kink_rtol", default=1e-6)


def kink_rtol() -> float:
    """Relative distance to a kink (clip bound, tie of two branches) within which both sides are accepted."""
    return _KINK_RTOL.get()


@contextlib.contextmanager
def kink_band(eps: float) -> Iterator[None]:
    """Within the block, a kink is any position within ``max(1e-6, 2 eps)`` (relative) of the bound: ``eps`` is
    the machine epsilon of the dtype the candidate computes in (one rounding of ``exp`` or of a difference, on
    either side). 1e-6 covers bf16-rounded inputs evaluated in float32."""
    token = _KINK_RTOL.set(max(1e-6, 2.0 * float(eps)))
    try:
        yield
    finally:
        _KINK_RTOL.reset(token)


class Grad(NamedTuple):
    """Expected gradient of one input, the other one-sided value at kinks (NaN elsewhere), and the magnitude of
    the terms that cancel in it (None: the gradient itself is the scale)."""

    value: np.ndarray
    alternative: np.ndarray
    scale: np.ndarray | None = None
    further: np.ndarray | None = None
    """Where two kinks meet (a sum of kinked terms), the subgradients fill the interval spanned by ``value``,
    ``alternative`` and this (NaN elsewhere): e.g. PPO's clip and |Delta|'s 0 on the same token."""

    def interval(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi): the subgradients at each element (``value`` itself where the gradient is smooth)."""
        lo, hi = np.fmin(self.value, self.alternative), np.fmax(self.value, self.alternative)
        if self.further is not None:
            lo, hi = np.fmin(lo, self.further), np.fmax(hi, self.further)
        return lo, hi


@dataclass(frozen=True)
class GradientVariant:
    """A known reading that changes only the gradient (a straight-through estimator, a detached factor): the
    diagnosis names it when the candidate's gradient matches it."""

    name: str
    description: str
    gradient: Callable[[Any, np.ndarray], dict[str, np.ndarray]]
    """``gradient(case, w)`` -> input name -> expected gradient under this reading (NotImplementedError: the
    reading does not apply to the case)."""


def weights_for(shape: tuple[int, ...]) -> np.ndarray:
    """The fixed output weight w used for non-scalar outputs (deterministic, values in [-1, 1], no zeros)."""
    if shape == ():
        return np.asarray(1.0)
    rng = np.random.default_rng(12345)
    w = rng.uniform(0.25, 1.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return np.asarray(w)


def no_alt(g: np.ndarray) -> Grad:
    """A gradient without kinks."""
    return Grad(np.asarray(g, dtype=np.float64), np.full(np.shape(g), np.nan))


def softmax(z: np.ndarray) -> np.ndarray:
    """softmax over the last axis (shifted by the maximum)."""
    e = np.exp(z - z.max(-1, keepdims=True))
    return np.asarray(e / e.sum(-1, keepdims=True))
