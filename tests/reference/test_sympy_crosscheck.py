"""The reference agrees with the sympy derivations at hypothesis-drawn points, and every derivation holds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
from hypothesis import assume, given
from hypothesis import strategies as st

from rlhf_oracle import derivations
from rlhf_oracle import reference as ref

finite = st.floats(-5.0, 5.0, allow_nan=False)


@pytest.mark.parametrize("derivation", derivations.all_derivations(), ids=lambda d: d.name)
def test_every_derivation_holds_and_renders(derivation: derivations.Derivation) -> None:
    assert derivation.holds, derivation.name
    assert derivation.statement and derivation.derivation and derivation.page


def test_a_wrong_claim_does_not_hold() -> None:
    """The clip-gradient check has teeth: claiming r A everywhere (no zero region) is refuted by sympy."""
    d = derivations.get("ppo_clip_grad")
    x, adv, eps = d.exprs["x"], d.exprs["A"], d.exprs["eps"]
    point = {x: sp.log(sp.Rational(3, 2)), adv: 1, eps: sp.Rational(1, 5)}  # A>0, r = 1.5 > 1.2: clipped
    assert sp.simplify(d.exprs["grad"].subs(point)) == 0
    assert sp.simplify((sp.exp(x) * adv).subs(point)) != 0


@given(log_ratio=finite, adv=finite, eps=st.floats(0.05, 0.5))
def test_clip_objective_and_gradient_match_sympy(log_ratio: float, adv: float, eps: float) -> None:
    d = derivations.get("ppo_clip_grad")
    ratio = math.exp(log_ratio)
    # stay away from the kinks, where the derivative is one-sided
    assume(min(abs(ratio - (1 + eps)), abs(ratio - (1 - eps))) > 1e-6 and abs(adv) > 1e-9)
    symbols = (d.exprs["x"], d.exprs["A"], d.exprs["eps"])
    objective = sp.lambdify(symbols, d.exprs["surrogate"], "math")(log_ratio, adv, eps)
    grad = float(d.exprs["grad"].subs(dict(zip(symbols, (log_ratio, adv, eps), strict=True))).evalf())
    assert ref.ppo_clip_objective([log_ratio], [0.0], [adv], eps)[0] == pytest.approx(objective, rel=1e-12, abs=1e-15)
    assert ref.ppo_clip_grad([log_ratio], [0.0], [adv], eps)[0] == pytest.approx(grad, rel=1e-12, abs=1e-15)


@given(delta=st.floats(-30.0, 30.0))
def test_pairwise_loss_and_its_derivative_match_sympy(delta: float) -> None:
    grad_d = derivations.get("neg_log_sigmoid_grad")
    f = sp.lambdify(grad_d.exprs["Delta"], grad_d.exprs["f"], "mpmath")
    g = sp.lambdify(grad_d.exprs["Delta"], grad_d.exprs["grad"], "mpmath")
    assert ref.reward_model_loss([delta], [0.0]) == pytest.approx(float(f(delta)), rel=1e-12)
    # central difference of the reference against the symbolic derivative sigma(D) - 1
    h = 1e-5
    numeric = (ref.reward_model_loss([delta + h], [0.0]) - ref.reward_model_loss([delta - h], [0.0])) / (2 * h)
    assert numeric == pytest.approx(float(g(delta)), abs=1e-8)


@given(
    rewards=st.lists(finite, min_size=5, max_size=5),
    values=st.lists(finite, min_size=5, max_size=5),
    gamma=st.floats(0.0, 1.0),
    lam=st.floats(0.0, 1.0),
)
def test_gae_matches_the_symbolic_recursion(
    rewards: list[float], values: list[float], gamma: float, lam: float
) -> None:
    g = derivations.gae_recursion(5)
    subs = {**dict(zip(g["r"], rewards, strict=True)), **dict(zip(g["V"], values, strict=True))}
    subs.update({g["gamma"]: gamma, g["lam"]: lam})
    expected = [float(a.subs(subs)) for a in g["advantages"]]
    got = ref.gae(np.array([rewards]), np.array([values]), np.ones((1, 5)), gamma, lam)
    np.testing.assert_allclose(got.advantages[0], expected, rtol=1e-10, atol=1e-10)


@given(
    logp=st.lists(st.floats(-8.0, 0.0), min_size=5, max_size=5),
    logp_ref=st.lists(st.floats(-8.0, 0.0), min_size=5, max_size=5),
    score=finite,
    beta=st.floats(0.0, 1.0),
)
def test_kl_shaped_rewards_telescope_as_sympy_says(
    logp: list[float], logp_ref: list[float], score: float, beta: float
) -> None:
    d = derivations.get("kl_reward_telescoping")
    claimed = d.exprs["claimed"]
    symbols = sorted(claimed.free_symbols, key=str)
    values = {"R": score, "beta": beta}
    values.update({f"logpi{t}": logp[t] for t in range(5)})
    values.update({f"logpiref{t}": logp_ref[t] for t in range(5)})
    expected = float(claimed.subs({s: values[str(s)] for s in symbols}).evalf())
    shaped = ref.kl_shaped_rewards(np.array([score]), np.array([logp]), np.array([logp_ref]), np.ones((1, 5)), beta)
    assert shaped.sum() == pytest.approx(expected, rel=1e-10, abs=1e-10)


categorical = st.lists(st.floats(0.05, 1.0), min_size=3, max_size=3).map(lambda w: np.array(w) / sum(w))


@given(p=categorical, q=categorical)
def test_kl_estimator_expectations_match_sympy(p: np.ndarray, q: np.ndarray) -> None:
    d = derivations.get("kl_estimators_expectation")
    subs = {d.exprs["p"][0]: p[0], d.exprs["p"][1]: p[1], d.exprs["q"][0]: q[0], d.exprs["q"][1]: q[1]}
    for kind in ("k1", "k2", "k3"):
        by_enumeration = float(np.sum(p * ref.kl_estimate(np.log(p), np.log(q), kind)))
        assert by_enumeration == pytest.approx(float(d.exprs[f"E_{kind}"].subs(subs)), rel=1e-10, abs=1e-12)


@given(theta=st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3))
def test_kl_estimator_gradients_match_sympy(theta: list[float]) -> None:
    """Expected gradient of each reference estimator used as a loss (samples from pi held fixed), by central
    differences of the reference, equals the symbolic expected gradient."""
    d = derivations.get("kl_estimator_gradients")
    q = np.array([float(v) for v in d.exprs["q"]])

    def log_pi(t: np.ndarray) -> np.ndarray:
        return t - math.log(np.sum(np.exp(t)))

    th = np.array(theta)
    pi = np.exp(log_pi(th))
    h = 1e-6
    subs = dict(zip(d.exprs["theta"], theta, strict=True))
    for kind in ("k1", "k2", "k3"):
        for j in range(3):
            e = np.zeros(3)
            e[j] = h
            dk = ref.kl_estimate(log_pi(th + e), np.log(q), kind) - ref.kl_estimate(log_pi(th - e), np.log(q), kind)
            numeric = float(np.sum(pi * dk / (2 * h)))
            symbolic = float(d.exprs["expected_grads"][kind][j].subs(subs))
            target = float(d.exprs["targets"][kind][j].subs(subs)) if kind != "k1" else 0.0
            assert numeric == pytest.approx(symbolic, abs=1e-7)
            assert symbolic == pytest.approx(target, abs=1e-10)
