"""The oracle in the loop: record every ``rlhf_oracle.torch_impl`` call of a PPO step, replay it in float64.

The training loop never calls ``rlhf_oracle.torch_impl`` directly: it calls :data:`F`, a :class:`Recorder` that
stands for the module (same functions, same results). On the steps the oracle checks (every ``oracle_every``),
the recorder keeps each call's inputs and outputs as float64 NumPy arrays: the rollout's log-probs, KL estimate,
shaped rewards, GAE and whitening, every minibatch's policy loss, entropy, ptx and value loss, the diagnostics'
KL estimates and aggregates, the adaptive-KL update. The oracle then replays each call with the
``rlhf_oracle.reference`` function of the same name (the API contract gives both the same signature and
keywords) and measures the discrepancy of each output:

    discrepancy = max_i |torch_i - reference_i| / max(scale, tiny)

a normwise relative error in the infinity norm, over the valid positions when the call has a ``mask`` of the
output's shape. ``scale`` is ``max_i |reference_i|`` for arrays; for a scalar it is the mean magnitude of the terms
it averages (``policy_loss``: mean |ratio A|; ``aggregate``: the aggregate of |values|; the GRPO-era losses: the
size of their terms |A| (1 + r)(1 + |log pi|); ``kl_loss``: |Delta| + |k|, times the ratio), so that cancellation in a
value near 0 does not inflate the error (float32 summation error is bounded relative to the sum of |terms|).
There is no second copy of the loop's arithmetic: whatever the loop computes, with whatever keywords, is what is
replayed. Calls without a reference twin (the data-parallel shares, the normaliser's counts) are not replayed.

Tolerance (``DemoConfig.oracle_rtol``, default 1e-4): the inputs are identical, so the only difference is float32
arithmetic. Unit roundoff is 2^-24 ~ 6e-8; the longest accumulations are the GAE recursion over at most
``max_new_tokens`` tokens and means over the B * L tokens of a batch (~1e3 terms, a worst-case n*u bound of 6e-5;
measured discrepancies are ~1e-7). Any convention slip is far above 1e-4: Bessel vs population variance in
``whiten`` over N tokens changes whitened advantages by ~1/(2N) (~7e-4 at N = 700), a score on the wrong token or a
wrong gamma/lambda changes rewards or advantages by O(1).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlhf_oracle import reference as R
from rlhf_oracle import torch_impl

# Smallest scale a discrepancy is measured against: below it the comparison is absolute.
TINY = 1e-12


class OracleDivergenceError(RuntimeError):
    """A torch quantity differs from its float64 reference by more than the tolerance."""

    def __init__(self, step: int, diverged: dict[str, float], tolerance: float) -> None:
        self.step = step
        self.diverged = diverged
        self.tolerance = tolerance
        first = next(iter(diverged))
        others = ", ".join(f"'{q}' ({d:.3g})" for q, d in list(diverged.items())[1:])
        msg = (
            f"oracle: '{first}' diverged from the float64 reference at PPO step {step}: "
            f"max relative discrepancy {diverged[first]:.3g} > tolerance {tolerance:.3g}"
        )
        if others:
            msg += f"; also diverged: {others}"
        super().__init__(msg)


def to_numpy(x: Any) -> Any:
    """Tensors as NumPy (floats as float64, bools and integers kept); tuples/lists/dicts element-wise."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        return t.double().numpy() if t.is_floating_point() else t.numpy()
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a NamedTuple result (GAEResult)
        return tuple(to_numpy(v) for v in x)
    if isinstance(x, tuple | list):
        return type(x)(to_numpy(v) for v in x)
    if isinstance(x, dict):
        return {k: to_numpy(v) for k, v in x.items()}
    return x


def discrepancy(actual: Any, expected: Any, scale: float | None = None) -> float:
    """max |actual - expected| / max(scale, TINY), scale defaulting to max |expected| (normwise, inf-norm)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise ValueError(f"discrepancy: shapes differ: {a.shape} vs {e.shape}")
    if not np.all(np.isfinite(a)):
        return float("inf")
    s = float(np.max(np.abs(e))) if scale is None else float(scale)
    return float(np.max(np.abs(a - e))) / max(s, TINY) if a.size else 0.0


# ---- the recorder


@dataclass(frozen=True)
class Call:
    """One recorded call: the function's name, its inputs and its outputs as NumPy (see :func:`to_numpy`)."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any


class Recorder:
    """Stands for ``rlhf_oracle.torch_impl``: attribute access returns the twin's function (constants and classes
    unchanged); while :meth:`recording`, every function call is also kept as a :class:`Call`."""

    def __init__(self, module: Any = torch_impl) -> None:
        self._module = module
        self._calls: list[Call] | None = None

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._module, name)
        if not callable(target) or isinstance(target, type):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            out = target(*args, **kwargs)
            if self._calls is not None:
                self._calls.append(Call(name, to_numpy(args), to_numpy(kwargs), to_numpy(out)))
            return out

        call.__name__ = call.__qualname__ = name
        call.__doc__ = target.__doc__
        return call

    @contextlib.contextmanager
    def recording(self, enabled: bool = True) -> Iterator[list[Call]]:
        """Record the calls made inside the block (into the yielded list) when ``enabled``."""
        calls: list[Call] = []
        previous = self._calls
        self._calls = calls if enabled else None
        try:
            yield calls
        finally:
            self._calls = previous


