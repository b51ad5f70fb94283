"""Symbolic derivations (sympy) that pin the reference formulas down.

Each derivation is a claim about a formula, proved or evaluated exactly with sympy, and returned as a
:class:`Derivation` that the docs render as LaTeX (``statement`` and ``derivation`` steps) and the tests
evaluate (``holds``, and the sympy expressions in ``exprs`` at hypothesis-drawn points).

This module needs sympy (the ``sympy`` extra) and imports nothing else of the package.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import sympy as sp

__all__ = [
    "Derivation",
    "all_derivations",
    "clipped_surrogate",
    "gae_recursion",
    "get",
    "neg_log_sigmoid",
]


@dataclass(frozen=True)
class Derivation:
    """A symbolic claim, its LaTeX, and whether sympy confirms it."""

    name: str
    """Identifier, e.g. ``"ppo_clip_grad"``."""
    title: str
    """One-line human title (English)."""
    title_zh: str
    """The same title in Chinese (the docs' zh pages show it)."""
    statement: str
    """The claim in LaTeX (display math, without delimiters)."""
    derivation: tuple[str, ...]
    """LaTeX steps from the definitions to the claim."""
    holds: bool
    """True when sympy confirmed the claim (exact simplification or exact evaluation)."""
    page: str
    """Slug of the docs page it belongs on."""
    exprs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Sympy objects behind the claim, for tests that evaluate them at drawn points."""


# --------------------------------------------------------------------------------------------------------------
# PPO-Clip: the piecewise gradient


def clipped_surrogate() -> tuple[sp.Expr, dict[str, sp.Symbol]]:
    r"""The per-step clipped surrogate as a sympy expression of :math:`x = \log\pi - \log\pi_{old}`.

    Returns ``(L, symbols)`` with symbols ``x`` (log-ratio), ``A`` (advantage), ``eps`` (clip range, > 0).
    """
    x, adv = sp.symbols("x A", real=True)
    eps = sp.Symbol("epsilon", positive=True)
    r = sp.exp(x)
    clipped_r = sp.Max(sp.Min(r, 1 + eps), 1 - eps)
    surrogate = sp.Min(r * adv, clipped_r * adv)
    return surrogate, {"x": x, "A": adv, "eps": eps}


def _ppo_clip_grad() -> Derivation:
    surrogate, s = clipped_surrogate()
    x, adv, eps = s["x"], s["A"], s["eps"]
    r = sp.exp(x)
    claimed = sp.Piecewise(
        (0, (adv > 0) & (r > 1 + eps)),
        (0, (adv < 0) & (r < 1 - eps)),
        (r * adv, True),
    )
    grad = sp.diff(surrogate, x)
    # Exact evaluation at rational points strictly inside each of the five regions (A>0 / A<0, r below, inside,
    # above the clip range), with eps = 1/5: the derivative of Min/Max is piecewise constant in the branch.
    points = []
    for a in (sp.Rational(3, 2), sp.Rational(-3, 2)):
        for ratio in (sp.Rational(1, 2), sp.Rational(9, 10), sp.Rational(11, 10), sp.Rational(3, 2)):
            points.append({adv: a, x: sp.log(ratio), eps: sp.Rational(1, 5)})
    holds = all(sp.simplify(grad.subs(p) - claimed.subs(p)) == 0 for p in points)
    return Derivation(
        name="ppo_clip_grad",
        title="Gradient of the clipped surrogate with respect to log pi",
        title_zh="截断代理目标对 log π 的梯度",
        statement=(
            r"\frac{\partial}{\partial \log\pi}\min\big(rA,\ \mathrm{clip}(r,1-\epsilon,1+\epsilon)A\big) = "
            r"\begin{cases} 0 & A>0,\ r>1+\epsilon \\ 0 & A<0,\ r<1-\epsilon \\ rA & \text{otherwise} \end{cases}"
        ),
        derivation=(
            r"r = e^{\log\pi - \log\pi_{old}} \;\Rightarrow\; \frac{\partial r}{\partial \log\pi} = r",
            r"A>0:\ \min(rA, \mathrm{clip}(r)A) = A\min(r, \mathrm{clip}(r)) = A\min(r, 1+\epsilon)",
            r"A<0:\ \min(rA, \mathrm{clip}(r)A) = A\max(r, \mathrm{clip}(r)) = A\max(r, 1-\epsilon)",
            r"\text{the constant branch } (1\pm\epsilon)A \text{ has derivative } 0;"
            r"\ \text{the branch } rA \text{ has derivative } rA",
        ),
        holds=holds,
        page="ppo-clip",
        exprs=MappingProxyType({"surrogate": surrogate, "grad": grad, "claimed": claimed, **s}),
    )


# --------------------------------------------------------------------------------------------------------------
# -log sigmoid: the reward-model loss


def neg_log_sigmoid() -> tuple[sp.Expr, sp.Symbol]:
    r"""``(-log sigmoid(D), D)``: the pairwise reward-model loss as a function of the reward gap D."""
    d = sp.Symbol("Delta", real=True)
    return -sp.log(1 / (1 + sp.exp(-d))), d


def _sigmoid(d: sp.Expr) -> sp.Expr:
    return 1 / (1 + sp.exp(-d))


def _neg_log_sigmoid_grad() -> Derivation:
    f, d = neg_log_sigmoid()
    grad = sp.diff(f, d)
    holds = sp.simplify(grad - (_sigmoid(d) - 1)) == 0
    return Derivation(
        name="neg_log_sigmoid_grad",
        title="Derivative of the pairwise loss",
        title_zh="成对损失的导数",
        statement=r"\frac{d}{d\Delta}\big[-\log\sigma(\Delta)\big] = \sigma(\Delta) - 1",
        derivation=(
            r"-\log\sigma(\Delta) = \log(1 + e^{-\Delta})",
            r"\frac{d}{d\Delta}\log(1+e^{-\Delta}) = \frac{-e^{-\Delta}}{1+e^{-\Delta}} = \sigma(\Delta) - 1",
        ),
        holds=bool(holds),
        page="reward-model",
        exprs=MappingProxyType({"f": f, "grad": grad, "Delta": d}),
    )


def _neg_log_sigmoid_symmetry() -> Derivation:
    f, d = neg_log_sigmoid()
    difference = f - f.subs(d, -d)
    holds = sp.simplify(sp.expand_log(difference + d, force=True)) == 0
    return Derivation(
        name="neg_log_sigmoid_symmetry",
        title="Swapping winner and loser",
        title_zh="交换胜者与败者",
        statement=r"-\log\sigma(\Delta) - \big(-\log\sigma(-\Delta)\big) = -\Delta",
        derivation=(
            r"\log(1+e^{-\Delta}) - \log(1+e^{\Delta}) = \log\frac{e^{-\Delta}(e^{\Delta}+1)}{1+e^{\Delta}}",
            r"= \log e^{-\Delta} = -\Delta",
        ),
        holds=bool(holds),
        page="reward-model",
        exprs=MappingProxyType({"difference": difference, "Delta": d}),
    )


def _neg_log_sigmoid_convexity() -> Derivation:
    f, d = neg_log_sigmoid()
    second = sp.diff(f, d, 2)
    claimed = _sigmoid(d) * (1 - _sigmoid(d))
    holds = sp.simplify(second - claimed) == 0 and all(
        second.subs(d, value) > 0 for value in (-20, -1, 0, sp.Rational(1, 3), 20)
    )
    return Derivation(
        name="neg_log_sigmoid_convexity",
        title="The pairwise loss is convex in the reward gap",
        title_zh="成对损失是奖励差的凸函数",
        statement=r"\frac{d^2}{d\Delta^2}\big[-\log\sigma(\Delta)\big] = \sigma(\Delta)\big(1-\sigma(\Delta)\big) > 0",
        derivation=(
            r"\frac{d}{d\Delta}\big(\sigma(\Delta) - 1\big) = \sigma'(\Delta) = \sigma(\Delta)(1-\sigma(\Delta))",
            r"0 < \sigma(\Delta) < 1 \;\Rightarrow\; \sigma(\Delta)(1-\sigma(\Delta)) > 0",
        ),
        holds=bool(holds),
        page="reward-model",
        exprs=MappingProxyType({"second_derivative": second, "Delta": d}),
    )


def _ranking_normaliser() -> Derivation:
    k = sp.Symbol("K", integer=True, positive=True)
    i, j = sp.symbols("i j", integer=True, positive=True)
    n_pairs = sp.summation(sp.summation(1, (j, i + 1, k)), (i, 1, k))
    binomial = sp.binomial(k, 2)
    holds_count = sp.simplify(n_pairs - sp.expand_func(binomial)) == 0
    ratio = sp.simplify(sp.expand_func(binomial) / (k / 2))
    equal_at = sp.solve(sp.Eq(sp.expand_func(binomial), k / 2), k)
    holds = bool(holds_count) and sp.simplify(ratio - (k - 1)) == 0 and equal_at == [2]
    return Derivation(
        name="ranking_normaliser",
        title="The number of comparisons among K ranked answers",
        title_zh="K 个排序回答之间的比较次数",
        statement=(
            r"\sum_{i=1}^{K}\sum_{j=i+1}^{K} 1 = \binom{K}{2} = \frac{K(K-1)}{2}, \qquad "
            r"\binom{K}{2} \Big/ \frac{K}{2} = K - 1"
        ),
        derivation=(
            r"\sum_{i=1}^{K} (K - i) = \frac{K(K-1)}{2}",
            r"\frac{K(K-1)/2}{K/2} = K-1, \text{ so } \tfrac{K}{2} = \tbinom{K}{2} \iff K = 2",
        ),
        holds=holds,
        page="reward-model",
        exprs=MappingProxyType({"n_pairs": n_pairs, "K": k, "ratio_to_half_K": ratio}),
    )


# --------------------------------------------------------------------------------------------------------------
# KL estimators


def _categorical(prefix: str, n: int) -> list[sp.Expr]:
    """n probabilities as positive symbols, the last one 1 - sum(others)."""
    head = list(sp.symbols(f"{prefix}1:{n}", positive=True))
    return [*head, 1 - sum(head)]


def _kl_estimators_expectation() -> Derivation:
    n = 3
    p = _categorical("p", n)
    q = _categorical("q", n)
    kl = sum(p[i] * sp.log(p[i] / q[i]) for i in range(n))
    # k = estimator evaluated at a sample x ~ p, with r = q(x)/p(x)
    e_k1 = sum(p[i] * (-sp.log(q[i] / p[i])) for i in range(n))
    e_k2 = sum(p[i] * sp.log(q[i] / p[i]) ** 2 / 2 for i in range(n))
    e_k3 = sum(p[i] * ((q[i] / p[i] - 1) - sp.log(q[i] / p[i])) for i in range(n))
    k1_ok = sp.simplify(sp.expand_log(e_k1 - kl, force=True)) == 0
    k3_ok = sp.simplify(sp.expand_log(e_k3 - kl, force=True)) == 0
    point = {p[0]: sp.Rational(1, 2), p[1]: sp.Rational(1, 3), q[0]: sp.Rational(1, 4), q[1]: sp.Rational(1, 4)}
    k2_differs = sp.N((e_k2 - kl).subs(point), 30) != 0
    kl_nonnegative = sp.N(kl.subs(point), 30) > 0
    return Derivation(
        name="kl_estimators_expectation",
        title="Which KL estimators are unbiased",
        title_zh="哪些 KL 估计量是无偏的",
        statement=(
            r"\mathbb{E}_{x\sim\pi}[k_1] = \mathbb{E}_{x\sim\pi}[k_3] = \mathrm{KL}(\pi\|\pi_{ref}) \ge 0,"
            r"\qquad \mathbb{E}_{x\sim\pi}[k_2] \ne \mathrm{KL}(\pi\|\pi_{ref})"
        ),
        derivation=(
            r"r(x) = \pi_{ref}(x)/\pi(x),\quad k_1 = -\log r,\quad k_2 = \tfrac12(\log r)^2,\quad k_3 = (r-1) - \log r",
            r"\mathbb{E}_\pi[k_1] = \sum_x \pi(x)\log\frac{\pi(x)}{\pi_{ref}(x)} = \mathrm{KL}(\pi\|\pi_{ref})",
            r"\mathbb{E}_\pi[r - 1] = \sum_x \pi_{ref}(x) - \sum_x \pi(x) = 0"
            r"\;\Rightarrow\; \mathbb{E}_\pi[k_3] = \mathbb{E}_\pi[k_1]",
            r"\text{at } \pi = (\tfrac12,\tfrac13,\tfrac16),\ \pi_{ref} = (\tfrac14,\tfrac14,\tfrac12):\ "
            r"\mathbb{E}_\pi[k_2] - \mathrm{KL} \ne 0",
        ),
        holds=bool(k1_ok and k3_ok and k2_differs and kl_nonnegative),
        page="kl-estimators",
        exprs=MappingProxyType({"p": p, "q": q, "kl": kl, "E_k1": e_k1, "E_k2": e_k2, "E_k3": e_k3}),
    )


def _kl_estimator_gradients() -> Derivation:
    """Expected gradient of each estimator used as a loss, on-policy (samples from pi, not differentiated)."""
    n = 3
    theta = list(sp.symbols(f"theta1:{n + 1}", real=True))
    normaliser = sum(sp.exp(t) for t in theta)
    pi = [sp.exp(t) / normaliser for t in theta]
    q = [sp.Rational(1, 5), sp.Rational(3, 10), sp.Rational(1, 2)]
    log_pi = [sp.log(p_i) for p_i in pi]
    estimators: dict[str, Callable[[int], sp.Expr]] = {
        "k1": lambda i: log_pi[i] - sp.log(q[i]),
        "k2": lambda i: (log_pi[i] - sp.log(q[i])) ** 2 / 2,
        "k3": lambda i: q[i] / pi[i] - 1 - sp.log(q[i] / pi[i]),
    }
    reverse_kl = sum(pi[i] * (log_pi[i] - sp.log(q[i])) for i in range(n))
    forward_kl = sum(q[i] * (sp.log(q[i]) - log_pi[i]) for i in range(n))
    targets = {"k1": [sp.Integer(0)] * n, "k2": [sp.diff(reverse_kl, t) for t in theta]}
    targets["k3"] = [sp.diff(forward_kl, t) for t in theta]
    expected_grads = {
        kind: [sum(pi[i] * sp.diff(k(i), t) for i in range(n)) for t in theta] for kind, k in estimators.items()
    }
    # Exact check at rational logits (sympy evaluates exp of rationals exactly and compares to 40 digits).
    points = [dict(zip(theta, vals, strict=True)) for vals in ((0, 0, 0), (1, -2, sp.Rational(1, 2)), (3, 0, -1))]
    holds = all(
        abs(sp.N((expected_grads[kind][j] - targets[kind][j]).subs(pt), 40)) < sp.Float(1e-35)
        for kind in estimators
        for j in range(n)
        for pt in points
    )
    return Derivation(
        name="kl_estimator_gradients",
        title="Which divergence each KL estimator minimises when used as a loss",
        title_zh="把各 KL 估计量当作损失时，它实际最小化的是哪个散度",
        statement=(
            r"\mathbb{E}_{x\sim\pi_\theta}[\nabla_\theta k_1] = 0,\quad "
            r"\mathbb{E}_{x\sim\pi_\theta}[\nabla_\theta k_2] = \nabla_\theta \mathrm{KL}(\pi_\theta\|\pi_{ref}),\quad "
            r"\mathbb{E}_{x\sim\pi_\theta}[\nabla_\theta k_3] = \nabla_\theta \mathrm{KL}(\pi_{ref}\|\pi_\theta)"
        ),
        derivation=(
            r"\nabla k_1 = \nabla\log\pi(x),\ \ \mathbb{E}_\pi[\nabla\log\pi] = \sum_x \nabla\pi(x) = \nabla 1 = 0",
            r"\nabla k_2 = \log\tfrac{\pi(x)}{\pi_{ref}(x)}\nabla\log\pi(x),\ \ "
            r"\mathbb{E}_\pi[\nabla k_2] = \sum_x \nabla\pi(x)\log\tfrac{\pi(x)}{\pi_{ref}(x)}"
            r" = \nabla\mathrm{KL}(\pi\|\pi_{ref})",
            r"\nabla k_3 = \big(1 - \tfrac{\pi_{ref}(x)}{\pi(x)}\big)\nabla\log\pi(x),\ \ "
            r"\mathbb{E}_\pi[\nabla k_3] = -\sum_x \pi_{ref}(x)\nabla\log\pi(x) = \nabla\mathrm{KL}(\pi_{ref}\|\pi)",
        ),
        holds=bool(holds),
        page="kl-estimators",
        exprs=MappingProxyType(
            {"theta": theta, "pi": pi, "q": q, "expected_grads": expected_grads, "targets": targets}
        ),
    )


def _kl_loss_ratio_corrected() -> Derivation:
    """The KL loss term's expected gradient on samples of pi_old = pi: the straight-through k2 gradient and the
    ratio-corrected k3 (ratio not detached) are both unbiased for grad KL(pi || pi_ref); k3 alone is not."""
    n = 3
    theta = list(sp.symbols(f"theta1:{n + 1}", real=True))
    old = list(sp.symbols(f"phi1:{n + 1}", real=True))  # pi_old's logits: constants, set to theta after d/dtheta
    pi = [sp.exp(t) / sum(sp.exp(u) for u in theta) for t in theta]
    pi_old = [sp.exp(t) / sum(sp.exp(u) for u in old) for t in old]
    q = [sp.Rational(1, 5), sp.Rational(3, 10), sp.Rational(1, 2)]
    k3 = [q[i] / pi[i] - 1 - sp.log(q[i] / pi[i]) for i in range(n)]
    k2 = [sp.log(pi[i] / q[i]) ** 2 / 2 for i in range(n)]
    # k2 - sg(k2) + sg(k3): sg() is a constant under d/dtheta, so the term differentiates like k2
    straight = k2
    corrected = [pi[i] / pi_old[i] * k3[i] for i in range(n)]  # rho k3, rho differentiable
    reverse_kl = sum(pi[i] * sp.log(pi[i] / q[i]) for i in range(n))
    on_policy = dict(zip(old, theta, strict=True))

    def expected(terms: list[sp.Expr], t: sp.Symbol) -> sp.Expr:  # E_{x ~ pi_old}[d term(x) / d theta]
        return sum(pi_old[i] * sp.diff(terms[i], t) for i in range(n)).subs(on_policy)

    points = [dict(zip(theta, vals, strict=True)) for vals in ((0, 0, 0), (1, -2, sp.Rational(1, 2)), (3, 0, -1))]

    def same(a: sp.Expr, b: sp.Expr) -> bool:
        return all(abs(sp.N((a - b).subs(pt), 40)) < sp.Float(1e-35) for pt in points)

    target = [sp.diff(reverse_kl, t) for t in theta]
    st_ok = all(same(expected(straight, t), target[j]) for j, t in enumerate(theta))
    rc_ok = all(same(expected(corrected, t), target[j]) for j, t in enumerate(theta))
    plain_biased = not all(same(expected(k3, t), target[j]) for j, t in enumerate(theta))
    value_same = all(same(corrected[i].subs(on_policy), k3[i]) for i in range(n))
    return Derivation(
        name="kl_loss_ratio_corrected",
        title="KL as a loss: the straight-through and the ratio-corrected terms are unbiased",
        title_zh="KL 作为损失项：直通梯度与比率校正项都是无偏的",
        statement=(
            r"\mathbb{E}_{x\sim\pi_{old}}\big[\nabla_\theta(k_2 - \mathrm{sg}(k_2) + \mathrm{sg}(k_3))\big]"
            r" = \mathbb{E}_{x\sim\pi_{old}}\big[\nabla_\theta(\tfrac{\pi_\theta}{\pi_{old}}\,k_3)\big]"
            r" = \nabla_\theta\mathrm{KL}(\pi_\theta\|\pi_{ref})"
            r" \ne \mathbb{E}_{x\sim\pi_{old}}[\nabla_\theta k_3]\quad\text{at } \pi_{old} = \pi_\theta"
        ),
        derivation=(
            r"\nabla(k_2 - \mathrm{sg}(k_2) + \mathrm{sg}(k_3)) = \nabla k_2 = \log\tfrac{\pi}{\pi_{ref}}\,"
            r"\nabla\log\pi \quad(\text{see above})",
            r"\nabla\big(\tfrac{\pi}{\pi_{old}}k_3\big) = "
            r"\tfrac{\pi}{\pi_{old}}\big(k_3\nabla\log\pi + \nabla k_3\big)",
            r"\mathbb{E}_{\pi_{old}}\big[\tfrac{\pi}{\pi_{old}}(k_3\nabla\log\pi + \nabla k_3)\big] = "
            r"\sum_x \big(k_3\nabla\pi + \pi\nabla k_3\big) = \nabla\,\mathbb{E}_{\pi}[k_3] = "
            r"\nabla\mathrm{KL}(\pi\|\pi_{ref})",
            r"\text{at } \pi_{old} = \pi \text{ the value is unchanged: } \tfrac{\pi}{\pi_{old}} k_3 = k_3",
        ),
        holds=bool(st_ok and rc_ok and plain_biased and value_same),
        page="kl-estimators",
        exprs=MappingProxyType({"theta": theta, "pi": pi, "q": q, "corrected": corrected, "target": target}),
    )


# --------------------------------------------------------------------------------------------------------------
# GAE and the KL-in-reward identity


def gae_recursion(length: int) -> dict[str, Any]:
    """Symbolic GAE over ``length`` steps: rewards r_t, values V_t, gamma, lambda; no bootstrap after the end."""
    r = list(sp.symbols(f"r0:{length}", real=True))
    v = list(sp.symbols(f"V0:{length}", real=True))
    gamma, lam = sp.symbols("gamma lambda", nonnegative=True)
    advantages: list[sp.Expr] = [sp.Integer(0)] * length
    next_value: sp.Expr = sp.Integer(0)
    next_adv: sp.Expr = sp.Integer(0)
    for t in reversed(range(length)):
        delta = r[t] + gamma * next_value - v[t]
        advantages[t] = delta + gamma * lam * next_adv
        next_value, next_adv = v[t], advantages[t]
    return {"r": r, "V": v, "gamma": gamma, "lam": lam, "advantages": advantages}


def _gae_lambda_one(length: int = 5) -> Derivation:
    g = gae_recursion(length)
    r, v, gamma, lam = g["r"], g["V"], g["gamma"], g["lam"]
    reward_to_go = [sum(gamma**k * r[t + k] for k in range(length - t)) for t in range(length)]
    holds = all(sp.expand(g["advantages"][t].subs(lam, 1) - (reward_to_go[t] - v[t])) == 0 for t in range(length))
    return Derivation(
        name="gae_lambda_one",
        title="GAE at lambda = 1 is the discounted reward-to-go minus V",
        title_zh="λ = 1 时 GAE 等于折扣后的未来回报减去 V",
        statement=r"\hat A_t^{(\lambda=1)} = \sum_{l=0}^{T-t-1} \gamma^l r_{t+l} - V(s_t)",
        derivation=(
            r"\hat A_t = \sum_l (\gamma\lambda)^l \delta_{t+l},\ \ \delta_t = r_t + \gamma V_{t+1} - V_t,\ V_T = 0",
            r"\lambda = 1:\ \sum_l \gamma^l (r_{t+l} + \gamma V_{t+l+1} - V_{t+l}) "
            r"= \sum_l \gamma^l r_{t+l} - V_t \ \text{(the values telescope)}",
        ),
        holds=bool(holds),
        page="advantages",
        exprs=MappingProxyType({**g, "reward_to_go": reward_to_go}),
    )


def _gae_lambda_zero(length: int = 5) -> Derivation:
    g = gae_recursion(length)
    r, v, gamma, lam = g["r"], g["V"], g["gamma"], g["lam"]
    deltas = [r[t] + gamma * (v[t + 1] if t + 1 < length else 0) - v[t] for t in range(length)]
    holds = all(sp.expand(g["advantages"][t].subs(lam, 0) - deltas[t]) == 0 for t in range(length))
    return Derivation(
        name="gae_lambda_zero",
        title="GAE at lambda = 0 is the one-step TD error",
        title_zh="λ = 0 时 GAE 等于单步 TD 误差",
        statement=r"\hat A_t^{(\lambda=0)} = \delta_t = r_t + \gamma V(s_{t+1}) - V(s_t)",
        derivation=(r"\hat A_t = \delta_t + \gamma\lambda \hat A_{t+1} \ \xrightarrow{\lambda = 0}\ \delta_t",),
        holds=bool(holds),
        page="advantages",
        exprs=MappingProxyType({**g, "deltas": deltas}),
    )


def _kl_reward_telescoping(length: int = 5) -> Derivation:
    logp = list(sp.symbols(f"logpi0:{length}", real=True))
    logp_ref = list(sp.symbols(f"logpiref0:{length}", real=True))
    score, beta = sp.Symbol("R", real=True), sp.Symbol("beta", nonnegative=True)
    rewards = [-beta * (logp[t] - logp_ref[t]) + (score if t == length - 1 else 0) for t in range(length)]
    # chain rule: log pi(y|x) = sum_t log pi(o_t | x, o_<t)
    seq_log_ratio = sp.log(sp.Mul(*[sp.exp(lp) for lp in logp]) / sp.Mul(*[sp.exp(lr) for lr in logp_ref]))
    claimed = score - beta * seq_log_ratio
    holds = sp.simplify(sp.expand_log(sum(rewards) - claimed, force=True)) == 0
    return Derivation(
        name="kl_reward_telescoping",
        title="KL in the reward sums to the sequence-level InstructGPT reward",
        title_zh="奖励中的逐 token KL 求和后等于 InstructGPT 的序列级奖励",
        statement=(
            r"\sum_{t=1}^{|o|} \Big(-\beta \log\frac{\pi(o_t|q,o_{<t})}{\pi_{ref}(o_t|q,o_{<t})}"
            r" + \mathbb{1}[t=|o|]\,R\Big) = R - \beta\log\frac{\pi(o|q)}{\pi_{ref}(o|q)}"
        ),
        derivation=(
            r"\log\pi(o|q) = \sum_t \log\pi(o_t|q,o_{<t}) \quad\text{(chain rule)}",
            r"\sum_t \log\frac{\pi(o_t|\cdot)}{\pi_{ref}(o_t|\cdot)} = \log\frac{\pi(o|q)}{\pi_{ref}(o|q)}",
        ),
        holds=bool(holds),
        page="instructgpt",
        exprs=MappingProxyType({"rewards": rewards, "claimed": claimed, "R": score, "beta": beta}),
    )


# --------------------------------------------------------------------------------------------------------------
# DPO: the closed-form optimum of the KL-regularised objective


def _dpo_optimum(n: int = 3) -> Derivation:
    beta = sp.Symbol("beta", positive=True)
    r = sp.symbols(f"r1:{n + 1}", real=True)
    rho = sp.symbols(f"rho1:{n + 1}", positive=True)
    z = sum(rho[j] * sp.exp(r[j] / beta) for j in range(n))
    pi_star = [rho[i] * sp.exp(r[i] / beta) / z for i in range(n)]
    # stationarity of L = sum pi r - beta sum pi log(pi/rho) + lambda (sum pi - 1): dL/dpi_i is the same for all i
    pis = sp.symbols(f"pi1:{n + 1}", positive=True)
    objective = sum(pis[i] * r[i] - beta * pis[i] * sp.log(pis[i] / rho[i]) for i in range(n))
    grads = [sp.diff(objective, pis[i]).subs(dict(zip(pis, pi_star, strict=True))) for i in range(n)]
    stationary = all(sp.simplify(sp.expand_log(grads[i] - grads[0], force=True)) == 0 for i in range(1, n))
    concave = all(sp.simplify(sp.diff(objective, pis[i], 2) + beta / pis[i]) == 0 for i in range(n))
    # the reward differences are beta log-ratio differences: Z cancels
    implicit = [beta * sp.log(pi_star[i] / rho[i]) for i in range(n)]
    cancels = all(
        sp.simplify(sp.expand_log(implicit[i] - implicit[j], force=True) - (r[i] - r[j])) == 0
        for i in range(n)
        for j in range(n)
        if i != j
    )
    return Derivation(
        name="dpo_optimum",
        title="DPO: the optimum of the KL-regularised objective, and its implicit reward",
        title_zh="DPO：带 KL 正则目标的最优解及其隐式奖励",
        statement=r"\pi^*(y|x) = \frac{\pi_{ref}(y|x)\,e^{r(x,y)/\beta}}{Z(x)} \;\Rightarrow\; "
        r"r(x,y_w) - r(x,y_l) = \beta\log\frac{\pi^*(y_w|x)}{\pi_{ref}(y_w|x)} - \beta\log\frac{\pi^*(y_l|x)}"
        r"{\pi_{ref}(y_l|x)}",
        derivation=(
            r"\max_\pi \sum_y \pi(y) r(y) - \beta \sum_y \pi(y)\log\frac{\pi(y)}{\pi_{ref}(y)} "
            r"\quad\text{s.t.}\ \sum_y \pi(y) = 1",
            r"\frac{\partial}{\partial\pi(y)}: \; r(y) - \beta\Big(\log\frac{\pi(y)}{\pi_{ref}(y)} + 1\Big)"
            r" + \lambda = 0"
            r"\;\Rightarrow\; \pi^*(y) \propto \pi_{ref}(y)\,e^{r(y)/\beta}",
            r"\frac{\partial^2}{\partial\pi(y)^2} = -\frac{\beta}{\pi(y)} < 0 \quad\text{(a maximum)}",
            r"r(y) = \beta\log\frac{\pi^*(y)}{\pi_{ref}(y)} + \beta\log Z \quad\text{(}Z\text{ cancels in } "
            r"r(y_w) - r(y_l)\text{)}",
            r"P(y_w \succ y_l) = \sigma\big(r(y_w) - r(y_l)\big) = \sigma(\beta h),\quad "
            r"\mathcal{L}_{DPO} = -\mathbb{E}\big[\log\sigma(\beta h)\big]",
        ),
        holds=bool(stationary and concave and cancels),
        page="dpo",
        exprs=MappingProxyType({"pi_star": pi_star, "r": r, "rho": rho, "beta": beta, "Z": z}),
    )


# --------------------------------------------------------------------------------------------------------------
# GRPO-era losses: plain policy gradient


def _pg_forms_same_gradient() -> Derivation:
    """``pg_loss(form="logp")`` and ``form="ratio"``: different values, the same gradient.

    The stop-gradient is modelled by a second symbol ``c`` standing for sg(log pi): it is differentiated as a
    constant, then set equal to log pi."""
    x, c = sp.symbols("x c", real=True)  # x = log pi, c = sg(log pi)
    w, adv = sp.symbols("w A", real=True)
    loss_logp = -w * adv * x
    loss_ratio = -w * adv * sp.exp(x - c)
    grad_logp = sp.diff(loss_logp, x)
    grad_ratio = sp.diff(loss_ratio, x).subs(c, x)
    value_ratio = loss_ratio.subs(c, x)
    holds = (
        sp.simplify(grad_ratio - grad_logp) == 0
        and sp.simplify(grad_logp + w * adv) == 0
        and sp.simplify(value_ratio + w * adv) == 0
        and sp.simplify(loss_logp - value_ratio) != 0  # the values differ (they agree only where log pi = 1)
    )
    return Derivation(
        name="pg_forms_same_gradient",
        title="The two forms of the policy-gradient loss: different values, the same gradient",
        title_zh="策略梯度损失的两种写法：取值不同，梯度相同",
        statement=(
            r"\frac{\partial}{\partial\log\pi}\Big(-\mathrm{sg}(w) A\,e^{\log\pi - \mathrm{sg}(\log\pi)}\Big)"
            r" = \frac{\partial}{\partial\log\pi}\Big(-\mathrm{sg}(w) A\log\pi\Big) = -wA,"
            r"\qquad -wA\,e^{0} = -wA \neq -wA\log\pi"
        ),
        derivation=(
            r"c := \mathrm{sg}(\log\pi):\ \frac{\partial}{\partial\log\pi} e^{\log\pi - c} = e^{\log\pi - c}"
            r"\ \xrightarrow{c = \log\pi}\ 1",
            r"\frac{\partial}{\partial\log\pi}(-wA\log\pi) = -wA",
            r"\text{value of the ratio form: } -wA\,e^{\log\pi-\log\pi} = -wA",
        ),
        holds=bool(holds),
        page="grpo-losses",
        exprs=MappingProxyType({"loss_logp": loss_logp, "loss_ratio": loss_ratio, "x": x, "c": c, "w": w, "A": adv}),
    )


def _cispo_gradient() -> Derivation:
    """CISPO's per-token gradient never vanishes: the clip bounds the detached weight, it does not zero the term."""
    x, x_old, adv = sp.symbols("x x_old A", real=True)  # x = log pi
    w_max, w = sp.symbols("w_max w", positive=True)  # w stands for sg(clip(r)): a constant under d/dx
    loss = -w * adv * x
    grad = sp.diff(loss, x)
    weight = sp.Min(sp.exp(x - x_old), w_max)
    claimed = -weight * adv
    surrogate, s = clipped_surrogate()
    ppo_grad = sp.diff(-surrogate, s["x"])
    # where PPO-Clip's gradient is 0 (A > 0, r = 1.5 > 1 + eps), CISPO's is -min(r, w_max) A != 0
    at = {adv: 1, x: sp.log(sp.Rational(3, 2)), x_old: 0, w_max: 5}
    holds = (
        sp.simplify(grad.subs(w, weight) - claimed) == 0
        and sp.simplify(ppo_grad.subs({s["A"]: 1, s["x"]: sp.log(sp.Rational(3, 2)), s["eps"]: sp.Rational(1, 5)})) == 0
        and claimed.subs(at) == -sp.Rational(3, 2)
    )
    return Derivation(
        name="cispo_gradient",
        title="CISPO's gradient is never zeroed by the clip",
        title_zh="CISPO 的梯度不会被截断置零",
        statement=(
            r"\frac{\partial}{\partial\log\pi}\Big(-\mathrm{sg}\big(\mathrm{clip}(r, w_{min}, w_{max})\big)A\log\pi"
            r"\Big) = -\,\mathrm{clip}(r, w_{min}, w_{max})\,A \neq 0 \quad (A \neq 0)"
        ),
        derivation=(
            r"w := \mathrm{sg}(\mathrm{clip}(r, w_{min}, w_{max})) > 0"
            r" \text{ is a constant under } \partial/\partial\log\pi",
            r"\frac{\partial}{\partial\log\pi}(-wA\log\pi) = -wA",
            r"\text{PPO-Clip at } A = 1,\ r = 1.5 > 1 + \epsilon:\ \partial L/\partial\log\pi = 0;\ "
            r"\text{CISPO: } -\min(1.5, 5) = -1.5",
        ),
        holds=bool(holds),
        page="grpo-losses",
        exprs=MappingProxyType({"loss": loss, "claimed": claimed, "x": x, "x_old": x_old, "A": adv, "w_max": w_max}),
    )


def _sapo_gate_gradient() -> Derivation:
    """SAPO's gate has the REINFORCE gradient at r = 1."""
    x, x_old, adv = sp.symbols("x x_old A", real=True)
    tau = sp.Symbol("tau", positive=True)
    r = sp.exp(x - x_old)
    sig = 1 / (1 + sp.exp(-tau * (r - 1)))
    loss = -(4 / tau) * sig * adv
    grad = sp.diff(loss, x)
    claimed = -4 * sig * (1 - sig) * r * adv
    holds = sp.simplify(grad - claimed) == 0 and sp.simplify(grad.subs(x, x_old) + adv) == 0
    return Derivation(
        name="sapo_gate_gradient",
        title="SAPO's soft gate has the REINFORCE gradient at r = 1",
        title_zh="SAPO 的软门控在 r = 1 处的梯度等于 REINFORCE 梯度",
        statement=(
            r"\frac{\partial}{\partial\log\pi}\Big(-\frac{4}{\tau}\sigma\big(\tau(r-1)\big)A\Big)"
            r" = -4\,\sigma(1-\sigma)\,r\,A \;\xrightarrow{r = 1}\; -A"
        ),
        derivation=(
            r"\sigma' = \sigma(1 - \sigma),\quad \frac{\partial r}{\partial\log\pi} = r",
            r"\frac{\partial}{\partial\log\pi}\frac{4}{\tau}\sigma(\tau(r-1))"
            r" = \frac{4}{\tau}\,\sigma(1-\sigma)\,\tau r = 4\sigma(1-\sigma)r",
            r"r = 1:\ \sigma(0) = \tfrac12,\ 4\cdot\tfrac12\cdot\tfrac12\cdot 1 = 1",
        ),
        holds=bool(holds),
        page="grpo-losses",
        exprs=MappingProxyType({"loss": loss, "grad": grad, "x": x, "x_old": x_old, "A": adv, "tau": tau}),
    )


def _gspo_token_equals_gspo(n: int = 3) -> Derivation:
    """GSPO-token equals GSPO in value and gradient when the advantage is constant over the sequence (unclipped
    branch; where the clip binds both are constant)."""
    xs = sp.symbols(f"x0:{n}", real=True)  # log pi of the n tokens
    olds = sp.symbols(f"o0:{n}", real=True)  # log pi_old
    cs = sp.symbols(f"c0:{n}", real=True)  # sg(log pi_t)
    big_s = sp.Symbol("S", positive=True)  # sg(s)
    adv = sp.Symbol("A", real=True)
    s = sp.exp(sum(x - o for x, o in zip(xs, olds, strict=True)) / n)
    gspo = -s * adv  # unclipped branch of -min(s A, clip(s) A), one sequence
    token = -sum(big_s * sp.exp(x - c) * adv for x, c in zip(xs, cs, strict=True)) / n  # seq-mean-token-mean
    at = {**dict(zip(cs, xs, strict=True)), big_s: s}
    holds = sp.simplify(token.subs(at) - gspo) == 0 and all(
        sp.simplify(sp.diff(token, x).subs(at) - sp.diff(gspo, x)) == 0 for x in xs
    )
    return Derivation(
        name="gspo_token_equals_gspo",
        title="GSPO-token equals GSPO when the advantage is constant over the sequence",
        title_zh="优势在序列内恒定时，GSPO-token 与 GSPO 相同",
        statement=(
            r"s_{t} = \mathrm{sg}(s)\frac{\pi_t}{\mathrm{sg}(\pi_t)},\ A_t = A:\quad"
            r"-\frac{1}{|o|}\sum_t s_t A = -sA,\quad \frac{\partial}{\partial\log\pi_t}\Big(-\frac{1}{|o|}\sum_{t'}"
            r" s_{t'} A\Big) = -\frac{sA}{|o|} = \frac{\partial (-sA)}{\partial\log\pi_t}"
        ),
        derivation=(
            r"s = \exp\Big(\frac{1}{|o|}\sum_t (\log\pi_t - \log\pi_{old,t})\Big)"
            r"\ \Rightarrow\ \frac{\partial s}{\partial\log\pi_t} = \frac{s}{|o|}",
            r"\text{value of } s_t = s,\quad \frac{\partial s_t}{\partial\log\pi_t} = s",
            r"\text{checked by sympy for } |o| = " + str(n) + r" \text{ on the unclipped branch; where the clip binds"
            r" both are constant in } \log\pi",
        ),
        holds=bool(holds),
        page="grpo-losses",
        exprs=MappingProxyType({"gspo": gspo, "token": token, "xs": xs, "A": adv}),
    )


# --------------------------------------------------------------------------------------------------------------
# critic-free advantages and DAPO shaping


def _rloo_leave_one_out_identity() -> Derivation:
    """RLOO's leave-one-out advantage is the group-centred score scaled by n/(n - 1), for any group size n."""
    n, total, s = sp.symbols("n S s_i", real=True)
    loo = s - (total - s) / (n - 1)
    centred = n / (n - 1) * (s - total / n)
    holds = sp.simplify(loo - centred) == 0
    return Derivation(
        name="rloo_leave_one_out_identity",
        title="The leave-one-out advantage is the centred score times n/(n-1)",
        title_zh="留一法优势等于中心化得分乘以 n/(n-1)",
        statement=r"s_i - \frac{1}{n-1}\sum_{j\ne i} s_j = \frac{n}{n-1}\Big(s_i - \frac1n\sum_j s_j\Big)",
        derivation=(
            r"S := \sum_j s_j:\quad s_i - \frac{S - s_i}{n-1} = \frac{(n-1)s_i - S + s_i}{n-1} = \frac{n s_i - S}{n-1}",
            r"\frac{n s_i - S}{n-1} = \frac{n}{n-1}\Big(s_i - \frac{S}{n}\Big)",
        ),
        holds=bool(holds),
        page="critic-free",
        exprs=MappingProxyType({"loo": loo, "centred": centred, "n": n, "S": total, "s": s}),
    )


def _rloo_baseline_unbiased(k: int = 3) -> Derivation:
    """With two samples from a softmax policy over ``k`` answers, the RLOO gradient estimate is unbiased; the
    baseline that includes the sample itself (the group mean) scales the gradient by (n - 1)/n."""
    theta = sp.symbols(f"theta1:{k + 1}", real=True)
    r = sp.symbols(f"r1:{k + 1}", real=True)
    z = sum(sp.exp(t) for t in theta)
    pi = [sp.exp(t) / z for t in theta]
    objective = sum(p * ri for p, ri in zip(pi, r, strict=True))
    n = 2

    def expected(advantage: Callable[[int, int], sp.Expr]) -> list[sp.Expr]:
        out = []
        for var in theta:
            total = sp.Integer(0)
            for a in range(k):
                for b in range(k):
                    grad_a = sp.diff(sp.log(pi[a]), var)
                    grad_b = sp.diff(sp.log(pi[b]), var)
                    estimate = (advantage(a, b) * grad_a + advantage(b, a) * grad_b) / n
                    total += pi[a] * pi[b] * estimate
            out.append(total)
        return out

    exact = [sp.diff(objective, var) for var in theta]
    loo = expected(lambda a, b: r[a] - r[b])  # the other sample is the baseline
    self_in = expected(lambda a, b: r[a] - (r[a] + r[b]) / 2)  # the group mean, the sample included
    holds = all(sp.simplify(e - g) == 0 for e, g in zip(loo, exact, strict=True)) and all(
        sp.simplify(e - sp.Rational(n - 1, n) * g) == 0 for e, g in zip(self_in, exact, strict=True)
    )
    return Derivation(
        name="rloo_baseline_unbiased",
        title="The leave-one-out baseline keeps the policy gradient unbiased; the group mean shrinks it by (n-1)/n",
        title_zh="留一基线保持策略梯度无偏；包含自身的组均值把它缩小为 (n-1)/n",
        statement=(
            r"\mathbb{E}\Big[\frac1n\sum_i \big(r(y_i) - \tfrac{1}{n-1}\textstyle\sum_{j\ne i} r(y_j)\big)"
            r"\nabla\log\pi(y_i)\Big] = \nabla\,\mathbb{E}_{\pi}[r],\qquad"
            r"\mathbb{E}\Big[\frac1n\sum_i (r(y_i) - \bar r)\nabla\log\pi(y_i)\Big]"
            r" = \frac{n-1}{n}\nabla\,\mathbb{E}_{\pi}[r]"
        ),
        derivation=(
            r"y_j \perp y_i:\ \mathbb{E}[r(y_j)\nabla\log\pi(y_i)] = \mathbb{E}[r]\,"
            r"\mathbb{E}[\nabla\log\pi] = 0",
            r"\text{exact enumeration: } n = 2 \text{ samples of a softmax policy over } "
            + str(k)
            + r" \text{ answers, symbolic logits and rewards}",
        ),
        holds=bool(holds),
        page="critic-free",
        exprs=MappingProxyType({"theta": theta, "r": r, "exact": exact, "loo": loo}),
    )


def _batch_std_decomposition() -> Derivation:
    """The batch variance of raw scores = the mean within-group variance + the variance of the group means
    (population form, equal group sizes): TRL's batch std is never below REINFORCE++-baseline's on average."""
    s = sp.symbols("s1:7", real=True)
    groups = [s[0:3], s[3:6]]

    def mean(xs: Any) -> sp.Expr:
        return sum(xs) / len(xs)

    def var(xs: Any) -> sp.Expr:
        mu = mean(xs)
        return sum((x - mu) ** 2 for x in xs) / len(xs)

    within = mean([var(g) for g in groups])
    between = var([mean(g) for g in groups])
    centred = [x - mean(g) for g in groups for x in g]
    holds = sp.expand(var(s) - within - between) == 0 and sp.expand(var(centred) - within) == 0
    return Derivation(
        name="batch_std_decomposition",
        title="Batch variance = mean within-group variance + variance of the group means",
        title_zh="批方差 = 组内方差的均值 + 组均值的方差",
        statement=(
            r"\mathrm{Var}_{batch}(s) = \underbrace{\frac1G\sum_g \mathrm{Var}_g(s)}_{\text{within}}"
            r" + \underbrace{\mathrm{Var}_g(\bar s_g)}_{\text{between}}"
            r" \;\ge\; \mathrm{Var}_{batch}(s - \bar s_{g})"
        ),
        derivation=(
            r"s - \mu = (s - \bar s_g) + (\bar s_g - \mu),\ \text{the cross term sums to 0 within each group}",
            r"\mathrm{Var}_{batch}(s - \bar s_g) = \text{within}\ (\text{the centred scores have mean 0}),"
            r"\ \text{so the inequality is } \text{between} \ge 0",
            r"\text{checked by sympy on 2 groups of 3 symbolic scores (population variances)}",
        ),
        holds=bool(holds),
        page="critic-free",
        exprs=MappingProxyType({"scores": s}),
    )


def _overlong_penalty_continuous() -> Derivation:
    """DAPO's soft overlong penalty (eq. 13) is continuous and non-increasing, from 0 at L_max - L_cache to -f
    at L_max."""
    y, l_max, l_cache, f = sp.symbols("y L_max L_cache f", positive=True)
    start = l_max - l_cache
    ramp = (start - y) / l_cache * f
    penalty = sp.Piecewise((0, y <= start), (ramp, y <= l_max), (-f, True))
    holds = (
        sp.simplify(ramp.subs(y, start)) == 0
        and sp.simplify(ramp.subs(y, l_max) + f) == 0
        and sp.simplify(sp.diff(ramp, y) + f / l_cache) == 0
    )
    return Derivation(
        name="overlong_penalty_continuous",
        title="The soft overlong penalty is continuous: 0 at L_max - L_cache, -f at L_max, linear in between",
        title_zh="软超长惩罚是连续的：在 L_max - L_cache 处为 0，在 L_max 处为 -f，中间线性",
        statement=(
            r"R(y) = \begin{cases} 0 & |y| \le L_{max} - L_{cache} \\ \frac{(L_{max} - L_{cache}) - |y|}"
            r"{L_{cache}} f & L_{max} - L_{cache} < |y| \le L_{max} \\ -f & |y| > L_{max} \end{cases}"
            r"\quad\text{is continuous, with slope } -\frac{f}{L_{cache}} \le 0"
        ),
        derivation=(
            r"\text{ramp at } |y| = L_{max} - L_{cache}:\ 0 \text{ (the first piece)}",
            r"\text{ramp at } |y| = L_{max}:\ \frac{-L_{cache}}{L_{cache}} f = -f \text{ (the last piece)}",
            r"\frac{d}{d|y|}\,\text{ramp} = -\frac{f}{L_{cache}}",
        ),
        holds=bool(holds),
        page="critic-free",
        exprs=MappingProxyType({"penalty": penalty, "y": y, "L_max": l_max, "L_cache": l_cache, "f": f}),
    )


_BUILDERS: dict[str, Callable[[], Derivation]] = {
    "ppo_clip_grad": _ppo_clip_grad,
    "neg_log_sigmoid_grad": _neg_log_sigmoid_grad,
    "neg_log_sigmoid_symmetry": _neg_log_sigmoid_symmetry,
    "neg_log_sigmoid_convexity": _neg_log_sigmoid_convexity,
    "ranking_normaliser": _ranking_normaliser,
    "kl_estimators_expectation": _kl_estimators_expectation,
    "kl_estimator_gradients": _kl_estimator_gradients,
    "kl_loss_ratio_corrected": _kl_loss_ratio_corrected,
    "gae_lambda_one": _gae_lambda_one,
    "gae_lambda_zero": _gae_lambda_zero,
    "kl_reward_telescoping": _kl_reward_telescoping,
    "dpo_optimum": _dpo_optimum,
    "pg_forms_same_gradient": _pg_forms_same_gradient,
    "cispo_gradient": _cispo_gradient,
    "sapo_gate_gradient": _sapo_gate_gradient,
    "gspo_token_equals_gspo": _gspo_token_equals_gspo,
    "rloo_leave_one_out_identity": _rloo_leave_one_out_identity,
    "rloo_baseline_unbiased": _rloo_baseline_unbiased,
    "batch_std_decomposition": _batch_std_decomposition,
    "overlong_penalty_continuous": _overlong_penalty_continuous,
}


@functools.cache
def get(name: str) -> Derivation:
    """The derivation called ``name`` (computed once, then cached)."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown derivation {name!r}; known: {sorted(_BUILDERS)}")
    return _BUILDERS[name]()


def all_derivations() -> list[Derivation]:
    """Every derivation, in docs order."""
    return [get(name) for name in _BUILDERS]
