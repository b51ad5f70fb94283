"""Per-token log-probabilities and entropies from logits, chunked so that no full-size temporary exists.

Both functions reduce over the vocabulary of a ``[..., T, V]`` logits tensor. They never build a second tensor of
that size: the work is done in slices of ``chunk`` positions along the second-to-last axis, each upcast to the
accumulation dtype (float32 for bf16/fp16 input, the input dtype otherwise), and reduced at once. Autograd goes
through a custom :class:`torch.autograd.Function` whose backward recomputes the softmax chunk by chunk and writes
into one preallocated gradient (the gradient itself, in the input dtype, is the only ``[..., T, V]`` tensor
created). With the default chunking a temporary holds about :data:`CHUNK_ELEMENTS` elements.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from . import _validation as v

CHUNK_ELEMENTS = 1 << 22
"""Default size of one float32 temporary (4M elements = 16 MiB): the chunk length is this over the row size."""


def _chunk_length(logits: torch.Tensor, chunk_size: int | None) -> int:
    """Number of positions (along dim -2) per chunk."""
    if chunk_size is not None:
        return chunk_size
    if logits.ndim < 2 or logits.shape[-2] == 0:
        return 1
    per_position = max(1, logits.numel() // logits.shape[-2])
    return max(1, CHUNK_ELEMENTS // per_position)


def _scaled(chunk: torch.Tensor, tau: float) -> torch.Tensor:
    """z = logits / tau in the accumulation dtype (one chunk-sized temporary)."""
    z = chunk.to(v.acc_dtype(chunk.dtype))
    return z / tau if tau != 1.0 else z


def _ranges(length: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk, length)) for s in range(0, length, chunk)]


class _TokenLogprobs(torch.autograd.Function):
    """out[b, t] = z[b, t, o] - logsumexp_v z[b, t, v],  z = logits / tau; grad = g (onehot(o) - softmax(z)) / tau."""

    @staticmethod
    def forward(ctx: FunctionCtx, logits: torch.Tensor, tokens: torch.Tensor, tau: float, chunk: int) -> torch.Tensor:
        outs: list[torch.Tensor] = []
        lses: list[torch.Tensor] = []
        for s, e in _ranges(logits.shape[1], chunk):
            z = _scaled(logits[:, s:e], tau)
            lse = torch.logsumexp(z, dim=-1)
            picked = z.gather(-1, tokens[:, s:e, None]).squeeze(-1)
            outs.append(picked - lse)
            lses.append(lse)
        acc = v.acc_dtype(logits.dtype)
        out = torch.cat(outs, dim=1) if outs else logits.new_zeros(logits.shape[:2], dtype=acc)
        lse_all = torch.cat(lses, dim=1) if lses else logits.new_zeros(logits.shape[:2], dtype=acc)
        ctx.save_for_backward(logits, tokens, lse_all)
        ctx.tau = tau  # type: ignore[attr-defined]
        ctx.chunk = chunk  # type: ignore[attr-defined]
        return out.to(logits.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        logits, tokens, lse = ctx.saved_tensors
        tau: float = ctx.tau
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        g_all = grad_out.to(lse.dtype)
        for s, e in _ranges(logits.shape[1], ctx.chunk):
            z = _scaled(logits[:, s:e], tau)
            g = g_all[:, s:e, None]
            gz = torch.exp(z - lse[:, s:e, None]).mul_(-g)
            gz.scatter_add_(-1, tokens[:, s:e, None], g)
            if tau != 1.0:
                gz.div_(tau)
            grad[:, s:e].copy_(gz)
        return grad, None, None, None


class _Entropy(torch.autograd.Function):
    """H = -sum_v p_v log p_v with log p = z - logsumexp(z); dH/dz_k = -p_k (log p_k + H), z = logits / tau."""

    @staticmethod
    def forward(ctx: FunctionCtx, logits: torch.Tensor, tau: float, chunk: int) -> torch.Tensor:
        dim = logits.ndim - 2
        hs: list[torch.Tensor] = []
        lses: list[torch.Tensor] = []
        for s, e in _ranges(logits.shape[dim], chunk):
            z = _scaled(logits.narrow(dim, s, e - s), tau)
            lse = torch.logsumexp(z, dim=-1, keepdim=True)
            log_p = z - lse  # not in place: z may be a view of the caller's logits
            p = torch.exp(log_p)
            plogp = torch.where(p > 0, p * log_p, 0.0)
            hs.append(-plogp.sum(dim=-1))
            lses.append(lse.squeeze(-1))
        acc = v.acc_dtype(logits.dtype)
        entropy = torch.cat(hs, dim=dim) if hs else logits.new_zeros(logits.shape[:-1], dtype=acc)
        lse_all = torch.cat(lses, dim=dim) if lses else logits.new_zeros(logits.shape[:-1], dtype=acc)
        ctx.save_for_backward(logits, lse_all, entropy)
        ctx.tau = tau  # type: ignore[attr-defined]
        ctx.chunk = chunk  # type: ignore[attr-defined]
        return entropy.to(logits.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        logits, lse, entropy = ctx.saved_tensors
        tau: float = ctx.tau
        dim = logits.ndim - 2
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        g_all = grad_out.to(lse.dtype)
        for s, e in _ranges(logits.shape[dim], ctx.chunk):
            z = _scaled(logits.narrow(dim, s, e - s), tau)
            log_p = z - lse.narrow(dim, s, e - s).unsqueeze(-1)
            p = torch.exp(log_p)
            h = entropy.narrow(dim, s, e - s).unsqueeze(-1)
            g = g_all.narrow(dim, s, e - s).unsqueeze(-1)
            gz = torch.where(p > 0, -p * (log_p + h), 0.0).mul_(g)
            if tau != 1.0:
                gz.div_(tau)
            grad.narrow(dim, s, e - s).copy_(gz)
        return grad, None, None


def _apply(function: type[torch.autograd.Function], *args: Any) -> torch.Tensor:
    """``function.apply(*args)`` with a typed result (``Function.apply`` is untyped in torch's stubs)."""
    apply = cast(Callable[..., torch.Tensor], function.apply)
    return apply(*args)


def _check_chunk_size(fn: str, chunk_size: int | None) -> int | None:
    return v.optional_positive_int(fn, "chunk_size", chunk_size)


def _check_finite_logits(fn: str, logits: torch.Tensor) -> None:
    """NaN/inf anywhere in the logits, found through two reductions (amax/amin propagate NaN): no [..., V] mask."""
    if v.value_checks_enabled() and logits.numel():
        if not bool(torch.isfinite(logits.amax(dim=-1)).all() & torch.isfinite(logits.amin(dim=-1)).all()):
            raise ValueError(f"{fn}: 'logits' contains NaN or inf")


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float = 1.0, chunk_size: int | None = None
) -> torch.Tensor:
    r"""Log-probability of each chosen token: :math:`z_{t,o_t}/\tau - \log\sum_v e^{z_{t,v}/\tau}`.

    Computed as gather minus logsumexp, in float32 for bf16/fp16 input and rounded once to the input dtype, in
    chunks of ``chunk_size`` positions along T (default: about :data:`CHUNK_ELEMENTS` elements per chunk).
    See :func:`rlhf_oracle.reference.token_logprobs` for the derivation and conventions (the caller shifts:
    ``logits[b, t]`` predicts ``tokens[b, t]``).

    Shapes: ``logits`` [B, T, V], ``tokens`` [B, T] integer -> [B, T] in the dtype of ``logits``.
    ``chunk_size`` (keyword-only, torch twin only) trades speed for temporary memory; the result is the same.
    """
    fn = "token_logprobs"
    z = v.as_float(fn, "logits", logits, ndim=3, shape_doc="[B, T, V]")
    o = v.as_int(fn, "tokens", tokens, ndim=2, shape_doc="[B, T]")
    if o.shape != z.shape[:2]:
        raise ValueError(
            f"{fn}: 'tokens' has shape {v.shape_str(o.shape)}, expected {v.shape_str(z.shape[:2])} to match 'logits'"
        )
    tau = v.positive(fn, "temperature", temperature)
    chunk = _chunk_length(z, _check_chunk_size(fn, chunk_size))
    vocab = z.shape[-1]
    if v.value_checks_enabled() and o.numel():
        lo, hi = int(o.min()), int(o.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(f"{fn}: 'tokens' must be in [0, {vocab}), got values in [{lo}, {hi}]")
    _check_finite_logits(fn, z)
    out = _apply(_TokenLogprobs, z, o.to(torch.int64), tau, chunk)
    return out


def entropy_from_logits(
    logits: torch.Tensor, *, temperature: float = 1.0, chunk_size: int | None = None
) -> torch.Tensor:
    r"""Entropy of the next-token distribution: :math:`H = -\sum_v p_v \log p_v`, :math:`p = \mathrm{softmax}(z/\tau)`.

    Equal to ``logsumexp(z) - sum softmax(z) z`` (the form of the contract); computed as
    :math:`-\sum_v p_v (z_v - \mathrm{lse})`, a sum of non-negative terms (no cancellation when H is small).
    float32 for bf16/fp16 input, chunked along the second-to-last axis like :func:`token_logprobs`.
    See :func:`rlhf_oracle.reference.entropy_from_logits`.

    Shapes: ``logits`` [..., V] -> [...] in the dtype of ``logits``.
    """
    fn = "entropy_from_logits"
    z = v.as_float(fn, "logits", logits)
    if z.ndim < 1 or z.shape[-1] < 1:
        raise ValueError(f"{fn}: 'logits' must have shape [..., V] with V >= 1, got {v.shape_str(z.shape)}")
    tau = v.positive(fn, "temperature", temperature)
    chunk_arg = _check_chunk_size(fn, chunk_size)
    _check_finite_logits(fn, z)
    z2 = z.unsqueeze(0) if z.ndim == 1 else z
    out = _apply(_Entropy, z2, tau, _chunk_length(z2, chunk_arg))
    return out.squeeze(0) if z.ndim == 1 else out
