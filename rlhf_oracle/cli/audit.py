"""``rlhf-oracle audit``: every property of the oracle on the pure-math functions of TRL, verl or OpenRLHF
(:mod:`rlhf_oracle.audit`), as a Markdown or JSON conformance matrix."""

from __future__ import annotations

import argparse
import sys


def run_audit_command(args: argparse.Namespace) -> int:
    """``rlhf-oracle audit``: the conformance matrix of a framework's functions."""
    try:
        from rlhf_oracle.audit import AuditUnavailable, render_json, render_markdown, run_audit
    except ImportError as exc:  # torch/hypothesis missing: the oracle is not installed
        print(f"rlhf-oracle audit: needs the oracle's extras (pip install rlhf-oracle[torch]): {exc}", file=sys.stderr)
        return 2
    if args.max_examples is not None and args.max_examples < 1:
        print(f"rlhf-oracle audit: --max-examples must be >= 1, got {args.max_examples}", file=sys.stderr)
        return 2
    if args.output is not None and (not args.output.parent.is_dir() or args.output.is_dir()):
        where = "is a folder" if args.output.is_dir() else f"is in a folder that does not exist ({args.output.parent})"
        print(f"rlhf-oracle audit: --output {args.output} {where}", file=sys.stderr)
        return 2
    try:
        rows = run_audit(args.framework, max_examples=args.max_examples)
    except AuditUnavailable as exc:
        print(f"rlhf-oracle audit: skipped: {exc}", file=sys.stderr)
        return 2
    text = render_json(rows) if args.format == "json" else render_markdown(rows)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
        print(f"rlhf-oracle audit: wrote {args.output} ({len(rows)} functions)")
    else:
        print(text)
    return 0
