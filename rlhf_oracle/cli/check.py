"""``rlhf-oracle check``: run the oracle's checks on a function from the command line.

::

    rlhf-oracle check mypkg.losses:policy_loss --formula policy_loss --agg token-mean
    rlhf-oracle check path/to/losses.py:ppo_loss --formula policy_loss --adapter ratio --adapter first \\
        --dtype float32 --max-examples 200
    rlhf-oracle check --list

Prints one row per property (values, gradients, edge_cases, masked_slots, masked_outputs, stability, dtype):
passed/FAILED/waived/n/a, examples tried, worst error as a
multiple of the allowed error; on failure the oracle's report with its diagnosis. Exit status: 0 all pass,
1 a property failed, 2 usage error (target not found, unknown formula or convention).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "load_target", "run"]

_DTYPES = ("float64", "float32", "bfloat16", "float16")


def _conventions() -> dict[str, str]:
    """Every convention keyword of the registry -> help text."""
    from rlhf_oracle.properties.registry import REGISTRY

    names: dict[str, list[str]] = {}
    for spec in REGISTRY.values():
        for name in spec.conventions:
            names.setdefault(name, []).append(spec.id)
    return {n: "convention of " + ", ".join(sorted(f)) for n, f in sorted(names.items())}


def parse_value(text: str) -> Any:
    """``none`` -> None, ``true``/``false`` -> bool, then int, float, else the string itself."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``check`` arguments to ``parser`` (the ``rlhf-oracle check`` subparser)."""
    parser.description = (
        "Check a function against the rlhf_oracle reference with property-based tests; on failure, print a shrunk "
        "counter-example and which documented convention the function follows instead."
    )
    parser.add_argument("target", nargs="?", help="the function: package.module:function or path/to/file.py:function")
    parser.add_argument("--formula", "-f", help="catalogue formula to check against (see --list)")
    parser.add_argument("--list", action="store_true", help="list the formulas and their conventions, then exit")
    parser.add_argument(
        "--adapter",
        "-a",
        action="append",
        default=[],
        help="adapt the function's convention (repeatable, applied in order): first, take:KEY, negate, ratio, "
        "numpy, rename:ref_name=your_name,..., reorder:i,j,..., float_mask",
    )
    parser.add_argument("--dtype", choices=_DTYPES, default="float64", help="dtype of the inputs (default float64)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--max-examples", type=int, default=None, help="examples per property (default: profile)")
    parser.add_argument("--preset", help="the conventions a framework documents for the formula: verl, openrlhf, "
                        "trl, or framework:qualifier (trl:dapo); explicit convention flags override it")  # fmt: skip
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text (a table and the reports) or json (CheckReport.to_dict, for CI tools)")  # fmt: skip
    parser.add_argument(
        "--profile",
        choices=("fast", "thorough", "thorough-derandomized"),
        default=None,
        help="search effort (default fast)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop the check (exit 1) if it has not finished after SECONDS, e.g. a candidate that hangs",
    )
    parser.add_argument(
        "--mask-layout",
        choices=("any", "contiguous", "right", "left"),
        default="any",
        help="the masks your trainer produces: any (default: with holes, as multi-turn masks), contiguous (one "
        "span per row), right (right-padded), left (left-padded)",
    )
    parser.add_argument("--no-gradients", action="store_true", help="skip the autograd gradient property")
    parser.add_argument(
        "--ignore-masked-outputs", action="store_true", help="accept any value at masked positions of [B, T] outputs"
    )
    parser.add_argument(
        "--waive",
        default="",
        help="comma-separated properties that are still run and shown but do not fail the check: "
        "edge_cases, masked_slots, masked_outputs, stability, dtype",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail (instead of reporting as 'differs') a value returned where the reference refuses the input",
    )
    group = parser.add_argument_group("conventions (passed to the reference, and to the function if it accepts them)")
    conventions = _conventions()
    for name, help_text in conventions.items():
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        group.add_argument(*flags, dest=f"conv_{name}", type=parse_value, default=argparse.SUPPRESS, help=help_text)
    from rlhf_oracle.properties.presets import FRAMEWORK_OPTIONS

    options = parser.add_argument_group("framework option names (translated into the conventions above)")
    for name, help_text in FRAMEWORK_OPTIONS.items():
        if name in conventions:
            continue
        flags = [f"--{name.replace('_', '-')}", f"--{name}"]
        options.add_argument(*flags, dest=f"conv_{name}", type=parse_value, default=argparse.SUPPRESS, help=help_text)


