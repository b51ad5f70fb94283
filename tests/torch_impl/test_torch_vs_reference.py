"""A few fixed inputs: torch_impl against the NumPy reference (the property-based comparison lives in properties/).

Only this test file imports the reference; the implementation never does. float64 throughout: agreement to 1e-12
(the two sum in different orders; the inputs are O(1) and short, so a few ulps of O(10) partial sums).
Error messages are compared too: the same bad input must raise the same type with the same text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from rlhf_oracle import torch_impl as ti

ref = pytest.importorskip("rlhf_oracle.reference")

F64 = torch.float64
B, T, V = 3, 7, 6
RNG = np.random.default_rng(1234)
MASK = np.array(
    [[1, 1, 1, 1, 0, 0, 0], [0, 0, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=bool
)  # right padding; left padding with a hole; full
LOGITS = 2 * RNG.standard_normal((B, T, V))
LOGITS_REF = 2 * RNG.standard_normal((B, T, V))
TOKENS = RNG.integers(0, V, (B, T))
LOGP = 0.4 * RNG.standard_normal((B, T)) - 1.5
LOGP_OLD = LOGP + 0.3 * RNG.standard_normal((B, T))
LOGP_REF = LOGP + 0.2 * RNG.standard_normal((B, T))
ADV = RNG.standard_normal((B, T))
REWARDS = RNG.standard_normal((B, T))
VALUES = RNG.standard_normal((B, T))
SCORES = RNG.standard_normal(B)
SCORES6 = RNG.standard_normal(6)
RANKED = RNG.standard_normal((4, 5))


def _t(x: Any) -> Any:
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x


def _np(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().numpy()
    if isinstance(x, tuple):
        return tuple(_np(y) for y in x)
    return x


CASES: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("token_logprobs", (LOGITS, TOKENS), {"temperature": 0.8}),
    ("entropy_from_logits", (LOGITS,), {"temperature": 1.2}),
    ("kl_exact", (LOGITS, LOGITS_REF), {}),
    ("ppo_clip_objective", (LOGP, LOGP_OLD, ADV, 0.1), {"clip_eps_high": 0.2, "dual_clip": 1.5}),
    ("ppo_clip_grad", (LOGP, LOGP_OLD, ADV, 0.1), {"clip_eps_high": 0.2, "dual_clip": 1.5}),
    *[("aggregate", (ADV, MASK, mode), {}) for mode in ti.AGGREGATION_MODES],
    ("aggregate", (ADV, MASK, "seq-mean-token-sum-norm"), {"max_tokens": 11}),
    *[("policy_loss", (LOGP, LOGP_OLD, ADV, MASK, 0.1, 0.2, 1.5, mode), {}) for mode in ti.AGGREGATION_MODES],
    *[("kl_estimate", (LOGP, LOGP_REF, kind), {}) for kind in ("k1", "k2", "k3")],
    ("kl_estimate", (LOGP, LOGP_REF - 30, "k3"), {"log_ratio_clamp": 20.0}),
    *[("kl_shaped_rewards", (SCORES, LOGP, LOGP_REF, MASK, 0.05, k), {}) for k in ("k1", "k3")],
    ("kl_shaped_rewards", (SCORES, LOGP, LOGP_REF, MASK[:2], 0.05), {"score_position": "after_last"}),
    ("rlhf_objective", (SCORES, LOGP, LOGP_REF, MASK, 0.05, LOGP_OLD, MASK, 0.7), {}),
    ("ptx_loss", (LOGP, MASK), {}),
    ("reward_model_loss", (SCORES, SCORES[::-1].copy(), 0.3), {}),
    ("reward_model_loss", (SCORES, SCORES[::-1].copy(), SCORES * 0.1), {}),
    ("ranking_loss", (RANKED,), {}),
    ("gae", (REWARDS, VALUES, MASK, 0.99, 0.9), {}),
    ("gae", (REWARDS, VALUES, MASK, 1.0, 1.0), {}),
    ("whiten", (ADV, MASK), {}),
    ("whiten", (ADV, MASK, False, False), {}),
    ("grpo_advantages", (SCORES6, 3), {}),
    ("grpo_advantages", (SCORES6, 2, False), {"mask": np.ones((6, 4), dtype=bool)}),
    ("value_loss", (VALUES, VALUES + 0.3 * ADV, REWARDS, MASK), {}),
    ("value_loss", (VALUES, VALUES + 0.3 * ADV, REWARDS, MASK, None, "seq-mean-token-mean"), {}),
]


def _fix_inputs(name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    if name == "kl_shaped_rewards" and args[3].shape[0] == 2:  # the after_last case uses the first two rows
        return (args[0][:2], args[1][:2], args[2][:2], *args[3:])
    return args


@pytest.mark.parametrize(("name", "args", "kwargs"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_matches_reference_on_fixed_inputs(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    args = _fix_inputs(name, args)
    expected = getattr(ref, name)(*args, **kwargs)
    actual = getattr(ti, name)(*(_t(a) for a in args), **{k: _t(v) for k, v in kwargs.items()})
    np.testing.assert_allclose(_np(actual), expected, rtol=1e-12, atol=1e-12)


def _bad_inputs() -> list[tuple[str, Callable[[Any], Any]]]:
    """(id, call(module, as_tensor)) pairs; each call is invalid in one way."""
    z = np.zeros((2, 3))
    m = np.ones((2, 3), dtype=bool)
    empty_row = np.array([[True, True, False], [False, False, False]])
    return [
        ("shape", lambda mod, a: mod.policy_loss(a(z), a(np.zeros((2, 4))), a(z), a(m))),
        ("rank", lambda mod, a: mod.aggregate(a(np.zeros(3)), a(np.ones(3, dtype=bool)))),
        ("int-logits", lambda mod, a: mod.entropy_from_logits(a(np.zeros((2, 3), dtype=np.int64)))),
        ("float-tokens", lambda mod, a: mod.token_logprobs(a(np.zeros((1, 2, 3))), a(np.zeros((1, 2))))),
        ("mask-values", lambda mod, a: mod.whiten(a(z), a(np.array([[0, 1, 2], [1, 1, 1]])))),
        ("nan", lambda mod, a: mod.gae(a(np.array([[0.0, np.nan, 0.0], [0, 0, 0]])), a(z), a(m))),
        ("empty-row", lambda mod, a: mod.aggregate(a(z), a(empty_row))),
        ("empty-mask", lambda mod, a: mod.ptx_loss(a(z), a(np.zeros((2, 3), dtype=bool)))),
        ("one-token", lambda mod, a: mod.whiten(a(z), a(np.array([[1, 0, 0], [0, 0, 0]])))),
        ("k3-overflow", lambda mod, a: mod.kl_estimate(a(np.zeros(2)), a(np.array([1.0, 800.0])), "k3")),
        ("score-slot", lambda mod, a: mod.kl_shaped_rewards(
            a(np.zeros(2)), a(z), a(z), a(m), 0.1, score_position="after_last")),
        ("no-score-row", lambda mod, a: mod.kl_shaped_rewards(a(np.zeros(2)), a(z), a(z), a(empty_row), 0.1)),
        ("clip", lambda mod, a: mod.ppo_clip_objective(a(z), a(z), a(z), 1.5)),
        ("dual", lambda mod, a: mod.policy_loss(a(z), a(z), a(z), a(m), dual_clip=1.0)),
        ("agg", lambda mod, a: mod.value_loss(a(z), a(z), a(z), a(m), agg="sum")),
        ("max-tokens", lambda mod, a: mod.policy_loss(a(z), a(z), a(z), a(m), max_tokens=-1)),
        ("lam", lambda mod, a: mod.gae(a(z), a(z), a(m), 1.0, 2.0)),
        ("K", lambda mod, a: mod.ranking_loss(a(np.zeros((3, 1))))),
        ("group", lambda mod, a: mod.grpo_advantages(a(np.zeros(5)), 2)),
        ("grpo-mask", lambda mod, a: mod.grpo_advantages(a(np.arange(4.0)), 2, mask=a(np.ones((3, 2), dtype=bool)))),
        ("margin", lambda mod, a: mod.reward_model_loss(a(np.zeros(3)), a(np.zeros(3)), a(np.zeros(2)))),
        ("ptx", lambda mod, a: mod.rlhf_objective(a(np.zeros(2)), a(z), a(z), a(m), 0.1, gamma=0.5)),
        ("beta", lambda mod, a: mod.rlhf_objective(a(np.zeros(2)), a(z), a(z), a(m), -0.1)),
        ("temperature", lambda mod, a: mod.token_logprobs(
            a(np.zeros((1, 2, 3))), a(np.zeros((1, 2), dtype=np.int64)), temperature=-1.0)),
        ("token-range", lambda mod, a: mod.token_logprobs(a(np.zeros((1, 2, 3))), a(np.array([[0, 5]])))),
        ("kl-control", lambda mod, a: mod.adaptive_kl_update(0.1, 1.0, 6.0, -1, 10.0)),
    ]  # fmt: skip


@pytest.mark.parametrize(("case", "call"), _bad_inputs(), ids=[c[0] for c in _bad_inputs()])
def test_same_error_type_and_message_as_reference(case: str, call: Callable[[Any, Any], Any]) -> None:
    with pytest.raises((ValueError, TypeError)) as expected:
        call(ref, lambda x: x)
    with pytest.raises((ValueError, TypeError)) as actual:
        call(ti, _t)
    assert actual.type is expected.type, case
    assert str(actual.value) == str(expected.value), case
