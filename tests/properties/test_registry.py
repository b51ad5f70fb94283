"""The registry covers the catalogue, and every entry has all of its parts."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import rlhf_oracle.derivations as D
import rlhf_oracle.reference as R
import rlhf_oracle.torch_impl as T
from rlhf_oracle.properties import CHECKS, REGISTRY, checks, strategies
from rlhf_oracle.properties.registry import FormulaSpec
from rlhf_oracle.properties.tolerances import BFLOAT16, FLOAT16, FLOAT32, FLOAT64

SPEC_CATALOGUE = {
    "token_logprobs", "entropy_from_logits", "ppo_clip_objective", "ppo_clip_grad", "aggregate", "policy_loss",
    "kl_estimate", "kl_exact", "kl_shaped_rewards", "rlhf_objective", "ptx_loss", "reward_model_loss",
    "ranking_loss", "gae", "whiten", "value_loss", "adaptive_kl_update", "grpo_advantages",
}  # fmt: skip
"""The seed's catalogue (SPEC parts 1-2): always registered. Later formulas are found from the reference."""
REFERENCE_FUNCTIONS = {n for n in R.__all__ if callable(getattr(R, n)) and n[0].islower()}
DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_catalogue_formula_has_an_entry() -> None:
    assert SPEC_CATALOGUE <= set(REGISTRY)
    assert set(REGISTRY) == REFERENCE_FUNCTIONS, "every reference function has a registry entry, and nothing else"


@pytest.mark.parametrize("formula", sorted(REFERENCE_FUNCTIONS))
def test_entry_is_complete(formula: str) -> None:
    spec: FormulaSpec = REGISTRY[formula]
    assert spec.id == formula
    assert spec.reference is getattr(R, formula)
    assert callable(getattr(T, spec.torch_name)), f"torch_impl has no {spec.torch_name}"
    assert spec.paper and spec.equation, "paper and equation"
    for suffix in (".md", ".zh.md"):
        assert (DOCS / f"{spec.docs_page}{suffix}").is_file(), f"no docs page {spec.docs_page}{suffix}"
    assert len(spec.tolerance_note) > 20, "the tolerance needs its reason"
    assert spec.variants, "a formula needs at least one known variant for the diagnosis"
    for name in spec.derivations:
        assert D.get(name).holds, f"derivation {name} must hold"
    params = inspect.signature(spec.reference).parameters
    for name in (*spec.conventions, *spec.differentiable):
        assert name in params, f"{name} is not a parameter of reference.{formula}"
    if spec.differentiable:
        assert spec.gradient is not None, "differentiable formulas need a reference gradient"
    assert formula in CHECKS and CHECKS[formula].__name__ == f"check_{formula}"
    assert hasattr(checks, f"check_{formula}")
    assert strategies.cases(formula) is not None


def test_formulas_with_sympy_statements_name_them() -> None:
    named = {d for spec in REGISTRY.values() for d in spec.derivations}
    every = {d.name for d in D.all_derivations()}
    assert every <= named, f"derivations not attached to any formula: {every - named}"


def test_tolerance_constants_have_reasons() -> None:
    for t in (FLOAT64, FLOAT32, BFLOAT16, FLOAT16):
        assert len(t.reason) > 80
        assert t.machine_eps < t.rtol < 0.1
