"""The plain policy-gradient loss (REINFORCE / GPG): hand values, the two forms' shared gradient (sympy and
autograd on the twin), the stop-gradient on the weights, errors with the argument's name."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
import torch

from rlhf_oracle import derivations as D
from rlhf_oracle import reference as R
from rlhf_oracle import torch_impl as T

LOGP = np.log([[0.5, 0.25, 0.9], [0.2, 0.1, 0.4]])
ADV = np.array([[1.0, 1.0, 1.0], [-0.5, -0.5, 0.0]])
MASK = np.array([[True, True, False], [True, True, True]])


def test_hand_values_of_both_forms_and_every_aggregation() -> None:
    row0 = math.log(0.5) + math.log(0.25)  # sum of A log pi over the 2 valid tokens (A = 1)
    row1 = -0.5 * (math.log(0.2) + math.log(0.1))  # third token has A = 0
    assert R.pg_loss(LOGP, ADV, MASK) == pytest.approx(-(row0 / 2 + row1 / 3) / 2, rel=1e-15)
    assert R.pg_loss(LOGP, ADV, MASK, agg="token-mean") == pytest.approx(-(row0 + row1) / 5, rel=1e-15)
    assert R.pg_loss(LOGP, ADV, MASK, agg="seq-mean-token-sum") == pytest.approx(-(row0 + row1) / 2, rel=1e-15)
    norm = R.pg_loss(LOGP, ADV, MASK, agg="seq-mean-token-sum-norm", max_tokens=10)
    assert norm == pytest.approx(-(row0 + row1) / 20, rel=1e-15)
    # the ratio form's value is -w A: rows (1 + 1)/2 and (-0.5 - 0.5 + 0)/3
    assert R.pg_loss(LOGP, ADV, MASK, form="ratio") == pytest.approx(-(1.0 - 1.0 / 3.0) / 2, rel=1e-15)


def test_weights_multiply_each_term_and_nan_padding_is_ignored() -> None:
    w = np.array([[2.0, 0.0, np.nan], [1.0, 3.0, 0.5]])
    logp = np.where(MASK, LOGP, np.nan)
    got = R.pg_loss(logp, ADV, MASK, w, agg="token-mean")
    expected = -(2 * math.log(0.5) + 0 - 0.5 * math.log(0.2) - 1.5 * math.log(0.1) + 0) / 5
    assert got == pytest.approx(expected, rel=1e-15)


def test_sympy_the_two_forms_share_their_gradient() -> None:
    d = D.get("pg_forms_same_gradient")
    assert d.holds and d.page == "grpo-losses"
    e = d.exprs
    x, c = e["x"], e["c"]
    assert sp.simplify(sp.diff(e["loss_ratio"], x).subs(c, x) - sp.diff(e["loss_logp"], x)) == 0


@pytest.mark.parametrize("agg", R.AGGREGATION_MODES)
def test_twin_gradient_is_minus_w_a_times_the_aggregation_weight_in_both_forms(agg: str) -> None:
    w = torch.tensor([[2.0, 0.5, 1.0], [1.0, 3.0, 0.5]], dtype=torch.float64, requires_grad=True)
    adv, mask = torch.tensor(ADV), torch.tensor(MASK)
    # d agg / d x_bt by hand: seq-mean-token-mean 1/(B |o_b|), token-mean 1/N, token-sum 1/B, -norm 1/(B T)
    per_row = {"seq-mean-token-mean": [1 / 4, 1 / 6], "token-mean": [1 / 5, 1 / 5],
               "seq-mean-token-sum": [1 / 2, 1 / 2], "seq-mean-token-sum-norm": [1 / 6, 1 / 6]}[agg]  # fmt: skip
    expected = -(w.detach() * adv) * torch.tensor(per_row, dtype=torch.float64)[:, None] * mask
    for form in R.PG_FORMS:
        logp = torch.tensor(LOGP, requires_grad=True)
        T.pg_loss(logp, adv, mask, w, agg, form=form).backward()
        torch.testing.assert_close(logp.grad, expected, rtol=1e-14, atol=1e-15)
        assert w.grad is None  # sg(w): nothing reaches the weights


def test_twin_matches_reference_in_value() -> None:
    for form in R.PG_FORMS:
        for agg in R.AGGREGATION_MODES:
            ref = R.pg_loss(LOGP, ADV, MASK, agg=agg, form=form)
            twin = T.pg_loss(torch.tensor(LOGP), torch.tensor(ADV), torch.tensor(MASK), agg=agg, form=form)
            assert float(twin) == pytest.approx(ref, rel=1e-14)


@pytest.mark.parametrize("impl", [R, T], ids=["reference", "torch"])
def test_errors_name_the_argument(impl: object) -> None:
    conv = (lambda a: torch.as_tensor(a)) if impl is T else (lambda a: a)
    f = impl.pg_loss  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"pg_loss: 'form' must be one of \('logp', 'ratio'\), got 'log'"):
        f(conv(LOGP), conv(ADV), conv(MASK), form="log")
    with pytest.raises(ValueError, match=r"pg_loss: 'agg' must be one of"):
        f(conv(LOGP), conv(ADV), conv(MASK), agg="mean")
    with pytest.raises(ValueError, match=r"pg_loss: 'weights' has shape \(2, 2\), expected \(2, 3\)"):
        f(conv(LOGP), conv(ADV), conv(MASK), conv(np.ones((2, 2))))
    with pytest.raises(ValueError, match=r"pg_loss: 'weights' contains NaN or inf at a valid"):
        f(conv(LOGP), conv(ADV), conv(MASK), conv(np.full((2, 3), np.nan)))
    with pytest.raises(ValueError, match=r"pg_loss: 'mask' row 0 has no valid token"):
        f(conv(LOGP), conv(ADV), conv(np.array([[False] * 3, [True] * 3])))