def load_target(target: str) -> Callable[..., Any]:
    """Import ``package.module:function`` or ``path/to/file.py:function`` (dotted attributes allowed).

    The current directory is importable (as with ``python -m``): ``my_project.losses:fn`` works from the project's
    root without PYTHONPATH. Every failure is a ``ValueError`` with a one-line message naming the file or module.
    """
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise ValueError(f"target must look like package.module:function or path/to/file.py:function, got {target!r}")
    path = Path(module_part)
    where = module_part
    try:
        if module_part.endswith(".py") or path.exists():
            if not path.is_file():
                raise ValueError(f"no such file: {module_part}")
            name = f"_rlhf_oracle_target_{abs(hash(str(path.resolve())))}"
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise ValueError(f"cannot import {module_part}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            sys.path.insert(0, str(path.resolve().parent))
            try:
                spec.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.resolve().parent))
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_part)
            where = getattr(module, "__file__", None) or module_part
    except ValueError:
        raise
    except SyntaxError as exc:
        raise ValueError(f"cannot import {module_part}: {exc.msg} ({exc.filename}, line {exc.lineno})") from None
    except ImportError as exc:
        raise ValueError(f"cannot import {module_part}: {exc}") from None
    except SystemExit as exc:  # a script that exits at import (argparse, sys.exit in module code)
        raise ValueError(
            f"importing {module_part} called sys.exit({exc.code!r}): its module code runs a script; put it under "
            "`if __name__ == '__main__':`"
        ) from None
    except Exception as exc:  # the module's own code failed at import
        raise ValueError(f"importing {module_part} raised {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            owner = where if i == 0 else f"{where}:{'.'.join(attr.split('.')[:i])}"
            raise ValueError(f"{owner} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{target} is not callable")
    return obj  # type: ignore[no-any-return]


def _list_formulas() -> None:
    from rich.console import Console
    from rich.table import Table

    from rlhf_oracle.properties.registry import REGISTRY

    table = Table(title="rlhf_oracle formulas")
    for col in ("formula", "conventions", "gradient of", "source"):
        table.add_column(col)
    for spec in REGISTRY.values():
        table.add_row(spec.id, ", ".join(spec.conventions), ", ".join(spec.differentiable), spec.equation)
    # piped (not a terminal): rich would fold the table into 80 columns; give it the room it needs instead
    Console(width=None if sys.stdout.isatty() else 240).print(table)


def _usage(message: str) -> int:
    """A usage error: one line on stderr, exit status 2."""
    print(f"rlhf-oracle check: error: {message}", file=sys.stderr)
    return 2


class _Timeout(BaseException):  # not an Exception: the engine must not record it as the candidate raising
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Timeout


def run(args: argparse.Namespace) -> int:
    """Run ``rlhf-oracle check``; returns the exit status (0 pass, 1 mismatch or timeout, 2 usage error)."""
    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from rlhf_oracle.properties import adapters, profiles
    from rlhf_oracle.properties.checks import run_check
    from rlhf_oracle.properties.engine import device_unavailable, validate_conventions
    from rlhf_oracle.properties.registry import REGISTRY

    console = Console()
    if getattr(args, "list", False):
        if args.target or args.formula:
            return _usage("--list takes no target or --formula: it lists the formulas")
        _list_formulas()
        return 0
    if not args.target or not args.formula:
        return _usage("give a target (module:function or file.py:function) and --formula")
    if args.formula not in REGISTRY:
        return _usage(f"unknown formula {args.formula!r}; known: {', '.join(REGISTRY)}")
    if args.max_examples is not None and args.max_examples < 1:
        return _usage(f"--max-examples must be >= 1, got {args.max_examples}")
    if args.timeout is not None and not args.timeout > 0:
        return _usage(f"--timeout must be > 0 seconds, got {args.timeout}")
    try:
        problem = device_unavailable(torch.device(args.device))
    except RuntimeError as exc:  # not a device name at all
        problem = str(exc).strip().splitlines()[0]
    if problem is not None:
        return _usage(f"--device {args.device} is not available here: {problem}")
    conventions = {k[len("conv_") :]: v for k, v in vars(args).items() if k.startswith("conv_")}
    params = inspect.signature(REGISTRY[args.formula].reference).parameters
    from rlhf_oracle.properties.presets import FRAMEWORK_OPTIONS, translate_options

    unknown = [k for k in conventions if k not in params and k not in FRAMEWORK_OPTIONS]
    if unknown:
        return _usage(f"{args.formula} has no convention {unknown}; it takes {list(params)}")
    try:
        conventions = translate_options(args.formula, conventions)
    except ValueError as exc:
        return _usage(str(exc).removeprefix("run_check: "))
    if getattr(args, "preset", None):
        from rlhf_oracle.properties.presets import preset_conventions

        try:
            conventions = {**preset_conventions(args.formula, args.preset), **conventions}
        except ValueError as exc:
            return _usage(str(exc).removeprefix("run_check: "))
    try:
        validate_conventions(args.formula, conventions)
    except (ValueError, TypeError) as exc:
        return _usage(str(exc).removeprefix(f"check_{args.formula}: "))
    renamed = [p.partition("=")[0].strip() for a in args.adapter or [] if a.startswith("rename:")
               for p in a.partition(":")[2].split(",") if "=" in p]  # fmt: skip
    stray = [name for name in renamed if name not in params]
    if stray:
        return _usage(f"--adapter rename: {stray} not a parameter of reference.{args.formula} ({list(params)})")
    try:
        candidate = load_target(args.target)
        adapter = adapters.parse(args.adapter) if args.adapter else None
    except (ValueError, ImportError, AttributeError, OSError) as exc:
        return _usage(str(exc))

    from rlhf_oracle.properties.report import WAIVABLE

    waive = [w.strip() for w in args.waive.split(",") if w.strip()]
    bad = [w for w in waive if w not in WAIVABLE]
    if bad:
        return _usage(f"--waive: unknown propert(y/ies) {bad}; choose from {', '.join(WAIVABLE)}")
    profiles.set_active(args.profile)
    timer = args.timeout is not None and hasattr(signal, "SIGALRM")
    if timer:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, args.timeout)
    try:
        report = run_check(
            args.formula,
            candidate,
            adapter=adapter,
            dtype=getattr(torch, args.dtype),
            device=args.device,
            max_examples=args.max_examples,
            gradients=not args.no_gradients,
            ignore_masked_outputs=args.ignore_masked_outputs,
            waive=waive,
            strict=args.strict,
            mask_layout=args.mask_layout,
            **conventions,
        )
    except (ValueError, TypeError) as exc:  # run_check's own usage errors (an option it refuses), before any search
        if not str(exc).startswith("run_check: "):
            raise
        return _usage(str(exc).removeprefix("run_check: "))
    except _Timeout:
        print(
            f"rlhf-oracle check: {args.target} did not finish within --timeout {args.timeout:g} s "
            "(a candidate that hangs or is very slow on the drawn inputs)",
            file=sys.stderr,
        )
        return 1
    finally:
        if timer:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        profiles.set_active(None)

    if getattr(args, "format", "text") == "json":
        print(json.dumps(report.to_dict(), indent=2, default=repr))
        return 0 if report.passed else 1
    conv = ", ".join(f"{k}={v!r}" for k, v in conventions.items()) or "reference defaults"
    # (titles and notes are plain text: "[float64; ...]" or "[B, T]" must not be read as rich markup)
    table = Table(title=escape(f"{args.target} vs reference.{args.formula} [{args.dtype}; {conv}]"))
    # a narrow terminal keeps the note column wide enough to wrap at spaces (the counts are in the message below)
    wide = console.width >= 100
    columns = (("property", "left"), ("result", "left")) + ((("examples", "right"), ("worst error", "right"))
                                                           if wide else ())  # fmt: skip
    for col, justify in columns:
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    table.add_column("note", overflow="fold")  # wrapped at spaces; only a word longer than the column folds
    styles = {"passed": "[green]passed[/]", "FAILED": "[red]FAILED[/]", "waived": "[yellow]waived[/]",
              "differs": "[cyan]differs[/]", "skipped": "[yellow]skipped[/]", "n/a": "[dim]n/a[/]"}  # fmt: skip
    for p in report.properties:
        worst = f"{p.worst:.3g} x tol" if p.passed is not None else ""
        shown = p.failure or p.finding
        diag = shown.diagnosis[0] if shown is not None and shown.diagnosis else p.note
        counts = (str(p.examples) if p.passed is not None else "", worst) if wide else ()
        table.add_row(p.name, styles[p.status], *counts, escape(diag))
    console.print(table)
    if any(p.failure is not None or p.finding is not None for p in report.properties):
        console.print(report.message(), markup=False, highlight=False, soft_wrap=True)
    if not report.passed:
        return 1
    console.print(f"[green]{args.target} matches reference.{args.formula}[/]")
    return 0
