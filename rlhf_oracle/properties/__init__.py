"""The property-based oracle: check any implementation of the catalogue against ``rlhf_oracle.reference``.

- :mod:`.formulas` - one module per formula family: everything the oracle knows of each formula (strategy,
  extreme regime, gradient, variants, tolerance, bad inputs, paper, docs, sympy), registered in :mod:`.registry`;
- :mod:`.axes` - what several families share (aggregation, PPO clip, KL estimators, log-sigmoid);
- :mod:`.cases` - the :class:`Case` and the hypothesis building blocks of inputs;
- :mod:`.strategies` - the inputs of every property (maths, edge cases, masked slots, stability, bad inputs);
- :mod:`.engine` - the named properties (values, gradients, edge_cases, masked_slots, masked_outputs,
  stability, dtype) and ``run_check``; :mod:`.diagnosis` - why a property failed; :mod:`.report` - the verdicts;
- :mod:`.checks` - ``check_<formula>(candidate, *, adapter=None, dtype=torch.float64, device="cpu",
  max_examples=None, waive=(), **conventions)``, re-exported here;
- :mod:`.distributed` - ``check_distributed``: micro-batch and rank splits accumulate to the global gradient;
- :mod:`.adapters` - make other argument/return conventions fit the reference's;
- :mod:`.tolerances` - the written tolerance policy;
- :mod:`.pytest_plugin` - the ``rlhf_oracle`` fixture and ``--rlhf-oracle-profile``;
- :mod:`.cli` - ``rlhf-oracle check module:function --formula NAME``.
"""

from . import adapters as adapters
from . import formulas as formulas  # registers every formula family (first: the checks are built from them)
from . import strategies as strategies
from . import tolerances as tolerances
from .checks import CHECKS as CHECKS
from .checks import CheckReport as CheckReport
from .checks import OracleMismatch as OracleMismatch
from .checks import PropertyResult as PropertyResult
from .checks import check as check
from .checks import check_error_parity as check_error_parity
from .checks import run_check as run_check
from .distributed import DistributedMismatch as DistributedMismatch
from .distributed import DistributedReport as DistributedReport
from .distributed import MicroBatch as MicroBatch
from .distributed import check_distributed as check_distributed
from .registry import REGISTRY as REGISTRY
from .registry import FormulaSpec as FormulaSpec

globals().update({f"check_{formula}": fn for formula, fn in CHECKS.items()})

__all__ = [
    "CHECKS",
    "REGISTRY",
    "CheckReport",
    "DistributedMismatch",
    "DistributedReport",
    "FormulaSpec",
    "MicroBatch",
    "OracleMismatch",
    "PropertyResult",
    "adapters",
    "check",
    "check_distributed",
    "run_check",
    "strategies",
    "tolerances",
    "check_error_parity",
    *(f"check_{formula}" for formula in CHECKS),
]
