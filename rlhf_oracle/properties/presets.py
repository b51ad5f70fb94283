"""Presets: the conventions a framework documents for a formula, as ``run_check(..., preset="verl")`` and
``rlhf-oracle check --preset verl`` fix them.

There is one source for them: the framework audit (:mod:`rlhf_oracle.audit.frameworks`), whose entries fix, for
each framework function, the conventions the framework documents as its defaults (verl's dual clip at 3 and
token-mean, TRL's aggregation per ``loss_type``, OpenRLHF's ±10 KL clamp, ...). A preset is that set of
conventions: ``"verl"``, ``"openrlhf"``, ``"trl"``, or ``"framework:qualifier"`` where a framework has several
functions for the formula (``"trl:dapo"``: the entry whose function mentions ``dapo``). Conventions passed
explicitly override the preset's.
"""

from __future__ import annotations

from typing import Any

__all__ = ["preset_conventions"]


def preset_conventions(formula: str, preset: str) -> dict[str, Any]:
    """The conventions ``preset`` fixes for ``formula`` (a ValueError naming the choices when there is none or
    several)."""
    from rlhf_oracle.audit.frameworks import FRAMEWORKS, entries

    if not isinstance(preset, str):
        raise ValueError(f"run_check: 'preset' must be a framework name, got {preset!r}")
    framework, _, qualifier = preset.partition(":")
    if framework not in FRAMEWORKS:
        raise ValueError(f"run_check: 'preset' must be one of {sorted(FRAMEWORKS)} (or framework:qualifier), "
                         f"got {preset!r}")  # fmt: skip
    candidates = [e for e in entries(framework) if e.formula == formula]
    matches = [e for e in candidates if qualifier in e.function] if qualifier else candidates
    if not matches:
        known = [e.function for e in candidates] or "none"
        raise ValueError(f"run_check: preset {preset!r} has no {framework} function for {formula} (its functions "
                         f"for it: {known})")  # fmt: skip
    distinct = {repr(sorted(e.conventions.items())): e for e in matches}
    if len(distinct) > 1:
        options = "; ".join(f"{e.function}: {e.conventions}" for e in distinct.values())
        raise ValueError(f"run_check: preset {preset!r} is ambiguous for {formula}, the {framework} functions "
                         f"differ: {options}; add a qualifier ('{framework}:<part of the function>')")  # fmt: skip
    return dict(matches[0].conventions)
