"""``rlhf-oracle audit``: run the oracle on the pure-math functions of TRL, verl and OpenRLHF.

The frameworks' code is never vendored: :mod:`.fetch` downloads the pinned wheels into a cache at run time
(``pip download --no-deps``), :mod:`.loader` extracts the named functions (and the module-level helpers they
use) from the wheel's source without importing the framework (no deepspeed, ray or vLLM needed),
:mod:`.frameworks` wraps each into the reference signature with the conventions fixed as the framework
documents them, and :mod:`.matrix` runs every property and renders the conformance matrix
(framework x function x property: pass / differs, with the named convention) as Markdown and JSON.
"""

from .fetch import AuditUnavailable as AuditUnavailable
from .frameworks import FRAMEWORKS as FRAMEWORKS
from .frameworks import AuditEntry as AuditEntry
from .matrix import AuditRow as AuditRow
from .matrix import render_json as render_json
from .matrix import render_markdown as render_markdown
from .matrix import run_audit as run_audit

__all__ = [
    "FRAMEWORKS",
    "AuditEntry",
    "AuditRow",
    "AuditUnavailable",
    "render_json",
    "render_markdown",
    "run_audit",
]
