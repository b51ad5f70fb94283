"""The inputs of the oracle: :class:`Case` (one drawn input of a formula) and the hypothesis building blocks the
formula families draw their cases from.

Everything here produces NumPy float64 "master" inputs; a check converts them to the candidate's dtype and
device (and evaluates the reference on the same dtype-rounded values). Shapes are drawn once per case and every
array is built with them; masks are built row by row (length, left/right/inner padding, holes) rather than
filtered; hyper-parameters are drawn through :class:`Params`, whose defaults are the reference's own.

Public building blocks (usable in your own ``@given`` tests):

- :func:`masks` - ``[B, T]`` bool masks with varied lengths, left/right padding and holes;
- :func:`float_arrays`, :func:`log_ratios`, :func:`logits`, :func:`advantages_like` - value arrays;
- :func:`fill_masked` - write NaN/inf/huge/zero/garbage into the masked slots;
- :func:`far_log_ratios`, :func:`extreme_logits`, :func:`extreme_gap` - the extreme regimes of ``stability``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import math
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rlhf_oracle import reference as R

__all__ = [
    "FILLS",
    "MASK_LAYOUTS",
    "BadCase",
    "Case",
    "Params",
    "advantages_like",
    "extreme_gap",
    "extreme_logits",
    "far_log_ratios",
    "fill_masked",
    "fill_padding",
    "float_arrays",
    "floats",
    "log_ratios",
    "logits",
    "mask_layout",
    "masks",
    "shape_bt",
]

FILLS = ("keep", "zero", "nan", "inf", "huge")
"""What the masked slots of per-token inputs hold: the drawn values, 0, NaN, +-inf, or 1e30."""

MATHS_FILLS = ("keep", "zero")
"""Padding of the maths properties' inputs (finite)."""

NONFINITE_FILLS = ("nan", "inf", "huge")
"""Padding of the ``masked_slots`` property's inputs."""

_FILL_VALUES = {"zero": 0.0, "nan": math.nan, "inf": math.inf, "huge": 1e30}

Draw = Callable[[st.SearchStrategy[Any]], Any]

_REQUIRED: Any = object()


