"""DAPO's data shaping, vectorised: the soft overlong penalty and dynamic sampling (no loop over rows or groups).
See :mod:`rlhf_oracle.reference.shaping`.
"""

from __future__ import annotations

import torch

from . import _validation as v

__all__ = ["dynamic_sampling_mask", "overlong_penalty"]


def overlong_penalty(lengths: torch.Tensor, max_length: int, cache_length: int, factor: float = 1.0) -> torch.Tensor:
    r"""DAPO's soft overlong punishment (eq. 13): 0 up to :math:`L = L_{max} - L_{cache}`, then
    :math:`(L - |y|)/L_{cache} \cdot f` up to :math:`L_{max}`, then :math:`-f`. See
    :func:`rlhf_oracle.reference.overlong_penalty`.

    Shapes: ``lengths`` [B] (integer or floating) -> [B], floating (the default dtype for integer lengths).
    """
    fn = "overlong_penalty"
    t = lengths if isinstance(lengths, torch.Tensor) else torch.as_tensor(lengths)
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{fn}: 'lengths' must be an integer or floating array, got dtype {v.dtype_str(t.dtype)}")
    if t.ndim != 1:
        raise ValueError(f"{fn}: 'lengths' must have shape [B], got {v.shape_str(t.shape)}")
    out_dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
    n = t.to(v.acc_dtype(out_dtype))
    if v.value_checks_enabled() and n.numel() and not bool((torch.isfinite(n) & (n >= 0)).all()):
        raise ValueError(f"{fn}: 'lengths' must be finite and >= 0")
    l_max = v.positive(fn, "max_length", max_length)
    l_cache = v.positive(fn, "cache_length", cache_length)
    if l_cache > l_max:
        raise ValueError(f"{fn}: 'cache_length' must be <= max_length={max_length}, got {cache_length}")
    f = v.non_negative(fn, "factor", factor)
    expected = l_max - l_cache
    ramp = (expected - n) / l_cache * f
    out = torch.where(n <= expected, 0.0, torch.where(n <= l_max, ramp, -f))
    return out.to(out_dtype)


def dynamic_sampling_mask(scores: torch.Tensor, group_size: int, *, tol: float = 0.0) -> torch.Tensor:
    r"""DAPO's dynamic sampling (eq. 11): True for the rows of groups whose scores are not all equal
    (max - min > tol). See :func:`rlhf_oracle.reference.dynamic_sampling_mask`.

    Shapes: ``scores`` [B] -> [B] bool.
    """
    fn = "dynamic_sampling_mask"
    s = v.as_float(fn, "scores", scores, ndim=1, shape_doc="[B]")
    n = v.group_size(fn, group_size, s.shape[0], 1)
    t = v.non_negative(fn, "tol", tol)
    v.finite(fn, "scores", s)
    groups = s.to(v.acc_dtype(s.dtype)).view(-1, n)
    if groups.shape[0] == 0:
        return torch.zeros(s.shape, dtype=torch.bool, device=s.device)
    spread = groups.amax(dim=-1) - groups.amin(dim=-1)
    return (spread > t)[:, None].expand(-1, n).reshape(-1)
