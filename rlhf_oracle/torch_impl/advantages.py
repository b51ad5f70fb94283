"""Advantages: vectorised GAE over masked rows, masked whitening, and GRPO's group-normalised advantages.

GAE algorithm (no Python loop over tokens):

1. *Compact*: a stable argsort of the inverted mask moves the valid positions of each row to the left, in order,
   so holes are skipped (the recursion over valid tokens becomes a recursion over a contiguous prefix). Rewards
   and values at masked positions are replaced by 0 first, so the compacted tail is 0.
2. ``delta_k = r_k + gamma V_{k+1} - V_k`` on the compacted rows; ``V`` past the last valid token is the 0 tail
   (no bootstrap).
3. ``A_k = sum_l g^l delta_{k+l}``, g = gamma * lam: a discounted reverse cumulative sum, computed by blocks of
   :data:`GAE_CHUNK` positions. Within a block, a triangular matrix ``W[i, j] = g^(j - i)`` (j >= i) gives the
   block-local sums with one matmul; the value at the start of each block obeys the same recursion one level up
   with factor ``g^C``, solved by the same routine (so ceil(log_C T) levels, e.g. 2 for T = 8192, C = 128); then
   ``A[c, i] = local[c, i] + g^(C - i) A[c + 1, 0]``. Only powers ``g^k`` with k <= C (times the level stride)
   are formed, never ``g^(-t)``: stable for g = 0, g = 1 and g -> 1.
4. Gather the result back to the original positions; 0 at masked positions.

:func:`_gae_loop` is the plain reverse loop over t (vectorised over the batch), kept as an internal cross-check.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import _validation as v

STD_LEVELS = ("group", "batch")

GAE_CHUNK = 128
"""Block length C of the chunked discounted reverse cumulative sum in :func:`gae`."""


class GAEResult(NamedTuple):
    """Output of :func:`gae`: both [B, T], 0 at masked positions."""

    advantages: torch.Tensor
    returns: torch.Tensor


def _power_matrix(size: int, g: float, stride: int, like: torch.Tensor) -> torch.Tensor:
    """W[i, j] = g^(stride (j - i)) for j >= i, else 0; the powers computed directly by ``pow`` (accurate)."""
    idx = torch.arange(size, device=like.device)
    diff = idx[None, :] - idx[:, None]
    base = torch.tensor(g, dtype=like.dtype, device=like.device)
    powers = torch.pow(base, (diff.clamp(min=0) * stride).to(like.dtype))
    return torch.where(diff >= 0, powers, 0.0)


def _discounted_reverse_cumsum(x: torch.Tensor, g: float, chunk: int, stride: int = 1) -> torch.Tensor:
    """y_k = sum_{l >= 0} G^l x_{k+l} along the last axis, G = g^stride; blockwise with carried block heads."""
    batch, length = x.shape
    if length <= chunk:
        return x @ _power_matrix(length, g, stride, x).T
    n_blocks = -(-length // chunk)
    padded = torch.nn.functional.pad(x, (0, n_blocks * chunk - length))
    local = padded.view(batch, n_blocks, chunk) @ _power_matrix(chunk, g, stride, x).T  # [B, n, C]
    heads = _discounted_reverse_cumsum(local[:, :, 0], g, chunk, stride * chunk)  # A at each block start
    carry = torch.nn.functional.pad(heads[:, 1:], (0, 1))  # A at the start of the next block (0 after the last)
    idx = torch.arange(chunk, device=x.device)
    base = torch.tensor(g, dtype=x.dtype, device=x.device)
    decay = torch.pow(base, ((chunk - idx) * stride).to(x.dtype))  # g^(C - i): from position i to the next block
    out = local + decay * carry[:, :, None]
    return out.reshape(batch, n_blocks * chunk)[:, :length]


def _compaction(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, slot) of steps 1 and 4: ``x.gather(1, order)`` moves each row's valid positions to the left, in
    order (holes skipped); ``compact.gather(1, slot)`` puts each valid position's value back."""
    order = torch.argsort((~m).to(torch.int32), dim=-1, stable=True)  # valid positions first, in order
    slot = (m.to(torch.long).cumsum(dim=-1) - 1).clamp(min=0)  # compacted index of each valid position
    return order, slot


