"""Correct code the oracle used to fail (issue "No false alarm on correct code"), each an independent hand case.

Every test also shows that the check can still fail: a wrong candidate on the same input is rejected.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhf_oracle import torch_impl as T
from rlhf_oracle.properties.calls import Context, Mismatch
from rlhf_oracle.properties.props import _values_body
from rlhf_oracle.properties.registry import get
from rlhf_oracle.properties.strategies import Case

from .test_kink_regressions import _grad_error as _kink_grad_error
from .test_kink_regressions import _outside_hypothesis  # noqa: F401  (autouse fixture: target() outside a search)


def _grad_error(formula: str, fn: object, case: Case, dtype: torch.dtype = torch.float64) -> float:
    return _kink_grad_error(formula, case, fn, dtype)


def _textbook_ppo(logp, logp_old, advantages, clip_eps=0.2, clip_eps_high=None, dual_clip=None):  # type: ignore[no-untyped-def]
    """PPO-Clip as a newcomer writes it: torch.minimum / torch.maximum, which split the gradient at a tie."""
    r = torch.exp(logp - logp_old)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    s = torch.minimum(r * advantages, torch.clamp(r, 1 - clip_eps, 1 + high) * advantages)
    if dual_clip is not None:
        s = torch.where(advantages < 0, torch.maximum(s, dual_clip * advantages), s)
    return s


def _doubled(fn):  # type: ignore[no-untyped-def]
    """A wrong candidate: same value, twice the gradient (outside the segment of valid subgradients)."""

    def wrong(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = fn(*args, **kwargs)
        return 2 * out - out.detach()

    return wrong


# ----------------------------------------------------------------------------------------------------------------
# 1. ties at a kink: any convex combination of the one-sided gradients is a subgradient


def _value_tie() -> Case:
    # V - V_old = 0.5 > eps: V_clip = 0.7; (1 - 0.85)^2 = (0.7 - 0.85)^2 = 0.0225, a tie of the two branches.
    # By hand (token-mean over 2 tokens): d/dV_0 of 1/2 max(...)/2 is (V - R)/2 = 0.075 on the unclipped side, 0 on
    # the clipped side (the clip is flat); torch.maximum gives the midpoint 0.0375.
    mask = np.array([[True, True]])
    return Case(
        "value_loss",
        (np.array([[1.0, 2.0]]), np.array([[0.5, 2.0]]), np.array([[0.85, 1.0]]), mask),
        ("values", "old_values", "returns", "mask"),
        {"clip_eps": 0.2},
        mask=mask,
        per_token=("values", "old_values", "returns"),
    )


def test_value_loss_tie_of_the_two_branches_accepts_the_midpoint() -> None:
    case = _value_tie()
    v = torch.tensor(case.args[0], requires_grad=True)
    T.value_loss(v, *(torch.tensor(a) for a in case.args[1:3]), torch.tensor(case.args[3]), clip_eps=0.2).backward()
    assert v.grad is not None and math.isclose(float(v.grad[0, 0]), 0.0375, rel_tol=1e-12)  # the twin's midpoint
    assert _grad_error("value_loss", T.value_loss, case) <= 1.0
    with pytest.raises(Mismatch):
        _grad_error("value_loss", _doubled(T.value_loss), case)


def test_ratio_exactly_at_the_dual_clip_constant_accepts_the_split() -> None:
    # dual_clip = float64 exp(log 3) = 3.0000000000000004 = r: max(r A, c A) is a tie; one side -r A = 3, the other 0
    c = float(np.exp(math.log(3.0)))
    case = Case(
        "ppo_clip_objective",
        (np.array([[math.log(3.0), 0.0]]), np.zeros((1, 2)), np.array([[-1.0, 1.0]])),
        ("logp", "logp_old", "advantages"),
        {"clip_eps": 0.2, "clip_eps_high": None, "dual_clip": c},
    )
    lp = torch.tensor(case.args[0], requires_grad=True)
    _textbook_ppo(lp, torch.zeros(1, 2, dtype=torch.float64), torch.tensor(case.args[2]), dual_clip=c)[0, 0].backward()
    assert lp.grad is not None and math.isclose(float(lp.grad[0, 0]), -1.5, rel_tol=1e-12)  # half of r A = -3
    assert _grad_error("ppo_clip_objective", _textbook_ppo, case) <= 1.0
    with pytest.raises(Mismatch):
        _grad_error("ppo_clip_objective", _doubled(_textbook_ppo), case)


def test_bf16_exp_rounding_onto_the_clip_bound_is_a_kink() -> None:
    # logp = 0.1826171875 (exact in bf16): float64 r = 1.20033 > 1.2 (clipped, gradient 0), but bf16 exp gives
    # 1.203125 = bf16(1.2): a tie in torch.minimum, gradient r A / 2 = 0.5039. The kink band follows the dtype.
    logp = 0.1826171875
    assert float(torch.exp(torch.tensor(logp, dtype=torch.bfloat16))) == float(torch.tensor(1.2, dtype=torch.bfloat16))
    case = Case(
        "ppo_clip_objective",
        (np.array([[logp]]), np.zeros((1, 1)), np.array([[1.0]])),
        ("logp", "logp_old", "advantages"),
        {"clip_eps": 0.2},
    )
    assert _grad_error("ppo_clip_objective", _textbook_ppo, case, torch.bfloat16) <= 1.0
    with pytest.raises(Mismatch):
        _grad_error("ppo_clip_objective", _doubled(_textbook_ppo), case, torch.bfloat16)
    # in float64 the same input is 3e-4 (relative) away from the bound: no kink, the clipped side only
    with pytest.raises(Mismatch):
        _grad_error("ppo_clip_objective", lambda *a, **k: _textbook_ppo(*a, **k) * 0 + a[0], case)


# ----------------------------------------------------------------------------------------------------------------
# 2. cancelling means: the reference is exactly rounded, the tolerance scales by the mean of |s|


def _values_error(formula: str, fn: object, case: Case, dtype: torch.dtype = torch.float64) -> float:
    ctx = Context(get(formula), fn, None, {}, dtype, "cpu")  # type: ignore[arg-type]
    return _values_body(ctx, case)


def _grpo_case() -> Case:
    scores = np.array([0.0, -2.0, 1.0, 8.48e-255, 1.0])
    return Case("grpo_advantages", (scores, 5, False), ("scores", "group_size", "std_normalize"), {})


def test_grpo_mean_that_cancels_is_exact_in_the_reference() -> None:
    from rlhf_oracle import reference as R

    # by hand: the scores sum to 8.48e-255 exactly (a left-to-right float sum gives 0), the mean is 1.696e-255
    adv = R.grpo_advantages(*_grpo_case().args)
    assert adv[3] == pytest.approx(8.48e-255 - 8.48e-255 / 5, rel=1e-15)
    assert adv[1] == -2.0 - 8.48e-255 / 5


def test_textbook_grpo_and_the_twin_pass_on_cancelling_scores() -> None:
    def textbook(scores, group_size, std_normalize=True):  # type: ignore[no-untyped-def]
        g = scores.view(-1, group_size)
        out = g - g.mean(dim=1, keepdim=True)
        if std_normalize:
            out = out / (g.std(dim=1, keepdim=True) + 1e-6)
        return out.reshape(-1)

    case = _grpo_case()
    assert _values_error("grpo_advantages", textbook, case) <= 1.0
    assert _values_error("grpo_advantages", T.grpo_advantages, case) <= 1.0
    with pytest.raises(Mismatch):  # the uncentred score is a wrong number, still rejected
        _values_error("grpo_advantages", lambda s, g, std_normalize=True: s + 0.5, case)


# ----------------------------------------------------------------------------------------------------------------
# 3. hyper-parameters the candidate cannot take: only values of the kind its signature allows


def _textbook_value_loss(values, old_values, returns, mask, clip_eps: float = 0.2):  # type: ignore[no-untyped-def]
    """A correct clipped value loss (token-mean) whose signature takes no None."""
    mask = mask.bool()
    values, old_values, returns = (torch.where(mask, x, 0.0) for x in (values, old_values, returns))
    clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    per_token = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    m = mask.to(per_token.dtype)
    return torch.where(mask, per_token, 0.0).sum() / m.sum()


def test_no_none_drawn_for_a_parameter_whose_signature_takes_no_none() -> None:
    from rlhf_oracle.properties.adapters import accepted_kwargs
    from rlhf_oracle.properties.calls import sample_cases

    accepted = accepted_kwargs(_textbook_value_loss)
    drawn = [c.kwargs.get("clip_eps", 0.2) for c in sample_cases(get("value_loss").cases({}, accepted), 60)]
    assert None not in drawn and {0.2, 0.5} <= set(drawn)

    def optional(values, old_values, returns, mask, clip_eps: float | None = 0.2):  # type: ignore[no-untyped-def]
        return _textbook_value_loss(values, old_values, returns, mask, clip_eps or 1e9)

    drawn = [
        c.kwargs.get("clip_eps", 0.2) for c in sample_cases(get("value_loss").cases({}, accepted_kwargs(optional)), 60)
    ]
    assert None in drawn  # a signature that admits None is still asked to run unclipped


def test_textbook_value_loss_passes_the_check() -> None:
    from rlhf_oracle.properties import check_value_loss

    report = check_value_loss(_textbook_value_loss, max_examples=40)  # raises OracleMismatch on a failure
    assert report.passed


def test_a_raise_on_a_drawn_value_names_the_value_and_the_fix() -> None:
    from rlhf_oracle.properties.engine import run_check

    def refuses_large(values, old_values, returns, mask, clip_eps: float = 0.2):  # type: ignore[no-untyped-def]
        if clip_eps > 0.3:
            raise ValueError("clip_eps too large")
        return _textbook_value_loss(values, old_values, returns, mask, clip_eps)

    report = run_check("value_loss", refuses_large, max_examples=40)
    assert not report.passed
    text = report.message()
    assert "called with the drawn clip_eps=0.5" in text and "check(..., clip_eps=<value>)" in text


# ----------------------------------------------------------------------------------------------------------------
# 5. findings vs failures: a value where the reference refuses the input is reported, not failed (unless strict)


def test_nan_on_an_all_masked_batch_differs_but_passes_unless_strict() -> None:
    from rlhf_oracle.properties.engine import run_check

    report = run_check("value_loss", _textbook_value_loss, max_examples=30)
    assert report.passed, report.message()
    edge = report.property("edge_cases")
    assert edge.status == "differs" and edge.finding is not None
    assert "where the reference raises" in edge.finding.message and "differs" in report.message()
    strict = run_check("value_loss", _textbook_value_loss, max_examples=30, strict=True)
    assert not strict.passed and strict.property("edge_cases").status == "FAILED"


def test_a_wrong_number_on_an_edge_case_still_fails() -> None:
    from rlhf_oracle.properties.engine import run_check

    def one_token_doubled(values, old_values, returns, mask, clip_eps: float = 0.2):  # type: ignore[no-untyped-def]
        loss = _textbook_value_loss(values, old_values, returns, mask, clip_eps)
        return torch.where(mask.sum() == 1, 2 * loss, loss)  # wrong on "one valid token"

    report = run_check("value_loss", one_token_doubled, max_examples=30)
    assert not report.passed


# ----------------------------------------------------------------------------------------------------------------
# 4. the stability report does not contradict itself where the reference refuses the input


def test_textbook_k3_stability_report_is_coherent() -> None:
    from rlhf_oracle.properties.engine import run_check

    def k3(logp, logp_ref):  # type: ignore[no-untyped-def]
        d = logp_ref - logp
        return torch.exp(d) - 1 - d  # unclamped: inf at Delta = -1e4, where the exact value overflows float64

    report = run_check("kl_estimate", k3, kind="k3", properties=["stability"], max_examples=60)
    f = report.property("stability").failure
    assert f is not None and f.expected is None  # the reference refuses the input
    text = " ".join(f.diagnosis)
    assert "beyond float64's range" in text and "clamp" in text
    assert "where the reference is finite" not in text and "variants" not in text
