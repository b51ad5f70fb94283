"""Invariants from SPEC.md ("What the oracle must prove") that concern the reference alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rlhf_oracle import reference as ref

from .strategies import masked_batch, strip_padding

logits_strategy = hnp.arrays(np.float64, (3, 5), elements=st.floats(-10, 10))


# ---------------------------------------------------------------- KL estimators


@given(delta=hnp.arrays(np.float64, 8, elements=st.floats(-50, 50)))
def test_k2_and_k3_are_non_negative(delta: np.ndarray) -> None:
    assert np.all(ref.kl_estimate(delta, np.zeros(8), "k2") >= 0)
    assert np.all(ref.kl_estimate(delta, np.zeros(8), "k3") >= 0)


@given(logits=logits_strategy, logits_ref=logits_strategy)
def test_k1_and_k3_are_unbiased_by_enumeration(logits: np.ndarray, logits_ref: np.ndarray) -> None:
    """E_{x~pi}[k] computed exactly over the vocabulary equals kl_exact for k1 and k3, and KL >= 0."""
    log_p = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
    log_q = logits_ref - np.log(np.sum(np.exp(logits_ref), -1, keepdims=True))
    kl = ref.kl_exact(logits, logits_ref)
    assert np.all(kl >= -1e-15)
    for kind in ("k1", "k3"):
        expectation = np.sum(np.exp(log_p) * ref.kl_estimate(log_p, log_q, kind), axis=-1)
        np.testing.assert_allclose(expectation, kl, rtol=1e-9, atol=1e-12)


@given(logp=hnp.arrays(np.float64, 6, elements=st.floats(-20, 0)))
def test_estimators_vanish_when_pi_equals_pi_ref(logp: np.ndarray) -> None:
    for kind in ("k1", "k2", "k3"):
        assert np.all(ref.kl_estimate(logp, logp, kind) == 0.0)


@given(logits_ref=hnp.arrays(np.float64, 6, elements=st.floats(-5, 5)), shift=st.floats(0.1, 3.0))
def test_kl_penalty_lowers_the_expected_reward_when_pi_moves_away(logits_ref: np.ndarray, shift: float) -> None:
    """E_pi[sum_t r_t] = R - beta KL(pi||pi_ref): moving pi away from pi_ref lowers the expected shaped reward."""
    log_q = logits_ref - np.log(np.sum(np.exp(logits_ref)))
    logits = logits_ref.copy()
    logits[0] += shift
    log_p = logits - np.log(np.sum(np.exp(logits)))
    vocab = len(log_p)
    shaped = ref.kl_shaped_rewards(np.ones(vocab), log_p[:, None], log_q[:, None], np.ones((vocab, 1)), beta=0.5)
    expected_reward = float(np.sum(np.exp(log_p) * shaped[:, 0]))
    assert expected_reward < 1.0
    assert expected_reward == pytest.approx(1.0 - 0.5 * float(ref.kl_exact(logits, logits_ref)), rel=1e-10)


@given(batch=masked_batch(n_arrays=2, lo=-8, hi=0), score=st.floats(-3, 3), beta=st.floats(0, 2))
def test_kl_shaped_rewards_telescope_per_sequence(batch, score: float, beta: float) -> None:
    logp, logp_ref, mask = batch
    scores = np.full(mask.shape[0], score)
    shaped = ref.kl_shaped_rewards(scores, logp, logp_ref, mask, beta)
    for b in range(mask.shape[0]):
        seq_log_ratio = float(np.sum(logp[b][mask[b]]) - np.sum(logp_ref[b][mask[b]]))
        assert shaped[b].sum() == pytest.approx(score - beta * seq_log_ratio, rel=1e-10, abs=1e-10)
    assert np.all(shaped[~mask] == 0.0)


# ---------------------------------------------------------------- reward model


@given(d=st.floats(-40, 40))
def test_swapping_winner_and_loser_changes_the_loss_by_minus_delta(d: float) -> None:
    assert ref.reward_model_loss([d], [0.0]) - ref.reward_model_loss([-d], [0.0]) == pytest.approx(-d, abs=1e-9)


@given(
    rewards=hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(2, 6)), elements=st.floats(-5, 5)),
    c=st.floats(-100, 100),
)
def test_reward_model_losses_are_shift_invariant(rewards: np.ndarray, c: float) -> None:
    assert ref.ranking_loss(rewards + c) == pytest.approx(ref.ranking_loss(rewards), rel=1e-9, abs=1e-12)
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    shifted = ref.reward_model_loss(chosen + c, rejected + c)
    assert shifted == pytest.approx(ref.reward_model_loss(chosen, rejected), rel=1e-9, abs=1e-12)


@given(rewards=hnp.arrays(np.float64, (1, 5), elements=st.floats(-5, 5)))
def test_ranking_loss_is_the_mean_of_the_pairwise_losses(rewards: np.ndarray) -> None:
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    assert len(pairs) == math.comb(5, 2)
    pairwise = [ref.reward_model_loss(rewards[:, i], rewards[:, j]) for i, j in pairs]
    assert ref.ranking_loss(rewards) == pytest.approx(sum(pairwise) / len(pairs), rel=1e-12)


# ---------------------------------------------------------------- GAE


@given(batch=masked_batch(n_arrays=2), gamma=st.floats(0, 1))
def test_gae_lambda_one_is_reward_to_go_minus_value(batch, gamma: float) -> None:
    rewards, values, mask = batch
    adv = ref.gae(rewards, values, mask, gamma=gamma, lam=1.0).advantages
    for b in range(mask.shape[0]):
        r, v = rewards[b][mask[b]], values[b][mask[b]]
        to_go = [sum(gamma**k * r[t + k] for k in range(len(r) - t)) for t in range(len(r))]
        np.testing.assert_allclose(adv[b][mask[b]], np.array(to_go) - v, rtol=1e-9, atol=1e-9)


@given(batch=masked_batch(n_arrays=2), gamma=st.floats(0, 1))
def test_gae_lambda_zero_is_the_td_error(batch, gamma: float) -> None:
    rewards, values, mask = batch
    adv = ref.gae(rewards, values, mask, gamma=gamma, lam=0.0).advantages
    for b in range(mask.shape[0]):
        r, v = rewards[b][mask[b]], values[b][mask[b]]
        v_next = np.append(v[1:], 0.0)
        np.testing.assert_allclose(adv[b][mask[b]], r + gamma * v_next - v, rtol=1e-12, atol=1e-12)


@given(batch=masked_batch(n_arrays=2), gamma=st.floats(0, 1), lam=st.floats(0, 1))
def test_gae_on_a_padded_row_equals_gae_on_the_unpadded_row(batch, gamma: float, lam: float) -> None:
    rewards, values, mask = batch
    out = ref.gae(rewards, values, mask, gamma, lam)
    for b in range(mask.shape[0]):
        r, v = strip_padding(rewards[b], mask[b]), strip_padding(values[b], mask[b])
        alone = ref.gae(r, v, np.ones_like(r), gamma, lam)
        np.testing.assert_allclose(out.advantages[b][mask[b]], alone.advantages[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out.returns[b][mask[b]], alone.returns[0], rtol=1e-12, atol=1e-12)
    assert np.all(out.advantages[~mask] == 0) and np.all(out.returns[~mask] == 0)


# ---------------------------------------------------------------- entropy, policy loss, aggregation


@given(logits=hnp.arrays(np.float64, (2, 3, 7), elements=st.floats(-30, 30)))
def test_entropy_is_between_zero_and_log_v(logits: np.ndarray) -> None:
    h = ref.entropy_from_logits(logits)
    assert np.all(h >= -1e-12) and np.all(h <= math.log(7) + 1e-12)


@given(batch=masked_batch(n_arrays=2), eps=st.floats(0.05, 0.5))
def test_ratio_one_gives_minus_mean_advantage(batch, eps: float) -> None:
    logp, adv, mask = batch
    expected = -np.mean([adv[b][mask[b]].mean() for b in range(mask.shape[0])])
    assert ref.policy_loss(logp, logp, adv, mask, eps) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@given(batch=masked_batch(n_arrays=3, lo=-2, hi=2))
def test_policy_loss_is_the_mean_of_per_row_losses(batch) -> None:
    """Row-splitting invariance of the seq-mean-token-mean loss; token-sum modes likewise."""
    logp, logp_old, adv, mask = batch
    whole = ref.policy_loss(logp, logp_old, adv, mask)
    rows = [ref.policy_loss(logp[b : b + 1], logp_old[b : b + 1], adv[b : b + 1], mask[b : b + 1]) for b in
            range(mask.shape[0])]  # fmt: skip
    assert whole == pytest.approx(np.mean(rows), rel=1e-12, abs=1e-12)
    whole_sum = ref.policy_loss(logp, logp_old, adv, mask, agg="seq-mean-token-sum")
    rows_sum = [ref.policy_loss(logp[b : b + 1], logp_old[b : b + 1], adv[b : b + 1], mask[b : b + 1],
                                agg="seq-mean-token-sum") for b in range(mask.shape[0])]  # fmt: skip
    assert whole_sum == pytest.approx(np.mean(rows_sum), rel=1e-12, abs=1e-12)


@given(batch=masked_batch(n_arrays=3, lo=-2, hi=2), fill=st.floats(-1e6, 1e6))
def test_padding_content_never_matters(batch, fill: float) -> None:
    logp, logp_old, adv, mask = batch
    filled = [np.where(mask, a, fill) for a in (logp, logp_old, adv)]
    for agg in ref.AGGREGATION_MODES:
        assert ref.policy_loss(logp, logp_old, adv, mask, agg=agg) == ref.policy_loss(*filled, mask, agg=agg)
    assert np.array_equal(ref.whiten(adv, mask, unbiased=False), ref.whiten(filled[2], mask, unbiased=False))


@given(
    log_ratio=hnp.arrays(np.float64, 16, elements=st.floats(-3, 3)),
    adv=hnp.arrays(np.float64, 16, elements=st.floats(-5, 5)),
    eps=st.floats(0.05, 0.5),
)
def test_gradient_is_exactly_zero_where_the_clip_binds(log_ratio: np.ndarray, adv: np.ndarray, eps: float) -> None:
    grad = ref.ppo_clip_grad(log_ratio, np.zeros(16), adv, eps)
    r = np.exp(log_ratio)
    clipped = ((adv > 0) & (r > 1 + eps)) | ((adv < 0) & (r < 1 - eps))
    assert np.all(grad[clipped] == 0.0)
    np.testing.assert_allclose(grad[~clipped], (r * adv)[~clipped], rtol=1e-14)
    # and the objective is flat there: a small move of log pi does not change it
    h = 1e-7
    up = ref.ppo_clip_objective(log_ratio + h, np.zeros(16), adv, eps)
    down = ref.ppo_clip_objective(log_ratio - h, np.zeros(16), adv, eps)
    far = np.abs(r - (1 + eps)) > 1e-5
    far &= np.abs(r - (1 - eps)) > 1e-5
    np.testing.assert_allclose(((up - down) / (2 * h))[far], grad[far], rtol=1e-5, atol=1e-6)


@given(batch=masked_batch(n_arrays=1, min_len=2))
def test_whiten_has_zero_mean_and_unit_variance(batch) -> None:
    x, mask = batch
    spread = np.ptp(x[mask])
    if spread < 0.1:  # the 1e-8 inside the root is then negligible (< 1e-5 relative)
        return
    w = ref.whiten(x, mask, unbiased=True)
    assert w[mask].mean() == pytest.approx(0.0, abs=1e-9)
    assert w[mask].var(ddof=1) == pytest.approx(1.0, rel=1e-3)  # 1e-8 in the root lowers it slightly
    kept = ref.whiten(x, mask, shift_mean=False)
    assert kept[mask].mean() == pytest.approx(x[mask].mean(), rel=1e-9, abs=1e-9)
