"""SPEC "What the oracle must prove": gradients, signs and invariants, run on torch_impl (and the reference).

Each test states one property; the inputs come from the oracle's strategies, so the properties are searched over
masks with holes, left/right padding, extreme logits and log-ratios at the clip boundaries.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import rlhf_oracle.reference as R
import rlhf_oracle.torch_impl as T
from rlhf_oracle import derivations
from rlhf_oracle.properties import strategies as S

F64 = torch.float64


def t(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.bool if x.dtype == np.bool_ else F64)


def close(a: object, b: object, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=rtol, atol=atol)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy()


# ----------------------------------------------------------------------------------------------------------------
# gradients


@given(S.cases("ppo_clip_objective"))
def test_autograd_of_the_clipped_objective_equals_ppo_clip_grad(case: S.Case) -> None:
    logp, logp_old, adv = (t(a) for a in case.args)
    logp.requires_grad_(True)
    T.ppo_clip_objective(logp, logp_old, adv, **case.kwargs).sum().backward()
    assert logp.grad is not None
    analytic = _np(T.ppo_clip_grad(logp.detach(), logp_old, adv, **case.kwargs))
    reference = R.ppo_clip_grad(*case.args, **case.kwargs)
    r = np.exp(case.args[0] - case.args[1])
    eps = case.kwargs["clip_eps"]
    high = case.kwargs["clip_eps_high"] or eps
    bounds = [1 - eps, 1 + high] + ([case.kwargs["dual_clip"]] if case.kwargs["dual_clip"] else [])
    off_kink = np.all([np.abs(r - b) > 1e-12 for b in bounds], axis=0)
    close(_np(logp.grad)[off_kink], analytic[off_kink])
    close(analytic[off_kink], reference[off_kink])


@given(st.data())
def test_gradient_is_exactly_zero_where_the_clip_binds(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 12))
    eps = data.draw(st.sampled_from([0.1, 0.2, 0.3]))
    adv = data.draw(S.float_arrays((n,), 0.01, 5.0)) * data.draw(st.sampled_from([1.0, -1.0]))
    # r beyond the bound on the side where it binds: r > 1 + eps for A > 0, r < 1 - eps for A < 0
    excess = data.draw(S.float_arrays((n,), 1e-6, 2.0))
    ratio = np.where(adv > 0, (1 + eps) * np.exp(excess), (1 - eps) * np.exp(-excess))
    logp_old = data.draw(S.float_arrays((n,), -10.0, 0.0))
    logp = t(logp_old + np.log(ratio)).requires_grad_(True)
    T.ppo_clip_objective(logp, t(logp_old), t(adv), eps).sum().backward()
    assert logp.grad is not None
    assert torch.all(logp.grad == 0.0)
    assert np.all(R.ppo_clip_grad(logp_old + np.log(ratio), logp_old, adv, eps) == 0.0)


@given(S.float_arrays((1,), -30.0, 30.0))
def test_pairwise_loss_derivative_is_sigmoid_minus_one(delta: np.ndarray) -> None:
    chosen = t(delta).requires_grad_(True)
    T.reward_model_loss(chosen, t(np.zeros(1))).backward()
    assert chosen.grad is not None
    sigmoid = 1.0 / (1.0 + math.exp(-float(delta[0])))
    close(chosen.grad.item(), sigmoid - 1.0, rtol=1e-12, atol=1e-15)
    claimed = derivations.get("neg_log_sigmoid_grad").exprs["grad"]
    d = derivations.get("neg_log_sigmoid_grad").exprs["Delta"]
    close(float(claimed.subs(d, float(delta[0]))), sigmoid - 1.0, rtol=1e-9, atol=1e-15)


def _gradcheck_inputs(formula: str) -> tuple[tuple[object, ...], dict[str, object], tuple[int, ...]]:
    rng = np.random.default_rng(7)
    b, tl = 2, 4
    mask = np.array([[1, 1, 0, 1], [0, 1, 1, 1]], dtype=bool)
    logp_old = rng.uniform(-3, -0.5, (b, tl))
    logp = logp_old + rng.uniform(-0.08, 0.08, (b, tl))  # |log r| < 0.08: away from the clip kinks at eps = 0.2
    adv = rng.normal(size=(b, tl))
    logits = rng.normal(size=(b, tl, 5))
    table: dict[str, tuple[tuple[object, ...], dict[str, object], tuple[int, ...]]] = {
        "token_logprobs": ((t(logits), torch.tensor(rng.integers(0, 5, (b, tl)))), {}, (0,)),
        "entropy_from_logits": ((t(logits),), {}, (0,)),
        "ppo_clip_objective": ((t(logp), t(logp_old), t(adv)), {}, (0,)),
        "aggregate": ((t(adv), t(mask)), {}, (0,)),
        "policy_loss": ((t(logp), t(logp_old), t(adv), t(mask)), {}, (0,)),
        "kl_estimate": ((t(logp), t(logp_old)), {"kind": "k3"}, (0,)),
        "kl_exact": ((t(logits), t(rng.normal(size=(b, tl, 5)))), {}, (0,)),
        "rlhf_objective": ((t(rng.normal(size=b)), t(logp), t(logp_old), t(mask), 0.1), {}, (1,)),
        "ptx_loss": ((t(logp), t(mask)), {}, (0,)),
        "reward_model_loss": ((t(rng.normal(size=3)), t(rng.normal(size=3))), {}, (0, 1)),
        "ranking_loss": ((t(rng.normal(size=(2, 4))),), {}, (0,)),
        "value_loss": ((t(adv + 0.05), t(adv), t(adv + 1.0), t(mask)), {}, (0,)),
    }
    return table[formula]


@pytest.mark.parametrize(
    "formula",
    ["token_logprobs", "entropy_from_logits", "ppo_clip_objective", "aggregate", "policy_loss", "kl_estimate",
     "kl_exact", "rlhf_objective", "ptx_loss", "reward_model_loss", "ranking_loss", "value_loss"],
)  # fmt: skip
def test_gradcheck_float64(formula: str) -> None:
    args, kwargs, wrt = _gradcheck_inputs(formula)
    fn = getattr(T, formula)
    leaves = [a.clone().requires_grad_(True) if i in wrt else a for i, a in enumerate(args)]  # type: ignore[union-attr]

    def f(*inputs: torch.Tensor) -> torch.Tensor:
        full = list(leaves)
        for i, x in zip(wrt, inputs, strict=True):
            full[i] = x
        return fn(*full, **kwargs)

    assert torch.autograd.gradcheck(f, tuple(leaves[i] for i in wrt), eps=1e-6, atol=1e-8, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# KL estimators: signs, expectations, gradients


@given(S.log_ratios((12,), far=True), st.sampled_from([None, 20.0]))
def test_k2_and_k3_are_non_negative_per_token(delta: np.ndarray, clamp: float | None) -> None:
    logp_ref = np.full(delta.shape, -5.0)
    assume(clamp is not None or np.all(delta > -700))  # without a clamp, k3 overflows float64 beyond 709.78
    for kind in ("k2", "k3"):
        out = T.kl_estimate(t(logp_ref + delta), t(logp_ref), kind, log_ratio_clamp=clamp)
        assert torch.all(out >= 0), kind
        assert np.all(R.kl_estimate(logp_ref + delta, logp_ref, kind, log_ratio_clamp=clamp) >= 0)


@given(S.float_arrays((6,), -10.0, 0.0))
def test_every_estimator_is_zero_when_pi_equals_pi_ref(logp: np.ndarray) -> None:
    for kind in ("k1", "k2", "k3"):
        assert torch.all(T.kl_estimate(t(logp), t(logp), kind) == 0)
        assert np.all(R.kl_estimate(logp, logp, kind) == 0)
    logits = np.stack([logp, logp[::-1]])
    close(_np(T.kl_exact(t(logits), t(logits))), 0.0, atol=1e-15)


@given(st.integers(2, 6).flatmap(lambda v: st.tuples(S.float_arrays((v,), -4.0, 4.0), S.float_arrays((v,), -4.0, 4.0))))
def test_exact_expectations_of_k1_and_k3_are_the_kl(pair: tuple[np.ndarray, np.ndarray]) -> None:
    z, z_ref = pair
    logp = torch.log_softmax(t(z), -1)
    logq = torch.log_softmax(t(z_ref), -1)
    p = logp.exp()
    kl = T.kl_exact(t(z), t(z_ref))
    for kind in ("k1", "k3"):
        expectation = (p * T.kl_estimate(logp, logq, kind)).sum()  # E_{x ~ pi}[k(x)] by enumeration
        close(expectation.item(), kl.item(), rtol=1e-9, atol=1e-12)
    assert kl.item() >= -1e-15
    close(kl.item(), R.kl_exact(z, z_ref), rtol=1e-9, atol=1e-14)


def test_expected_gradients_of_kl_estimators_match_the_sympy_derivation() -> None:
    d = derivations.get("kl_estimator_gradients")
    assert d.holds
    theta_syms, targets, q = d.exprs["theta"], d.exprs["targets"], [float(v) for v in d.exprs["q"]]
    for point in ((0.0, 0.0, 0.0), (1.0, -2.0, 0.5), (3.0, 0.0, -1.0), (-0.7, 0.3, 1.9)):
        theta = torch.tensor(point, dtype=F64, requires_grad=True)
        logp = torch.log_softmax(theta, -1)
        pi = logp.exp().detach()
        for kind in ("k1", "k2", "k3"):
            k = T.kl_estimate(logp, torch.log(torch.tensor(q, dtype=F64)), kind)
            # on-policy expectation of the gradient: samples from pi, pi itself not differentiated
            (grad,) = torch.autograd.grad((pi * k).sum(), theta, retain_graph=True)
            subs = dict(zip(theta_syms, point, strict=True))
            expected = [float(e.subs(subs)) for e in targets[kind]]
            close(grad.numpy(), expected, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# KL in the reward, the objective, the reward model


@given(S.cases("kl_shaped_rewards", {"kind": "k1", "score_position": "last"}))
def test_kl_shaped_rewards_telescope_to_score_minus_beta_log_ratio(case: S.Case) -> None:
    scores, logp, logp_ref, mask, beta = case.args
    out = _np(T.kl_shaped_rewards(t(scores), t(logp), t(logp_ref), t(mask), beta, "k1"))
    log_ratio = (np.where(mask, logp, 0.0) - np.where(mask, logp_ref, 0.0)).sum(1)
    close(out.sum(1), scores - beta * log_ratio, rtol=1e-9, atol=1e-9)


@given(S.cases("kl_shaped_rewards"), st.sampled_from(["k2", "k3"]))
def test_the_kl_penalty_lowers_the_reward_when_pi_moves_away(case: S.Case, kind: str) -> None:
    scores, logp, logp_ref, mask, beta = case.args
    kw = {"score_position": case.kwargs.get("score_position", "last")}
    moved = _np(T.kl_shaped_rewards(t(scores), t(logp), t(logp_ref), t(mask), beta, kind, **kw)).sum(1)
    same = _np(T.kl_shaped_rewards(t(scores), t(logp_ref), t(logp_ref), t(mask), beta, kind, **kw)).sum(1)
    close(same, scores)
    assert np.all(moved <= same + 1e-12)
    # and InstructGPT's objective drops as beta grows whenever the sequence log-ratio is positive
    lr = (np.where(mask, logp, 0.0) - np.where(mask, logp_ref, 0.0)).sum(1)
    args = (t(scores), t(logp), t(logp_ref), t(mask))
    j_small, j_big = (T.rlhf_objective(*args, b).item() for b in (0.01, 0.5))
    if lr.mean() > 1e-9:
        assert j_big < j_small


@given(S.float_arrays((5,), -40.0, 40.0))
def test_swapping_winner_and_loser_changes_the_loss_by_minus_delta(d: np.ndarray) -> None:
    zero = t(np.zeros_like(d))
    for b in range(d.size):
        one = t(d[b : b + 1])
        diff = T.reward_model_loss(one, zero[:1]) - T.reward_model_loss(-one, zero[:1])
        close(diff.item(), -d[b], rtol=1e-12, atol=1e-12)


@given(S.cases("reward_model_loss"), st.floats(-100, 100, allow_nan=False))
def test_reward_model_loss_is_shift_invariant(case: S.Case, shift: float) -> None:
    chosen, rejected = case.args
    margin = case.kwargs.get("margin")
    m = t(margin) if isinstance(margin, np.ndarray) else margin
    base = T.reward_model_loss(t(chosen), t(rejected), m).item()
    shifted = T.reward_model_loss(t(chosen + shift), t(rejected + shift), m).item()
    close(shifted, base, rtol=1e-9, atol=1e-9 * (1 + abs(shift)))  # rounding of r + shift: eps * |shift|


# ----------------------------------------------------------------------------------------------------------------
# GAE, entropy, aggregation


@given(S.cases("gae"))
def test_gae_lambda_one_is_reward_to_go_minus_value_and_lambda_zero_is_delta(case: S.Case) -> None:
    rewards, values, mask = case.args
    gamma = case.kwargs.get("gamma", 1.0)
    one = T.gae(t(rewards), t(values), t(mask), gamma, 1.0)
    zero = T.gae(t(rewards), t(values), t(mask), gamma, 0.0)
    for b in range(mask.shape[0]):
        pos = np.flatnonzero(mask[b])
        r, v = rewards[b, pos], values[b, pos]
        n = len(pos)
        to_go = np.array([sum(gamma**k * r[i + k] for k in range(n - i)) for i in range(n)])
        v_next = np.append(v[1:], 0.0)
        scale = 1 + np.abs(r).sum() + np.abs(v).sum()
        close(_np(one.advantages)[b, pos], to_go - v, rtol=1e-9, atol=1e-12 * scale)
        close(_np(zero.advantages)[b, pos], r + gamma * v_next - v, rtol=1e-9, atol=1e-12 * scale)


@given(S.cases("entropy_from_logits"))
def test_entropy_is_between_zero_and_log_v(case: S.Case) -> None:
    (z,) = case.args
    h = _np(T.entropy_from_logits(t(z), **case.kwargs))
    slack = 1e-12 * (1 + np.abs(z).max())
    assert np.all(h >= -slack)
    assert np.all(h <= math.log(z.shape[-1]) + slack)


@given(S.cases("policy_loss", {"clip_eps_high": None, "dual_clip": None}))
def test_ratio_one_gives_minus_the_mean_advantage(case: S.Case) -> None:
    logp, _, adv, mask = case.args
    agg = case.kwargs.get("agg", "seq-mean-token-mean")
    mt = case.kwargs.get("max_tokens")
    loss = T.policy_loss(t(logp), t(logp), t(adv), t(mask), agg=agg, max_tokens=mt)
    close(loss.item(), -R.aggregate(adv, mask, agg, max_tokens=mt), rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------------------------------------------
# padding and row splitting

PER_TOKEN = ["policy_loss", "gae", "whiten", "value_loss", "kl_shaped_rewards", "aggregate", "ptx_loss"]


def _call(formula: str, case: S.Case) -> list[np.ndarray]:
    out = getattr(T, formula)(*(t(a) if isinstance(a, np.ndarray) else a for a in case.args), **case.kwargs)
    parts = out if isinstance(out, tuple) else (out,)
    return [_np(p) for p in parts]


@pytest.mark.parametrize("formula", PER_TOKEN)
@given(data=st.data())
def test_whatever_fills_the_padding_the_result_is_the_same(formula: str, data: st.DataObject) -> None:
    case = data.draw(S.cases(formula))
    fill = data.draw(st.sampled_from(S.FILLS))
    base = _call(formula, case.refilled("zero"))
    other = _call(formula, case.refilled(fill, rng_seed=data.draw(st.integers(0, 10))))
    for a, b in zip(base, other, strict=True):
        assert np.array_equal(a, b), f"{formula}: masked slots changed the result (fill={fill})"


def _compact_row(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    return x[None, keep]


@given(S.cases("gae"))
def test_gae_on_a_padded_row_equals_gae_on_the_unpadded_row(case: S.Case) -> None:
    rewards, values, mask = case.args
    full = T.gae(t(rewards), t(values), t(mask), **case.kwargs)
    for b in range(mask.shape[0]):
        keep = mask[b]
        if not keep.any():
            continue
        row = T.gae(t(_compact_row(rewards[b], keep)), t(_compact_row(values[b], keep)),
                    t(np.ones((1, int(keep.sum())), dtype=bool)), **case.kwargs)  # fmt: skip
        close(_np(full.advantages)[b, keep], _np(row.advantages)[0], rtol=1e-12, atol=1e-12)
        close(_np(full.returns)[b, keep], _np(row.returns)[0], rtol=1e-12, atol=1e-12)


@given(S.cases("policy_loss", {"agg": "seq-mean-token-mean"}))
def test_policy_loss_on_padded_rows_equals_the_loss_on_unpadded_rows_and_splits_by_row(case: S.Case) -> None:
    logp, logp_old, adv, mask = case.args
    kw = {k: v for k, v in case.kwargs.items() if k in ("clip_eps", "clip_eps_high", "dual_clip")}
    full = T.policy_loss(t(logp), t(logp_old), t(adv), t(mask), **kw).item()
    rows = []
    for b in range(mask.shape[0]):
        keep = mask[b]
        ones = t(np.ones((1, int(keep.sum())), dtype=bool))
        rows.append(T.policy_loss(*(t(_compact_row(x[b], keep)) for x in (logp, logp_old, adv)), ones, **kw).item())
        split = T.policy_loss(*(t(x[b : b + 1]) for x in (logp, logp_old, adv)), t(mask[b : b + 1]), **kw).item()
        close(split, rows[-1], rtol=1e-12, atol=1e-14)
    close(full, np.mean(rows), rtol=1e-12, atol=1e-14)  # row-splitting: the batch loss is the mean of row losses


@given(S.cases("kl_shaped_rewards", {"score_position": "last"}))
def test_kl_shaped_rewards_split_by_row(case: S.Case) -> None:
    scores, logp, logp_ref, mask, beta = case.args
    full = _np(T.kl_shaped_rewards(t(scores), t(logp), t(logp_ref), t(mask), beta, **case.kwargs))
    for b in range(mask.shape[0]):
        sl = slice(b, b + 1)
        row = T.kl_shaped_rewards(t(scores[sl]), t(logp[sl]), t(logp_ref[sl]), t(mask[sl]), beta, **case.kwargs)
        close(full[b], _np(row)[0], rtol=1e-12, atol=1e-14)


@given(hnp.arrays(np.float64, (3, 5), elements=st.floats(-5, 5)), S.masks(3, 5, min_valid=1))
def test_seq_mean_token_sum_splits_by_row(values: np.ndarray, mask: np.ndarray) -> None:
    total = T.aggregate(t(values), t(mask), "seq-mean-token-sum").item()
    rows = [T.aggregate(t(values[b : b + 1]), t(mask[b : b + 1]), "seq-mean-token-sum").item() for b in range(3)]
    close(total, np.mean(rows), rtol=1e-12, atol=1e-14)
