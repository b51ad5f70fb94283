"""Per-token log-probabilities and entropies from logits in one fused, chunked pass over the vocabulary.

The logits ``[..., V]`` are walked as rows of ``V`` values, ``chunk`` rows at a time (a chunk small enough to stay
in cache: :data:`CHUNK_ELEMENTS` elements by default). Each chunk is upcast to the accumulation dtype (float32
for bf16/fp16 input, the input dtype otherwise), divided by the temperature, turned into log-probabilities once,
and reduced at once: the chosen token's log-probability is a gather, the entropy a dot product of the
probabilities with the log-probabilities. No second tensor of the logits' size is built in the forward pass.

Log-probabilities of large bf16/fp16 logits on CPU (at least :data:`COMPILED_MIN_ELEMENTS`, no explicit
``chunk_size``) take kernels compiled by Inductor on first use (:mod:`._compiled`): :func:`_logsumexp_rows` reads
each row of half logits once into registers and keeps four floats (log-probability, finiteness probe, maximum,
log-sum-exp), so nothing of the logits' size is written; with autograd, :func:`_logprob_grad_rows` writes the
gradient in one fused read-and-write (:class:`_CompiledLogprobs`). Without autograd and outside their reach (small
inputs, accelerators, compilation off or unavailable), half log-probabilities take :func:`_forward_only_half`:
PyTorch's fused ``log_softmax`` in place on a float32 chunk, then a gather (the rollout, reference and old-policy
passes). All compute in float32 and round once. The entropy and the fused pair use the chunked kernel below.

Autograd goes through one custom :class:`torch.autograd.Function` for both outputs. Its backward recomputes the
chunk's log-softmax and writes

.. math:: \\partial L/\\partial z_k = g_{lp}\\,[k = o] - p_k\\,\\big(g_{lp} + g_H (\\log p_k + H)\\big)

straight into one preallocated gradient (float32 logits) or through one chunk-sized buffer (bf16/fp16 logits):
the gradient, in the input dtype, is the only full-size tensor created. What is saved for the backward pass is
the logits (already held by the caller), the tokens and the entropies.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from . import _validation as v
from ._compiled import CompiledKernel

CHUNK_ELEMENTS = 1 << 19
"""Default elements per chunk on CPU (512K: 2 MiB of float32, so that every step after the first reads its chunk
from cache, and the per-operation overhead is spread over enough rows); the chunk length in rows is this over
the vocabulary size, at least one row (16 rows at V = 32000, 4 at V = 128256). Measured best of 128K-1M elements
by ``benchmarks/bench_logprobs.py``-style sweeps. Under ``torch.compile`` the default is one chunk."""

FORWARD_ONLY_CHUNK_ELEMENTS = 1 << 20
"""Default elements per chunk of the forward-only bf16/fp16 log-probabilities on CPU (1M: 4 MiB of float32; its
chunk is read by one fused kernel, so fewer, larger chunks spend less on per-operation overhead: measured best of
256K-4M elements at V = 32000)."""

COMPILED_MIN_ELEMENTS = 1 << 21
"""Smallest forward-only bf16/fp16 input (elements of the logits) that takes the compiled kernel on CPU (2M: e.g.
[1, 64, 32000]); below it the eager chunked path is fast enough that a compilation would not pay for itself, and
the property tests' small inputs never trigger one."""

DEVICE_CHUNK_ELEMENTS = 1 << 24
"""Default elements per chunk on an accelerator (16M: 64 MiB of float32), where each step is a kernel launch and
the chunk only bounds the temporary memory."""


