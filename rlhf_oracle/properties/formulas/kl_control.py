"""The adaptive KL controller: everything the oracle knows about ``adaptive_kl_update`` (Ziegler et al. 2019,
§2.2: beta <- beta (1 + K_beta clip(KL/target - 1, -0.2, 0.2)), K_beta = n_steps / horizon).

- inputs: beta from 0 to 1, targets 0.1-6, KL values at, around and far from the target, n_steps from 0 to the
  horizon (Python floats: no arrays, no mask);
- the tolerance: two multiplications of floats;
- the variants: the error not clipped, the n_steps/horizon scale ignored.
"""

from __future__ import annotations

from hypothesis import strategies as st

from rlhf_oracle import reference as R

from ..cases import Accepted, Case, Draw, Fixed, floats
from ..registry import Conditioning, FormulaSpec, register
from ..variants import Variant

__all__ = ["ADAPTIVE_KL_UPDATE"]

_ARGS = ("beta", "kl", "target", "n_steps", "horizon")


@st.composite
def _cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    beta = draw(st.sampled_from([0.0, 0.001, 0.15, 0.2, 1.0]))
    target = draw(st.sampled_from([6.0, 0.1, 1.0]))
    kl = draw(st.one_of(floats(0.0, 20.0), st.sampled_from([0.0, target, target * 1.1, target * 0.5])))
    n_steps = draw(st.sampled_from([0, 1, 64, 512, 10000]))
    horizon = draw(st.sampled_from([10000.0, 100.0, 1.0]))
    return Case("adaptive_kl_update", (beta, kl, target, n_steps, horizon), _ARGS, dict(fixed))


def _tolerance(c: Case) -> Conditioning:
    beta, _kl, _target, n_steps, horizon = c.args
    return 1.0, abs(beta) * (1.0 + 0.2 * n_steps / horizon)


def _update(c: Case, *, clip: bool = True, scale: bool = True) -> float:
    beta, kl, target, n_steps, horizon = c.args
    e = kl / target - 1.0
    if clip:
        e = min(max(e, -0.2), 0.2)
    return float(beta * (1.0 + e * (n_steps / horizon if scale else 1.0)))


ADAPTIVE_KL_UPDATE = register(
    FormulaSpec(
        id="adaptive_kl_update",
        reference=R.adaptive_kl_update,
        torch_name="adaptive_kl_update",
        strategy=_cases,
        tolerance=_tolerance,
        tolerance_note="two multiplications of Python floats: eps * beta * (1 + 0.2 n/h).",
        differentiable=(),
        gradient=None,
        paper="Ziegler et al. 2019, Fine-Tuning Language Models from Human Preferences",
        equation="§2.2",
        docs_page="advantages",
        derivations=(),
        conventions=(),
        variants=(
            Variant("error not clipped", "e = KL/target - 1 without the +-0.2 clip", lambda c: _update(c, clip=False)),
            Variant(
                "n_steps/horizon ignored", "beta (1 + e): one full step per update", lambda c: _update(c, scale=False)
            ),
        ),
        bf16=False,
        bad_hyper=(("target", 0.0), ("horizon", -1.0), ("beta", -0.1)),
    )
)
