"""Presets: the conventions a framework documents for a formula, as ``run_check(..., preset="verl")`` and
``rlhf-oracle check --preset verl`` fix them.

There is one source for them: the framework audit (:mod:`rlhf_oracle.audit.frameworks`), whose entries fix, for
each framework function, the conventions the framework documents as its defaults (verl's dual clip at 3 and
token-mean, TRL's aggregation per ``loss_type``, OpenRLHF's ±10 KL clamp, ...). A preset is that set of
conventions: ``"verl"``, ``"openrlhf"``, ``"trl"``, or ``"framework:qualifier"`` where a framework has several
functions for the formula (``"trl:dapo"``: the entry whose function mentions ``dapo``). Conventions passed
explicitly override the preset's.

Framework option names (:data:`FRAMEWORK_OPTIONS`): TRL's ``loss_type`` and ``scale_rewards``, verl's
``loss_agg_mode``, ``norm_adv_by_std_in_grpo`` and ``kl_penalty`` / ``kl_loss_type`` kinds, OpenRLHF's
``kl_estimator``, passed where the oracle's own convention keywords go, are translated into them
(:func:`translate_options`): ``loss_type="dapo"`` is ``agg="token-mean"``, ``kl_penalty="low_var_kl"`` is
``kind="k3", log_ratio_clamp=20, output_clamp=10``. A translated value that contradicts an explicit convention is
refused.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FRAMEWORK_OPTIONS", "preset_conventions", "translate_options"]

_AGG_OF_LOSS_TYPE = {
    "grpo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dapo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
    "cispo": "token-mean",
    "sapo": "seq-mean-token-mean",
}
_LOSS_OF_LOSS_TYPE = {"grpo": "ppo", "bnpo": "ppo", "dapo": "ppo", "dr_grpo": "ppo", "cispo": "cispo", "sapo": "sapo"}
_KIND_OF_KL = {"kl": "k1", "k1": "k1", "abs": "abs", "mse": "k2", "k2": "k2", "low_var_kl": "k3", "k3": "k3"}
_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")

FRAMEWORK_OPTIONS: dict[str, str] = {
    "loss_type": "TRL GRPOConfig.loss_type: grpo, bnpo, dapo, dr_grpo, cispo, sapo (the aggregation; the loss of "
    "actor_loss)",
    "loss_agg_mode": "verl actor loss_agg_mode: token-mean, seq-mean-token-mean, seq-mean-token-sum, "
    "seq-mean-token-sum-norm (agg)",
    "scale_rewards": "TRL GRPOConfig.scale_rewards: group, batch, none (std_normalize and std_level)",
    "norm_adv_by_std_in_grpo": "verl algorithm.norm_adv_by_std_in_grpo: true, false (std_normalize)",
    "kl_penalty": "verl kl_penalty / kl_loss_type: kl (k1), abs, mse (k2), low_var_kl (k3 clamped to +-20, "
    "estimate to +-10); a '+' suffix takes k2's gradient (kl_loss grad='k2')",
    "kl_loss_type": "verl actor kl_loss_type (as kl_penalty)",
    "kl_estimator": "OpenRLHF kl_estimator: k1, k2, k3 (the estimator kind)",
}
"""The framework option names a check accepts beside the oracle's conventions, and what they set."""


def _choice(option: str, value: Any, table: dict[str, Any] | tuple[str, ...]) -> Any:
    if value not in table:
        raise ValueError(f"run_check: '{option}' must be one of {sorted(table)}, got {value!r}")
    return table[value] if isinstance(table, dict) else value


def _translated(formula: str, option: str, value: Any, params: Any) -> dict[str, Any]:
    """The oracle conventions framework option ``option=value`` sets for ``formula`` (those it has)."""
    out: dict[str, Any] = {}
    if option == "loss_type":
        _choice(option, value, _AGG_OF_LOSS_TYPE)
        out = {"agg": _AGG_OF_LOSS_TYPE[value], "loss": _LOSS_OF_LOSS_TYPE[value]}
    elif option == "loss_agg_mode":
        out = {"agg": _choice(option, value, _AGGS)}
    elif option == "scale_rewards":
        mode = {True: "group", False: "none"}.get(value, value) if isinstance(value, bool) else value
        _choice(option, mode, ("group", "batch", "none"))
        out = {"std_normalize": mode != "none"} | ({"std_level": mode} if mode != "none" else {})
    elif option == "norm_adv_by_std_in_grpo":
        if not isinstance(value, bool):
            raise ValueError(f"run_check: 'norm_adv_by_std_in_grpo' must be True or False, got {value!r}")
        out = {"std_normalize": value}
    elif option in ("kl_penalty", "kl_loss_type", "kl_estimator"):
        text = str(value)
        straight = text.endswith("+") and option != "kl_estimator"
        table = (
            {k: v for k, v in _KIND_OF_KL.items() if k in ("k1", "k2", "k3")}
            if option == "kl_estimator"
            else _KIND_OF_KL
        )
        kind = _choice(option, text.removesuffix("+") if straight else text, table)
        out = {"kind": kind, "kl_kind": kind}
        if text.removesuffix("+") == "low_var_kl":
            out |= {"log_ratio_clamp": 20.0, "output_clamp": 10.0}
        if straight:
            out["grad"] = "k2"
    kept = {k: v for k, v in out.items() if k in params}
    if not kept:
        raise ValueError(f"run_check: '{option}' names no convention of {formula} ({FRAMEWORK_OPTIONS[option]})")
    return kept


def translate_options(formula: str, conventions: dict[str, Any]) -> dict[str, Any]:
    """``conventions`` with the framework option names (:data:`FRAMEWORK_OPTIONS`) replaced by the oracle
    conventions they set for ``formula``; a ValueError when one contradicts an explicit convention."""
    import inspect

    from rlhf_oracle import reference

    params = inspect.signature(getattr(reference, formula)).parameters
    explicit = {k: v for k, v in conventions.items() if k not in FRAMEWORK_OPTIONS or k in params}
    out = dict(explicit)
    for option, value in conventions.items():
        if option in explicit:
            continue
        for name, setting in _translated(formula, option, value, params).items():
            if name in out and out[name] != setting:
                raise ValueError(f"run_check: {option}={value!r} sets {name}={setting!r}, but {name}={out[name]!r} "
                                 "was given")  # fmt: skip
            out[name] = setting
    return out


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
