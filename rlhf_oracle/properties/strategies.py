"""Hypothesis strategies that *build* valid inputs (and matching invalid ones) for every catalogue formula.

Everything here produces NumPy float64 "master" inputs; a check converts them to the candidate's dtype and
device (and evaluates the reference on the same dtype-rounded values). Strategies are composite: the shapes
``B, T, V, K`` are drawn once and every array of a case is built with them, masks are built row by row
(length, left/right/inner padding, holes) rather than filtered, and convention keyword arguments that the user
fixed (``agg="token-mean"``, ``log_ratio_clamp=20`` ...) steer what is generated.

Public building blocks (usable in your own ``@given`` tests):

- :func:`masks` - ``[B, T]`` bool masks with varied lengths, left/right padding and holes;
- :func:`float_arrays`, :func:`log_ratios`, :func:`logits`, :func:`advantages_like` - value arrays;
- :func:`fill_masked` - write NaN/inf/huge/zero/garbage into the masked slots;
- :func:`cases` - a :class:`Case` (inputs + hyper-parameters) for a formula of the catalogue;
- :func:`bad_cases` - a :class:`BadCase`: a valid case with exactly one thing broken (shape, dtype, NaN at a
  valid position, an empty mask row, an out-of-range hyper-parameter).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = [
    "FILLS",
    "BadCase",
    "Case",
    "advantages_like",
    "bad_cases",
    "cases",
    "fill_masked",
    "float_arrays",
    "log_ratios",
    "logits",
    "masks",
]

FILLS = ("keep", "zero", "nan", "inf", "huge")
"""What the masked slots of per-token inputs hold: the drawn values, 0, NaN, +-inf, or 1e30."""

MATHS_FILLS = ("keep", "zero")
"""Padding of the maths properties' inputs (finite)."""

NONFINITE_FILLS = ("nan", "inf", "huge")
"""Padding of the ``masked_slots`` property's inputs."""

_FILL_VALUES = {"zero": 0.0, "nan": math.nan, "inf": math.inf, "huge": 1e30}

Draw = Callable[[st.SearchStrategy[Any]], Any]


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
        """All inputs by name."""
        return {**dict(zip(self.arg_names, self.args, strict=True)), **self.kwargs}

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
                value = np.where(self.mask, value, _fill_array(fill, value.shape, rng))
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


def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def float_arrays(shape: tuple[int, ...], lo: float = -10.0, hi: float = 10.0) -> st.SearchStrategy[np.ndarray]:
    """float64 arrays of ``shape`` with elements in [lo, hi], a mix of round and arbitrary values."""
    elements = st.one_of(_floats(lo, hi), st.sampled_from([v for v in (0.0, 1.0, -1.0, 0.5) if lo <= v <= hi]))
    return hnp.arrays(np.float64, shape, elements=elements)


def log_ratios(shape: tuple[int, ...], *, far: bool = False, limit: float = 3.0) -> st.SearchStrategy[np.ndarray]:
    """Log-ratios Delta: exactly 0, tiny (|Delta| < 1e-6), at the PPO clip boundaries, moderate (|Delta| <=
    ``limit``); with ``far`` also |Delta| up to 1e4 (the estimators' overflow edge)."""
    boundaries = [0.0, math.log(0.8), math.log(1.2), math.log(0.9), math.log(1.28), math.log(3.0)]
    parts = [
        st.sampled_from([b for b in boundaries if abs(b) <= limit]),
        _floats(-1e-6, 1e-6),
        _floats(-0.5, 0.5),
        _floats(-limit, limit),
    ]
    if far:
        parts += [_floats(-1e4, 1e4), _floats(-120.0, 120.0), st.sampled_from([-1e4, 1e4, -800.0, -100.0, 100.0])]
    return hnp.arrays(np.float64, shape, elements=st.one_of(*parts))


