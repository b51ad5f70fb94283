"""Groups of samples per prompt and returns-to-go: the inputs and sizes the critic-free families share.

Groups are consecutive blocks of ``group_size`` rows (the G samples of a prompt are adjacent), as in the reference.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ..cases import Draw, advantages_like

__all__ = ["draw_group_size", "group_scores", "returns_to_go"]


def group_scores(draw: Draw, b: int, group_size: int) -> np.ndarray:
    """Scores of ``b`` samples in groups: verifiable 0/1 (often one value per group), real, or groups of one
    repeated value (the all-equal group that carries no gradient)."""
    kind = draw(st.sampled_from(["binary", "real", "equal groups"]))
    if kind == "binary":
        return np.asarray(draw(hnp.arrays(np.float64, (b,), elements=st.sampled_from([0.0, 1.0]))))
    s = np.asarray(draw(advantages_like((b,))))
    if kind == "equal groups":
        groups = s.reshape(-1, group_size)
        same = np.asarray(draw(hnp.arrays(np.bool_, (groups.shape[0],))))
        groups = np.where(same[:, None], groups[:, :1], groups)
        s = groups.reshape(-1)
    return s


def draw_group_size(draw: Draw, allow_one: bool) -> int:
    return int(draw(st.integers(1 if allow_one else 2, 5)))


def returns_to_go(x: np.ndarray, m: np.ndarray, gamma: float) -> np.ndarray:
    """The return-to-go of ``x`` over the valid tokens (of ``|x|``: the size of the terms each return sums)."""
    out = np.zeros_like(x)
    for b in range(x.shape[0]):
        running = 0.0
        for t in reversed(np.flatnonzero(m[b])):
            running = x[b, t] + gamma * running
            out[b, t] = running
    return out