def _gae_inputs(
    fn: str, rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    r = v.as_float(fn, "rewards", rewards, ndim=2, shape_doc="[B, T]")
    val = v.as_float(fn, "values", values)
    v.same_shape(fn, "values", val, "rewards", r)
    m = v.as_mask(fn, mask, like=r, like_name="rewards")
    g = v.unit_interval(fn, "gamma", gamma)
    lm = v.unit_interval(fn, "lam", lam)
    v.finite(fn, "rewards", r, m)
    v.finite(fn, "values", val, m)
    return r, val, m, g, lm


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
    *,
    chunk_size: int = GAE_CHUNK,
) -> GAEResult:
    r"""Generalised advantage estimation over the valid tokens of each row, without a loop over tokens.

    :math:`\delta_t = r_t + \gamma V_{next} - V_t`, :math:`A_t = \delta_t + \gamma\lambda A_{next}`,
    returns = A + V, where *next* is the next **valid** position (holes skipped) and V after the last valid token
    is 0 (no bootstrap). Schulman et al. 2016, eq. 16; see :func:`rlhf_oracle.reference.gae` and the module
    docstring for the blockwise algorithm. ``chunk_size`` (keyword-only, torch twin only) is the block length.

    Shapes: ``rewards``, ``values``, ``mask`` [B, T] -> :class:`GAEResult`, both [B, T], 0 at masked positions.
    bf16/fp16 input is computed in float32 and rounded once.
    """
    fn = "gae"
    r, val, m, g, lm = _gae_inputs(fn, rewards, values, mask, gamma, lam)
    chunk = v.optional_positive_int(fn, "chunk_size", chunk_size) or GAE_CHUNK
    if chunk < 2:
        raise ValueError(f"{fn}: 'chunk_size' must be an int >= 2, got {chunk_size}")
    out_dtype = torch.promote_types(r.dtype, val.dtype)
    acc = v.acc_dtype(out_dtype)
    batch, length = r.shape
    if batch == 0 or length == 0:
        zeros = torch.zeros((batch, length), dtype=out_dtype, device=r.device)
        return GAEResult(zeros, zeros.clone())

    r0 = torch.where(m, r.to(acc), 0.0)
    v0 = torch.where(m, val.to(acc), 0.0)
    order, slot = _compaction(m)
    rc = r0.gather(1, order)
    vc = v0.gather(1, order)
    v_next = torch.nn.functional.pad(vc[:, 1:], (0, 1))  # 0 after the last valid token (the tail is 0)
    delta = rc + g * v_next - vc
    adv_compact = _discounted_reverse_cumsum(delta, g * lm, chunk)
    adv = torch.where(m, adv_compact.gather(1, slot), 0.0)
    ret = torch.where(m, adv + v0, 0.0)
    return GAEResult(adv.to(out_dtype), ret.to(out_dtype))


def _gae_loop(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> GAEResult:
    """Cross-check of :func:`gae`: the reverse recursion over t, carrying V_next and A_next across holes."""
    r, val, m, g, lm = _gae_inputs("gae", rewards, values, mask, gamma, lam)
    out_dtype = torch.promote_types(r.dtype, val.dtype)
    acc = v.acc_dtype(out_dtype)
    r0 = torch.where(m, r.to(acc), 0.0)
    v0 = torch.where(m, val.to(acc), 0.0)
    batch, length = r.shape
    next_value = r0.new_zeros(batch)
    next_adv = r0.new_zeros(batch)
    columns: list[torch.Tensor] = [r0.new_zeros(batch)] * length
    for t in reversed(range(length)):
        valid = m[:, t]
        delta = r0[:, t] + g * next_value - v0[:, t]
        a = delta + g * lm * next_adv
        columns[t] = torch.where(valid, a, 0.0)
        next_value = torch.where(valid, v0[:, t], next_value)
        next_adv = torch.where(valid, a, next_adv)
    adv = torch.stack(columns, dim=1) if length else r0.new_zeros((batch, 0))
    ret = torch.where(m, adv + v0, 0.0)
    return GAEResult(adv.to(out_dtype), ret.to(out_dtype))


def whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, unbiased: bool = True, *, eps: float = 1e-8
) -> torch.Tensor:
    r"""Masked standardisation over all valid positions of the batch: :math:`(x - \mu)/\sqrt{\sigma^2 + \varepsilon}`.

    :math:`\sigma^2` Bessel-corrected if ``unbiased`` (TRL/verl) else population (lm-human-preferences/OpenRLHF);
    ``shift_mean=False`` adds :math:`\mu` back (TRL/OpenAI, not x/sigma). 0 at masked positions. Statistics in
    float32 for bf16/fp16. See :func:`rlhf_oracle.reference.whiten`.

    Shapes: ``x``, ``mask`` [B, T] -> [B, T].
    """
    fn = "whiten"
    shift_mean = v.flag(fn, "shift_mean", shift_mean)
    unbiased = v.flag(fn, "unbiased", unbiased)
    xs = v.as_float(fn, "x", x, ndim=2, shape_doc="[B, T]")
    m = v.as_mask(fn, mask, like=xs, like_name="x")
    e = v.non_negative(fn, "eps", eps)
    v.finite(fn, "x", xs, m)
    v.not_empty(fn, m)
    acc = v.acc_dtype(xs.dtype)
    n_tokens = m.sum()
    if unbiased and v.value_checks_enabled():
        n = int(n_tokens)
        if n < 2:
            raise ValueError(f"{fn}: 'mask' has {n} valid token; unbiased variance needs at least 2")
    n_acc = n_tokens.to(acc)
    x0 = torch.where(m, xs.to(acc), 0.0)
    mean = x0.sum() / n_acc
    centred = torch.where(m, x0 - mean, 0.0)
    var = centred.square().sum() / (n_acc - 1 if unbiased else n_acc)
    if (
        e == 0
        and v.value_checks_enabled()
        and bool(torch.where(m, x0, -math.inf).amax() == torch.where(m, x0, math.inf).amin())
    ):
        raise ValueError(f"{fn}: the valid values of 'x' are identical and eps=0; pass 'eps' > 0")
    whitened = centred / torch.sqrt(var + e)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(m, whitened, 0.0).to(xs.dtype)


