# ruff: noqa: I001  -- the families register in the order of the catalogue
"""The formula families: one module per family holds everything the oracle knows about its formulas.

For each formula: the hypothesis strategy of the maths inputs, the extreme regime of the ``stability``
property, the reference gradient, the convention variants and bug classes of the diagnosis, the tolerance with
its reason, the invalid inputs, and the registry entry (paper, equation, docs page, sympy derivations), all in
one :class:`~rlhf_oracle.properties.registry.FormulaSpec` passed to ``register``. What several families share
(the aggregation, the PPO clip, the KL estimators, the log-sigmoid) is in :mod:`rlhf_oracle.properties.axes`.
``docs/contributing.md`` walks through adding a formula. Importing this package registers every family, in the
order of the catalogue (the reference modules of the same names).
"""

from . import logprobs as logprobs
from . import policy as policy
from . import grpo_losses as grpo_losses
from . import kl as kl
from . import rewards as rewards
from . import reward_model as reward_model
from . import advantages as advantages
from . import critic_free as critic_free
from . import shaping as shaping
from . import value as value
from . import kl_control as kl_control
from . import preference as preference
from . import rollout as rollout
from . import actor as actor

__all__ = [
    "actor",
    "advantages",
    "critic_free",
    "grpo_losses",
    "kl",
    "kl_control",
    "logprobs",
    "policy",
    "preference",
    "reward_model",
    "rewards",
    "rollout",
    "shaping",
    "value",
]