F = Recorder()
"""What the training loop calls instead of ``rlhf_oracle.torch_impl``."""


# ---- the replay


def _both(logits: Any, tokens: Any, **kw: Any) -> tuple[Any, Any]:
    return R.token_logprobs(logits, tokens, **kw), R.entropy_from_logits(logits, **kw)


COMPOSITES: dict[str, Callable[..., Any]] = {"logprobs_and_entropy": _both}
"""Twin functions that combine several reference functions (replayed as that combination)."""


def reference_of(name: str) -> Callable[..., Any] | None:
    """The reference function a recorded call is replayed with (None: no reference twin, not replayed)."""
    if name in COMPOSITES:
        return COMPOSITES[name]
    fn = getattr(R, name, None)
    return fn if callable(fn) and not isinstance(fn, type) else None


def _named(name: str, call: Call) -> dict[str, Any]:
    signature = inspect.signature(getattr(torch_impl, name))
    return dict(signature.bind_partial(*call.args, **call.kwargs).arguments)


def _scalar_scale(call: Call, inputs: dict[str, Any], expected: float) -> float:
    """The mean magnitude of the terms a scalar averages (see the module docstring)."""
    if call.name == "policy_loss":
        m = np.asarray(inputs["mask"], dtype=bool)
        ratio = np.exp(np.clip(inputs["logp"] - inputs["logp_old"], -50.0, 50.0))
        return float(np.mean(np.abs(ratio * inputs["advantages"])[m])) if m.any() else abs(expected)
    if call.name == "aggregate":
        return float(R.aggregate(np.abs(inputs["values"]), inputs["mask"], inputs.get("agg", "seq-mean-token-mean")))
    m = np.asarray(inputs.get("mask", False), dtype=bool)
    if call.name in ("pg_loss", "cispo_loss", "gspo_loss", "sapo_loss") and m.any():
        # the size of the per-token terms, |A| (1 + r)(1 + |log pi|), bounds each loss's term (the weights of pg
        # and the 4/tau of SAPO included up to a constant): whitened advantages make the mean cancel
        logp = np.asarray(inputs["logp"], dtype=np.float64)
        old = np.asarray(inputs.get("logp_old", logp), dtype=np.float64)
        ratio = np.exp(np.clip(logp - old, -50.0, 50.0))
        w = inputs.get("weights")
        size = np.abs(inputs["advantages"]) * (1.0 + ratio) * (1.0 + np.abs(logp)) * 4.0
        if w is not None:
            size = size * np.abs(w)
        return float(np.mean(np.broadcast_to(size, m.shape)[m]))
    if call.name == "kl_loss" and m.any():  # the estimator's terms (k1 cancels in the mean), times the ratio
        delta = np.asarray(inputs["logp"], dtype=np.float64) - np.asarray(inputs["logp_ref"], dtype=np.float64)
        terms = np.abs(delta) + np.abs(R.kl_estimate(delta, np.zeros_like(delta), inputs.get("kind", "k3"),
                                                     output_clamp=inputs.get("output_clamp")))  # fmt: skip
        if inputs.get("logp_old") is not None:
            terms = terms * np.exp(np.clip(inputs["logp"] - inputs["logp_old"], -50.0, 50.0))
        return float(np.mean(terms[m]))
    return abs(expected)


def _outputs(x: Any) -> list[Any]:
    return list(x) if isinstance(x, tuple | list) else [x]


def replay(call: Call) -> float | None:
    """The discrepancy of one call against its reference (None when it has no reference twin)."""
    reference = reference_of(call.name)
    if reference is None:
        return None
    try:
        expected = reference(*call.args, **call.kwargs)
    except (ValueError, TypeError, ZeroDivisionError):  # the reference refuses what the twin accepted
        return float("inf")
    inputs = _named(call.name, call)
    mask = inputs.get("mask")
    worst = 0.0
    for actual, exp in zip(_outputs(call.output), _outputs(to_numpy(expected)), strict=True):
        a, e = np.asarray(actual, dtype=np.float64), np.asarray(exp, dtype=np.float64)
        if mask is not None and np.shape(mask) == a.shape:
            m = np.asarray(mask, dtype=bool)
            a, e = a[m], e[m]
        scale = _scalar_scale(call, inputs, float(e)) if a.ndim == 0 else None
        worst = max(worst, discrepancy(a, e, scale))
    return worst


def check_calls(step: int, calls: list[Call], rtol: float) -> dict[str, float]:
    """Replay every recorded call; the worst discrepancy per function, in the order first called. Raises
    :class:`OracleDivergenceError` naming the functions above ``rtol`` (the first diverging call first)."""
    result: dict[str, float] = {}
    for call in calls:
        d = replay(call)
        if d is not None:
            result[call.name] = max(result.get(call.name, 0.0), d)
    diverged = {q: d for q, d in result.items() if not d <= rtol}
    if diverged:
        raise OracleDivergenceError(step, diverged, rtol)
    return result
