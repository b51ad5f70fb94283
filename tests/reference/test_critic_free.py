"""Critic-free advantages and DAPO shaping: hand values, the identities that tie them to GAE, GRPO and whitening
(drawn from the oracle's own strategies, so the strategies are exercised too), the paper's numbers, and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_oracle import reference as ref
from rlhf_oracle import torch_impl as ti
from rlhf_oracle.properties.registry import REGISTRY

# ---------------------------------------------------------------------------------------------------- hand values


def test_rloo_hand_values() -> None:
    # group 1 = [1, 0, 0]: the 1 against the mean of (0, 0), each 0 against the mean of (1, 0); group 2 all equal
    out = ref.rloo_advantages(np.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]), 3)
    np.testing.assert_array_equal(out, [1.0, -0.5, -0.5, 0.0, 0.0, 0.0])
    masked = ref.rloo_advantages(np.array([2.0, 0.0]), 2, mask=np.array([[1, 1, 0], [1, 0, 0]], dtype=bool))
    np.testing.assert_array_equal(masked, [[2.0, 2.0, 0.0], [-2.0, 0.0, 0.0]])


def test_rloo_singleton_conventions() -> None:
    s = np.array([0.7, -0.2])
    np.testing.assert_array_equal(ref.rloo_advantages(s, 1, singleton="zero"), [0.0, 0.0])
    np.testing.assert_array_equal(ref.rloo_advantages(s, 1, singleton="score"), s)
    with pytest.raises(ValueError, match="'group_size' is 1: a leave-one-out baseline needs 2"):
        ref.rloo_advantages(s, 1)
    with pytest.raises(ValueError, match="'group_size' is 1"):
        ti.rloo_advantages(torch.tensor(s), 1)


def test_reinforce_pp_hand_values() -> None:
    rewards = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    mask = np.ones((2, 3), dtype=bool)
    # returns-to-go [[1, 1, 1], [1, 1, 0]]: mean 5/6, Bessel variance (5/36 + 25/36) / 5 = 1/6
    g = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    expected = (g - 5 / 6) / math.sqrt(1 / 6 + 1e-8)
    np.testing.assert_allclose(ref.reinforce_pp_advantages(rewards, mask), expected, rtol=1e-14)
    population = (g - 5 / 6) / math.sqrt(5 / 36 + 1e-8)
    np.testing.assert_allclose(ref.reinforce_pp_advantages(rewards, mask, unbiased=False), population, rtol=1e-14)


def test_reinforce_pp_skips_holes() -> None:
    # a hole at t = 1: G_0 = r_0 + gamma r_2 (not gamma^2), G_2 = r_2; whitening of [G_0, G_2] (+ row 2)
    rewards = np.array([[1.0, 50.0, 2.0], [0.0, 0.0, 3.0]])
    mask = np.array([[1, 0, 1], [1, 1, 1]], dtype=bool)
    g = np.array([1.0 + 0.5 * 2.0, 2.0, 0.75, 1.5, 3.0])
    mu, sd = g.mean(), g.std(ddof=1)
    out = ref.reinforce_pp_advantages(rewards, mask, gamma=0.5)
    np.testing.assert_allclose(out[mask], (g - mu) / math.sqrt(sd**2 + 1e-8), rtol=1e-13)
    assert out[0, 1] == 0.0


def test_reinforce_pp_baseline_hand_values_and_kl_position() -> None:
    scores = np.array([1.0, 0.0])
    mask = np.array([[1, 1, 0], [1, 1, 1]], dtype=bool)
    # centred [0.5, -0.5] over 2 and 3 tokens: mean -0.1, Bessel var (2 * 0.36 + 3 * 0.16) / 4 = 0.3
    x = np.array([0.5, 0.5, -0.5, -0.5, -0.5])
    expected = (x + 0.1) / math.sqrt(0.3 + 1e-8)
    np.testing.assert_allclose(ref.reinforce_pp_baseline_advantages(scores, 2, mask)[mask], expected, rtol=1e-13)
    # KL rewards -0.1 per valid token: "after" adds their return-to-go, "before" sums them into the score
    kl = -0.1 * mask
    after = np.array([0.5 - 0.2, 0.5 - 0.1, -0.5 - 0.3, -0.5 - 0.2, -0.5 - 0.1])
    before_scores = np.array([1.0 - 0.2, 0.0 - 0.3])
    before = np.repeat(before_scores - before_scores.mean(), [2, 3])

    def whitened(v: np.ndarray) -> np.ndarray:
        return (v - v.mean()) / math.sqrt(v.var(ddof=1) + 1e-8)

    got_after = ref.reinforce_pp_baseline_advantages(scores, 2, mask, kl_rewards=kl)
    got_before = ref.reinforce_pp_baseline_advantages(scores, 2, mask, kl_rewards=kl, kl_position="before")
    np.testing.assert_allclose(got_after[mask], whitened(after), rtol=1e-13)
    np.testing.assert_allclose(got_before[mask], whitened(before), rtol=1e-13)


def test_remax_hand_values() -> None:
    rewards = np.array([[0.1, 0.0, 1.0], [0.0, 2.0, 9.0]])
    mask = np.array([[1, 1, 1], [1, 1, 0]], dtype=bool)
    out = ref.remax_advantages(rewards, mask, np.array([0.5, 1.0]))
    np.testing.assert_allclose(out, [[0.6, 0.5, 0.5], [1.0, 1.0, 0.0]], rtol=1e-15)


def test_overlong_penalty_dapo_numbers() -> None:
    # DAPO: L_max = 20480, L_cache = 4096, f = 1: the ramp from 16384 to 20480
    lengths = np.array([0, 16384, 16385, 18432, 20480, 20481, 40000])
    out = ref.overlong_penalty(lengths, 20480, 4096)
    np.testing.assert_array_equal(out, [0.0, 0.0, -1 / 4096, -0.5, -1.0, -1.0, -1.0])
    np.testing.assert_array_equal(ref.overlong_penalty(lengths, 20480, 4096, factor=0.5), out * 0.5)
    twin = ti.overlong_penalty(torch.tensor(lengths), 20480, 4096)
    assert twin.dtype == torch.get_default_dtype()
    np.testing.assert_allclose(twin.numpy(), out, rtol=1e-6)


def test_dynamic_sampling_hand_values() -> None:
    scores = np.array([1.0, 1.0, 0.0, 1.0, 0.3, 0.3])
    np.testing.assert_array_equal(ref.dynamic_sampling_mask(scores, 2), [False, False, True, True, False, False])
    np.testing.assert_array_equal(ref.dynamic_sampling_mask(scores, 1), [False] * 6)  # a group of one is constant
    np.testing.assert_array_equal(ref.dynamic_sampling_mask(scores, 2, tol=1.0), [False] * 6)


def test_grpo_batch_std_hand_values() -> None:
    scores = np.array([0.0, 1.0, 2.0, 5.0])
    # centred [-0.5, 0.5, -1.5, 1.5]; the raw scores' Bessel std: mean 2, squares 4 + 1 + 0 + 9 = 14, / 3
    expected = np.array([-0.5, 0.5, -1.5, 1.5]) / (math.sqrt(14 / 3) + 1e-6)
    np.testing.assert_allclose(ref.grpo_advantages(scores, 2, std_level="batch"), expected, rtol=1e-15)


# ---------------------------------------------------------------------------------------------------- identities

CASES = settings(max_examples=60, deadline=None)


def _case(formula: str, data: st.DataObject, **fixed: object):  # type: ignore[no-untyped-def]
    return data.draw(REGISTRY[formula].cases(fixed))


@CASES
@given(data=st.data())
def test_rloo_is_n_over_n_minus_1_times_the_centred_score(data: st.DataObject) -> None:
    case = _case("rloo_advantages", data, singleton="error")
    scores, n = case.args
    centred = ref.grpo_advantages(scores, n, std_normalize=False)
    scale = np.abs(scores).max(initial=0.0) + 1.0
    np.testing.assert_allclose(ref.rloo_advantages(scores, n), n / (n - 1) * centred, rtol=0, atol=1e-14 * scale)


@CASES
@given(data=st.data())
def test_reinforce_pp_with_gamma_one_is_the_whitened_gae_return(data: st.DataObject) -> None:
    """REINFORCE++ = whiten(GAE with V = 0, gamma = lambda = 1): the return-to-go without a critic."""
    case = _case("reinforce_pp_advantages", data, gamma=1.0)
    rewards, mask = case.args
    returns = ref.gae(rewards, np.zeros_like(rewards), mask, gamma=1.0, lam=1.0).advantages
    kw = {k: case.arg(k) for k in ("unbiased", "eps")}
    expected = ref.whiten(returns, mask, **kw)
    out = ref.reinforce_pp_advantages(rewards, mask, 1.0, **kw)
    spread = np.abs(returns).max(initial=0.0) / math.sqrt(returns[mask].var() + kw["eps"]) + 1.0
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12 * spread)


@CASES
@given(data=st.data())
def test_reinforce_pp_baseline_with_one_group_is_the_whitened_centred_score(data: st.DataObject) -> None:
    case = _case("reinforce_pp_baseline_advantages", data)
    scores, _, mask = case.args
    b = scores.shape[0]
    unbiased, eps = case.arg("unbiased"), case.arg("eps")
    centred = ref.grpo_advantages(scores, b, std_normalize=False, mask=mask) if b > 1 else np.zeros(mask.shape)
    expected = ref.whiten(centred, mask, unbiased=unbiased, eps=eps)
    out = ref.reinforce_pp_baseline_advantages(scores, b, mask, unbiased, eps=eps)
    spread = (np.abs(scores).max() + 1.0) / math.sqrt(centred[mask].var() + eps)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12 * spread)


@CASES
@given(data=st.data(), shift=st.floats(-3, 3))
def test_reinforce_pp_baseline_ignores_a_constant_per_group(data: st.DataObject, shift: float) -> None:
    case = _case("reinforce_pp_baseline_advantages", data)
    scores, n, mask = case.args
    shifted = scores + np.repeat(shift * np.arange(scores.shape[0] // n), n)
    a = ref.reinforce_pp_baseline_advantages(scores, n, mask, **case.kwargs)
    b = ref.reinforce_pp_baseline_advantages(shifted, n, mask, **case.kwargs)
    eps = case.arg("eps")
    x = a[mask]
    spread = (np.abs(shifted).max() + 1.0) / math.sqrt(eps) if x.std() == 0 else (np.abs(shifted).max() + 1.0)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-11 * spread)


@CASES
@given(data=st.data())
def test_batch_std_grpo_differs_from_group_std_by_the_between_group_variance(data: st.DataObject) -> None:
    case = _case("grpo_advantages", data, std_normalize=True)
    scores, n = case.args
    groups = scores.reshape(-1, n)
    within = groups.var(1).mean()
    between = groups.mean(1).var()
    assert scores.var() == pytest.approx(within + between, rel=1e-12, abs=1e-14)  # population variances
    batch = ref.grpo_advantages(scores, n, eps=0.0 + 1e-300, unbiased=False, std_level="batch")
    centred = ref.grpo_advantages(scores, n, std_normalize=False)
    if scores.std() > 1e-6:
        np.testing.assert_allclose(batch * scores.std(), centred, rtol=1e-12, atol=1e-12)


@CASES
@given(data=st.data())
def test_remax_is_the_gae_return_minus_the_greedy_score(data: st.DataObject) -> None:
    case = _case("remax_advantages", data)
    rewards, mask, baseline = case.args
    returns = ref.gae(rewards, np.zeros_like(rewards), mask, gamma=1.0, lam=1.0).advantages
    expected = np.where(mask, returns - baseline[:, None], 0.0)
    atol = 1e-13 * (np.abs(np.where(mask, rewards, 0.0)).sum() + np.abs(baseline).max() + 1.0)
    np.testing.assert_allclose(ref.remax_advantages(rewards, mask, baseline), expected, rtol=0, atol=atol)


@CASES
@given(data=st.data())
def test_overlong_penalty_is_bounded_and_non_increasing(data: st.DataObject) -> None:
    case = _case("overlong_penalty", data)
    _, l_max, l_cache = case.args
    f = case.arg("factor")
    lengths = np.arange(0, 2 * l_max + 2, max(1, l_max // 64), dtype=np.float64)
    out = ref.overlong_penalty(lengths, l_max, l_cache, f)
    assert np.all(out <= 0.0) and np.all(out >= -f)
    assert np.all(np.diff(out) <= 1e-15)
    assert out[lengths <= l_max - l_cache].max() == 0.0 and np.all(out[lengths >= l_max] == -f)


@CASES
@given(data=st.data())
def test_dynamic_sampling_keeps_exactly_the_groups_with_a_non_zero_rloo_advantage(data: st.DataObject) -> None:
    case = _case("dynamic_sampling_mask", data, tol=0.0)
    scores, n = case.args
    keep = ref.dynamic_sampling_mask(scores, n)
    if n == 1:
        assert not keep.any()
        return
    adv = ref.rloo_advantages(scores, n).reshape(-1, n)
    np.testing.assert_array_equal(keep, np.repeat(np.abs(adv).max(1) > 0, n))


# ---------------------------------------------------------------------------------------------------- twin extras


def test_twin_return_to_go_handles_long_rows_with_holes() -> None:
    """The blockwise scan (rows of several GAE_CHUNK blocks) against the reference loop."""
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(3, 1000))
    mask = rng.random((3, 1000)) < 0.7
    for gamma in (1.0, 0.999, 0.5):
        expected = ref.reinforce_pp_advantages(rewards, mask, gamma)
        got = ti.reinforce_pp_advantages(torch.tensor(rewards), torch.tensor(mask), gamma).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-11)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_twin_half_precision_rounds_once(dtype: torch.dtype) -> None:
    rewards = torch.linspace(-1, 1, 24, dtype=torch.float64).reshape(2, 12)
    mask = torch.ones(2, 12, dtype=torch.bool)
    # the float64 reference on the half-precision inputs, rounded once to the half dtype
    exact = ref.reinforce_pp_advantages(rewards.to(dtype).double().numpy(), mask.numpy())
    half = ti.reinforce_pp_advantages(rewards.to(dtype), mask)
    assert half.dtype == dtype
    assert torch.equal(half, torch.from_numpy(exact).to(dtype))


def test_errors_name_the_argument() -> None:
    s = np.zeros(4)
    m = np.ones((4, 3), dtype=bool)
    for fn in (ref.rloo_advantages, ti.rloo_advantages):
        with pytest.raises(ValueError, match="'scores' has 4 rows, not a multiple of group_size=3"):
            fn(s if fn is ref.rloo_advantages else torch.tensor(s), 3)
        with pytest.raises(ValueError, match="'singleton' must be one of"):
            fn(s if fn is ref.rloo_advantages else torch.tensor(s), 2, singleton="drop")
    with pytest.raises(ValueError, match="'kl_position' must be one of"):
        ref.reinforce_pp_baseline_advantages(s, 2, m, kl_position="middle")
    with pytest.raises(ValueError, match="'kl_rewards' has shape"):
        ref.reinforce_pp_baseline_advantages(s, 2, m, kl_rewards=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="'baseline_scores' has shape"):
        ref.remax_advantages(np.zeros((4, 3)), m, np.zeros(3))
    with pytest.raises(ValueError, match="'cache_length' must be <= max_length=16"):
        ref.overlong_penalty(np.array([1]), 16, 32)
    with pytest.raises(ValueError, match="'lengths' must be finite and >= 0"):
        ti.overlong_penalty(torch.tensor([-1.0]), 16, 4)
    with pytest.raises(ValueError, match="'std_level' must be one of"):
        ref.grpo_advantages(s, 2, std_level="token")
    with pytest.raises(ValueError, match="reinforce_pp_advantages: 'mask' has 1 valid token"):
        ref.reinforce_pp_advantages(np.zeros((1, 2)), np.array([[True, False]]))