def advantages_like(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    """Advantages / rewards: both signs, some zeros, tiny and moderate magnitudes (hypothesis's simplest value,
    0, is made rarer: an all-zero array hides most convention differences)."""
    elements = st.one_of(
        st.sampled_from([1.0, -1.0, 0.5, -2.0]), _floats(-5.0, 5.0), st.just(0.0), _floats(-1e-3, 1e-3)
    )
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
        level = float(draw(_floats(-5.0, 5.0)))
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


def _fill_array(fill: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if fill == "inf":
        return np.where(rng.random(shape) < 0.5, math.inf, -math.inf)
    return np.full(shape, _FILL_VALUES[fill])


def fill_masked(x: np.ndarray, mask: np.ndarray, fill: str, seed: int = 0) -> np.ndarray:
    """``x`` with its masked slots overwritten by ``fill`` (``"keep"`` leaves them as drawn)."""
    if fill == "keep":
        return x
    return np.where(mask, x, _fill_array(fill, x.shape, np.random.default_rng(seed)))


class _Params:
    """Draw hyper-parameters: fixed by the user > drawn when the candidate accepts them > left to the default."""

    def __init__(self, draw: Draw, fixed: Mapping[str, Any], accepted: Container[str] | None) -> None:
        self.draw, self.fixed, self.accepted = draw, fixed, accepted
        self.kwargs: dict[str, Any] = {}

    def __call__(self, name: str, strategy: st.SearchStrategy[Any], default: Any) -> Any:
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

    def get(self, name: str, default: Any) -> Any:
        return self.kwargs.get(name, self.fixed.get(name, default))

    def finish(self) -> dict[str, Any]:
        return {**self.fixed, **self.kwargs}


def _shape_bt(draw: Draw, max_b: int = 4, max_t: int = 8) -> tuple[int, int]:
    """B in [1, max_b], T in [2, max_t] (T = 1 leaves no room for padding: it is an edge case of its own)."""
    return draw(st.integers(1, max_b)), draw(st.integers(2, max_t))


def _fill(draw: Draw, arrays: dict[str, np.ndarray], mask: np.ndarray) -> str:
    """Finite padding (the drawn values or zeros): NaN/inf/1e30 in masked slots are the ``masked_slots``
    property's inputs, built from these cases by :func:`masked_slot_cases`."""
    fill = str(draw(st.sampled_from(MATHS_FILLS)))
    for i, (name, value) in enumerate(arrays.items()):
        arrays[name] = fill_masked(value, mask, fill, seed=i)
    return fill


# ----------------------------------------------------------------------------------------------------------------
# one strategy per formula

Fixed = Mapping[str, Any]
Accepted = Container[str] | None


@st.composite
def _token_logprobs(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = _shape_bt(draw)
    v = draw(st.integers(2, 8))
    z = draw(logits((b, t, v)))
    tokens = draw(hnp.arrays(np.int64, (b, t), elements=st.integers(0, v - 1)))
    p = _Params(draw, fixed, accepted)
    p("temperature", st.sampled_from([1.0, 0.7, 1.3]), 1.0)
    return Case("token_logprobs", (z, tokens), ("logits", "tokens"), p.finish())


@st.composite
def _entropy_from_logits(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    lead = draw(st.sampled_from([(), (3,), (2, 3)]))
    shape = (*(draw(st.integers(1, n + 1)) for n in lead), draw(st.integers(1, 8)))
    z = draw(logits(shape))
    p = _Params(draw, fixed, accepted)
    p("temperature", st.sampled_from([1.0, 0.7, 1.3]), 1.0)
    return Case("entropy_from_logits", (z,), ("logits",), p.finish())


def _clip_params(p: _Params) -> None:
    p("clip_eps", st.sampled_from([0.2, 0.1, 0.3]), 0.2)
    p("clip_eps_high", st.sampled_from([None, 0.28]), None)
    p("dual_clip", st.sampled_from([None, 3.0]), None)


def _ppo_arrays(draw: Draw, shape: tuple[int, ...], far: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    logp_old = draw(float_arrays(shape, -20.0, 0.0))
    delta = draw(log_ratios(shape, far=far))
    adv = draw(advantages_like(shape))
    return logp_old + delta, logp_old, adv


@st.composite
def _ppo_elementwise(draw: Draw, fixed: Fixed, accepted: Accepted, formula: str) -> Case:
    shape = draw(st.sampled_from([(draw(st.integers(1, 16)),), _shape_bt(draw)]))
    logp, logp_old, adv = _ppo_arrays(draw, shape)
    p = _Params(draw, fixed, accepted)
    _clip_params(p)
    return Case(formula, (logp, logp_old, adv), ("logp", "logp_old", "advantages"), p.finish())


def _agg_params(p: _Params, default: str, t: int, name: str = "agg") -> str:
    modes = ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
    agg = p(name, st.sampled_from(modes), default)
    if agg == "seq-mean-token-sum-norm":
        p("max_tokens", st.sampled_from([None, t, 2 * t + 3]), None)
    return str(agg)


def _min_valid(agg: str) -> int:
    """Every row of a maths case has a valid token, whatever the aggregation (empty rows are ``edge_cases``)."""
    return 1


@st.composite
def _aggregate(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = _shape_bt(draw)
    p = _Params(draw, fixed, accepted)
    agg = _agg_params(p, "seq-mean-token-mean", t, name="mode")
    m = draw(masks(b, t, min_valid=_min_valid(agg)))
    if agg == "token-mean" and not m.any():
        m[0, 0] = True
    arrays = {"values": draw(advantages_like((b, t)))}
    fill = _fill(draw, arrays, m)
    return Case("aggregate", (arrays["values"], m), ("values", "mask"), p.finish(), m, ("values",), fill)


@st.composite
def _policy_loss(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = _shape_bt(draw)
    p = _Params(draw, fixed, accepted)
    _clip_params(p)
    agg = _agg_params(p, "seq-mean-token-mean", t)
    m = draw(masks(b, t, min_valid=_min_valid(agg)))
    if agg == "token-mean" and not m.any():
        m[0, 0] = True
    logp, logp_old, adv = _ppo_arrays(draw, (b, t))
    arrays = {"logp": logp, "logp_old": logp_old, "advantages": adv}
    fill = _fill(draw, arrays, m)
    return Case(
        "policy_loss",
        (arrays["logp"], arrays["logp_old"], arrays["advantages"], m),
        ("logp", "logp_old", "advantages", "mask"),
        p.finish(),
        m,
        ("logp", "logp_old", "advantages"),
        fill,
    )


@st.composite
def _kl_estimate(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    shape = draw(st.sampled_from([(draw(st.integers(1, 16)),), _shape_bt(draw)]))
    p = _Params(draw, fixed, accepted)
    p("kind", st.sampled_from(["k1", "k2", "k3"]), "k1")
    logp_ref = draw(float_arrays(shape, -20.0, 0.0))
    # |Delta| <= 2 keeps every estimator within +-10 (k3 <= e^2 - 3): far log-ratios and estimator values beyond
    # +-10, where frameworks clamp, are the stability property's inputs
    delta = draw(log_ratios(shape, limit=2.0))
    return Case("kl_estimate", (logp_ref + delta, logp_ref), ("logp", "logp_ref"), p.finish())


@st.composite
def _kl_exact(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = _shape_bt(draw, 3, 4)
    v = draw(st.integers(1, 8))
    z = draw(logits((b, t, v)))
    same = draw(st.booleans())
    z_ref = z.copy() if same else draw(logits((b, t, v)))
    if not same and draw(st.booleans()):
        z_ref = z + draw(float_arrays((b, t, v), -1.0, 1.0))  # nearby policies: KL small, cancellation-prone
    return Case("kl_exact", (z, z_ref), ("logits", "logits_ref"), dict(fixed))


@st.composite
def _kl_shaped_rewards(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = _shape_bt(draw)
    p = _Params(draw, fixed, accepted)
    p("kind", st.sampled_from(["k1", "k2", "k3"]), "k1")
    position = p("score_position", st.sampled_from(["last", "after_last"]), "last")
    if position == "after_last":
        t = max(t, 2)
    m = draw(masks(b, t, min_valid=1, need_pad_after=position == "after_last"))
    logp_ref = draw(float_arrays((b, t), -20.0, 0.0))
    logp = logp_ref + draw(log_ratios((b, t), limit=2.0))
    scores = draw(advantages_like((b,)))
    beta = draw(st.sampled_from([0.0, 0.05, 0.1, 1.0]))
    arrays = {"logp": logp, "logp_ref": logp_ref}
    fill = _fill(draw, arrays, m)
    return Case(
        "kl_shaped_rewards",
        (scores, arrays["logp"], arrays["logp_ref"], m, beta),
        ("scores", "logp", "logp_ref", "mask", "beta"),
        p.finish(),
        m,
        ("logp", "logp_ref"),
        fill,
    )


@st.composite
def _rlhf_objective(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = _shape_bt(draw)
    m = draw(masks(b, t, min_valid=1))
    logp_ref = draw(float_arrays((b, t), -20.0, 0.0))
    logp = logp_ref + draw(log_ratios((b, t)))
    scores = draw(advantages_like((b,)))
    beta = draw(st.sampled_from([0.0, 0.02, 0.1, 1.0]))
    arrays = {"logp": logp, "logp_ref": logp_ref}
    fill = _fill(draw, arrays, m)
    p = _Params(draw, fixed, accepted)
    gamma = p("gamma", st.sampled_from([0.0, 0.0, 27.8, 1.0]), 0.0)
    per_token = ["logp", "logp_ref"]
    if gamma != 0.0 or (draw(st.booleans()) and (accepted is None or "ptx_logp" in accepted)):
        b2, t2 = _shape_bt(draw)
        ptx_mask = draw(masks(b2, t2, min_valid=1))
        ptx_logp = fill_masked(draw(float_arrays((b2, t2), -20.0, 0.0)), ptx_mask, fill)
        p.kwargs.update(ptx_logp=ptx_logp, ptx_mask=ptx_mask)
    return Case(
        "rlhf_objective",
        (scores, arrays["logp"], arrays["logp_ref"], m, beta),
        ("scores", "logp", "logp_ref", "mask", "beta"),
        p.finish(),
        m,
        tuple(per_token),
        fill,
    )


@st.composite
def _ptx_loss(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = _shape_bt(draw)
    p = _Params(draw, fixed, accepted)
    agg = _agg_params(p, "token-mean", t)
    p.kwargs.pop("max_tokens", None)  # ptx_loss has no max_tokens
    m = draw(masks(b, t, min_valid=_min_valid(agg)))
    if not m.any():
        m[0, 0] = True
    arrays = {"logp": draw(float_arrays((b, t), -30.0, 0.0))}
    fill = _fill(draw, arrays, m)
    return Case("ptx_loss", (arrays["logp"], m), ("logp", "mask"), p.finish(), m, ("logp",), fill)


@st.composite
def _reward_model_loss(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b = draw(st.integers(1, 8))
    chosen = draw(float_arrays((b,), -20.0, 20.0))
    gap = draw(st.one_of(float_arrays((b,), -5.0, 5.0), float_arrays((b,), -60.0, 60.0)))
    p = _Params(draw, fixed, accepted)
    kind = draw(st.sampled_from(["none", "scalar", "array"]))
    if kind == "scalar":
        p("margin", _floats(0.0, 2.0), None)
    elif kind == "array":
        p("margin", float_arrays((b,), 0.0, 2.0), None)
    return Case("reward_model_loss", (chosen, chosen - gap), ("chosen", "rejected"), p.finish())


@st.composite
def _ranking_loss(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, k = draw(st.integers(1, 4)), draw(st.integers(2, 6))
    rewards = draw(st.one_of(float_arrays((b, k), -5.0, 5.0), float_arrays((b, k), -50.0, 50.0)))
    if draw(st.booleans()):
        rewards = -np.sort(-rewards, axis=1)  # consistently ranked rows (the usual case)
    return Case("ranking_loss", (rewards,), ("rewards",), dict(fixed))


@st.composite
def _gae(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = _shape_bt(draw, 4, 10)
    m = draw(masks(b, t, min_valid=1))
    arrays = {"rewards": draw(advantages_like((b, t))), "values": draw(advantages_like((b, t)))}
    fill = _fill(draw, arrays, m)
    p = _Params(draw, fixed, accepted)
    p("gamma", st.sampled_from([1.0, 0.99, 0.9, 0.0]), 1.0)
    p("lam", st.sampled_from([0.95, 1.0, 0.0, 0.5]), 0.95)
    return Case(
        "gae",
        (arrays["rewards"], arrays["values"], m),
        ("rewards", "values", "mask"),
        p.finish(),
        m,
        ("rewards", "values"),
        fill,
    )


@st.composite
def _whiten(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = draw(st.integers(1, 4)), draw(st.integers(2, 8))
    p = _Params(draw, fixed, accepted)
    p("shift_mean", st.booleans(), True)
    p("unbiased", st.booleans(), True)
    m = draw(masks(b, t, min_valid=1))
    if int(m.sum()) < 2:  # a variance needs two valid tokens (one token is an edge case)
        m[0, :2] = True
    x = draw(st.one_of(advantages_like((b, t)), float_arrays((b, t), -1e3, 1e3)))
    scale_offset = draw(st.sampled_from([0.0, 100.0]))
    arrays = {"x": x + scale_offset}
    fill = _fill(draw, arrays, m)
    return Case("whiten", (arrays["x"], m), ("x", "mask"), p.finish(), m, ("x",), fill)


@st.composite
def _value_loss(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = _shape_bt(draw)
    p = _Params(draw, fixed, accepted)
    p("clip_eps", st.sampled_from([0.2, 0.5, None]), 0.2)
    agg = _agg_params(p, "token-mean", t)
    m = draw(masks(b, t, min_valid=_min_valid(agg)))
    if not m.any():
        m[0, 0] = True
    old = draw(advantages_like((b, t)))
    change = draw(st.one_of(float_arrays((b, t), -0.1, 0.1), float_arrays((b, t), -2.0, 2.0)))
    returns = old + draw(float_arrays((b, t), -2.0, 2.0))
    arrays = {"values": old + change, "old_values": old, "returns": returns}
    fill = _fill(draw, arrays, m)
    return Case(
        "value_loss",
        (arrays["values"], arrays["old_values"], arrays["returns"], m),
        ("values", "old_values", "returns", "mask"),
        p.finish(),
        m,
        ("values", "old_values", "returns"),
        fill,
    )


@st.composite
def _adaptive_kl_update(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    beta = draw(st.sampled_from([0.0, 0.001, 0.15, 0.2, 1.0]))
    target = draw(st.sampled_from([6.0, 0.1, 1.0]))
    kl = draw(st.one_of(_floats(0.0, 20.0), st.sampled_from([0.0, target, target * 1.1, target * 0.5])))
    n_steps = draw(st.sampled_from([0, 1, 64, 512, 10000]))
    horizon = draw(st.sampled_from([10000.0, 100.0, 1.0]))
    return Case(
        "adaptive_kl_update",
        (beta, kl, target, n_steps, horizon),
        ("beta", "kl", "target", "n_steps", "horizon"),
        dict(fixed),
    )


@st.composite
def _grpo_advantages(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    group_size = draw(st.integers(2, 5))
    n_groups = draw(st.integers(1, 3))
    b = group_size * n_groups
    binary = draw(st.booleans())
    if binary:  # verifiable rewards: 0/1, often identical inside a group
        scores = draw(hnp.arrays(np.float64, (b,), elements=st.sampled_from([0.0, 1.0])))
    else:
        scores = draw(advantages_like((b,)))
    p = _Params(draw, fixed, accepted)
    p("std_normalize", st.booleans(), True)
    p("unbiased", st.booleans(), True)
    p("eps", st.sampled_from([1e-6, 1e-4]), 1e-6)
    if accepted is None or "mask" in accepted:
        if draw(st.booleans()):
            t = draw(st.integers(1, 6))
            p.kwargs["mask"] = draw(masks(b, t, min_valid=1))
    return Case("grpo_advantages", (scores, group_size), ("scores", "group_size"), p.finish())


_BUILDERS: dict[str, Callable[..., st.SearchStrategy[Case]]] = {
    "token_logprobs": _token_logprobs,
    "entropy_from_logits": _entropy_from_logits,
    "ppo_clip_objective": lambda fixed, accepted: _ppo_elementwise(fixed, accepted, "ppo_clip_objective"),
    "ppo_clip_grad": lambda fixed, accepted: _ppo_elementwise(fixed, accepted, "ppo_clip_grad"),
    "aggregate": _aggregate,
    "policy_loss": _policy_loss,
    "kl_estimate": _kl_estimate,
    "kl_exact": _kl_exact,
    "kl_shaped_rewards": _kl_shaped_rewards,
    "rlhf_objective": _rlhf_objective,
    "ptx_loss": _ptx_loss,
    "reward_model_loss": _reward_model_loss,
    "ranking_loss": _ranking_loss,
    "gae": _gae,
    "whiten": _whiten,
    "value_loss": _value_loss,
    "adaptive_kl_update": _adaptive_kl_update,
    "grpo_advantages": _grpo_advantages,
}

FORMULAS = tuple(_BUILDERS)


def register_strategy(formula: str, builder: Callable[..., st.SearchStrategy[Case]]) -> None:
    """Add the maths-input strategy ``builder(fixed, accepted)`` of a new formula (see ``registry.register``)."""
    _BUILDERS[formula] = builder


def cases(
    formula: str, fixed: Mapping[str, Any] | None = None, accepted: Container[str] | None = None
) -> st.SearchStrategy[Case]:
    """Valid inputs of ``formula``.

    ``fixed``: keyword arguments held constant (conventions such as ``agg="token-mean"``); they also steer the
    generation (e.g. ``log_ratio_clamp`` allows far log-ratios, ``score_position="after_last"`` keeps a pad slot).
    ``accepted``: the keyword names the candidate accepts (``None``: all); hyper-parameters it does not accept
    are left at the reference default instead of being drawn.
    """
    if formula not in _BUILDERS:
        raise KeyError(f"unknown formula {formula!r}; known: {sorted(_BUILDERS)}")
    return _BUILDERS[formula](dict(fixed or {}), accepted)


# ----------------------------------------------------------------------------------------------------------------
# the other properties' inputs, built from the maths cases

EDGE_KINDS = ("empty row", "one valid token", "all masked", "B = 1")
"""The degenerate inputs of the ``edge_cases`` property (formulas with a mask)."""


def _extreme_deltas(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    """Log-ratios that reach +-50 (exp(50) ~ 5e21: finite in float32/bf16, beyond every framework's +-20 clamp),
    mixed with moderate ones."""
    far = st.one_of(st.sampled_from([-50.0, -30.0, -21.0, 21.0, 30.0, 50.0]), _floats(-50.0, 50.0))
    return st.tuples(hnp.arrays(np.float64, shape, elements=st.one_of(far, _floats(-3.0, 3.0))), far).map(
        lambda arr_far: _force_first(*arr_far)
    )


def _force_first(arr: np.ndarray, value: float) -> np.ndarray:
    """``arr`` with its first element set to ``value`` (every extreme case holds at least one extreme value)."""
    out = arr.copy()
    if out.size:
        out.reshape(-1)[0] = value
    return out


def _with_delta(case: Case, draw: Draw, base: str, moved: str, *, very_far: bool = False) -> Case:
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


def _stable_logits(case: Case, draw: Draw, *names: str) -> Case:
    named = case.named()
    return case.with_inputs(**{n: draw(logits(np.asarray(named[n]).shape, extreme=True)) for n in names})


def _stable_gap(case: Case, draw: Draw, high: str, low: str) -> Case:
    hi = np.asarray(case.named()[high], dtype=np.float64)
    big = st.sampled_from([-1e4, 1e4, -3e3])
    gap = _force_first(draw(hnp.arrays(np.float64, hi.shape, elements=st.one_of(_floats(-1e4, 1e4), big))), draw(big))
    return case.with_inputs(**{low: hi - gap})


def _stable_ranking(case: Case, draw: Draw) -> Case:
    r = np.asarray(case.args[0], dtype=np.float64)
    scale = float(draw(st.sampled_from([1e2, 1e3, 5e3])))
    return case.with_inputs(rewards=-np.sort(-r, axis=1) * scale)


_STABILITY: dict[str, Callable[[Case, Draw], Case]] = {
    "token_logprobs": lambda c, d: _stable_logits(c, d, "logits"),
    "entropy_from_logits": lambda c, d: _stable_logits(c, d, "logits"),
    "kl_exact": lambda c, d: _stable_logits(c, d, "logits", "logits_ref"),
    "ppo_clip_objective": lambda c, d: _with_delta(c, d, "logp_old", "logp"),
    "ppo_clip_grad": lambda c, d: _with_delta(c, d, "logp_old", "logp"),
    "policy_loss": lambda c, d: _with_delta(c, d, "logp_old", "logp"),
    "kl_estimate": lambda c, d: _with_delta(c, d, "logp_ref", "logp", very_far=True),
    "kl_shaped_rewards": lambda c, d: _with_delta(c, d, "logp_ref", "logp"),
    "reward_model_loss": lambda c, d: _stable_gap(c, d, "chosen", "rejected"),
    "ranking_loss": _stable_ranking,
}
"""How each formula's maths case is pushed into the regime where real code differs (log-ratios to +-50, logit
spreads of 1e3-1e4, reward gaps of 1e4, estimator values beyond +-10). Formulas without an entry have no
``stability`` property. Extend with :func:`register_stability`."""


def register_stability(formula: str, transform: Callable[[Case, Draw], Case]) -> None:
    """Give ``formula`` a ``stability`` property: ``transform(maths_case, draw)`` returns the extreme case."""
    _STABILITY[formula] = transform


def has_stability(formula: str) -> bool:
    return formula in _STABILITY


@st.composite
def _stability(draw: Draw, formula: str, fixed: Fixed, accepted: Accepted) -> Case:
    case = draw(cases(formula, fixed, accepted))
    return _STABILITY[formula](case, draw)


def stability_cases(formula: str, fixed: Fixed | None = None, accepted: Accepted = None) -> st.SearchStrategy[Case]:
    """Inputs of the ``stability`` property: the maths cases pushed to the extreme regime of ``formula``."""
    return _stability(formula, dict(fixed or {}), accepted)


@st.composite
def _masked_slots(draw: Draw, formula: str, fixed: Fixed, accepted: Accepted) -> Case:
    case: Case = draw(cases(formula, fixed, accepted))
    return case.refilled(str(draw(st.sampled_from(NONFINITE_FILLS))), rng_seed=draw(st.integers(0, 3)))


def masked_slot_cases(formula: str, fixed: Fixed | None = None, accepted: Accepted = None) -> st.SearchStrategy[Case]:
    """Inputs of the ``masked_slots`` property: maths cases with NaN, +-inf or 1e30 in every masked input slot."""
    return _masked_slots(formula, dict(fixed or {}), accepted)


def _batched(case: Case) -> list[str]:
    assert case.mask is not None
    b = case.mask.shape[0]
    return [n for n, v in case.named().items() if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == b]


def edge_case(case: Case, kind: str, row: int = 0, position: int = 0) -> Case:
    """``case`` made degenerate: one row all masked, a single valid token in the batch, every token masked, or
    only the first row (B = 1)."""
    assert case.mask is not None
    m = case.mask.copy()
    b, t = m.shape
    if kind == "empty row" and b == 1:
        kind = "all masked"
    if kind == "B = 1":
        named = case.named()
        return replace(case.with_inputs(**{n: np.asarray(named[n])[:1] for n in _batched(case)}), mask=m[:1], edge=kind)
    if kind == "empty row":
        m[row % b] = False
    elif kind == "one valid token":
        keep = np.zeros_like(m)
        last = t - 2 if case.kwargs.get("score_position") == "after_last" else t - 1
        keep[row % b, min(position, max(last, 0))] = True
        m = keep
    elif kind == "all masked":
        m[:] = False
    else:
        raise ValueError(f"unknown edge case {kind!r}; known: {EDGE_KINDS}")
    names = {"grpo_advantages": "mask"}
    return replace(case.with_inputs(**{names.get(case.formula, "mask"): m}), mask=m, edge=kind)


@st.composite
def _edge(draw: Draw, formula: str, fixed: Fixed, accepted: Accepted) -> Case:
    case = draw(cases(formula, fixed, accepted))
    assert case.mask is not None
    kind = str(draw(st.sampled_from(EDGE_KINDS)))
    return edge_case(case, kind, draw(st.integers(0, 7)), draw(st.integers(0, 9)))


def edge_cases(formula: str, fixed: Fixed | None = None, accepted: Accepted = None) -> st.SearchStrategy[Case]:
    """Inputs of the ``edge_cases`` property: an empty row, one valid token, all masked, or B = 1."""
    return _edge(formula, dict(fixed or {}), accepted)


# ----------------------------------------------------------------------------------------------------------------
# bad inputs

_DIVIDES_BY_ROW = {"aggregate", "policy_loss"}  # seq-mean-token-mean by default


def _break_shape(case: Case, name: str) -> Case:
    """One extra leading axis (wrong rank, or a shape that no longer matches the other inputs); for the entropy,
    whose rank is free, an empty vocabulary axis."""
    value = np.asarray(case.named()[name])
    broken = value[..., :0] if case.formula == "entropy_from_logits" else value[None]
    return case.with_inputs(**{name: broken})


def _bad_hyper(formula: str) -> list[tuple[str, Any]]:
    table: dict[str, list[tuple[str, Any]]] = {
        "token_logprobs": [("temperature", 0.0), ("temperature", -1.0)],
        "entropy_from_logits": [("temperature", 0.0)],
        "ppo_clip_objective": [("clip_eps", 0.0), ("clip_eps", -0.1), ("clip_eps", 1.5), ("dual_clip", 0.5)],
        "ppo_clip_grad": [("clip_eps", -0.2), ("dual_clip", 1.0)],
        "aggregate": [("mode", "mean"), ("max_tokens", 0)],
        "policy_loss": [("clip_eps", 0.0), ("agg", "sum"), ("dual_clip", 0.9), ("clip_eps_high", -0.1)],
        "kl_estimate": [("kind", "k4"), ("log_ratio_clamp", -1.0)],
        "kl_shaped_rewards": [("beta", -0.1), ("kind", "abs"), ("score_position", "eos")],
        "rlhf_objective": [("beta", -1.0), ("gamma", -1.0)],
        "ptx_loss": [("agg", "mean")],
        "ranking_loss": [],
        "reward_model_loss": [],
        "gae": [("gamma", 1.5), ("lam", -0.1)],
        "whiten": [("eps", -1.0)],
        "value_loss": [("clip_eps", 0.0), ("clip_eps", -0.5), ("agg", "mean")],
        "adaptive_kl_update": [("target", 0.0), ("horizon", -1.0), ("beta", -0.1)],
        "grpo_advantages": [("group_size", 1), ("eps", -1.0)],
        "kl_exact": [],
    }
    return table.get(formula, []) + _BAD_HYPER.get(formula, [])


_BAD_HYPER: dict[str, list[tuple[str, Any]]] = {}


def register_bad_hyper(formula: str, values: list[tuple[str, Any]]) -> None:
    """Out-of-range hyper-parameters of a new formula, for :func:`bad_cases` (see ``registry.register``)."""
    _BAD_HYPER[formula] = list(values)


@st.composite
def _bad_case(draw: Draw, formula: str) -> BadCase:
    case = draw(cases(formula))
    named = case.named()
    float_names = [n for n, v in named.items() if isinstance(v, np.ndarray) and v.dtype == np.float64]
    if formula == "rlhf_objective" and not case.kwargs.get("gamma"):
        float_names = [n for n in float_names if not n.startswith("ptx_")]  # unused when gamma = 0
    options: list[str] = []
    if float_names:
        options += ["shape", "int_dtype", "nan_valid"]
    if _bad_hyper(formula):
        options.append("hyper")
    if (
        case.mask is not None
        and formula in _DIVIDES_BY_ROW
        and case.kwargs.get("mode", case.kwargs.get("agg"))
        in (
            None,
            "seq-mean-token-mean",
        )
    ):
        options.append("empty_row")
    if formula == "ranking_loss":
        options.append("k1")
    what = draw(st.sampled_from(options))
    if what == "shape":
        name = draw(st.sampled_from(float_names))
        return BadCase(_break_shape(case, name), f"'{name}' with a wrong shape")
    if what == "int_dtype":
        name = draw(st.sampled_from(float_names))
        value = np.clip(np.nan_to_num(np.asarray(named[name]), nan=0.0, posinf=0.0, neginf=0.0), -1e6, 1e6)
        value = value.astype(np.int64)
        return BadCase(case.with_inputs(**{name: value}), f"'{name}' as int64")
    if what == "nan_valid":
        name = draw(st.sampled_from(float_names))
        value = np.array(named[name], copy=True)
        if value.size == 0:
            return BadCase(_break_shape(case, name), f"'{name}' with a wrong shape")
        if name == "ptx_logp":
            valid = np.flatnonzero(named["ptx_mask"])
        elif case.mask is not None and name in case.per_token:
            valid = np.flatnonzero(case.mask)
        else:
            valid = np.arange(value.size)
        if valid.size == 0:
            return BadCase(_break_shape(case, name), f"'{name}' with a wrong shape")
        pos = int(valid[draw(st.integers(0, valid.size - 1))])
        value.reshape(-1)[pos] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        return BadCase(case.with_inputs(**{name: value}), f"'{name}' non-finite at a valid position")
    if what == "empty_row":
        assert case.mask is not None
        m = case.mask.copy()
        row = draw(st.integers(0, m.shape[0] - 1))
        m[row] = False
        return BadCase(case.with_inputs(mask=m), f"'mask' row {row} all zero")
    if what == "k1":
        rewards = np.asarray(named["rewards"])[:, :1]
        return BadCase(case.with_inputs(rewards=rewards), "'rewards' with K=1")
    name, value = draw(st.sampled_from(_bad_hyper(formula)))
    return BadCase(case.with_inputs(**{name: value}), f"'{name}'={value!r}")


def bad_cases(formula: str) -> st.SearchStrategy[BadCase]:
    """A valid case of ``formula`` with exactly one thing broken: a wrong shape, an int64 array where a float one
    is expected, NaN/inf at a valid position, an all-zero mask row where the formula divides by |o|, or an
    out-of-range hyper-parameter. The reference raises ``ValueError``/``TypeError`` on each."""
    return _bad_case(formula)
