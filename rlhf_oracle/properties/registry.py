"""One registry drives everything: formula id -> :class:`FormulaSpec`, everything the oracle knows of it.

Each formula's entry is written in its family module (:mod:`rlhf_oracle.properties.formulas`: strategy,
stability regime, gradient, variants, tolerance, bad inputs, paper, docs, sympy) and added with :func:`register`
when the package imports the families. The checks in :mod:`rlhf_oracle.properties.checks`, the parametrised tests
in ``tests/properties``, the CLI and the docs all read this table; this module imports no family.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from .cases import BadCase, Case, Draw
from .gradients import Grad, GradientVariant
from .variants import Variant

__all__ = ["REGISTRY", "Conditioning", "FormulaSpec", "get", "register"]

Conditioning = tuple[float, Any]
"""``(cond, scale)`` of :func:`rlhf_oracle.properties.tolerances.bound` for one case."""


@dataclass(frozen=True)
class FormulaSpec:
    """Everything the oracle knows about one formula."""

    id: str
    reference: Callable[..., Any]
    """The NumPy ground truth in :mod:`rlhf_oracle.reference`."""
    torch_name: str
    """Name of the twin in :mod:`rlhf_oracle.torch_impl` (same name, same argument order)."""
    strategy: Callable[[Mapping[str, Any], Container[str] | None], st.SearchStrategy[Case]]
    """``strategy(fixed, accepted)`` -> valid cases (see :func:`rlhf_oracle.properties.strategies.cases`)."""
    tolerance: Callable[[Case], Conditioning]
    """``(cond, scale)`` of the tolerance policy for a case; the reason is in ``tolerance_note``."""
    tolerance_note: str
    differentiable: tuple[str, ...]
    """Inputs whose gradient is checked (empty: the formula is used under ``no_grad`` in every framework)."""
    gradient: Callable[[Case, np.ndarray], dict[str, Grad]] | None
    paper: str
    equation: str
    docs_page: str
    """Slug of the docs page (``docs/<slug>.md``)."""
    derivations: tuple[str, ...]
    """Names in :mod:`rlhf_oracle.derivations` that pin the formula down (may be empty for definitions)."""
    conventions: tuple[str, ...]
    """Keyword arguments that select a documented convention (passed through by the checks)."""
    variants: tuple[Variant, ...]
    """Known convention variants and bug classes, evaluated for the diagnosis."""
    per_token_output: bool = False
    """Output is [B, T] and must be exactly 0 at masked positions."""
    bf16: bool = True
    """Whether a bf16 comparison makes sense (False for scalar-only formulas)."""
    value_alternative: Callable[[Case], np.ndarray] | None = None
    """For outputs with a jump (``ppo_clip_grad`` on a clip bound): the other one-sided value, NaN elsewhere."""
    exponentiates: bool = False
    """The formula runs exp on a log-ratio (an overflow is a plausible cause of a non-finite result)."""
    stability: Callable[[Case, Draw], Case] | None = None
    """``stability(maths_case, draw)``: the case pushed into the regime where real code differs (None: the formula
    has no ``stability`` property)."""
    stability_note: str = ""
    """What the ``stability`` property's inputs are for this formula, and what real code does there."""
    bad_hyper: tuple[tuple[str, Any], ...] = ()
    """Out-of-range hyper-parameters (name, value) on which the reference raises, for the error-parity check."""
    bad_input: Callable[[Case, Draw], BadCase | None] | None = None
    """A formula-specific invalid input built from a valid case (None where it does not apply to that case)."""
    inert: Callable[[Case], tuple[str, ...]] = lambda case: ()
    """Inputs the formula ignores on this case (never broken by the bad inputs: e.g. the ptx arrays at gamma = 0)."""
    break_shape: Callable[[Case, str], Case] | None = None
    """How to give input ``name`` a wrong shape (default: one extra leading axis)."""
    masked_output_note: str = ""
    """What it means when the formula's [B, T] output is non-zero at masked positions (for the diagnosis)."""
    stopped: tuple[str, ...] = ()
    """Inputs behind a stop-gradient (``sg(w)``): in ``differentiable``, their reference gradient is exactly 0."""
    gradient_of: Callable[[Case], Case] | None = None
    """Where the loss is defined by its gradient (``sg()`` inside): the case whose reference *value* the gradient
    differentiates (``pg_loss(form="ratio")`` has the value -w A and the gradient of ``form="logp"``)."""
    gradient_variants: tuple[GradientVariant, ...] = ()
    """Known readings that change only the gradient (straight-through, a detached factor): the ``gradients``
    diagnosis names the one the candidate's gradient matches."""

    @property
    def has_mask(self) -> bool:
        """The formula takes a required ``[B, T]`` mask (edge cases and masked slots apply)."""
        p = inspect.signature(self.reference).parameters.get("mask")
        return p is not None and p.default is inspect.Parameter.empty

    def cases(
        self, fixed: Mapping[str, Any] | None = None, accepted: Container[str] | None = None
    ) -> st.SearchStrategy[Case]:
        return self.strategy(dict(fixed or {}), accepted)


REGISTRY: dict[str, FormulaSpec] = {}
"""Formula id -> :class:`FormulaSpec`, one entry per catalogue formula (filled by the family modules)."""


def register(spec: FormulaSpec) -> FormulaSpec:
    """Add a formula family's entry (the family modules in :mod:`rlhf_oracle.properties.formulas` call this at
    import); a formula is registered once."""
    if spec.id in REGISTRY:
        raise ValueError(f"formula {spec.id!r} is registered twice")
    REGISTRY[spec.id] = spec
    return spec


def get(formula: str) -> FormulaSpec:
    """The registry entry of ``formula``."""
    try:
        return REGISTRY[formula]
    except KeyError:
        raise KeyError(f"unknown formula {formula!r}; known: {', '.join(REGISTRY)}") from None
