"""``rlhf-oracle demo``: the end-to-end miniature RLHF pipeline (SFT -> reward model -> PPO, with the float64
oracle in the loop; see :mod:`rlhf_oracle.e2e`). Every :class:`~rlhf_oracle.e2e.config.DemoConfig` field is a
flag; under ``torchrun`` the PPO update runs data-parallel over the ranks."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

EXIT_HALTED = 3
EXIT_ORACLE = 4


def _parse_optional(base: type) -> Any:
    def parse(text: str) -> Any:
        if text.lower() in ("none", "null", ""):
            return None
        return base(text)

    parse.__name__ = f"{base.__name__} or none"
    return parse


def _parse_float_list(text: str) -> tuple[float, ...]:
    text = text.strip()
    if not text:
        return ()
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0,0.05,0.2, got {text!r}") from e


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``demo``: run control plus one flag per DemoConfig field (help = the field's docstring)."""
    from rlhf_oracle.e2e.config import DemoConfig, field_docs, field_kind

    run = parser.add_argument_group("run")
    run.add_argument("--config", type=Path, help="JSON file of DemoConfig fields (flags given here override it)")
    run.add_argument("--out", type=Path, help="run folder (default: runs/<timestamp>)")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    docs = field_docs(DemoConfig)
    defaults = DemoConfig()
    group = parser.add_argument_group("configuration (DemoConfig fields)")
    for f in dataclasses.fields(DemoConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        shown = ",".join(f"{b:g}" for b in default) if isinstance(default, tuple) else default
        help_text = f"{docs.get(f.name, '')} (default: {shown})".replace("%", "%%")
        base, optional, is_tuple = field_kind(f)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if is_tuple:
            group.add_argument(flag, type=_parse_float_list, metavar="B1,B2,...", **kwargs)
        elif base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif optional:
            metavar = f"{base.__name__.upper()}|none"
            group.add_argument(flag, type=_parse_optional(base), metavar=metavar, **kwargs)
        else:
            group.add_argument(flag, type=base, metavar=base.__name__.upper(), **kwargs)


def config_from_args(args: argparse.Namespace) -> Any:
    """DemoConfig from defaults < --config file < explicit flags."""
    import json

    from rlhf_oracle.e2e.config import DemoConfig

    names = {f.name for f in dataclasses.fields(DemoConfig)}
    values: dict[str, Any] = {}
    if args.config is not None:
        try:
            loaded = json.loads(Path(args.config).read_text())
        except OSError as exc:
            raise ValueError(f"--config {args.config}: cannot read it ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config {args.config}: not valid JSON ({exc})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {args.config}: expected a JSON object of DemoConfig fields")
        values.update(loaded)
    values.update({k: v for k, v in vars(args).items() if k in names})
    return DemoConfig.from_dict(values)


def _error(message: str) -> None:
    print(f"rlhf-oracle demo: error: {message}", file=sys.stderr)


def run_demo_command(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built in code: never reach for the hub
    from rlhf_oracle.e2e import parallel

    joined = parallel.init_from_env()  # launched by torchrun: the PPO update runs data-parallel over the ranks
    try:
        return _demo(args, parallel.rank_and_world()[0])
    finally:
        if joined:
            parallel.destroy()


def _demo(args: argparse.Namespace, rank: int) -> int:
    from rich.console import Console

    from rlhf_oracle.e2e import parallel
    from rlhf_oracle.e2e.config import DemoConfig
    from rlhf_oracle.e2e.oracle import OracleDivergenceError
    from rlhf_oracle.e2e.ppo import Halted
    from rlhf_oracle.e2e.run import default_run_dir, run_demo, summary_table

    console = Console(quiet=rank > 0)  # under torchrun only rank 0 speaks
    names = {f.name for f in dataclasses.fields(DemoConfig)}
    if args.resume is not None:
        given = sorted(k for k in vars(args) if k in names)
        if given or args.config is not None or args.out is not None:
            _error(f"--resume takes no configuration flags (got {given or '--config/--out'})")
            return 2
        out = Path(args.resume)
        if not (out / "config.json").exists():
            _error(f"--resume: {out} has no config.json; is it a demo run folder?")
            return 2
        cfg = DemoConfig.load(out / "config.json")
        cfg.halt_after_step = None
    else:
        try:
            cfg = config_from_args(args)
        except (ValueError, TypeError) as e:
            _error(str(e))
            return 2
        out = args.out if args.out is not None else Path(str(parallel.broadcast(str(default_run_dir()))))
        if out.exists() and not out.is_dir():
            _error(f"--out {out} exists and is not a folder")
            return 2
    try:  # the device and dtype are usage errors before any work (CUDA missing, bf16 autocast on CPU)
        from rlhf_oracle.e2e.runtime import resolve_device

        resolve_device(cfg)
    except ValueError as e:
        _error(str(e))
        return 2
    console.print(f"run folder: [bold]{out}[/bold]")
    try:
        summary = run_demo(cfg, out, resume=args.resume is not None, progress=not args.quiet)
    except Halted as e:
        console.print(f"[yellow]{e}. Continue with: rlhf-oracle demo --resume {out}[/yellow]")
        return EXIT_HALTED
    except OracleDivergenceError as e:
        _error(str(e))
        return EXIT_ORACLE
    console.print(summary_table(summary))
    console.print(f"plots: {', '.join(summary['plots'])}")
    return 0
