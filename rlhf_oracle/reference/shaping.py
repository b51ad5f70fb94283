"""DAPO's data shaping: the soft overlong penalty on the reward and dynamic sampling of the groups.

Both act on the data before any advantage is computed: the penalty reshapes the reward of a too-long response, the
mask drops the groups that carry no gradient. See :mod:`rlhf_oracle.reference.critic_free` for the advantages.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _validation as v
from ._validation import BoolArray, FloatArray

__all__ = ["dynamic_sampling_mask", "overlong_penalty"]


def overlong_penalty(lengths: Any, max_length: int, cache_length: int, factor: float = 1.0) -> FloatArray:
    r"""DAPO's soft overlong punishment: a length-aware penalty added to the reward of a too-long response.

    .. math::

        R_{length}(y) = \begin{cases}
            0 & |y| \le L_{max} - L_{cache} \\
            \dfrac{(L_{max} - L_{cache}) - |y|}{L_{cache}} \cdot f & L_{max} - L_{cache} < |y| \le L_{max} \\
            -f & |y| > L_{max}
        \end{cases}

    Source: Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", eq. 13 (f = 1;
    DAPO's run: L_max = 20480, L_cache = 4096).

    Shapes: ``lengths`` [B] (response lengths |y|, integer or floating) -> [B], in [-factor, 0].

    Conventions:
        - The penalty is continuous: it reaches -f exactly at |y| = L_max and stays there (OpenRLHF caps the
          excess at the buffer, the same thing; verl's DAPO reward manager does not cap, so a response longer
          than L_max gets less than -f, which its truncation at L_max never produces).
        - ``0 < cache_length <= max_length``; ``factor >= 0`` (OpenRLHF ``overlong_penalty_factor``, verl
          ``penalty_factor``, both 1.0 by default).
    """
    fn = "overlong_penalty"
    arr = np.asarray(lengths)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{fn}: 'lengths' must be an integer or floating array, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{fn}: 'lengths' must have shape [B], got {v._shape_str(arr.shape)}")
    n = arr.astype(np.float64)
    if not np.all(np.isfinite(n)) or np.any(n < 0):
        raise ValueError(f"{fn}: 'lengths' must be finite and >= 0")
    l_max = v.positive(fn, "max_length", max_length)
    l_cache = v.positive(fn, "cache_length", cache_length)
    if l_cache > l_max:
        raise ValueError(f"{fn}: 'cache_length' must be <= max_length={max_length}, got {cache_length}")
    f = v.non_negative(fn, "factor", factor)

    expected = l_max - l_cache
    out = np.zeros_like(n)
    for i, length in enumerate(n):
        if length <= expected:
            out[i] = 0.0
        elif length <= l_max:
            out[i] = (expected - length) / l_cache * f
        else:
            out[i] = -f
    return out


def dynamic_sampling_mask(scores: Any, group_size: int, *, tol: float = 0.0) -> BoolArray:
    r"""DAPO's dynamic sampling: keep only the groups whose scores are not all equal.

    .. math::

        \text{keep}_i = \Big[\max_{j \in g(i)} s_j - \min_{j \in g(i)} s_j > \mathrm{tol}\Big]

    A group whose samples all get the same reward has zero group-relative advantage (GRPO, RLOO, Dr. GRPO): it
    carries no gradient, only dilutes the batch.

    Source: Yu et al. 2025, "DAPO", eq. 11, the constraint 0 < |{o_i : is_equivalent(a, o_i)}| < G, for any
    reward (verl ``filter_groups``: ``np.std(values) == 0``).

    Shapes: ``scores`` [B] (B = n_groups * group_size) -> [B] bool, constant over each group.

    Conventions:
        - groups are consecutive blocks of ``group_size`` rows; a group of one is always dropped (its scores are
          trivially all equal); verl keeps it (its test needs two trajectories).
        - ``tol = 0`` (default): exact equality, as verl; ``tol > 0`` treats a spread of at most tol as equal.
        - OpenRLHF's ``dynamic_filtering_range`` keeps a group when its mean reward is strictly inside (lo, hi):
          the same set for 0/1 rewards with (0, 1), a different criterion otherwise.
    """
    fn = "dynamic_sampling_mask"
    s = v.as_float(fn, "scores", scores, ndim=1, shape_doc="[B]")
    n = v.group_size(fn, group_size, s.shape[0], 1)
    t = v.non_negative(fn, "tol", tol)
    v.finite(fn, "scores", s)
    keep = np.zeros(s.shape, dtype=np.bool_)
    for start in range(0, s.shape[0], n):
        group = s[start : start + n]
        keep[start : start + n] = (group.max() - group.min()) > t
    return keep
