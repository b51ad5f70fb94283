"""What the audit checks: the pure-math functions of TRL, verl and OpenRLHF, wrapped into the reference signatures.

Each :class:`AuditEntry` names the framework's function (its path in the pinned wheel), the catalogue formula it
implements, a wrapper that calls it with the reference's argument order (translating names, masks to the
framework's float masks, config objects), and the conventions fixed as the framework documents them (its
defaults: verl's ``clip_ratio_c = 3`` dual clip, ``cliprange_value = 0.5``, token-mean aggregation, ...). A
wrapper only translates arguments: it never changes what the framework computes.

Versions are pinned: what the matrix says is about exactly these wheels.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from . import critic_free
from .loader import load, load_method

__all__ = ["FRAMEWORKS", "PINS", "AuditEntry", "entries"]

PINS: dict[str, tuple[str, str]] = {
    "trl": ("trl", "1.16.0"),
    "trl-legacy": ("trl", "0.11.4"),
    "verl": ("verl", "0.9.1"),
    "openrlhf": ("openrlhf", "0.11.2"),
}
"""Source name -> (distribution, pinned version). ``trl-legacy`` is the last TRL with the PPO helpers in
``trl/core.py`` (TRL's current PPO lives in a trainer method, not in functions)."""

FRAMEWORKS: dict[str, tuple[str, ...]] = {
    "trl": ("trl", "trl-legacy"),
    "verl": ("verl",),
    "openrlhf": ("openrlhf",),
}
"""Framework name on the command line -> the pinned sources it audits."""


@dataclass(frozen=True)
class AuditEntry:
    """One framework function checked against one catalogue formula."""

    framework: str
    source: str
    """Key of :data:`PINS`."""
    function: str
    """Where it lives in the wheel (``module.path:function``) and how it is called."""
    formula: str
    build: Callable[[dict[str, SimpleNamespace]], Callable[..., Any]] = field(repr=False)
    """Wrapper factory: loaded modules -> a callable with the reference's signature."""
    conventions: dict[str, Any] = field(default_factory=dict)
    """Conventions fixed as the framework documents them (its defaults)."""
    documented: str = ""
    """Where those conventions come from."""
    waive: tuple[str, ...] = ()
    """Properties the framework documents as outside its contract."""


def _float_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.to(like.dtype)


class _Opaque:
    """Stands for a framework type that is only used in annotations or isinstance checks."""


class _ActorConfig(dict):  # type: ignore[type-arg]
    """verl's ActorConfig as its policy losses read it: attributes, .get and global_batch_info. The loaded code's
    ``ActorConfig`` name is this class (its losses assert ``isinstance(config, ActorConfig)``), while
    ``AlgoConfig`` stays an unrelated stand-in (``compute_policy_loss_vanilla`` asserts the config is not one)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


# ----------------------------------------------------------------------------------------------------------------
# module loading, per source


def _load_sources(source: str, root: Path) -> dict[str, SimpleNamespace]:
    if source == "verl":
        tf = load(
            root / "verl/utils/torch_functional.py",
            ["masked_sum", "masked_mean", "masked_var", "masked_whiten", "clip_by_value", "entropy_from_logits",
             "logprobs_from_logits_v2"],
        )  # fmt: skip
        core = load(
            root / "verl/trainer/ppo/core_algos.py",
            ["agg_loss", "compute_policy_loss_vanilla", "compute_gae_advantage_return", "compute_value_loss",
             "kl_penalty", "compute_grpo_outcome_advantage", "AdaptiveKLController", "compute_policy_loss_cispo",
             "compute_policy_loss_sapo", "compute_policy_loss_gspo", "compute_policy_loss_gpg"],
            {"verl_F": tf, "AlgoConfig": _Opaque, "ActorConfig": _ActorConfig, "DictConfig": _Opaque},
        )  # fmt: skip
        corr = load(root / "verl/trainer/ppo/rollout_corr_helper.py", ["compute_rollout_correction_weights"],
                    {"verl_F": tf})  # fmt: skip
        return {"torch_functional": tf, "core_algos": core, "rollout_corr": corr}
    if source == "openrlhf":
        utils = load(
            root / "openrlhf/models/utils.py",
            ["compute_approx_kl", "compute_reward", "log_probs_from_logits", "compute_entropy", "masked_mean"],
        )
        loss = load(
            root / "openrlhf/models/loss.py",
            ["aggregate_loss", "PolicyLoss", "ValueLoss", "PairWiseLoss", "LogExpLoss", "DPOLoss"],
            {"masked_mean": utils.masked_mean},
        )
        return {"utils": utils, "loss": loss}
    if source == "trl":
        utils = load(
            root / "trl/trainer/utils.py",
            ["selective_log_softmax", "entropy_from_logits"],
            {"is_triton_available": lambda: False, "_supports_trl_loss_kernel": lambda *a, **k: False,
             "_fused_logprob_entropy": None},
        )  # fmt: skip
        grpo = root / "trl/trainer/grpo_trainer.py"
        stand_ins = {"nanmin": lambda x: x[~torch.isnan(x)].min(), "nanmax": lambda x: x[~torch.isnan(x)].max()}
        compute_loss = load_method(grpo, "GRPOTrainer", "_compute_loss", stand_ins)
        is_block = ("self.use_vllm and self.vllm_importance_sampling_correction",
                    ("old_per_token_logps", "sampling_per_token_logps", "completion_mask", "tool_mask"),
                    "vllm_importance_sampling_ratio")  # fmt: skip
        is_ratio = load_method(grpo, "GRPOTrainer", "_generate_and_score_completions", block=is_block)
        grpo_ns = SimpleNamespace(compute_loss=compute_loss, vllm_is_ratio=is_ratio)
        return {"utils": utils, "grpo": grpo_ns}
    if source == "trl-legacy":
        core = load(root / "trl/core.py", ["logprobs_from_logits", "masked_mean", "masked_whiten",
                                           "entropy_from_logits"])  # fmt: skip
        trainer_utils = load(root / "trl/trainer/utils.py", ["AdaptiveKLController"])
        return {"core": core, "trainer_utils": trainer_utils}
    raise KeyError(source)


def load_source(source: str, root: Path) -> dict[str, SimpleNamespace]:
    """The loaded modules of one pinned source, unpacked at ``root`` (with its critic-free estimators)."""
    modules = _load_sources(source, root)
    return {**modules, **critic_free.load_sources(source, root, modules)}


# ----------------------------------------------------------------------------------------------------------------
# verl 0.9.1


def _verl_policy_loss(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    fn = m["core_algos"].compute_policy_loss_vanilla

    def policy_loss(logp, logp_old, advantages, mask, clip_eps=0.2, clip_eps_high=None, agg="token-mean"):  # type: ignore[no-untyped-def]
        config = _ActorConfig(clip_ratio=clip_eps, clip_ratio_low=None, clip_ratio_high=clip_eps_high,
                              clip_ratio_c=3.0, global_batch_info={})  # fmt: skip
        loss, _metrics = fn(logp_old, logp, advantages, _float_mask(mask, logp), agg, config)
        return loss

    return policy_loss


def _verl_cispo(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    fn = m["core_algos"].compute_policy_loss_cispo

    def cispo_loss(logp, logp_old, advantages, mask, weight_max=1.2, weight_min=0.8, agg="token-mean"):  # type: ignore[no-untyped-def]
        low = 1.0 if weight_min is None else 1.0 - weight_min  # verl's bounds are 1 - low and 1 + high
        config = _ActorConfig(clip_ratio=0.2, clip_ratio_low=low, clip_ratio_high=weight_max - 1.0,
                              global_batch_info={})  # fmt: skip
        loss, _metrics = fn(logp_old, logp, advantages, _float_mask(mask, logp), agg, config)
        return loss

    return cispo_loss


def _verl_sapo(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    fn = m["core_algos"].compute_policy_loss_sapo

    def sapo_loss(logp, logp_old, advantages, mask, tau_pos=1.0, tau_neg=1.05, agg="seq-mean-token-mean"):  # type: ignore[no-untyped-def]
        config = _ActorConfig(tau_pos=tau_pos, tau_neg=tau_neg, global_batch_info={})
        loss, _metrics = fn(logp_old, logp, advantages, _float_mask(mask, logp), agg, config)
        return loss

    return sapo_loss


def _verl_gspo(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    fn = m["core_algos"].compute_policy_loss_gspo

    def gspo_loss(logp, logp_old, advantages, mask, clip_eps=3e-4, clip_eps_high=4e-4, agg="seq-mean-token-mean"):  # type: ignore[no-untyped-def]
        config = _ActorConfig(clip_ratio=clip_eps, clip_ratio_low=clip_eps, clip_ratio_high=clip_eps_high,
                              global_batch_info={})  # fmt: skip
        loss, _metrics = fn(logp_old, logp, advantages, _float_mask(mask, logp), agg, config)
        return loss

    return gspo_loss


def _verl_gpg(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    fn = m["core_algos"].compute_policy_loss_gpg

    def pg_loss(logp, advantages, mask, agg="token-mean"):  # type: ignore[no-untyped-def]
        loss, _metrics = fn(logp, logp, advantages, _float_mask(mask, logp), agg, _ActorConfig(global_batch_info={}))
        return loss

    return pg_loss


def _verl_agg(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    fn = m["core_algos"].agg_loss

    def aggregate(values, mask, agg="token-mean"):  # type: ignore[no-untyped-def]
        return fn(values, _float_mask(mask, values), agg)

    return aggregate


def _verl_gae(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    fn = m["core_algos"].compute_gae_advantage_return

    def gae(rewards, values, mask, gamma=1.0, lam=0.95):  # type: ignore[no-untyped-def]
        return fn(rewards, values, _float_mask(mask, values), gamma, lam)

    return gae


def _verl_value_loss(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    fn = m["core_algos"].compute_value_loss

    def value_loss(values, old_values, returns, mask, clip_eps=0.5, agg="token-mean"):  # type: ignore[no-untyped-def]
        loss, _clipfrac = fn(values, returns, old_values, _float_mask(mask, values), clip_eps, agg)
        return loss

    return value_loss


_VERL_KL = {"k1": "kl", "k2": "mse", "k3": "low_var_kl", "abs": "abs"}


def _verl_kl(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    fn = m["core_algos"].kl_penalty

    def kl_estimate(logp, logp_ref, kind="k1"):  # type: ignore[no-untyped-def]
        return fn(logp, logp_ref, _VERL_KL[kind])

    return kl_estimate


def _verl_low_var_kl(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    fn = m["core_algos"].kl_penalty

    # low_var_kl's clamps are constants in verl's code: the conventions name them, the call cannot change them
    def kl_estimate(logp, logp_ref, kind="k3", log_ratio_clamp=20.0, output_clamp=10.0):  # type: ignore[no-untyped-def]
        return fn(logp, logp_ref, _VERL_KL[kind])

    return kl_estimate


def _verl_kl_loss(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    """The KL loss term as verl's actor computes it: kl_penalty(kl_loss_type) then agg_loss(loss_agg_mode)."""
    penalty, agg_loss = m["core_algos"].kl_penalty, m["core_algos"].agg_loss

    def kl_loss(logp, logp_ref, mask, kind="k3", agg="token-mean", grad="estimator", log_ratio_clamp=None,  # type: ignore[no-untyped-def]
                output_clamp=None):  # fmt: skip
        kld = penalty(logp, logp_ref, _VERL_KL[kind] + ("+" if grad == "k2" else ""))
        return agg_loss(kld, _float_mask(mask, logp), agg)

    return kl_loss


def _verl_rollout_is(mode: str) -> Callable[[dict[str, SimpleNamespace]], Callable[..., Any]]:
    def build(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
        fn = m["rollout_corr"].compute_rollout_correction_weights

        def rollout_is_weights(logp_old, logp_rollout, mask, level="token", mode=mode, upper=2.0, lower=None):  # type: ignore[no-untyped-def]
            threshold = upper if mode == "truncate" else f"{lower}_{upper}"  # TIS: a float; IcePop: "lo_hi"
            weights, _metrics = fn(logp_old - logp_rollout, _float_mask(mask, logp_old), level, threshold)
            return weights

        return rollout_is_weights

    return build


def _verl_grpo(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    fn = m["core_algos"].compute_grpo_outcome_advantage

    def grpo_advantages(scores, group_size, std_normalize=True, eps=1e-6):  # type: ignore[no-untyped-def]
        index = np.arange(scores.shape[0]) // int(group_size)
        token_rewards = scores[:, None].clone()
        adv, _returns = fn(token_rewards, torch.ones_like(token_rewards), index, eps, std_normalize)
        return adv[:, 0]

    return grpo_advantages


def _adaptive(cls_of: Callable[[dict[str, SimpleNamespace]], Any]) -> Callable[..., Any]:
    def build(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
        cls = cls_of(m)

        def adaptive_kl_update(beta, kl, target, n_steps, horizon):  # type: ignore[no-untyped-def]
            controller = cls(beta, target, horizon)
            controller.update(kl, n_steps)
            return float(controller.value)

        return adaptive_kl_update

    return build


def _verl_whiten(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    fn = m["torch_functional"].masked_whiten

    def whiten(x, mask, shift_mean=True):  # type: ignore[no-untyped-def]
        return fn(x, _float_mask(mask, x), shift_mean)

    return whiten


# ----------------------------------------------------------------------------------------------------------------
# OpenRLHF 0.11.2


def _orl_kl(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    fn = m["utils"].compute_approx_kl

    # OpenRLHF clamps every estimate to +-10 in its code: the conventions name it
    def kl_estimate(logp, logp_ref, kind="k1", output_clamp=None):  # type: ignore[no-untyped-def]
        return fn(logp, logp_ref, kl_estimator=kind)

    return kl_estimate


def _orl_kl_loss(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    """The KL loss term as OpenRLHF's actor computes it: compute_approx_kl, then the policy's aggregate_loss."""
    approx_kl, aggregate = m["utils"].compute_approx_kl, m["loss"].aggregate_loss

    def kl_loss(logp, logp_ref, mask, kind="k3", agg="token-mean", grad="estimator", output_clamp=None):  # type: ignore[no-untyped-def]
        kl = approx_kl(logp, logp_ref, kl_estimator=kind, unbiased_gradient=grad == "k2")
        return aggregate(kl, _float_mask(mask, logp), token_level_loss=agg == "token-mean")

    return kl_loss


def _orl_gspo(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    cls = m["loss"].PolicyLoss

    def gspo_loss(logp, logp_old, advantages, mask, clip_eps=0.2, clip_eps_high=None, agg="seq-mean-token-mean"):  # type: ignore[no-untyped-def]
        high = clip_eps if clip_eps_high is None else clip_eps_high
        module = cls(clip_eps_low=clip_eps, clip_eps_high=high, policy_loss_type="gspo")
        return module(logp, logp_old, advantages, action_mask=_float_mask(mask, logp))[0]

    return gspo_loss


def _orl_reward(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    approx_kl, reward = m["utils"].compute_approx_kl, m["utils"].compute_reward

    def kl_shaped_rewards(scores, logp, logp_ref, mask, beta, kind="k1"):  # type: ignore[no-untyped-def]
        kl = approx_kl(logp, logp_ref, kl_estimator=kind)
        return reward(scores, beta, kl, action_mask=mask, reward_clip_range=(-10.0, 10.0))

    return kl_shaped_rewards


def _orl_policy_loss(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    cls = m["loss"].PolicyLoss

    def policy_loss(logp, logp_old, advantages, mask, clip_eps=0.2, clip_eps_high=None, dual_clip=None):  # type: ignore[no-untyped-def]
        high = clip_eps if clip_eps_high is None else clip_eps_high
        module = cls(clip_eps_low=clip_eps, clip_eps_high=high, dual_clip=dual_clip, token_level_loss=True)
        return module(logp, logp_old, advantages, action_mask=_float_mask(mask, logp))[0]

    return policy_loss


def _orl_value_loss(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    cls = m["loss"].ValueLoss

    def value_loss(values, old_values, returns, mask, clip_eps=0.5):  # type: ignore[no-untyped-def]
        return cls(clip_eps=clip_eps, token_level_loss=True)(values, old_values, returns, _float_mask(mask, values))

    return value_loss


def _orl_aggregate(token_level: bool) -> Callable[[dict[str, SimpleNamespace]], Callable[..., Any]]:
    def build(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
        fn = m["loss"].aggregate_loss

        def aggregate(values, mask):  # type: ignore[no-untyped-def]
            return fn(values, _float_mask(mask, values), token_level_loss=token_level)

        return aggregate

    return build


def _orl_pairwise(name: str) -> Callable[[dict[str, SimpleNamespace]], Callable[..., Any]]:
    def build(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
        module = getattr(m["loss"], name)()

        def reward_model_loss(chosen, rejected, margin=None):  # type: ignore[no-untyped-def]
            return module(chosen, rejected, margin)

        return reward_model_loss

    return build


def _orl_dpo(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    cls = m["loss"].DPOLoss

    def dpo_loss(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected, beta=0.1, label_smoothing=0.0):  # type: ignore[no-untyped-def]
        return cls(beta, label_smoothing)(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected)[0]

    return dpo_loss


def _attr(module: str, name: str, **fixed: Any) -> Callable[[dict[str, SimpleNamespace]], Callable[..., Any]]:
    def build(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
        fn = getattr(m[module], name)
        if not fixed:
            return fn  # type: ignore[no-any-return]

        def call(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **{**fixed, **kwargs})

        return call

    return build


# ----------------------------------------------------------------------------------------------------------------
# TRL


def _trl_legacy_whiten(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    fn = m["core"].masked_whiten

    def whiten(x, mask, shift_mean=True):  # type: ignore[no-untyped-def]
        return fn(x, _float_mask(mask, x), shift_mean)

    return whiten


def _trl_legacy_mean(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    fn = m["core"].masked_mean

    def aggregate(values, mask):  # type: ignore[no-untyped-def]
        return fn(values, _float_mask(mask, values))

    return aggregate


def _trl_logprobs(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    fn = m["utils"].selective_log_softmax

    def token_logprobs(logits, tokens, temperature=1.0):  # type: ignore[no-untyped-def]
        return fn(logits, tokens, temperature)

    return token_logprobs


class _Accelerator:
    """The accelerate calls of a single process, as TRL's loss reaches them (gather/reduce: identity)."""

    num_processes = 1
    sync_gradients = True

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return x

    gather_for_metrics = gather

    def reduce(self, x: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return x


class _GRPOTrainer(SimpleNamespace):
    """A stand-in ``self`` for ``GRPOTrainer._compute_loss``: the configuration attributes it reads, and a forward
    pass that returns the given per-token log-probabilities and entropies (one process, one accumulation step,
    no vLLM, no entropy masking or off-policy masking, TRL's defaults elsewhere)."""

    def _get_per_token_logps_and_entropies(self, model: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any, None]:
        return self.forward_logps, self.forward_entropies, None


def _trl_grpo_call(m: dict[str, SimpleNamespace], loss_type: str, logp: torch.Tensor, logp_old: torch.Tensor,
                   advantages: torch.Tensor, mask: torch.Tensor, *, clip_low: float = 0.2,
                   clip_high: float | None = None, level: str = "token", beta: float = 0.0,
                   logp_ref: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
                   entropy_coef: float = 0.0, max_tokens: int | None = None, sapo: tuple[float, float] = (1.0, 1.05),
                   bias_correction_kl: bool = True) -> torch.Tensor:  # fmt: skip
    """``GRPOTrainer._compute_loss`` of TRL 1.16 on the given tensors (loaded from source, run verbatim)."""
    batch, length = logp.shape
    fmask = _float_mask(mask, logp)
    args = SimpleNamespace(use_bias_correction_kl=bias_correction_kl, delta=None, sapo_temperature_pos=sapo[0],
                           sapo_temperature_neg=sapo[1], steps_per_generation=1)  # fmt: skip
    trainer = _GRPOTrainer(
        forward_logps=logp, forward_entropies=torch.zeros_like(logp) if entropy is None else entropy,
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level, beta=beta,
        args=args, loss_type=loss_type, epsilon_low=clip_low, epsilon_high=clip_low if clip_high is None else clip_high,
        use_vllm=False, vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, accelerator=_Accelerator(),
        max_completion_length=length if max_tokens is None else max_tokens,
        _entropy_bonus_enabled=entropy_coef > 0, use_adaptive_entropy=False, entropy_coef=entropy_coef,
        aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)),
    )  # fmt: skip
    inputs = {
        "prompt_ids": torch.zeros((batch, 0), dtype=torch.long), "prompt_mask": torch.zeros((batch, 0)),
        "completion_ids": torch.zeros((batch, length), dtype=torch.long), "completion_mask": fmask,
        "advantages": advantages, "old_per_token_logps": logp_old, "num_items_in_batch": fmask.sum(),
    }  # fmt: skip
    if logp_ref is not None:
        inputs["ref_per_token_logps"] = logp_ref
    return m["grpo"].compute_loss(trainer, None, inputs)  # type: ignore[no-any-return]


def _trl_grpo(loss_type: str) -> Callable[[dict[str, SimpleNamespace]], Callable[..., Any]]:
    """TRL's GRPO loss per ``loss_type`` with beta = 0, under the reference signature of the formula it is."""

    def build(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
        if loss_type == "cispo":

            def cispo_loss(logp, logp_old, advantages, mask, weight_max=5.0, agg="token-mean"):  # type: ignore[no-untyped-def]
                return _trl_grpo_call(m, "cispo", logp, logp_old, advantages, mask, clip_high=weight_max)

            return cispo_loss
        if loss_type == "sapo":

            def sapo_loss(logp, logp_old, advantages, mask, tau_pos=1.0, tau_neg=1.05, agg="seq-mean-token-mean"):  # type: ignore[no-untyped-def]
                return _trl_grpo_call(m, "sapo", logp, logp_old, advantages, mask, sapo=(tau_pos, tau_neg))

            return sapo_loss
        if loss_type == "gspo":

            def gspo_loss(logp, logp_old, advantages, mask, clip_eps=3e-4, clip_eps_high=4e-4,  # type: ignore[no-untyped-def]
                          agg="seq-mean-token-mean"):  # fmt: skip
                return _trl_grpo_call(m, "grpo", logp, logp_old, advantages, mask, clip_low=clip_eps,
                                      clip_high=clip_eps_high, level="sequence")  # fmt: skip

            return gspo_loss

        def policy_loss(logp, logp_old, advantages, mask, clip_eps=0.2, clip_eps_high=None, agg=None, max_tokens=None):  # type: ignore[no-untyped-def]
            return _trl_grpo_call(m, loss_type, logp, logp_old, advantages, mask, clip_low=clip_eps,
                                  clip_high=clip_eps_high, max_tokens=max_tokens)  # fmt: skip

        return policy_loss

    return build


def _trl_actor(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    def actor_loss(logp, logp_old, advantages, mask, *, loss="ppo", logp_ref=None, kl_coef=0.0, kl_kind="k3",  # type: ignore[no-untyped-def]
                   kl_ratio=True, entropy=None, entropy_coef=0.0, agg="seq-mean-token-mean",
                   entropy_agg="token-mean", clip_eps=0.2, clip_eps_high=None):  # fmt: skip
        return _trl_grpo_call(m, "grpo", logp, logp_old, advantages, mask, clip_low=clip_eps, clip_high=clip_eps_high,
                              beta=kl_coef, logp_ref=logp_ref, entropy=entropy, entropy_coef=entropy_coef,
                              bias_correction_kl=kl_ratio)  # fmt: skip

    return actor_loss


def _trl_vllm_is(mode: str) -> Callable[[dict[str, SimpleNamespace]], Callable[..., Any]]:
    def build(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
        fn = m["grpo"].vllm_is_ratio

        def rollout_is_weights(logp_old, logp_rollout, mask, level="sequence", mode=mode, upper=3.0, lower=None,  # type: ignore[no-untyped-def]
                               seq_ratio="product"):  # fmt: skip
            trainer = SimpleNamespace(vllm_importance_sampling_mode=f"{level}_{mode}",
                                      vllm_importance_sampling_clip_max=upper,
                                      vllm_importance_sampling_clip_min=lower)  # fmt: skip
            ratio = fn(trainer, logp_old, logp_rollout, _float_mask(mask, logp_old), None)
            return ratio.expand_as(logp_old)  # sequence modes return [B, 1], broadcast as the loss does

        return rollout_is_weights

    return build


def _entries() -> list[AuditEntry]:
    e = AuditEntry
    verl_doc = "verl 0.9.1 defaults: clip_ratio_c = 3.0, loss_agg_mode token-mean, cliprange_value 0.5"
    orl_doc = "OpenRLHF 0.11.2 CLI defaults: token_level_loss, value_clip 0.5, reward.clip_range (-10, 10)"
    trl_doc = "TRL 1.16 GRPOConfig: epsilon 0.2, one process, one accumulation step"
    return [
        # verl
        e("verl", "verl", "verl.trainer.ppo.core_algos:compute_policy_loss_vanilla", "policy_loss",
          _verl_policy_loss, {"dual_clip": 3.0}, verl_doc),
        e("verl", "verl", "verl.trainer.ppo.core_algos:compute_policy_loss_gpg", "pg_loss", _verl_gpg,
          {"agg": "token-mean", "form": "logp"}, verl_doc),
        e("verl", "verl", "verl.trainer.ppo.core_algos:compute_policy_loss_cispo", "cispo_loss", _verl_cispo,
          {"weight_min": 0.8, "weight_max": 1.2, "agg": "token-mean"},
          "verl 0.9.1: clip_ratio_low/high 0.2 (bounds [0.8, 1.2]), loss_agg_mode token-mean"),
        e("verl", "verl", "verl.trainer.ppo.core_algos:compute_policy_loss_sapo", "sapo_loss", _verl_sapo,
          {"tau_pos": 1.0, "tau_neg": 1.05, "agg": "seq-mean-token-mean"},
          "verl 0.9.1: tau_pos 1.0, tau_neg 1.05, seq-mean-token-mean forced"),
        e("verl", "verl", "verl.trainer.ppo.core_algos:compute_policy_loss_gspo", "gspo_loss", _verl_gspo,
          {"clip_eps": 3e-4, "clip_eps_high": 4e-4, "agg": "seq-mean-token-mean"},
          "verl 0.9.1 GSPO recipe: clip_ratio_low 3e-4, clip_ratio_high 4e-4, loss_agg_mode seq-mean-token-mean"),
        e("verl", "verl", "verl.trainer.ppo.core_algos:agg_loss", "aggregate", _verl_agg, {}, verl_doc),
        e("verl", "verl", "verl.trainer.ppo.core_algos:compute_gae_advantage_return", "gae", _verl_gae),
        e("verl", "verl", "verl.trainer.ppo.core_algos:compute_value_loss", "value_loss", _verl_value_loss,
          {"clip_eps": 0.5}, verl_doc),
        e("verl", "verl", "verl.trainer.ppo.core_algos:kl_penalty (kl / mse / low_var_kl / abs)", "kl_estimate",
          _verl_kl),
        e("verl", "verl", "verl.trainer.ppo.core_algos:kl_penalty (low_var_kl)", "kl_estimate", _verl_low_var_kl,
          {"kind": "k3", "log_ratio_clamp": 20.0, "output_clamp": 10.0}, "low_var_kl clamps Delta to +-20, k3 to +-10"),
        e("verl", "verl", "core_algos:kl_penalty + agg_loss (kl_loss_type low_var_kl, low_var_kl+)", "kl_loss",
          _verl_kl_loss, {"kind": "k3", "log_ratio_clamp": 20.0, "output_clamp": 10.0},
          "verl actor: kl_loss_type low_var_kl (+: straight-through), agg_loss(loss_agg_mode)"),
        e("verl", "verl", "verl.trainer.ppo.rollout_corr_helper:compute_rollout_correction_weights (TIS)",
          "rollout_is_weights", _verl_rollout_is("truncate"),
          {"mode": "truncate", "upper": 2.0, "lower": None, "seq_ratio": "product"},
          "verl 0.9.1: rollout_is_threshold 2.0, sequence weight = product of token ratios"),
        e("verl", "verl", "verl.trainer.ppo.rollout_corr_helper:compute_rollout_correction_weights (IcePop)",
          "rollout_is_weights", _verl_rollout_is("mask"),
          {"mode": "mask", "upper": 5.0, "lower": 0.5, "seq_ratio": "product"},
          "verl 0.9.1 IcePop preset: rollout_is_threshold '0.5_5.0'"),
        e("verl", "verl", "verl.trainer.ppo.core_algos:compute_grpo_outcome_advantage", "grpo_advantages",
          _verl_grpo, {"unbiased": True}, "torch.std (Bessel), epsilon 1e-6"),
        e("verl", "verl", "verl.trainer.ppo.core_algos:AdaptiveKLController.update", "adaptive_kl_update",
          _adaptive(lambda m: m["core_algos"].AdaptiveKLController)),
        e("verl", "verl", "verl.utils.torch_functional:masked_whiten", "whiten", _verl_whiten, {"unbiased": True},
          "masked_var is Bessel-corrected"),
        e("verl", "verl", "verl.utils.torch_functional:logprobs_from_logits_v2", "token_logprobs",
          _attr("torch_functional", "logprobs_from_logits_v2")),
        e("verl", "verl", "verl.utils.torch_functional:entropy_from_logits", "entropy_from_logits",
          _attr("torch_functional", "entropy_from_logits")),
        # OpenRLHF
        e("openrlhf", "openrlhf", "openrlhf.models.loss:PolicyLoss", "policy_loss", _orl_policy_loss,
          {"agg": "token-mean"}, orl_doc),
        e("openrlhf", "openrlhf", "openrlhf.models.loss:ValueLoss", "value_loss", _orl_value_loss,
          {"agg": "token-mean", "clip_eps": 0.5}, orl_doc),
        e("openrlhf", "openrlhf", "openrlhf.models.loss:aggregate_loss(token_level_loss=True)", "aggregate",
          _orl_aggregate(True), {"agg": "token-mean"}),
        e("openrlhf", "openrlhf", "openrlhf.models.loss:aggregate_loss(token_level_loss=False)", "aggregate",
          _orl_aggregate(False), {"agg": "seq-mean-token-mean"}),
        *(e("openrlhf", "openrlhf", f"openrlhf.models.utils:compute_approx_kl ({kind})", "kl_estimate", _orl_kl,
            {"kind": kind, "output_clamp": 10.0}, "compute_approx_kl clamps every estimator to +-10")
          for kind in ("k1", "k2", "k3")),
        e("openrlhf", "openrlhf", "models.utils:compute_approx_kl + loss:aggregate_loss (k3 KL loss)", "kl_loss",
          _orl_kl_loss, {"kind": "k3", "output_clamp": 10.0},
          "OpenRLHF actor: kl_estimator k3, unbiased_gradient = straight-through k2, the policy's aggregate_loss"),
        e("openrlhf", "openrlhf", "openrlhf.models.loss:PolicyLoss(policy_loss_type='gspo')", "gspo_loss", _orl_gspo,
          {"agg": "seq-mean-token-mean"}, "OpenRLHF 0.11.2: GSPO forces the per-sample mean (token_level_loss off)"),
        e("openrlhf", "openrlhf", "openrlhf.models.utils:compute_reward", "kl_shaped_rewards", _orl_reward,
          {"score_position": "last", "kind": "k1"}, orl_doc + "; kl_estimator k1 in the reward"),
        e("openrlhf", "openrlhf", "openrlhf.models.utils:log_probs_from_logits", "token_logprobs",
          _attr("utils", "log_probs_from_logits")),
        e("openrlhf", "openrlhf", "openrlhf.models.utils:compute_entropy", "entropy_from_logits",
          _attr("utils", "compute_entropy")),
        e("openrlhf", "openrlhf", "openrlhf.models.loss:PairWiseLoss", "reward_model_loss",
          _orl_pairwise("PairWiseLoss")),
        e("openrlhf", "openrlhf", "openrlhf.models.loss:LogExpLoss", "reward_model_loss",
          _orl_pairwise("LogExpLoss")),
        e("openrlhf", "openrlhf", "openrlhf.models.loss:DPOLoss", "dpo_loss", _orl_dpo),
        # TRL
        e("trl", "trl", "trl.trainer.utils:selective_log_softmax", "token_logprobs", _trl_logprobs),
        *(e("trl", "trl", f"GRPOTrainer._compute_loss (loss_type='{lt}')", "policy_loss", _trl_grpo(lt),
            {"agg": agg, "dual_clip": None}, trl_doc)
          for lt, agg in (("grpo", "seq-mean-token-mean"), ("bnpo", "token-mean"),
                          ("dr_grpo", "seq-mean-token-sum-norm"), ("dapo", "token-mean"))),
        e("trl", "trl", "GRPOTrainer._compute_loss (loss_type='cispo')", "cispo_loss", _trl_grpo("cispo"),
          {"agg": "token-mean", "weight_min": None}, trl_doc + "; cispo caps the weight at epsilon_high"),
        e("trl", "trl", "GRPOTrainer._compute_loss (loss_type='sapo')", "sapo_loss", _trl_grpo("sapo"),
          {"agg": "seq-mean-token-mean"}, trl_doc),
        e("trl", "trl", "GRPOTrainer._compute_loss (importance_sampling_level='sequence')", "gspo_loss",
          _trl_grpo("gspo"), {"agg": "seq-mean-token-mean", "log_ratio_clamp": None}, trl_doc),
        e("trl", "trl", "GRPOTrainer._compute_loss (loss_type='grpo', beta, entropy_coef)", "actor_loss", _trl_actor,
          {"loss": "ppo", "agg": "seq-mean-token-mean", "kl_kind": "k3", "kl_ratio": True, "kl_agg": None,
           "entropy_agg": "token-mean"},
          trl_doc + "; beta * k3 added per token (use_bias_correction_kl=True), entropy bonus a token mean"),
        *(e("trl", "trl", f"GRPOTrainer vLLM importance sampling (vllm_importance_sampling_mode='*_{mode}')",
            "rollout_is_weights", _trl_vllm_is(mode), {"mode": mode, "lower": None, "seq_ratio": "product"},
            "TRL 1.16: vllm_importance_sampling_clip_max 3.0, clip_min None; sequence ratio exp(sum)")
          for mode in ("mask", "truncate")),
        e("trl", "trl", "trl.trainer.utils:entropy_from_logits", "entropy_from_logits",
          _attr("utils", "entropy_from_logits")),
        e("trl", "trl-legacy", "trl.core:logprobs_from_logits (0.11.4)", "token_logprobs",
          _attr("core", "logprobs_from_logits")),
        e("trl", "trl-legacy", "trl.core:entropy_from_logits (0.11.4)", "entropy_from_logits",
          _attr("core", "entropy_from_logits")),
        e("trl", "trl-legacy", "trl.core:masked_whiten (0.11.4)", "whiten", _trl_legacy_whiten, {"unbiased": True},
          "masked_var is Bessel-corrected"),
        e("trl", "trl-legacy", "trl.core:masked_mean (0.11.4)", "aggregate", _trl_legacy_mean,
          {"agg": "token-mean"}),
        e("trl", "trl-legacy", "trl.trainer.utils:AdaptiveKLController.update (0.11.4)", "adaptive_kl_update",
          _adaptive(lambda m: m["trainer_utils"].AdaptiveKLController)),
        *critic_free.entries(AuditEntry),
    ]  # fmt: skip


def entries(framework: str | None = None) -> list[AuditEntry]:
    """The audit entries of ``framework`` (all when None)."""
    out = _entries()
    if framework is None:
        return out
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework: unknown {framework!r}; choose from {sorted(FRAMEWORKS)}")
    return [x for x in out if x.framework == framework]