@dataclass(frozen=True)
class Case:
    """One drawn input of a formula: positional arguments in the reference's order, keyword arguments."""

    formula: str
    args: tuple[Any, ...]
    """Positional arguments, in the order of the reference signature (arrays and positional scalars)."""
    arg_names: tuple[str, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments (hyper-parameters, conventions, optional arrays) passed by name."""
    mask: np.ndarray | None = None
    """The [B, T] mask of the case, if the formula has one."""
    per_token: tuple[str, ...] = ()
    """Names of the arguments whose masked slots may hold anything (the ones :func:`fill_masked` wrote)."""
    fill: str = "keep"
    """What the masked slots hold (one of :data:`FILLS`)."""
    edge: str = ""
    """Which degenerate input this is (one of :data:`EDGE_KINDS`), or "" for a non-degenerate case."""

    def named(self) -> dict[str, Any]:
        """All inputs by name (as passed: the reference's defaults are not filled in, see :meth:`arg`)."""
        return {**dict(zip(self.arg_names, self.args, strict=True)), **self.kwargs}

    def arg(self, name: str, *, absent: Any = _REQUIRED) -> Any:
        """The value of ``name`` as the reference sees it: the one passed, else the reference's default (the
        case is bound to ``inspect.signature(reference.<formula>)``: no default is restated in the oracle).
        ``absent``: returned when the formula has no parameter ``name`` (else that is a KeyError)."""
        named = self.named()
        if name in named:
            return named[name]
        if absent is not _REQUIRED and name not in _parameters(self.formula):
            return absent
        return reference_default(self.formula, name)

    def with_inputs(self, **changes: Any) -> Case:
        """A copy with some inputs (positional or keyword, by name) replaced."""
        args = tuple(changes.pop(n) if n in changes else a for n, a in zip(self.arg_names, self.args, strict=True))
        kwargs = {**self.kwargs, **changes}
        return replace(self, args=args, kwargs=kwargs)

    def refilled(self, fill: str, rng_seed: int = 0) -> Case:
        """The same case with the masked slots of the per-token inputs overwritten with ``fill``."""
        if self.mask is None or not self.per_token:
            return self
        named = self.named()
        rng = np.random.default_rng(rng_seed)
        changes = {}
        for name in self.per_token:
            value = np.array(named[name], dtype=np.float64, copy=True)
            if fill == "keep":
                garbage = rng.normal(0.0, 100.0, size=value.shape)
                value = np.where(self.mask, value, garbage)
            else:
                value = np.where(self.mask, value, fill_array(fill, value.shape, rng))
            changes[name] = value
        return replace(self.with_inputs(**changes), fill=fill)


@dataclass(frozen=True)
class BadCase:
    """A valid case with one thing broken; the reference raises on it and so must any candidate."""

    case: Case
    what: str
    """What was broken, in words (e.g. ``"'mask' row 0 all zero"``)."""


# ----------------------------------------------------------------------------------------------------------------
# building blocks


def floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def float_arrays(shape: tuple[int, ...], lo: float = -10.0, hi: float = 10.0) -> st.SearchStrategy[np.ndarray]:
    """float64 arrays of ``shape`` with elements in [lo, hi], a mix of round and arbitrary values."""
    elements = st.one_of(floats(lo, hi), st.sampled_from([v for v in (0.0, 1.0, -1.0, 0.5) if lo <= v <= hi]))
    return hnp.arrays(np.float64, shape, elements=elements)


def log_ratios(shape: tuple[int, ...], *, far: bool = False, limit: float = 3.0) -> st.SearchStrategy[np.ndarray]:
    """Log-ratios Delta: exactly 0, tiny (|Delta| < 1e-6), at the PPO clip boundaries, moderate (|Delta| <=
    ``limit``); with ``far`` also |Delta| up to 1e4 (the estimators' overflow edge)."""
    boundaries = [0.0, math.log(0.8), math.log(1.2), math.log(0.9), math.log(1.28), math.log(3.0)]
    parts = [
        st.sampled_from([b for b in boundaries if abs(b) <= limit]),
        floats(-1e-6, 1e-6),
        floats(-0.5, 0.5),
        floats(-limit, limit),
    ]
    if far:
        parts += [floats(-1e4, 1e4), floats(-120.0, 120.0), st.sampled_from([-1e4, 1e4, -800.0, -100.0, 100.0])]
    return hnp.arrays(np.float64, shape, elements=st.one_of(*parts))


def advantages_like(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    """Advantages / rewards: both signs, some zeros, tiny and moderate magnitudes (hypothesis's simplest value,
    0, is made rarer: an all-zero array hides most convention differences)."""
    elements = st.one_of(st.sampled_from([1.0, -1.0, 0.5, -2.0]), floats(-5.0, 5.0), st.just(0.0), floats(-1e-3, 1e-3))
    return hnp.arrays(np.float64, shape, elements=elements)


@st.composite
def logits(draw: Draw, shape: tuple[int, ...], *, extreme: bool = False) -> np.ndarray:
    """Logits [..., V] in one of several regimes: moderate, near-ties (equal up to 1e-9), one dominant token
    (+50); with ``extreme`` (the ``stability`` property) huge offsets (|z| ~ 1e4: logsumexp must shift), very
    negative (-1e3) and logit spreads of 1e3-1e4 (softmax underflows to exactly 0 for the others)."""
    base: np.ndarray = draw(float_arrays(shape, -10.0, 10.0))
    if extreme:  # an offset (0, +-1e4, -1e3) and always one token 1e3-1e4 apart from the others
        offset = float(draw(st.sampled_from([0.0, 1e4, -1e4, -1e3])))
        idx = draw(st.integers(0, shape[-1] - 1))
        out = base + offset
        out[..., idx] += float(draw(st.sampled_from([1e3, 3e3, 1e4, -1e3, -1e4])))
        return np.asarray(out)
    regime = draw(st.sampled_from(["moderate", "near_ties", "dominant"]))
    if regime == "near_ties":
        level = float(draw(floats(-5.0, 5.0)))
        return np.asarray(level + base * 1e-10)
    if regime == "dominant":
        idx = draw(st.integers(0, shape[-1] - 1))
        out = base.copy()
        out[..., idx] += 50.0
        return out
    return base


MASK_LAYOUTS = ("any", "contiguous", "right", "left")
"""The mask layouts a check can be restricted to (``run_check(mask_layout=...)``, ``--mask-layout``)."""

_MASK_LAYOUT: contextvars.ContextVar[str] = contextvars.ContextVar("rlhf_oracle_mask_layout", default="any")


@contextlib.contextmanager
def mask_layout(layout: str) -> Iterator[None]:
    """Draw every mask of the block in ``layout`` (one of :data:`MASK_LAYOUTS`)."""
    if layout not in MASK_LAYOUTS:
        raise ValueError(f"mask_layout: must be one of {MASK_LAYOUTS}, got {layout!r}")
    token = _MASK_LAYOUT.set(layout)
    try:
        yield
    finally:
        _MASK_LAYOUT.reset(token)


@st.composite
def masks(
    draw: Draw,
    batch: int,
    length: int,
    *,
    min_valid: int = 1,
    holes: bool = True,
    need_pad_after: bool = False,
) -> np.ndarray:
    """A bool mask [batch, length], built row by row.

    Each row gets a response span of ``n >= min_valid`` tokens placed right-padded (span at the start),
    left-padded (span at the end) or floating; with ``holes`` some inner positions of the span are masked out
    (multi-turn observation tokens), keeping its first and last token valid. Within :func:`mask_layout` only the
    chosen layout is drawn (no holes unless ``"any"``). ``need_pad_after`` keeps at least
    one masked slot after the last valid token of every row (``score_position="after_last"``).
    """
    limit = length - 1 if need_pad_after else length
    layout = _MASK_LAYOUT.get()
    holes = holes and layout == "any"
    paddings = {"any": ["right", "left", "float"], "contiguous": ["right", "left", "float"]}.get(layout, [layout])
    padding = draw(st.sampled_from(paddings))
    mask = np.zeros((batch, length), dtype=bool)
    for b in range(batch):
        n = draw(st.integers(min(min_valid, limit), limit))
        if n == 0:
            continue
        if padding == "right" or (need_pad_after and padding == "left"):
            start = 0
        elif padding == "left":
            start = length - n
        else:
            start = draw(st.integers(0, limit - n))
        mask[b, start : start + n] = True
        if holes and n >= 3:  # the first and last token stay valid, so the row keeps >= 2 >= min_valid tokens
            # rows with a hole are as likely as rows without (multi-turn masks are the hard case)
            at_least = int(draw(st.sampled_from([1, 0])))
            inner = draw(
                st.lists(st.integers(start + 1, start + n - 2), min_size=at_least, max_size=n - 2, unique=True)
            )
            mask[b, inner] = False
    return mask


def fill_array(fill: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if fill == "inf":
        return np.where(rng.random(shape) < 0.5, math.inf, -math.inf)
    return np.full(shape, _FILL_VALUES[fill])


def fill_masked(x: np.ndarray, mask: np.ndarray, fill: str, seed: int = 0) -> np.ndarray:
    """``x`` with its masked slots overwritten by ``fill`` (``"keep"`` leaves them as drawn)."""
    if fill == "keep":
        return x
    return np.where(mask, x, fill_array(fill, x.shape, np.random.default_rng(seed)))


class Params:
    """Draw the hyper-parameters of ``formula``: fixed by the user > drawn when the candidate accepts them > left
    to the reference's default (read from its signature)."""

    def __init__(self, formula: str, draw: Draw, fixed: Mapping[str, Any], accepted: Container[str] | None) -> None:
        self.formula, self.draw, self.fixed, self.accepted = formula, draw, fixed, accepted
        self.kwargs: dict[str, Any] = {}

    def __call__(self, name: str, strategy: st.SearchStrategy[Any]) -> Any:
        default = reference_default(self.formula, name)
        if name in self.fixed:
            value = self.fixed[name]
        elif self.accepted is None or name in self.accepted:
            if name in getattr(self.accepted, "not_none", ()):  # its signature takes no None: never draw it
                strategy = strategy.filter(lambda x: x is not None)
            value = self.draw(strategy)
        else:
            return default
        self.kwargs[name] = value
        return value

    def takes(self, name: str) -> bool:
        """The formula's reference has a parameter ``name``."""
        return name in _parameters(self.formula)

    def get(self, name: str) -> Any:
        return self.kwargs.get(name, self.fixed.get(name, reference_default(self.formula, name)))

    def finish(self) -> dict[str, Any]:
        return {**self.fixed, **self.kwargs}


def shape_bt(draw: Draw, max_b: int = 4, max_t: int = 8) -> tuple[int, int]:
    """B in [1, max_b], T in [2, max_t] (T = 1 leaves no room for padding: it is an edge case of its own)."""
    return draw(st.integers(1, max_b)), draw(st.integers(2, max_t))


def fill_padding(draw: Draw, arrays: dict[str, np.ndarray], mask: np.ndarray) -> str:
    """Finite padding (the drawn values or zeros): NaN/inf/1e30 in masked slots are the ``masked_slots``
    property's inputs, built from these cases by ``strategies.masked_slot_cases``."""
    fill = str(draw(st.sampled_from(MATHS_FILLS)))
    for i, (name, value) in enumerate(arrays.items()):
        arrays[name] = fill_masked(value, mask, fill, seed=i)
    return fill


Fixed = Mapping[str, Any]
"""Keyword arguments the user fixed (conventions): held constant and steering the generation."""
Accepted = Container[str] | None
"""The keyword names the candidate accepts (None: all)."""


@functools.cache
def _parameters(formula: str) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(getattr(R, formula)).parameters


def reference_default(formula: str, name: str) -> Any:
    """The default of parameter ``name`` of ``reference.<formula>`` (KeyError if it has none)."""
    p = _parameters(formula).get(name)
    if p is None or p.default is inspect.Parameter.empty:
        raise KeyError(f"reference.{formula} has no default for {name!r}")
    return p.default


# ----------------------------------------------------------------------------------------------------------------
# extreme regimes (the ``stability`` property's inputs)


def _extreme_deltas(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    """Log-ratios that reach +-50 (exp(50) ~ 5e21: finite in float32/bf16, beyond every framework's +-20 clamp),
    mixed with moderate ones."""
    far = st.one_of(st.sampled_from([-50.0, -30.0, -21.0, 21.0, 30.0, 50.0]), floats(-50.0, 50.0))
    return st.tuples(hnp.arrays(np.float64, shape, elements=st.one_of(far, floats(-3.0, 3.0))), far).map(
        lambda arr_far: _force_first(*arr_far)
    )


def _force_first(arr: np.ndarray, value: float) -> np.ndarray:
    """``arr`` with its first element set to ``value`` (every extreme case holds at least one extreme value)."""
    out = arr.copy()
    if out.size:
        out.reshape(-1)[0] = value
    return out


def far_log_ratios(case: Case, draw: Draw, base: str, moved: str, *, very_far: bool = False) -> Case:
    """``moved`` set to ``base`` plus a log-ratio up to +-50 (``very_far``: up to 1e4, at least one beyond +-20)
    at the valid positions: the PPO ratio e^50 and the KL estimators far beyond the frameworks' clamps."""
    named = case.named()
    b = np.asarray(named[base], dtype=np.float64)
    if very_far:  # up to 1e4, at least one beyond +-20 (where the clamps of real code act)
        far = st.sampled_from([-1e4, -800.0, -100.0, -30.0, -21.0, 21.0, 30.0, 100.0, 1e4])
        delta = _force_first(draw(log_ratios(b.shape, far=True)), draw(far))
    else:
        delta = draw(_extreme_deltas(b.shape))
    new = b + delta
    if case.mask is not None and moved in case.per_token:
        new = np.where(case.mask, new, np.asarray(named[moved]))
    return case.with_inputs(**{moved: new})


def extreme_logits(case: Case, draw: Draw, *names: str) -> Case:
    """The logits ``names`` redrawn with offsets of 1e4 and spreads of 1e3-1e4 (softmax underflows to 0)."""
    named = case.named()
    return case.with_inputs(**{n: draw(logits(np.asarray(named[n]).shape, extreme=True)) for n in names})


def extreme_gap(case: Case, draw: Draw, high: str, low: str) -> Case:
    """``low`` set to ``high`` minus gaps up to 1e4 (at least one of +-1e4 or -3e3): sigmoid underflows to 0."""
    hi = np.asarray(case.named()[high], dtype=np.float64)
    big = st.sampled_from([-1e4, 1e4, -3e3])
    gap = _force_first(draw(hnp.arrays(np.float64, hi.shape, elements=st.one_of(floats(-1e4, 1e4), big))), draw(big))
    return case.with_inputs(**{low: hi - gap})
