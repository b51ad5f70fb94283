"""``rlhf-oracle``: the command line.

Subcommands:

- ``demo`` (:mod:`.demo`): the end-to-end miniature RLHF pipeline (SFT -> reward model -> PPO, with the float64
  oracle in the loop); see :mod:`rlhf_oracle.e2e`. Every :class:`~rlhf_oracle.e2e.config.DemoConfig` field is a flag.
- ``check``: the property-based oracle against an implementation (:mod:`.check`), imported lazily so that
  ``demo`` works without the oracle's extras.
- ``audit``: every property on the pure-math functions of TRL, verl or OpenRLHF (:mod:`.audit`).

One module per subcommand: :mod:`.demo`, :mod:`.check`, :mod:`.audit`; this one builds the parser.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .audit import run_audit_command
from .demo import EXIT_HALTED, EXIT_ORACLE, add_demo_arguments, config_from_args, run_demo_command

__all__ = ["EXIT_HALTED", "EXIT_ORACLE", "build_parser", "config_from_args", "main"]


def _properties_cli() -> Any:
    """``rlhf_oracle.cli.check``, imported only when ``check`` is used (ImportError if the oracle's extras are
    missing)."""
    return importlib.import_module("rlhf_oracle.cli.check")


def _add_check_arguments(parser: argparse.ArgumentParser) -> None:
    try:
        properties_cli = _properties_cli()
    except ImportError:
        return  # reported by the handler
    properties_cli.add_arguments(parser)


def run_check_command(args: argparse.Namespace) -> int:
    try:
        properties_cli = _properties_cli()
    except ImportError as e:
        print(
            f"rlhf-oracle check: the property-based oracle is not available ({e}). "
            "Install the package with its 'torch' extra: pip install 'rlhf-oracle[torch]'.",
            file=sys.stderr,
        )
        return 2
    return int(properties_cli.run(args))


class OneLineParser(argparse.ArgumentParser):
    """argparse with every usage error on one line (``rlhf-oracle check: error: ... (see --help)``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(*, check_arguments: bool = False) -> argparse.ArgumentParser:
    """The parser; ``check``'s own arguments are added (importing the properties layer) only when asked."""
    parser = OneLineParser(
        prog="rlhf-oracle", description="A verified reference implementation and test oracle for PPO in RLHF."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    demo = sub.add_parser(
        "demo",
        help="end-to-end miniature RLHF (SFT -> reward model -> PPO) with the float64 oracle in the loop",
        description=(
            "Train a tiny GPT-2 with the InstructGPT recipe on a synthetic task whose gold reward is hidden from "
            "the reward model, checking every PPO step against the NumPy float64 reference. CPU, a few minutes."
        ),
    )
    add_demo_arguments(demo)
    demo.set_defaults(handler=run_demo_command)
    check = sub.add_parser("check", help="property-based checks of an implementation against the reference")
    if check_arguments:
        _add_check_arguments(check)
    check.set_defaults(handler=run_check_command)
    audit = sub.add_parser(
        "audit",
        help="run every property on the pure-math functions of TRL, verl or OpenRLHF (pinned wheels)",
        description=(
            "Fetch the pinned wheel of a framework into a cache (pip download --no-deps), load its pure-math "
            "functions without importing the framework, run every property of the oracle with the conventions the "
            "framework documents, and print the conformance matrix (function x property: pass / differs, with "
            "the named convention). Exit 0 when the matrix was produced (differences are findings, not errors), "
            "2 on a usage error or when the wheel cannot be fetched (offline)."
        ),
    )
    audit.add_argument("framework", choices=("trl", "verl", "openrlhf", "all"), help="which framework to audit")
    audit.add_argument("--format", choices=("md", "json"), default="md", help="output format (default md)")
    audit.add_argument("--output", type=Path, help="write the matrix to this file instead of stdout")
    audit.add_argument("--max-examples", type=int, default=None, help="examples per maths property (default: profile)")
    audit.set_defaults(handler=run_audit_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `demo` never imports the properties layer: it may be absent, or slow to import (hypothesis).
    parser = build_parser(check_arguments=argv[:1] == ["check"])
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
