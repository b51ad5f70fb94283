"""The torch twin of :mod:`rlhf_oracle.reference`: same names, argument order, defaults and error messages.

Batched and vectorised, on any float dtype (float64/float32/bf16/fp16) and device, differentiable and usable inside
``torch.compile``. It never imports the reference: their agreement is the main test of both. Half-precision inputs
are computed in float32 and rounded once to the input dtype; ``[B, T, V]`` reductions are chunked so that no
full-size float32 copy of the logits exists.

Value checks (NaN/inf at valid positions, mask values, empty rows, k3 overflow, token range) force a device sync;
turn them off with :func:`set_value_checks` ``(False)`` or ``with value_checks(False):``. They are skipped
automatically while ``torch.compile`` traces. Shape, dtype and hyper-parameter checks always run.

Two kernels are compiled by the twin itself: log-probabilities of large bf16/fp16 logits on CPU (the
reference-model and old-policy passes, and the policy's with autograd) go through a log-sum-exp that Inductor fuses
into one read of the logits, and their gradient through one fused read and write; both are compiled on first use (a
few seconds once per process). Where compilation is off, disabled or unavailable the eager path gives the same
values; :func:`set_compiled_kernels` ``(False)``, ``with compiled_kernels(False):`` or ``RLHF_ORACLE_COMPILE=0``
turns them off.
"""

from ._compiled import compiled_kernels as compiled_kernels
from ._compiled import compiled_kernels_enabled as compiled_kernels_enabled
from ._compiled import set_compiled_kernels as set_compiled_kernels
from ._validation import set_value_checks as set_value_checks
from ._validation import value_checks as value_checks
from ._validation import value_checks_enabled as value_checks_enabled
from .actor import ACTOR_LOSSES as ACTOR_LOSSES
from .actor import actor_loss as actor_loss
from .advantages import STD_LEVELS as STD_LEVELS
from .advantages import GAEResult as GAEResult
from .advantages import gae as gae
from .advantages import grpo_advantages as grpo_advantages
from .advantages import whiten as whiten
from .critic_free import KL_POSITIONS as KL_POSITIONS
from .critic_free import SINGLETON_RULES as SINGLETON_RULES
from .critic_free import reinforce_pp_advantages as reinforce_pp_advantages
from .critic_free import reinforce_pp_baseline_advantages as reinforce_pp_baseline_advantages
from .critic_free import remax_advantages as remax_advantages
from .critic_free import rloo_advantages as rloo_advantages
from .distributed import Normaliser as Normaliser
from .distributed import global_normaliser as global_normaliser
from .distributed import micro_batch_aggregate as micro_batch_aggregate
from .distributed import micro_batch_policy_loss as micro_batch_policy_loss
from .distributed import micro_batch_value_loss as micro_batch_value_loss
from .grpo_losses import cispo_loss as cispo_loss
from .grpo_losses import gspo_loss as gspo_loss
from .grpo_losses import sapo_loss as sapo_loss
from .kl import KL_ESTIMATORS as KL_ESTIMATORS
from .kl import KL_GRADIENTS as KL_GRADIENTS
from .kl import kl_estimate as kl_estimate
from .kl import kl_exact as kl_exact
from .kl import kl_loss as kl_loss
from .kl_control import AdaptiveKLController as AdaptiveKLController
from .kl_control import adaptive_kl_update as adaptive_kl_update
from .logprobs import entropy_from_logits as entropy_from_logits
from .logprobs import logprobs_and_entropy as logprobs_and_entropy
from .logprobs import token_logprobs as token_logprobs
from .policy import AGGREGATION_MODES as AGGREGATION_MODES
from .policy import PG_FORMS as PG_FORMS
from .policy import aggregate as aggregate
from .policy import pg_loss as pg_loss
from .policy import policy_loss as policy_loss
from .policy import ppo_clip_grad as ppo_clip_grad
from .policy import ppo_clip_objective as ppo_clip_objective
from .preference import dpo_loss as dpo_loss
from .reward_model import ranking_loss as ranking_loss
from .reward_model import reward_model_loss as reward_model_loss
from .rewards import SCORE_POSITIONS as SCORE_POSITIONS
from .rewards import kl_shaped_rewards as kl_shaped_rewards
from .rewards import ptx_loss as ptx_loss
from .rewards import rlhf_objective as rlhf_objective
from .rollout import IS_LEVELS as IS_LEVELS
from .rollout import IS_MODES as IS_MODES
from .rollout import SEQ_RATIOS as SEQ_RATIOS
from .rollout import rollout_is_weights as rollout_is_weights
from .shaping import dynamic_sampling_mask as dynamic_sampling_mask
from .shaping import overlong_penalty as overlong_penalty
from .value import value_loss as value_loss

__all__ = [
    "ACTOR_LOSSES",
    "AGGREGATION_MODES",
    "IS_LEVELS",
    "IS_MODES",
    "KL_ESTIMATORS",
    "KL_GRADIENTS",
    "KL_POSITIONS",
    "PG_FORMS",
    "SCORE_POSITIONS",
    "SEQ_RATIOS",
    "SINGLETON_RULES",
    "STD_LEVELS",
    "AdaptiveKLController",
    "GAEResult",
    "Normaliser",
    "actor_loss",
    "adaptive_kl_update",
    "aggregate",
    "cispo_loss",
    "compiled_kernels",
    "compiled_kernels_enabled",
    "dpo_loss",
    "dynamic_sampling_mask",
    "entropy_from_logits",
    "gae",
    "global_normaliser",
    "grpo_advantages",
    "gspo_loss",
    "kl_estimate",
    "kl_exact",
    "kl_loss",
    "kl_shaped_rewards",
    "logprobs_and_entropy",
    "micro_batch_aggregate",
    "micro_batch_policy_loss",
    "micro_batch_value_loss",
    "overlong_penalty",
    "pg_loss",
    "policy_loss",
    "ppo_clip_grad",
    "ppo_clip_objective",
    "ptx_loss",
    "ranking_loss",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "remax_advantages",
    "reward_model_loss",
    "rlhf_objective",
    "rloo_advantages",
    "rollout_is_weights",
    "sapo_loss",
    "set_compiled_kernels",
    "set_value_checks",
    "token_logprobs",
    "value_checks",
    "value_checks_enabled",
    "value_loss",
    "whiten",
]