def grpo_advantages(
    scores: torch.Tensor,
    group_size: int,
    std_normalize: bool = True,
    *,
    mask: torch.Tensor | None = None,
    eps: float = 1e-6,
    unbiased: bool = True,
    std_level: str = "group",
) -> torch.Tensor:
    r"""GRPO outcome advantages :math:`(s_i - \mathrm{mean}_g)/(\mathrm{std}_g + \varepsilon)` per group of rows.

    Groups are consecutive blocks of ``group_size`` rows (a ``view(n_groups, group_size)``); ``std_normalize=False``
    gives ``s - mean_g`` (Dr. GRPO); std Bessel-corrected if ``unbiased``. With ``mask`` [B, T] the row value is
    broadcast over valid tokens, 0 elsewhere. ``std_level="batch"`` divides by the std of the raw scores over the
    whole batch (TRL ``scale_rewards="batch"``). DeepSeekMath §4.1.2; see :func:`rlhf_oracle.reference.grpo_advantages`.

    Shapes: ``scores`` [B] -> [B], or [B, T] with ``mask``.
    """
    fn = "grpo_advantages"
    std_normalize = v.flag(fn, "std_normalize", std_normalize)
    unbiased = v.flag(fn, "unbiased", unbiased)
    s = v.as_float(fn, "scores", scores, ndim=1, shape_doc="[B]")
    size = v.group_size(fn, group_size, s.shape[0], 2)
    e = v.non_negative(fn, "eps", eps)
    std_level = v.choice(fn, "std_level", std_level, STD_LEVELS)
    v.finite(fn, "scores", s)

    acc = v.acc_dtype(s.dtype)
    groups = s.to(acc).view(-1, size)
    centred = groups - groups.mean(dim=-1, keepdim=True)
    if std_normalize:
        if std_level == "group":
            std = torch.sqrt(centred.square().sum(dim=-1, keepdim=True) / (size - 1 if unbiased else size))
        else:
            flat = groups.reshape(-1)
            n = flat.shape[0]
            std = torch.sqrt((flat - flat.mean()).square().sum() / (n - 1 if unbiased else n)).expand(
                groups.shape[0], 1
            )
        denom = std + e
        if v.value_checks_enabled() and groups.shape[0]:
            zero = denom.squeeze(-1) == 0
            if bool(zero.any()):
                k = int(torch.nonzero(zero)[0, 0])
                where = f"group {k} has" if std_level == "group" else "the batch has"
                raise ValueError(f"{fn}: {where} identical scores and eps=0; pass 'eps' > 0")
        centred = centred / denom
    adv = centred.reshape(-1)
    if mask is None:
        return adv.to(s.dtype)
    m = v.as_mask(fn, mask)
    if m.shape[0] != s.shape[0]:
        raise ValueError(f"{fn}: 'mask' has shape {v.shape_str(m.shape)}, expected ({s.shape[0]}, T) to match 'scores'")
    return torch.where(m, adv[:, None], 0.0).to(s.dtype)
