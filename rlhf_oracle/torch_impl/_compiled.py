"""Kernels the torch twin compiles with ``torch.compile`` on first use, and the switch that turns them off.

A kernel here is a small pure function of tensors that Inductor fuses into one loop per row: for the
log-probabilities of bf16/fp16 logits, each row is read once from memory into registers, upcast there, and reduced
to four floats (no float32 copy of the chunk, no output of the logits' size); their gradient is one fused read of
the logits and one write of the gradient. Eager PyTorch has no kernel that
computes a log-sum-exp without writing a full row back, so this is the one place the twin compiles code itself.

- Compiled lazily, the first time an input large enough to need it arrives (a few seconds once per process: about
  4 s with Inductor's on-disk cache warm, 10 s cold on two cores), with dynamic shapes so that one compilation
  serves every batch size and vocabulary.
- Only where it was measured to pay off and is sure to be compiled: on CPU, outside a ``torch.compile`` trace of
  the caller (there the caller's compiler fuses the eager path itself), outside Python dispatch/function modes,
  and not when compilation is disabled (``TORCH_COMPILE_DISABLE=1``).
- If compiling fails (no C++ compiler, a backend error), the caller's eager path computes the same values instead,
  for the rest of the process, and one ``RuntimeWarning`` says why.
- :func:`set_compiled_kernels` ``(False)`` or the environment variable ``RLHF_ORACLE_COMPILE=0`` turns the
  compiled kernels off (the eager paths are the specification's twins too; only speed differs).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ._validation import flag

_ENABLED = os.environ.get("RLHF_ORACLE_COMPILE", "1").strip() not in ("0", "false", "False", "no")


def set_compiled_kernels(enabled: bool) -> None:
    """Turn the compiled log-probability kernels on or off for the whole process (default: on, unless the environment
    variable ``RLHF_ORACLE_COMPILE=0``). Off, every call takes its eager path; values agree to the last float32 bit
    of the log-sum-exp, so after rounding to bf16/fp16 by one unit at most, in rare ties."""
    global _ENABLED
    _ENABLED = flag("set_compiled_kernels", "enabled", enabled)


@contextmanager
def compiled_kernels(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_compiled_kernels`; restores the previous setting on exit."""
    global _ENABLED
    previous = _ENABLED
    _ENABLED = flag("compiled_kernels", "enabled", enabled)
    try:
        yield
    finally:
        _ENABLED = previous


def compiled_kernels_enabled() -> bool:
    """Whether the compiled kernels may be used now: switched on, compilation not disabled, not inside a
    ``torch.compile`` trace, and no Python dispatch or function mode active (a profiler, a FLOP counter, a
    ``with torch.device(...)`` block: under them Dynamo could run the kernel unfused, with temporaries of the
    logits' size, so the eager path is taken)."""
    return (
        _ENABLED
        and not torch.compiler.is_compiling()
        and torch._C._len_torch_dispatch_stack() == 0
        and torch._C._len_torch_function_stack() == 0
        and not _dynamo_disabled()
    )


def _dynamo_disabled() -> bool:
    import torch._dynamo  # here, not at the top: importing Dynamo costs about a second

    return bool(torch._dynamo.config.disable)


class CompiledKernel:
    """``fn`` compiled on its first call; ``None`` from :meth:`__call__` means "use your eager path".

    An exception before the first successful call is taken for a compilation failure (the eager path from then on,
    one warning); after it, an exception is the input's (e.g. a token out of range with the value checks off,
    caught by Inductor's bounds check) and propagates.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.compiled: Callable[..., Any] | None = None
        self.failure: str | None = None
        self.succeeded = False

    def __call__(self, *args: Any) -> Any | None:
        if self.failure is not None or not compiled_kernels_enabled():
            return None
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=True, fullgraph=True)
        try:
            with torch.no_grad():
                out = self.compiled(*args)
        except Exception as exc:
            if self.succeeded:
                raise  # the input's error, not the compiler's
            # a compiler or backend failure: fall back for the rest of the process
            self.failure = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
            warnings.warn(
                f"rlhf_oracle.torch_impl: compiling {self.fn.__name__} failed ({self.failure}); using the eager "
                "path from now on (same values, slower). set_compiled_kernels(False) or RLHF_ORACLE_COMPILE=0 "
                "silences this.",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        self.succeeded = True
        return out