def _chunk_length(logits: torch.Tensor, chunk_size: int | None, cpu_elements: int = CHUNK_ELEMENTS) -> int:
    """Rows (positions of the flattened leading axes) per chunk."""
    if chunk_size is not None:
        return chunk_size
    rows = max(1, logits.numel() // max(1, logits.shape[-1]))
    if torch.compiler.is_compiling():
        return rows  # one chunk: the traced graph stays small and the compiler fuses the pass itself
    budget = cpu_elements if logits.device.type in ("cpu", "meta") else DEVICE_CHUNK_ELEMENTS
    return max(1, budget // max(1, logits.shape[-1]))


def _rows_viewable(x: torch.Tensor) -> bool:
    """Whether ``x`` [..., V] is viewable as [rows, V] without a copy (its row axes form one stride run)."""
    run = None
    for dim in range(x.ndim - 2, -1, -1):
        if x.shape[dim] == 1:
            continue
        if run is not None and x.stride(dim) != run:
            return False
        run = x.stride(dim) * x.shape[dim]
    return True


def _row_blocks(x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, [rows, V] view) blocks covering ``x`` [..., V] in row-major order, never copying ``x``.

    One block when the row axes are viewable as one (the usual contiguous logits); otherwise one block per index
    of the axes before the second-to-last (e.g. ``logits[:, :-1]`` of a [B, T+1, V] tensor: B blocks).
    """
    if _rows_viewable(x):
        yield 0, x.reshape(-1, x.shape[-1])
        return
    first = 0
    for block in _leading_slices(x):
        yield first, block
        first += block.shape[0]


def _leading_slices(x: torch.Tensor) -> Iterator[torch.Tensor]:
    if x.ndim == 2:
        yield x
        return
    for i in range(x.shape[0]):
        yield from _leading_slices(x[i])


def _chunks(x: torch.Tensor, rows: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(first row, end row, [r, V] view) chunks of at most ``rows`` rows covering ``x`` [..., V]."""
    for first, block in _row_blocks(x):
        for s in range(0, block.shape[0], rows):
            chunk = block[s : s + rows]
            yield first + s, first + s + chunk.shape[0], chunk


class _Workspace:
    """Chunk buffers allocated once per call and reused by every chunk (a fresh allocation per chunk costs more
    than the arithmetic on CPU: freed chunk-sized blocks go back to the OS and come back as zeroed pages)."""

    def __init__(self, like: torch.Tensor, rows: int, acc: torch.dtype, count: int) -> None:
        vocab = like.shape[-1]
        rows = min(rows, max(1, like.numel() // max(1, vocab)))
        self.buffers = [like.new_empty((rows, vocab), dtype=acc) for _ in range(count)]

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        i, r = key
        return self.buffers[i][:r]


def _shifted(chunk: torch.Tensor, out: torch.Tensor, tau: float, m: torch.Tensor | None = None) -> torch.Tensor:
    """out <- (chunk - m) / tau in the accumulation dtype, ``m`` [r, 1] the row maxima of the chunk (computed when
    not given: the forward pass; the backward pass gives the saved ones, so it recomputes exactly the same t).
    Returns ``m``.

    All entries of ``out`` are <= 0 and the largest of each row is exactly 0, so exp(out) neither overflows nor
    underflows all at once: this is the stabilised form of the softmax.
    """
    if chunk.dtype == out.dtype:
        if m is None:
            m = chunk.amax(dim=-1, keepdim=True)
        torch.sub(chunk, m, out=out)
    else:  # bf16/fp16: upcast once (reductions in the half types are slow on CPU), then work in place
        out.copy_(chunk)
        if m is None:
            m = out.amax(dim=-1, keepdim=True)
        out.sub_(m)
    if tau != 1.0:
        out.div_(tau)
    return m


class _LogprobsEntropy(torch.autograd.Function):
    r"""lp = log softmax(z)[o] and/or H = -sum_v p_v log p_v (z = logits / tau), one exponential per logit.

    With t = z - max z (per row), e = exp(t), S = sum e:  log p = t - log S,  lp = t_o - log S, and
    H = log S + (sum_v e_v (-t_v)) / S, a sum of non-negative terms (no cancellation when H is small).
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, logits: torch.Tensor, tokens: torch.Tensor | None, tau: float, rows: int, want_h: bool,
        check: str | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """``check``: the public function's name, to refuse NaN/inf logits in its name (None: no value check)."""
        acc = v.acc_dtype(logits.dtype)
        lead = logits.shape[:-1]
        n = lead.numel()
        flat_tokens = tokens.reshape(n, 1) if tokens is not None else None
        lp = logits.new_empty(n if tokens is not None else 0, dtype=acc)
        h = logits.new_empty(n if want_h else 0, dtype=acc)
        shift = logits.new_empty(n, dtype=acc)  # max of the logits per row (before the 1/tau)
        log_s = logits.new_empty(n, dtype=acc)  # log sum exp(z - max z) per row
        finite = logits.new_empty(n if check and not want_h else 0, dtype=acc)  # sum of t: -inf at a -inf logit
        work = _Workspace(logits, rows, acc, 2 if want_h else 1)
        for s, e, chunk in _chunks(logits, rows):
            t = work[0, e - s]
            shift[s:e] = _shifted(chunk, t, tau).squeeze(-1)
            if flat_tokens is not None:
                torch.gather(t, 1, flat_tokens[s:e], out=lp[s:e, None])
            if want_h:
                ex = torch.exp(t, out=work[1, e - s])
                sums = ex.sum(dim=-1)
                torch.log(sums, out=log_s[s:e])
                # sum_v e_v t_v, in place in the exponentials (torch.linalg.vecdot allocates a chunk on CPU)
                h[s:e] = ex.mul_(t).sum(dim=-1).div_(sums).neg_().add_(log_s[s:e])
            else:
                if check:
                    torch.sum(t, dim=-1, out=finite[s:e])
                torch.log(t.exp_().sum(dim=-1), out=log_s[s:e])
        if check:
            bad = ~torch.isfinite(shift + log_s) | ~torch.isfinite(h if want_h else finite)
            if bool(bad.any()):
                raise ValueError(f"{check}: 'logits' contains NaN or inf")
        if flat_tokens is not None:
            lp.sub_(log_s)
        ctx.save_for_backward(logits, flat_tokens, h, shift, log_s)  # type: ignore[arg-type]  # None allowed
        ctx.tau, ctx.rows = tau, rows  # type: ignore[attr-defined]
        ctx.set_materialize_grads(False)
        lp_out = lp.view(lead) if tokens is not None else logits.new_zeros(lead, dtype=acc)
        h_out = h.view(lead) if want_h else logits.new_zeros(lead, dtype=acc)
        return lp_out.to(logits.dtype), h_out.to(logits.dtype)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_lp: torch.Tensor | None, grad_h: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, None, None, None, None, None]:
        none = (None, None, None, None, None)  # tokens, tau, rows, want_h, check
        logits, tokens, h, shift, log_s = ctx.saved_tensors
        if not ctx.needs_input_grad[0] or (grad_lp is None and grad_h is None):
            return None, *none
        g_lp = grad_lp if tokens is not None else None
        g_h = grad_h if h.numel() else None
        return _eager_logits_grad(logits, tokens, g_lp, g_h, h, shift, log_s, ctx.tau, ctx.rows), *none


def _eager_logits_grad(
    logits: torch.Tensor, tokens: torch.Tensor | None, grad_lp: torch.Tensor | None, grad_h: torch.Tensor | None,
    h: torch.Tensor, shift: torch.Tensor, log_s: torch.Tensor, tau: float, rows: int,
) -> torch.Tensor:  # fmt: skip
    """The gradient of the logits, chunk by chunk: the chunk's log-softmax recomputed from the saved row maxima
    ``shift`` and log-sum-exps ``log_s`` (both [rows]), then g_lp onehot(o) - p (g_lp + g_H (log p + H)), divided
    by tau, written into one preallocated gradient (float32 logits) or through one chunk buffer (bf16/fp16)."""
    acc = v.acc_dtype(logits.dtype)
    n = shift.numel()
    g_lp = grad_lp.reshape(n, 1).to(acc) if grad_lp is not None else None
    g_h = grad_h.reshape(n, 1).to(acc) if grad_h is not None else None
    h, log_s = h.view(-1, 1), log_s.view(-1, 1)
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
    grad_rows = grad.view(-1, logits.shape[-1])
    direct = grad.dtype == acc  # float32/float64 logits: each chunk's gradient is computed in place
    work = _Workspace(logits, rows, acc, 1 if direct else 2)
    for s, e, chunk in _chunks(logits, rows):
        dst = grad_rows[s:e]
        log_p = work[0, e - s]
        _shifted(chunk, log_p, tau, shift[s:e, None])
        log_p.sub_(log_s[s:e])
        gz = torch.exp(log_p, out=dst if direct else work[1, e - s])  # p
        if g_h is None:  # log-probs only: g_lp (onehot(o) - p)
            assert g_lp is not None and tokens is not None
            gz.mul_(-g_lp[s:e])
        else:  # g_lp onehot(o) - p (g_lp + g_H (log p + H))
            coef = log_p.add_(h[s:e]).mul_(-g_h[s:e])
            if g_lp is not None:
                coef.sub_(g_lp[s:e])
            gz.mul_(coef)
        if g_lp is not None:
            assert tokens is not None
            gz.scatter_add_(1, tokens[s:e], g_lp[s:e])
        if tau != 1.0:
            gz.div_(tau)
        if not direct:
            dst.copy_(gz)
    return grad


HALF_DTYPES = (torch.bfloat16, torch.float16)


def _forward_only_half(
    logits: torch.Tensor, tokens: torch.Tensor, tau: float, rows: int, check: str | None
) -> torch.Tensor:
    """Log-probabilities of half-precision logits when no gradient is needed (the rollout, the reference model and
    the old policy: at least two calls per RLHF step).

    Each chunk is upcast once into one float32 buffer, turned into log-probabilities in place by PyTorch's fused
    ``log_softmax`` (one kernel: max, sum of exponentials, write), and the chosen tokens are gathered; the float32
    result is rounded once to the input dtype, like the autograd path. The value check adds the row sums of the
    log-probabilities: NaN or +inf anywhere in a row makes the whole row NaN, -inf anywhere makes its sum -inf.
    Extra memory: one chunk buffer and O(B*T) floats.
    """
    lead = logits.shape[:-1]
    n = lead.numel()
    flat_tokens = tokens.reshape(n, 1)
    lp = logits.new_empty(n, dtype=torch.float32)
    sums = logits.new_empty(n if check else 0, dtype=torch.float32)
    work = _Workspace(logits, rows, torch.float32, 1)
    for s, e, chunk in _chunks(logits, rows):
        t = work[0, e - s]
        t.copy_(chunk)
        if tau != 1.0:
            t.div_(tau)
        torch.log_softmax(t, dim=-1, out=t)
        torch.gather(t, 1, flat_tokens[s:e], out=lp[s:e, None])
        if check:
            torch.sum(t, dim=-1, out=sums[s:e])
    if check and not bool(torch.isfinite(sums).all()):
        raise ValueError(f"{check}: 'logits' contains NaN or inf")
    return lp.view(lead).to(logits.dtype)


def _logsumexp_rows(
    z: torch.Tensor, tokens: torch.Tensor, tau: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The compiled kernel of half log-probabilities: ``z`` [rows, V] bf16/fp16, ``tokens`` [rows] int64, ``tau``
    the temperature and ``scale`` :math:`\log_2(e)/\tau`, both 0-d float32 tensors (tensors, so that a new
    temperature is not a new compilation).

    Returns (log-probabilities, probe, m, log s), each [rows] float32. With :math:`m = \max_v z_v` (the half values
    are exact in float32) and :math:`s = \sum_v 2^{(z_v - m)\,\log_2(e)/\tau} = \sum_v e^{(z_v - m)/\tau}`, the
    log-probability is :math:`(z_o - m)/\tau - \log s`; the probe :math:`\min_v z_v + s` is finite exactly when the
    row is (NaN anywhere or +inf make ``s`` NaN, -inf makes the minimum -inf); m and log s are what the backward
    pass needs (the eager path's ``shift`` and ``log_s``). ``exp2`` of a scaled difference is the same number as
    ``exp`` up to one float32 rounding of the exponent, and about 10 % cheaper on CPU. Inductor fuses it into one
    kernel: per row a max/min loop and a sum loop, reading the half values straight into registers; nothing of the
    logits' size is written.
    """
    x = z.float()
    m = x.amax(dim=-1, keepdim=True)
    s = torch.exp2((x - m) * scale).sum(dim=-1)
    log_s = s.log()
    lp = (x.gather(-1, tokens[:, None]).squeeze(-1) - m.squeeze(-1)) / tau - log_s
    return lp, x.amin(dim=-1) + s, m.squeeze(-1), log_s


def _logprob_grad_rows(
    z: torch.Tensor, tokens: torch.Tensor, g: torch.Tensor, m: torch.Tensor, log_s: torch.Tensor,
    tau: torch.Tensor, scale: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    r"""The compiled backward of :func:`_logsumexp_rows`: :math:`\partial L/\partial z_v = g\,([v = o] - p_v)/\tau`
    with :math:`p_v = 2^{(z_v - m)\log_2(e)/\tau - \log_2(e)\log s}` (``g``, ``m``, ``log_s`` [rows] float32),
    rounded once to the dtype of ``z``: one read of the logits and one write of the gradient, fused."""
    x = z.float()
    p = torch.exp2((x - m[:, None]) * scale - log_s[:, None] * _LOG2E)
    hit = torch.arange(z.shape[-1], device=z.device)[None, :] == tokens[:, None]
    return ((hit.float() - p) * (g / tau)[:, None]).to(z.dtype)


_LOG2E = 1.0 / math.log(2.0)
_COMPILED_LOGSUMEXP = CompiledKernel(_logsumexp_rows)
_COMPILED_LOGPROB_GRAD = CompiledKernel(_logprob_grad_rows)


def _temperature_tensors(tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(tau, dtype=torch.float32), torch.tensor(_LOG2E / tau, dtype=torch.float32)


def _compiled_blocks(logits: torch.Tensor) -> list[tuple[int, torch.Tensor]] | None:
    """The [rows, V] blocks the compiled kernels read, or None where they do not apply (not CPU, below
    :data:`COMPILED_MIN_ELEMENTS`, a block of fewer than two rows or not contiguous)."""
    if logits.device.type != "cpu" or logits.numel() < COMPILED_MIN_ELEMENTS or logits.shape[-1] < 2:
        return None
    blocks = list(_row_blocks(logits))
    if any(block.shape[0] < 2 or not block.is_contiguous() for _, block in blocks):
        return None  # size 1 would be a second compilation (dynamic shapes specialise 0 and 1)
    return blocks


def _compiled_logsumexp(
    logits: torch.Tensor, tokens: torch.Tensor, tau: float, check: str | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(log-probabilities, m, log s), each [B*T] float32, through the compiled kernel; None when it does not apply
    or compilation is off or failed (the caller's eager path then). Refuses NaN/inf logits when ``check``."""
    blocks = _compiled_blocks(logits)
    if blocks is None:
        return None
    flat_tokens = tokens.reshape(-1)
    if not v.value_checks_enabled() and not 0 <= int(flat_tokens.min()) <= int(flat_tokens.max()) < logits.shape[-1]:
        return None  # a token out of range would abort the process in the kernel's bounds check: eager raises instead
    tau_t, scale = _temperature_tensors(tau)
    parts = []
    for first, block in blocks:
        out = _COMPILED_LOGSUMEXP(block, flat_tokens[first : first + block.shape[0]], tau_t, scale)
        if out is None:
            return None
        parts.append(out)
    if check and not all(bool(torch.isfinite(probe).all()) for _, probe, _, _ in parts):
        raise ValueError(f"{check}: 'logits' contains NaN or inf")
    if len(parts) == 1:
        return parts[0][0], parts[0][2], parts[0][3]
    lp, _, m, log_s = (torch.cat(column) for column in zip(*parts, strict=True))
    return lp, m, log_s


class _CompiledLogprobs(torch.autograd.Function):
    """Half log-probabilities with autograd, the forward computed beforehand by the compiled kernel (``lp``, ``m``,
    ``log_s`` [B*T] float32, not differentiated): the backward is :func:`_logprob_grad_rows` compiled, or the eager
    chunked gradient where it does not apply (logits not one contiguous block) or compilation failed."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, logits: torch.Tensor, tokens: torch.Tensor, lp: torch.Tensor, m: torch.Tensor,
        log_s: torch.Tensor, tau: float, rows: int,
    ) -> torch.Tensor:  # fmt: skip
        ctx.save_for_backward(logits, tokens, m, log_s)
        ctx.tau, ctx.rows = tau, rows  # type: ignore[attr-defined]
        ctx.set_materialize_grads(False)
        return lp.view(logits.shape[:-1]).to(logits.dtype)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_lp: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, None, None, None, None, None, None]:
        none = (None, None, None, None, None, None)
        logits, tokens, m, log_s = ctx.saved_tensors
        if not ctx.needs_input_grad[0] or grad_lp is None:
            return None, *none
        n = m.numel()
        g = grad_lp.reshape(n).to(torch.float32).contiguous()
        flat_tokens = tokens.reshape(n)
        if logits.is_contiguous():
            grad = _COMPILED_LOGPROB_GRAD(logits.view(n, -1), flat_tokens, g, m, log_s, *_temperature_tensors(ctx.tau))
            if grad is not None:
                return grad.view(logits.shape), *none
        empty = m.new_empty(0)
        return _eager_logits_grad(logits, flat_tokens[:, None], g, None, empty, m, log_s, ctx.tau, ctx.rows), *none


def _takes_forward_only_path(logits: torch.Tensor) -> bool:
    """Half-precision logits whose log-probabilities need no gradient (and no torch.compile trace)."""
    needs_grad = torch.is_grad_enabled() and logits.requires_grad
    return not needs_grad and logits.dtype in HALF_DTYPES and not torch.compiler.is_compiling()


def _check_name(fn: str, logits: torch.Tensor) -> str | None:
    """The public name the kernels refuse NaN/inf logits in (None: no value check)."""
    return fn if v.value_checks_enabled() and logits.numel() > 0 else None


def _fused(
    fn: str, logits: torch.Tensor, tokens: torch.Tensor | None, tau: float, rows: int, want_h: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    apply = cast(Any, _LogprobsEntropy.apply)  # Function.apply is untyped in torch's stubs
    lp, h = apply(logits, tokens, tau, rows, want_h, _check_name(fn, logits))
    return lp, h


def _check_logits_tokens(
    fn: str, logits: torch.Tensor, tokens: torch.Tensor, temperature: float, chunk_size: int | None
) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    z = v.as_float(fn, "logits", logits, ndim=3, shape_doc="[B, T, V]")
    o = v.as_int(fn, "tokens", tokens, ndim=2, shape_doc="[B, T]")
    if o.shape != z.shape[:2]:
        raise ValueError(
            f"{fn}: 'tokens' has shape {v.shape_str(o.shape)}, expected {v.shape_str(z.shape[:2])} to match 'logits'"
        )
    tau = v.positive(fn, "temperature", temperature)
    rows = _chunk_length(z, v.optional_positive_int(fn, "chunk_size", chunk_size))
    vocab = z.shape[-1]
    if v.value_checks_enabled() and o.numel():
        lo, hi = int(o.min()), int(o.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(f"{fn}: 'tokens' must be in [0, {vocab}), got values in [{lo}, {hi}]")
    return z, o.to(torch.int64), tau, rows


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float = 1.0, chunk_size: int | None = None
) -> torch.Tensor:
    r"""Log-probability of each chosen token: :math:`z_{t,o_t}/\tau - \log\sum_v e^{z_{t,v}/\tau}`.

    Computed as a gather from the log-softmax, in float32 for bf16/fp16 input and rounded once to the input
    dtype, ``chunk_size`` rows (positions) at a time (default: about :data:`CHUNK_ELEMENTS` elements per chunk).
    See :func:`rlhf_oracle.reference.token_logprobs` for the derivation and conventions (the caller shifts:
    ``logits[b, t]`` predicts ``tokens[b, t]``). Use :func:`logprobs_and_entropy` when the entropy is needed too.
    bf16/fp16 logits that need no gradient take the forward-only path (on CPU from :data:`COMPILED_MIN_ELEMENTS`
    elements a kernel compiled on first use, see :mod:`rlhf_oracle.torch_impl._compiled`; otherwise PyTorch's
    fused float32 ``log_softmax`` per chunk; same single rounding); its values can differ from the autograd path's
    in the last float32 bit, so after rounding to bf16 by one unit in rare ties.

    Shapes: ``logits`` [B, T, V], ``tokens`` [B, T] integer -> [B, T] in the dtype of ``logits``.
    ``chunk_size`` (keyword-only, torch twin only) trades speed for temporary memory; the result is the same.
    """
    fn = "token_logprobs"
    z, o, tau, rows = _check_logits_tokens(fn, logits, tokens, temperature, chunk_size)
    forward_only = _takes_forward_only_path(z)
    if chunk_size is None and z.dtype in HALF_DTYPES and not torch.compiler.is_compiling():
        with torch.no_grad():
            pre = _compiled_logsumexp(z, o, tau, _check_name(fn, z))
        if pre is not None and forward_only:
            return pre[0].view(z.shape[:-1]).to(z.dtype)
        if pre is not None:
            return cast(torch.Tensor, cast(Any, _CompiledLogprobs.apply)(z, o, *pre, tau, rows))
    if forward_only:
        if chunk_size is None:
            rows = _chunk_length(z, None, FORWARD_ONLY_CHUNK_ELEMENTS)
        return _forward_only_half(z, o, tau, rows, _check_name(fn, z))
    return _fused(fn, z, o, tau, rows, False)[0]


def entropy_from_logits(
    logits: torch.Tensor, *, temperature: float = 1.0, chunk_size: int | None = None
) -> torch.Tensor:
    r"""Entropy of the next-token distribution: :math:`H = -\sum_v p_v \log p_v`, :math:`p = \mathrm{softmax}(z/\tau)`.

    Equal to ``logsumexp(z) - sum softmax(z) z`` (the form of the contract); computed as
    :math:`-\sum_v p_v \log p_v` with :math:`\log p` from the log-softmax, a sum of non-negative terms (no
    cancellation when H is small). float32 for bf16/fp16 input, chunked like :func:`token_logprobs`.
    See :func:`rlhf_oracle.reference.entropy_from_logits`.

    Shapes: ``logits`` [..., V] -> [...] in the dtype of ``logits``.
    """
    fn = "entropy_from_logits"
    z = v.as_float(fn, "logits", logits)
    if z.ndim < 1 or z.shape[-1] < 1:
        raise ValueError(f"{fn}: 'logits' must have shape [..., V] with V >= 1, got {v.shape_str(z.shape)}")
    tau = v.positive(fn, "temperature", temperature)
    rows = _chunk_length(z, v.optional_positive_int(fn, "chunk_size", chunk_size))
    return _fused(fn, z, None, tau, rows, True)[1]


def logprobs_and_entropy(
    logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float = 1.0, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Both :func:`token_logprobs` and :func:`entropy_from_logits` from one pass over the logits.

    The training step of PPO needs the log-probability of the sampled tokens (for the ratio) and the entropy
    (bonus or metric) of the same logits; this reads the logits once in the forward pass and once in the
    backward pass instead of twice each. Values equal the two separate calls exactly (same arithmetic), except
    that forward-only bf16/fp16 :func:`token_logprobs` takes its own shorter path (within one unit of the last place).

    Shapes: ``logits`` [B, T, V], ``tokens`` [B, T] integer -> (log-probs [B, T], entropy [B, T]), both in the
    dtype of ``logits``. Gradients flow from either or both outputs.
    """
    z, o, tau, rows = _check_logits_tokens("logprobs_and_entropy", logits, tokens, temperature, chunk_size)
    return _fused("logprobs_and_entropy", z, o, tau, rows, True)
