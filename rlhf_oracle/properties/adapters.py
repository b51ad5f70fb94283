"""Adapters: make a third-party function look like the reference's signature before it is checked.

**Protocol.** An adapter is any callable ``adapter(candidate) -> wrapped`` where ``wrapped`` takes the
reference's arguments (torch tensors in the reference's positional order, hyper-parameters by keyword) and
returns the reference's output (a tensor, a float, or a tuple for ``gae``). Compose several with
:func:`compose` (applied left to right: ``compose(a, b)(f) == b(a(f))``).

Two optional attributes on ``wrapped`` tell the check about it:

- ``__rlhf_oracle_accepts__``: the keyword names the wrapped function accepts (a frozenset), or ``None`` for
  any; by default the check inspects the signature. Hyper-parameters it does not accept are left at the
  reference default instead of being drawn, and conventions passed to the check are not forwarded to it.
- ``__rlhf_oracle_no_grad__ = True``: the function cannot be differentiated (e.g. it goes through NumPy), so
  the gradient property is skipped instead of failing.

Ready-made adapters: :func:`first`, :func:`take`, :func:`negate`, :func:`ratio_input`, :func:`numpy_io`,
:func:`rename`, :func:`reorder`, :func:`float_mask`. :func:`parse` builds them from the CLI's ``--adapter``
strings (``first``, ``take:1``, ``take:loss``, ``negate``, ``ratio``, ``numpy``, ``rename:clip_eps=cliprange``,
``reorder:2,0,1,3``, ``float_mask``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "ACCEPTS_ATTR",
    "NO_GRAD_ATTR",
    "Accepts",
    "Adapter",
    "accepted_kwargs",
    "compose",
    "expression",
    "first",
    "float_mask",
    "negate",
    "numpy_io",
    "parse",
    "ratio_input",
    "rename",
    "reorder",
    "take",
]

Adapter = Callable[[Callable[..., Any]], Callable[..., Any]]
EXPR_ATTR = "__rlhf_oracle_expr__"
"""On an adapter: the Python expression that rebuilds it (``adapters.take(1)``), for the reproduction snippet."""
ACCEPTS_ATTR = "__rlhf_oracle_accepts__"
NO_GRAD_ATTR = "__rlhf_oracle_no_grad__"


class Accepts(frozenset[str]):
    """The keyword names a candidate accepts, and which of them its signature allows to be ``None``."""

    not_none: frozenset[str]
    """Names whose default is not None and whose annotation does not admit None: the oracle never draws None
    for them (a ``clip_eps: float = 0.2`` is not asked to run unclipped)."""

    def __new__(cls, names: Any, not_none: Any = ()) -> Accepts:
        self = super().__new__(cls, names)
        self.not_none = frozenset(not_none)
        return self


def _admits_none(p: inspect.Parameter) -> bool:
    if p.default is None:
        return True
    ann = p.annotation
    if ann is inspect.Parameter.empty:
        return False
    text = ann if isinstance(ann, str) else repr(ann)
    return "None" in text or "Optional" in text or text in ("Any", "typing.Any")


def accepted_kwargs(fn: Callable[..., Any]) -> frozenset[str] | None:
    """Keyword names ``fn`` accepts (an :class:`Accepts`); ``None`` when it takes ``**kwargs`` (or its signature
    is unknown)."""
    if hasattr(fn, ACCEPTS_ATTR):
        accepts: frozenset[str] | None = getattr(fn, ACCEPTS_ATTR)
        return accepts
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    names, not_none = set(), set()
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.add(p.name)
            if not _admits_none(p):
                not_none.add(p.name)
    return Accepts(names, not_none)


def _mark(wrapped: Callable[..., Any], inner: Callable[..., Any], accepts: Any = "same") -> Callable[..., Any]:
    setattr(wrapped, ACCEPTS_ATTR, accepted_kwargs(inner) if accepts == "same" else accepts)
    if getattr(inner, NO_GRAD_ATTR, False):
        setattr(wrapped, NO_GRAD_ATTR, True)
    wrapped.__name__ = getattr(inner, "__name__", "candidate")
    wrapped.__doc__ = getattr(inner, "__doc__", None)
    return wrapped


def _named(adapter: Adapter, expr: str) -> Adapter:
    setattr(adapter, EXPR_ATTR, expr)
    return adapter


def expression(adapter: Adapter | Sequence[Adapter]) -> str | None:
    """The Python source that rebuilds ``adapter`` (a sequence: their ``compose``), or None for an adapter of the
    user's own that the library cannot name."""
    if isinstance(adapter, Sequence):
        parts = [expression(a) for a in adapter]
        return None if None in parts else f"adapters.compose({', '.join(p for p in parts if p)})"
    return getattr(adapter, EXPR_ATTR, None)


