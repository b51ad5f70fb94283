"""The check engine: run every named property of a formula on a candidate and collect the verdicts.

The properties are objects (:data:`~rlhf_oracle.properties.props.PROPERTY_OBJECTS`: what each searches, its
body, where it applies, whether it can be waived); each is a separate hypothesis search with its own inputs,
verdict, shrunk counter-example and diagnosis (:mod:`.diagnosis`), collected in a
:class:`~rlhf_oracle.properties.report.CheckReport`.

Convention keyword arguments (``agg="token-mean"``, ``kind="k3"`` ...) are passed to the reference, and to the
candidate when its signature accepts them; a candidate that does not take the keyword is assumed to implement it.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from . import strategies as S
from .adapters import Adapter, accepted_kwargs, compose, expression
from .calls import (
    Context,
    Mismatch,
    candidate_call,
    outputs,
    reference_outputs,
    rounded,
    sample_cases,
    secondary_examples,
)
from .diagnosis import diagnose
from .presets import preset_conventions, translate_options
from .props import PROPERTY_OBJECTS, Run
from .registry import FormulaSpec, get
from .report import PROPERTIES, WAIVABLE, CheckReport, PropertyResult

__all__ = ["Context", "Mismatch", "applicable", "candidate_call", "check", "outputs", "reference_outputs", "rounded",
           "run_check", "validate_conventions"]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# entry points


def _check_conventions(spec: FormulaSpec, conventions: Mapping[str, Any]) -> None:
    params = inspect.signature(spec.reference).parameters
    unknown = [k for k in conventions if k not in params]
    if unknown:
        raise TypeError(
            f"check_{spec.id}: unknown convention keyword(s) {unknown}; reference.{spec.id} takes {[p for p in params]}"
        )
    drawn = [k for k in conventions if params[k].default is inspect.Parameter.empty]
    if drawn:
        raise TypeError(
            f"check_{spec.id}: {drawn} {'is an input' if len(drawn) == 1 else 'are inputs'} of reference.{spec.id} "
            "(no default: the oracle draws it), not a convention that can be fixed"
        )
    if not conventions:
        return
    # values: the reference refuses a bad one (clip_eps=-0.1, agg="bogus") on any input; ask it on one drawn case
    # now, so the error names the convention instead of surfacing later as a mismatch blamed on the candidate
    try:
        (case,) = sample_cases(spec.cases(fixed=dict(conventions)), 1)
    except Exception as exc:  # the strategy itself could not use the value
        raise ValueError(f"check_{spec.id}: invalid convention value(s) {dict(conventions)}: {exc}") from None
    try:
        spec.reference(*case.args, **case.kwargs)
    except (ValueError, TypeError) as exc:
        if any(repr(k) in str(exc) or f"'{k}'" in str(exc) for k in conventions):
            raise ValueError(f"check_{spec.id}: invalid convention: {exc}") from None


def _check_options(candidate: Any, adapter: Any, dtype: Any, device: Any, max_examples: Any) -> None:
    """Usage errors before any search, each naming the option: a check that never ran the candidate must not
    read as a pass."""
    if not callable(candidate):
        raise TypeError(f"run_check: the candidate must be callable, got {type(candidate).__name__} {candidate!r}")
    adapters = adapter if isinstance(adapter, Sequence) and not isinstance(adapter, str) else [adapter]
    if adapter is not None and not all(callable(a) for a in adapters):
        raise TypeError(
            f"run_check: 'adapter' must be an adapter (a callable from rlhf_oracle.properties.adapters) or a list "
            f"of them, got {adapter!r}"
        )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"run_check: 'dtype' must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}")
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int)
                                     or max_examples < 1):  # fmt: skip
        raise ValueError(f"run_check: 'max_examples' must be an int >= 1 or None, got {max_examples!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"run_check: 'device' is not a torch device: {device!r} ({exc})") from None
    if dev.type == "meta":
        raise ValueError("run_check: 'device' must hold data; 'meta' tensors have no values to compare")
    problem = device_unavailable(dev)
    if problem is not None:
        raise ValueError(f"run_check: 'device' {device!r} is not available here: {problem}")


def _owner_class(fn: Any) -> type | None:
    """The ``torch.nn.Module`` subclass an unbound ``Class.forward`` belongs to (None for anything else)."""
    qualname, module = getattr(fn, "__qualname__", ""), sys.modules.get(getattr(fn, "__module__", "") or "")
    if not inspect.isfunction(fn) or "." not in qualname or "<" in qualname or module is None:
        return None
    owner: Any = module
    for part in qualname.split(".")[:-1]:
        owner = getattr(owner, part, None)
    return owner if isinstance(owner, type) and issubclass(owner, torch.nn.Module) else None


def as_function(candidate: Any) -> tuple[Callable[..., Any], str]:
    """A ``torch.nn.Module`` candidate as the function the check calls, and its import reference for the snippet:
    a class (built with its defaults), an instance (its ``forward``), or ``Class.forward`` (bound to an instance
    built with the defaults). Anything else is returned as it is."""
    if isinstance(candidate, type) and issubclass(candidate, torch.nn.Module):
        cls = candidate
    elif (owner := _owner_class(candidate)) is not None:
        cls = owner
    elif isinstance(candidate, torch.nn.Module):
        return _module_call(candidate), ""  # an instance: its constructor arguments are not known
    else:
        return candidate, _import_ref(candidate)
    try:
        instance = cls()
    except TypeError as exc:
        raise TypeError(
            f"run_check: the candidate is the nn.Module class {cls.__qualname__}, whose constructor needs arguments "
            f"({exc}); pass an instance, e.g. {cls.__qualname__}(...)"
        ) from None
    ref = _import_ref(cls)
    return _module_call(instance), (f"{ref}()" if ref else "")


def _module_call(module: torch.nn.Module) -> Callable[..., Any]:
    """``module(...)`` with the signature of its ``forward`` (the hyper-parameters it accepts by keyword)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return module(*args, **kwargs)

    call.__signature__ = inspect.signature(module.forward)  # type: ignore[attr-defined]
    call.__qualname__ = call.__name__ = type(module).__qualname__
    call.__module__ = type(module).__module__
    return call


