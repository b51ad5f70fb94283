"""The oracle's analytic reference gradients agree with float64 central differences of the reference itself."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlhf_oracle.properties import REGISTRY
from rlhf_oracle.properties.gradients import weights_for
from rlhf_oracle.properties.strategies import Case

GRADIENTS = {f: spec.gradient for f, spec in REGISTRY.items() if spec.gradient is not None}


def _fd(case: Case, name: str, w: np.ndarray, h: float = 1e-6) -> np.ndarray:
    spec = REGISTRY[case.formula]
    x = np.array(case.named()[name], dtype=np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        if case.mask is not None and name in case.per_token and not case.mask[i]:
            continue  # masked slots: the reference does not read them (gradient 0)
        step = h * max(1.0, abs(x[i]))
        values = []
        for sign in (1.0, -1.0):
            y = x.copy()
            y[i] += sign * step
            with np.errstate(all="ignore"):
                out = spec.reference(*case.with_inputs(**{name: y}).args, **case.with_inputs(**{name: y}).kwargs)
            values.append(float(np.sum(w * np.asarray(out))))
        grad[i] = (values[0] - values[1]) / (2 * step)
    return grad


@pytest.mark.parametrize("formula", sorted(GRADIENTS))
@given(data=st.data())
def test_analytic_gradient_matches_central_differences(formula: str, data: st.DataObject) -> None:
    spec = REGISTRY[formula]
    fixed = {"kind": data.draw(st.sampled_from(["k1", "k2", "k3"]))} if formula == "kl_estimate" else {}
    case = data.draw(spec.cases(fixed).map(lambda c: c.refilled("zero")))
    out = np.asarray(spec.reference(*case.args, **case.kwargs))
    w = weights_for(out.shape)
    expected = GRADIENTS[formula](case, w)
    valued = spec.gradient_of(case) if spec.gradient_of is not None else case  # the value the gradient is of
    for name in spec.differentiable:
        if not isinstance(case.named().get(name), np.ndarray):
            continue
        g, alt = expected[name].value, expected[name].alternative
        if name in spec.stopped:  # sg(): the value depends on it, the gradient is 0 by definition
            assert not np.any(g), f"{formula} d/d{name}: a stopped input has gradient {g}"
            continue
        fd = _fd(valued, name, w)
        scale = 1e-5 * (1.0 + np.max(np.abs(g)))  # central differences: O(h^2) + O(eps/h), far below 1e-5
        ok = np.abs(fd - g) <= scale
        ok |= ~np.isnan(alt)  # at a kink the finite difference straddles both branches
        assert np.all(ok), f"{formula} d/d{name}: analytic {g[~ok]} vs finite differences {fd[~ok]}"