def compose(*adapters: Adapter) -> Adapter:
    """Apply ``adapters`` left to right."""

    def adapter(candidate: Callable[..., Any]) -> Callable[..., Any]:
        for a in adapters:
            candidate = a(candidate)
        return candidate

    parts = [expression(a) for a in adapters]
    return adapter if None in parts else _named(adapter, f"adapters.compose({', '.join(p for p in parts if p)})")


def take(key: int | str) -> Adapter:
    """Keep one part of a tuple/dict/attribute output: ``take(0)`` for ``(loss, stats)``, ``take("loss")``."""

    def adapter(candidate: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            out = candidate(*args, **kwargs)
            if isinstance(key, int):
                return out[key]
            if isinstance(out, Mapping):
                return out[key]
            return getattr(out, key)

        return _mark(wrapped, candidate)

    return _named(adapter, f"adapters.take({key!r})")


def first(candidate: Callable[..., Any]) -> Callable[..., Any]:
    """The first element of a tuple output (``loss, stats = f(...)``); other outputs pass unchanged."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = candidate(*args, **kwargs)
        return out[0] if isinstance(out, tuple | list) else out

    return _mark(wrapped, candidate)


def negate(candidate: Callable[..., Any]) -> Callable[..., Any]:
    """Minus the output: for a function that returns the objective J where the reference returns the loss -J
    (or the reverse)."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = candidate(*args, **kwargs)
        if isinstance(out, tuple):
            return type(out)(*(-o for o in out)) if hasattr(out, "_fields") else tuple(-o for o in out)
        return -out

    return _mark(wrapped, candidate)


def ratio_input(candidate: Callable[..., Any]) -> Callable[..., Any]:
    """For a PPO function written in ratios: ``candidate(ratio, advantages, *rest)`` is called with
    ``ratio = exp(logp - logp_old)`` (differentiable with respect to ``logp``). Where a bool mask of the same
    shape follows, the log-ratio is set to 0 (ratio 1) at masked positions before ``exp``, as a caller that
    computes ratios from masked log-probabilities would, so that NaN in masked slots cannot reach the gradient
    through the adapter itself."""

    def wrapped(logp: Any, logp_old: Any, *rest: Any, **kwargs: Any) -> Any:
        delta = logp - logp_old
        mask = next(
            (a for a in rest if isinstance(a, torch.Tensor) and a.dtype == torch.bool and a.shape == delta.shape),
            None,
        )
        if mask is not None:
            delta = torch.where(mask, delta, torch.zeros_like(delta))
        return candidate(torch.exp(delta), *rest, **kwargs)

    return _mark(wrapped, candidate)


def _to_numpy(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.to(torch.float32)
        return t.numpy()
    return x


def numpy_io(candidate: Callable[..., Any]) -> Callable[..., Any]:
    """For a NumPy function: tensors are passed as NumPy arrays (bf16/fp16 as float32) and the output is turned
    back into a tensor. Gradients cannot flow through NumPy, so the gradient property is skipped."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = candidate(*(_to_numpy(a) for a in args), **{k: _to_numpy(v) for k, v in kwargs.items()})
        if isinstance(out, tuple):
            parts = tuple(torch.as_tensor(np.asarray(o)) for o in out)
            return type(out)(*parts) if hasattr(out, "_fields") else parts
        return torch.as_tensor(np.asarray(out))

    _mark(wrapped, candidate)
    setattr(wrapped, NO_GRAD_ATTR, True)
    return wrapped


def rename(mapping: Mapping[str, str] | None = None, /, **names: str) -> Adapter:
    """Keyword names differ: ``rename(clip_eps="cliprange")`` passes the reference's ``clip_eps`` to the
    candidate as ``cliprange``."""
    table = {**(mapping or {}), **names}

    def adapter(candidate: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            return candidate(*args, **{table.get(k, k): v for k, v in kwargs.items()})

        inner = accepted_kwargs(candidate)
        reverse = {v: k for k, v in table.items()}
        accepts = (
            None
            if inner is None
            else Accepts(
                (reverse.get(k, k) for k in inner),
                (reverse.get(k, k) for k in getattr(inner, "not_none", ())),
            )
        )
        return _mark(wrapped, candidate, accepts)

    return _named(adapter, f"adapters.rename({table!r})")


def reorder(order: Sequence[int]) -> Adapter:
    """Positional order differs: the candidate's i-th positional argument is the reference's ``order[i]``-th
    (``reorder([2, 0, 1, 3])`` for ``f(advantages, logp, logp_old, mask)``)."""

    def adapter(candidate: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            return candidate(*(args[i] for i in order), *args[len(order) :], **kwargs)

        return _mark(wrapped, candidate)

    return _named(adapter, f"adapters.reorder({list(order)!r})")


def float_mask(candidate: Callable[..., Any]) -> Callable[..., Any]:
    """Bool tensors (masks) are passed as 0/1 tensors of the first floating input's dtype."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        values = [*args, *kwargs.values()]
        dtype = next((v.dtype for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()), torch.float32)

        def conv(x: Any) -> Any:
            return x.to(dtype) if isinstance(x, torch.Tensor) and x.dtype == torch.bool else x

        return candidate(*(conv(a) for a in args), **{k: conv(v) for k, v in kwargs.items()})

    return _mark(wrapped, candidate)


def _parse_one(spec: str) -> Adapter:
    name, _, arg = spec.partition(":")
    name = name.strip().replace("-", "_")
    simple: dict[str, Adapter] = {
        "first": first,
        "negate": negate,
        "ratio": ratio_input,
        "ratio_input": ratio_input,
        "numpy": numpy_io,
        "numpy_io": numpy_io,
        "float_mask": float_mask,
    }
    if name in simple:
        if arg:
            raise ValueError(f"adapter {spec!r}: {name} takes no argument (write --adapter {name})")
        return simple[name]
    if name == "take":
        if not arg.strip():
            raise ValueError(f"adapter {spec!r}: write take:KEY (a key or an index of the returned tuple/dict)")
        return take(int(arg) if arg.lstrip("-").isdigit() else arg)
    if name == "rename":
        items = [p.strip() for p in arg.split(",") if p.strip()]
        bad = [p for p in items if p.count("=") != 1 or not all(side.strip() for side in p.split("="))]
        if not items or bad:
            raise ValueError(
                f"adapter {spec!r}: write rename:reference_name=your_name,... (got {', '.join(bad) or 'nothing'})"
            )
        return rename(dict((a.strip(), b.strip()) for a, b in (p.split("=") for p in items)))
    if name == "reorder":
        try:
            order = [int(i) for i in arg.split(",")]
        except ValueError:
            raise ValueError(f"adapter {spec!r}: write reorder:i,j,... (integer positions)") from None
        return reorder(order)
    raise ValueError(
        f"unknown adapter {spec!r}; known: first, take:KEY, negate, ratio, numpy, rename:a=b,..., reorder:i,j,..., "
        "float_mask"
    )


def parse(specs: str | Sequence[str]) -> Adapter:
    """Adapters from strings (the CLI's ``--adapter``), composed left to right."""
    items = [specs] if isinstance(specs, str) else list(specs)
    return compose(*(_parse_one(s) for s in items))


for _plain in (first, negate, ratio_input, numpy_io, float_mask):
    setattr(_plain, EXPR_ATTR, f"adapters.{_plain.__name__}")
