"""What the audit checks: the pure-math functions of TRL, verl and OpenRLHF, wrapped into the reference signatures.

Each :class:`AuditEntry` names the framework's function (its path in the pinned wheel), the catalogue formula it
implements, a wrapper that calls it with the reference's argument order (translating names, masks to the
framework's float masks, config objects), and the conventions fixed as the framework documents them (its
defaults: verl's ``clip_ratio_c = 3`` dual clip, ``cliprange_value = 0.5``, token-mean aggregation, ...). A
wrapper only translates arguments: it never changes what the framework computes.

Versions are pinned: what the matrix says is about exactly these wheels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from .loader import load

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
        return {"torch_functional": tf, "core_algos": core}
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
        return {"utils": utils}
    if source == "trl-legacy":
        core = load(root / "trl/core.py", ["logprobs_from_logits", "masked_mean", "masked_whiten",
                                           "entropy_from_logits"])  # fmt: skip
        trainer_utils = load(root / "trl/trainer/utils.py", ["AdaptiveKLController"])
        return {"core": core, "trainer_utils": trainer_utils}
    raise KeyError(source)


def load_source(source: str, root: Path) -> dict[str, SimpleNamespace]:
    """The loaded modules of one pinned source, unpacked at ``root``."""
    return _load_sources(source, root)


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


_VERL_KL = {"k1": "kl", "k2": "mse", "k3": "low_var_kl"}


def _verl_kl(m: dict[str, SimpleNamespace]) -> Callable[..., Any]:
    fn = m["core_algos"].kl_penalty

    def kl_estimate(logp, logp_ref, kind="k1"):  # type: ignore[no-untyped-def]
        return fn(logp, logp_ref, _VERL_KL[kind])

    return kl_estimate


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

    def kl_estimate(logp, logp_ref, kind="k1"):  # type: ignore[no-untyped-def]
        return fn(logp, logp_ref, kl_estimator=kind)

    return kl_estimate


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


def _entries() -> list[AuditEntry]:
    e = AuditEntry
    verl_doc = "verl 0.9.1 defaults: clip_ratio_c = 3.0, loss_agg_mode token-mean, cliprange_value 0.5"
    orl_doc = "OpenRLHF 0.11.2 CLI defaults: token_level_loss, value_clip 0.5, reward.clip_range (-10, 10)"
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
        e("verl", "verl", "verl.trainer.ppo.core_algos:kl_penalty (kl / mse / low_var_kl)", "kl_estimate", _verl_kl),
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
        e("openrlhf", "openrlhf", "openrlhf.models.utils:compute_approx_kl", "kl_estimate", _orl_kl),
        e("openrlhf", "openrlhf", "openrlhf.models.utils:compute_reward", "kl_shaped_rewards", _orl_reward,
          {"score_position": "last"}, orl_doc),
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
    ]  # fmt: skip


def entries(framework: str | None = None) -> list[AuditEntry]:
    """The audit entries of ``framework`` (all when None)."""
    out = _entries()
    if framework is None:
        return out
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework: unknown {framework!r}; choose from {sorted(FRAMEWORKS)}")
    return [x for x in out if x.framework == framework]
