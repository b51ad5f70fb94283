"""Numerical edge cases, tested rather than assumed: huge logits, |Delta| = 1e4, long rows, near-ties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf_oracle import reference as ref


def test_huge_logits_give_exact_log_probs() -> None:
    # logits (1e4, 1e4 - ln 3): p = (3/4, 1/4) exactly, although exp(1e4) overflows float64
    logits = np.array([[[1e4, 1e4 - math.log(3.0), -1e4]]])
    got = ref.token_logprobs(logits, np.array([[1]]))
    assert got[0, 0] == pytest.approx(math.log(0.25), rel=1e-12)
    assert ref.entropy_from_logits(logits)[0, 0] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    kl = ref.kl_exact(logits, np.array([[[0.0, 0.0, 0.0]]]))
    assert math.isfinite(kl[0, 0]) and kl[0, 0] > 0


def test_large_log_ratios() -> None:
    delta = np.array([1e4, -1e4])
    np.testing.assert_array_equal(ref.kl_estimate(delta, np.zeros(2), "k1"), delta)
    np.testing.assert_array_equal(ref.kl_estimate(delta, np.zeros(2), "k2"), delta**2 / 2)
    # k3 at Delta = +1e4: e^{-1e4} - 1 + 1e4 = 9999 (the exponential underflows to 0, harmlessly)
    assert ref.kl_estimate([1e4], [0.0], "k3")[0] == pytest.approx(9999.0)
    # at Delta = -1e4 the exponential overflows float64: a clear error instead of inf
    with pytest.raises(
        ValueError,
        match=r"kl_estimate: k3 overflows at logp_ref - logp = 10000.0; pass log_ratio_clamp or output_clamp",
    ):
        ref.kl_estimate([-1e4], [0.0], "k3")
    # with verl's clamp of 20: e^{20} - 1 - 20
    assert ref.kl_estimate([-1e4], [0.0], "k3", log_ratio_clamp=20.0)[0] == pytest.approx(math.exp(20) - 21)


def test_pairwise_loss_at_huge_gaps() -> None:
    assert ref.reward_model_loss([1e4], [0.0]) == pytest.approx(0.0, abs=1e-300)
    assert ref.reward_model_loss([-1e4], [0.0]) == pytest.approx(1e4, rel=1e-15)
    assert ref.ranking_loss(np.array([[1e4, 0.0, -1e4]])) == pytest.approx(0.0, abs=1e-300)


def test_ppo_clip_far_out_ratios() -> None:
    # r = e^{50}, A > 0: clipped to (1 + eps) A; gradient 0
    assert ref.ppo_clip_objective([50.0], [0.0], [1.0])[0] == pytest.approx(1.2)
    assert ref.ppo_clip_grad([50.0], [0.0], [1.0])[0] == 0.0
    # r = e^{50}, A < 0: unclipped and huge unless the dual clip bounds it
    assert ref.ppo_clip_objective([50.0], [0.0], [-1.0])[0] == pytest.approx(-math.exp(50))
    assert ref.ppo_clip_objective([50.0], [0.0], [-1.0], dual_clip=3.0)[0] == pytest.approx(-3.0)


def test_gae_on_a_long_row_with_gamma_lam_close_to_one() -> None:
    # constant reward 1, values 0, gamma = 1, lam = 0.9999: A_t = sum_{l < T - t} 0.9999^l + corrections
    # with V = 0, delta_t = r_t = 1, so A_t = (1 - g^{T-t}) / (1 - g), a geometric series
    length, g = 2048, 0.9999
    got = ref.gae(np.ones((1, length)), np.zeros((1, length)), np.ones((1, length)), 1.0, g).advantages[0]
    n = length - np.arange(length)
    np.testing.assert_allclose(got, (1 - g**n) / (1 - g), rtol=1e-10)


def test_single_token_rows() -> None:
    mask = np.array([[0, 1, 0]])
    assert ref.policy_loss(np.zeros((1, 3)), np.zeros((1, 3)), np.full((1, 3), 2.0), mask) == -2.0
    out = ref.gae(np.array([[0.0, 1.0, 0.0]]), np.array([[0.0, 0.25, 0.0]]), mask, 1.0, 0.95)
    np.testing.assert_array_equal(out.advantages, [[0.0, 0.75, 0.0]])
