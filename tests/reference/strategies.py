"""Small hypothesis strategies for the reference's own tests (the exported ones live in rlhf_oracle.properties)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


@st.composite
def masked_batch(draw: st.DrawFn, *, n_arrays: int = 1, lo: float = -5.0, hi: float = 5.0, min_len: int = 1):
    """(arrays..., mask): B x T float arrays and a mask whose every row has >= min_len valid tokens, with left or
    right padding or holes; masked slots hold NaN so that any leak shows."""
    batch = draw(st.integers(1, 4))
    length = draw(st.integers(max(min_len, 1), 7))
    mask = np.zeros((batch, length), dtype=bool)
    for b in range(batch):
        n = draw(st.integers(min_len, length))
        layout = draw(st.sampled_from(["right", "left", "holes"]))
        if layout == "right":
            mask[b, :n] = True
        elif layout == "left":
            mask[b, length - n :] = True
        else:
            idx = draw(st.permutations(range(length)))[:n]
            mask[b, list(idx)] = True
    elements = st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    arrays = []
    for _ in range(n_arrays):
        a = draw(hnp.arrays(np.float64, (batch, length), elements=elements))
        arrays.append(np.where(mask, a, np.nan))
    return (*arrays, mask)


def strip_padding(row: np.ndarray, mask_row: np.ndarray) -> np.ndarray:
    """The valid entries of one row, as a [1, n] array."""
    return row[mask_row][None, :]
