"""The property-based oracle: check any implementation of the catalogue against ``rlhf_oracle.reference``.

- :mod:`.registry` - one entry per formula (reference, torch twin, strategy, tolerance, paper, docs, sympy,
  convention variants);
- :mod:`.strategies` - hypothesis strategies that build valid and invalid inputs;
- :mod:`.engine` - the named properties (values, gradients, edge_cases, masked_slots, masked_outputs,
  stability, dtype) and ``run_check``; :mod:`.diagnosis` - why a property failed; :mod:`.report` - the verdicts;
- :mod:`.checks` - ``check_<formula>(candidate, *, adapter=None, dtype=torch.float64, device="cpu",
  max_examples=None, waive=(), **conventions)``, re-exported here;
- :mod:`.adapters` - make other argument/return conventions fit the reference's;
- :mod:`.tolerances` - the written tolerance policy;
- :mod:`.pytest_plugin` - the ``rlhf_oracle`` fixture and ``--rlhf-oracle-profile``;
- :mod:`.cli` - ``rlhf-oracle check module:function --formula NAME``.
"""

from . import adapters as adapters
from . import strategies as strategies
from . import tolerances as tolerances
from .checks import CHECKS as CHECKS
from .checks import CheckReport as CheckReport
from .checks import OracleMismatch as OracleMismatch
from .checks import PropertyResult as PropertyResult
from .checks import check as check
from .checks import check_adaptive_kl_update as check_adaptive_kl_update
from .checks import check_aggregate as check_aggregate
from .checks import check_entropy_from_logits as check_entropy_from_logits
from .checks import check_error_parity as check_error_parity
from .checks import check_gae as check_gae
from .checks import check_grpo_advantages as check_grpo_advantages
from .checks import check_kl_estimate as check_kl_estimate
from .checks import check_kl_exact as check_kl_exact
from .checks import check_kl_shaped_rewards as check_kl_shaped_rewards
from .checks import check_policy_loss as check_policy_loss
from .checks import check_ppo_clip_grad as check_ppo_clip_grad
from .checks import check_ppo_clip_objective as check_ppo_clip_objective
from .checks import check_ptx_loss as check_ptx_loss
from .checks import check_ranking_loss as check_ranking_loss
from .checks import check_reward_model_loss as check_reward_model_loss
from .checks import check_rlhf_objective as check_rlhf_objective
from .checks import check_token_logprobs as check_token_logprobs
from .checks import check_value_loss as check_value_loss
from .checks import check_whiten as check_whiten
from .checks import run_check as run_check
from .registry import REGISTRY as REGISTRY
from .registry import FormulaSpec as FormulaSpec

__all__ = [
    "CHECKS",
    "REGISTRY",
    "CheckReport",
    "FormulaSpec",
    "OracleMismatch",
    "PropertyResult",
    "adapters",
    "check",
    "check_adaptive_kl_update",
    "check_aggregate",
    "check_entropy_from_logits",
    "check_error_parity",
    "check_gae",
    "check_grpo_advantages",
    "check_kl_estimate",
    "check_kl_exact",
    "check_kl_shaped_rewards",
    "check_policy_loss",
    "check_ppo_clip_grad",
    "check_ppo_clip_objective",
    "check_ptx_loss",
    "check_ranking_loss",
    "check_reward_model_loss",
    "check_rlhf_objective",
    "check_token_logprobs",
    "check_value_loss",
    "check_whiten",
    "run_check",
    "strategies",
    "tolerances",
]
