"""Counter-examples the thorough profile found against torch_impl in float32, kept as regressions.

Both sit on a kink: the float32 evaluation lands exactly on a clip bound (or a tie of two branches) where the
float64 reference lands a rounding error away, on the other side. Either one-sided derivative is a valid
(sub)gradient there, so the check must accept the candidate's side, with a tolerance scaled to that side's size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhf_oracle import torch_impl as T
from rlhf_oracle.properties.calls import Context
from rlhf_oracle.properties.props import _grad_body
from rlhf_oracle.properties.registry import get
from rlhf_oracle.properties.strategies import Case


@pytest.fixture(autouse=True)
def _outside_hypothesis(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gradient property steers hypothesis with target(), which is only legal inside a search."""
    monkeypatch.setattr("rlhf_oracle.properties.props.target", lambda *a, **k: None)


def _grad_error(formula: str, case: Case, fn: object = None, dtype: torch.dtype = torch.float32) -> float:
    """The gradient property on one case, for ``fn`` (default: the twin): raises on a mismatch; returns the worst
    error / allowed error."""
    ctx = Context(get(formula), fn or getattr(T, formula), None, {}, dtype, "cpu")  # type: ignore[arg-type]
    return _grad_body(ctx, case)


def test_dual_clip_bound_hit_exactly_in_float32() -> None:
    # r = exp(float32(log 3)) is 3.0000000477 in float64 (dual clip binds: gradient 0) but 3 in float32 (boundary:
    # unclipped r A); the other gradient component, 1e-35, must not set the tolerance scale
    case = Case(
        "ppo_clip_objective",
        (np.array([[0.0, 1.0986123085021973]]), np.zeros((1, 2)), np.array([[1.0000000180025095e-35, -1.0]])),
        ("logp", "logp_old", "advantages"),
        {"clip_eps": 0.2, "clip_eps_high": None, "dual_clip": 3.0},
    )
    assert _grad_error("ppo_clip_objective", case) <= 1.0


def test_value_clip_bound_hit_exactly_in_float32() -> None:
    # V - V_old = 0.5 = clip_eps exactly in float32, 0.5000000149 in float64
    mask = np.array([[True]])
    case = Case(
        "value_loss",
        (np.array([[0.1666666716337204]]), np.array([[-0.3333333432674408]]), np.array([[0.6666666865348816]]), mask),
        ("values", "old_values", "returns", "mask"),
        {"clip_eps": 0.5},
        mask=mask,
        per_token=("values", "old_values", "returns"),
    )
    assert _grad_error("value_loss", case) <= 1.0


def test_two_kinks_on_one_token_of_the_actor_loss() -> None:
    # found by the thorough profile (float64): r = exp(log 0.9) sits on PPO's lower bound (1 - eps) and
    # Delta = logp - logp_ref = 0 on |Delta|'s kink; torch.abs takes the subgradient 0 there, so the twin's
    # gradient -0.9 = -r A + 0.05 * 0 is a sum of valid subgradients, outside the segment between the
    # reference's -0.85 and the sum of the two other sides; the subgradients of a sum span an interval
    mask = np.array([[True, False]])
    logp = np.array([[-0.10536051565782628, 0.0]])
    kwargs = {"clip_eps": 0.1, "logp_ref": np.array([[-0.10536051565782628, -1.0]]), "loss": "ppo",
              "kl_coef": 0.05, "kl_kind": "abs"}  # fmt: skip
    case = Case("actor_loss", (logp, np.zeros((1, 2)), np.ones((1, 2)), mask),
                ("logp", "logp_old", "advantages", "mask"), kwargs, mask,
                ("logp", "logp_old", "advantages"))  # fmt: skip
    assert _grad_error("actor_loss", case, dtype=torch.float64) <= 1.0

    def slope_minus_four(logp: torch.Tensor, *args: object, **kw: object) -> torch.Tensor:
        # a candidate whose |Delta| slope at 0 is -4 (not a subgradient of |.|): -1.1, outside [-0.95, 0.05]
        out = T.actor_loss(logp, *args, **kw)  # type: ignore[arg-type]
        return out - 0.05 * 4.0 * (logp[0, 0] - logp[0, 0].detach())

    with pytest.raises(Exception, match="differs"):
        _grad_error("actor_loss", case, slope_minus_four, dtype=torch.float64)