def device_unavailable(device: torch.device) -> str | None:
    """Why a tensor cannot be made on ``device`` here (the first line of torch's error: cuda without CUDA), or
    None."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def _import_ref(fn: Any) -> str:
    """``module:qualname`` if ``fn`` can be imported back by that name (not a lambda, a local or ``__main__``);
    ``/path/to/file.py:qualname`` for a function the CLI loaded from a file."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        return ""
    if module.startswith("_rlhf_oracle_target_"):  # loaded from a file by `rlhf-oracle check file.py:fn`
        path = getattr(sys.modules.get(module), "__file__", None)
        return f"{path}:{qualname}" if path else ""
    if module == "__main__" or module.startswith("_rlhf_oracle"):
        return ""
    return f"{module}:{qualname}"


def validate_conventions(formula: str, conventions: Mapping[str, Any]) -> None:
    """Raise (TypeError/ValueError, naming the convention) if ``conventions`` are unknown or invalid for ``formula``."""
    _check_conventions(get(formula), conventions)


def _check_names(arg: str, names: Iterable[str], allowed: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out = tuple(names)
    bad = [n for n in out if n not in allowed]
    if bad:
        raise ValueError(f"{arg}: unknown propert(y/ies) {bad}; choose from {list(allowed)}")
    return out


def applicable(spec: FormulaSpec) -> dict[str, str]:
    """Property -> "" when it applies to ``spec``, else why not."""
    return {p.name: p.applies(spec) for p in PROPERTY_OBJECTS}


def run_check(
    formula: str,
    candidate: Callable[..., Any],
    *,
    adapter: Adapter | Sequence[Adapter] | None = None,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    max_examples: int | None = None,
    gradients: bool = True,
    strict: bool = False,
    ignore_masked_outputs: bool = False,
    waive: Iterable[str] = (),
    properties: Iterable[str] | None = None,
    mask_layout: str = "any",
    preset: str | None = None,
    **conventions: Any,
) -> CheckReport:
    """Run every property of ``formula`` on ``candidate`` and return the report (never raises on a mismatch).

    ``waive``: properties (of :data:`~rlhf_oracle.properties.report.WAIVABLE`) that still run and are shown, as
    ``waived``, but do not fail the check (``ignore_masked_outputs=True`` waives ``masked_outputs``).
    ``properties``: run only these (default: all that apply). ``mask_layout``: the masks the candidate's trainer
    produces (:data:`~rlhf_oracle.properties.strategies.MASK_LAYOUTS`): ``"any"`` (default: left, right or
    floating spans, with holes half the time, as multi-turn masks have), ``"contiguous"`` (one span per row, no
    holes), ``"right"`` (right-padded: the span starts at 0), ``"left"`` (left-padded).
    ``strict``: what the candidate returns where the reference refuses the input (NaN or 0 on an all-masked
    batch) is reported as ``differs`` and passes by default; ``strict=True`` makes it fail.
    ``preset``: fix the conventions a framework documents for the formula (``"verl"``, ``"trl:dapo"``, see
    :mod:`rlhf_oracle.properties.presets`); explicit conventions override it. The frameworks' option names
    (``loss_type="dapo"``, ``scale_rewards="batch"``, ``kl_penalty="low_var_kl"``, ...) are accepted as
    conventions and translated (:data:`~rlhf_oracle.properties.presets.FRAMEWORK_OPTIONS`)."""
    if not isinstance(strict, bool):
        raise TypeError(f"run_check: 'strict' must be a bool, got {strict!r}")
    _check_options(candidate, adapter, dtype, device, max_examples)
    spec = get(formula)
    conventions = translate_options(formula, conventions)  # TRL's/verl's/OpenRLHF's option names
    if preset is not None:
        conventions = {**preset_conventions(formula, preset), **conventions}
    if mask_layout not in S.MASK_LAYOUTS:
        raise ValueError(f"run_check: 'mask_layout' must be one of {S.MASK_LAYOUTS}, got {mask_layout!r}")
    _check_conventions(spec, conventions)
    waived = set(_check_names("waive", waive, WAIVABLE))
    if ignore_masked_outputs:
        waived.add("masked_outputs")
    selected = set(_check_names("properties", properties, PROPERTIES)) if properties is not None else set(PROPERTIES)
    if not gradients:
        selected.discard("gradients")
    candidate, importable = as_function(candidate)
    name = getattr(candidate, "__qualname__", getattr(candidate, "__name__", repr(candidate)))
    adapter_expr = None
    if adapter is not None:
        adapter_expr = expression(adapter)
        candidate = compose(*adapter)(candidate) if isinstance(adapter, Sequence) else adapter(candidate)
        name += f" (through {adapter_expr or 'the adapter'})"
    accepted = accepted_kwargs(candidate)
    ctx = Context(spec, candidate, accepted, dict(conventions), dtype, str(device), strict=strict)
    report = CheckReport(formula, dict(conventions), dtype, str(device), name, waived=tuple(sorted(waived)),
                         candidate_import=importable, accepted=accepted, adapted=adapter is not None,
                         adapter_expr=adapter_expr or "")  # fmt: skip
    fixed = dict(conventions)
    why_not = applicable(spec)

    def add(result: PropertyResult) -> None:
        result.waived = result.name in waived
        if result.passed and result.name in ctx.findings:
            result.finding = ctx.findings[result.name]
        report.properties.append(result)

    run = Run(ctx, fixed, max_examples, secondary_examples(max_examples), {})
    with S.mask_layout(mask_layout):  # the masks the strategies draw (holes or not, which padding)
        for prop in PROPERTY_OBJECTS:
            if why_not[prop.name]:
                result = PropertyResult(prop.name, None, note=why_not[prop.name])
            elif prop.name not in selected:
                result = PropertyResult(prop.name, None, note="not run (disabled by the caller)")
            else:
                result = prop.run(run)
            run.results[prop.name] = result
            add(result)
        for p in report.properties:
            for f in (p.failure, p.finding):
                if f is not None and not f.diagnosis:
                    f.diagnosis = diagnose(ctx, f)
    return report


def check(formula: str, candidate: Callable[..., Any], **options: Any) -> CheckReport:
    """:func:`run_check`, raising :class:`~rlhf_oracle.properties.report.OracleMismatch` (an AssertionError) when a
    property that is not waived fails."""
    __tracebackhide__ = True
    return run_check(formula, candidate, **options).raise_for_failure()
