"""The audit of the critic-free advantage estimators and DAPO's shaping in TRL, verl and OpenRLHF.

Each estimator is run verbatim from the pinned wheel: verl's registered ``compute_*_outcome_advantage`` functions
and its DAPO reward manager's overlong block; OpenRLHF's ``compute_advantages_and_returns`` blocks (the RLOO and
REINFORCE-baseline baselines, ``compute_reward``, ``get_cumulative_returns`` and the global whitening) and its
``apply_overlong_penalty``; TRL's GRPO advantage block (``scale_rewards``) and its ``RLOOTrainer`` leave-one-out
block. A wrapper only translates the reference's arguments (scores as token rewards, group ids, stand-in configs
and experiences); the conventions each framework documents are fixed in the entry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from .loader import load, load_method

__all__ = ["entries", "load_sources"]

Modules = dict[str, SimpleNamespace]


def load_sources(source: str, root: Path, loaded: Modules) -> Modules:
    """The estimator code of one pinned source (``loaded``: the modules :mod:`.frameworks` already loaded)."""
    if source == "verl":
        core = root / "verl/trainer/ppo/core_algos.py"
        tf = loaded["torch_functional"]
        group = load(root / "verl/utils/groupwise.py", ["as_torch_index", "group_mean_std"])
        estimators = load(
            core,
            ["compute_rloo_outcome_advantage", "compute_rloo_vectorized_outcome_advantage",
             "compute_grpo_vectorized_outcome_advantage", "compute_reinforce_plus_plus_outcome_advantage",
             "compute_reinforce_plus_plus_baseline_outcome_advantage", "compute_remax_outcome_advantage"],
            {"verl_F": tf, "AlgoConfig": object, "as_torch_index": group.as_torch_index,
             "group_mean_std": group.group_mean_std},
        )  # fmt: skip
        dapo = root / "verl/experimental/reward_loop/reward_manager/dapo.py"
        block = ("self.overlong_buffer_cfg is not None and self.overlong_buffer_cfg.enable",
                 ("valid_response_length", "reward", "reward_extra_info"), "overlong_reward")  # fmt: skip
        overlong = load_method(dapo, "DAPORewardManager", "run_single", block=block)
        return {"estimators": estimators, "dapo": SimpleNamespace(overlong=overlong)}
    if source == "openrlhf":
        maker = root / "openrlhf/trainer/ppo_utils/experience_maker.py"
        method = "compute_advantages_and_returns"

        def baseline(condition: str) -> Callable[..., Any]:
            return load_method(
                maker, "RemoteExperienceMaker", method, block=(condition, ("args", "rewards"), "rewards")
            )

        whiten_block = ("args.algo.advantage.estimator in ['gae', 'reinforce', 'reinforce_baseline']",
                        ("args", "experiences"), "mean")  # fmt: skip
        experience = SimpleNamespace(
            rloo=baseline("args.algo.advantage.estimator == 'rloo'"),
            group_mean=baseline("args.algo.advantage.estimator in ['reinforce_baseline', 'dr_grpo']"),
            returns=load_method(maker, "RemoteExperienceMaker", "get_cumulative_returns"),
            whiten=load_method(maker, "RemoteExperienceMaker", method, block=whiten_block),
        )
        penalty = load(root / "openrlhf/trainer/ppo_utils/length_penalty.py", ["apply_overlong_penalty"],
                       {"logger": SimpleNamespace(info=lambda *a, **k: None)})  # fmt: skip
        return {"experience": experience, "length_penalty": penalty}
    if source == "trl":
        utils = load(root / "trl/trainer/utils.py", ["nanstd"])
        grpo = root / "trl/trainer/grpo_trainer.py"
        scaled = ("self.multi_objective_aggregation == 'sum_then_normalize'",
                  ("rewards_per_func", "unscorable_mask", "num_generations", "device"), "advantages")  # fmt: skip
        grpo_adv = load_method(grpo, "GRPOTrainer", "_generate_and_score_completions", {"nanstd": utils.nanstd},
                               block=scaled)  # fmt: skip
        span = (
            "grouped_rewards = rewards.view(-1, num_generations)",
            "advantages = torch.nan_to_num(advantages, nan=0.0)",
            ("rewards", "num_generations"),
            "advantages",
        )
        rloo = load_method(root / "trl/trainer/rloo_trainer.py", "RLOOTrainer", "_generate_and_score_completions",
                           {"nanstd": utils.nanstd}, span=span)  # fmt: skip
        return {"trl_advantages": SimpleNamespace(grpo=grpo_adv, rloo=rloo)}
    return {}


# ----------------------------------------------------------------------------------------------------------------
# verl 0.9.1: token_level_rewards [B, T] (the score summed over tokens), response_mask, index (group ids)


def _verl_outcome(name: str, estimator: str) -> Callable[[Modules], Callable[..., Any]]:
    """An outcome estimator (RLOO, GRPO-vectorised) on scores: each score as the token reward of a one-token row."""

    def build(m: Modules) -> Callable[..., Any]:
        fn = getattr(m["estimators"], name)

        def call(scores: torch.Tensor, group_size: int, **kw: Any) -> torch.Tensor:
            index = np.arange(scores.shape[0]) // int(group_size)
            token_rewards = scores[:, None].clone()
            adv, _ = fn(token_rewards, torch.ones_like(token_rewards), index, **kw)
            out: torch.Tensor = adv[:, 0]
            return out

        if estimator == "rloo":

            def rloo_advantages(scores, group_size):  # type: ignore[no-untyped-def]
                return call(scores, group_size)

            return rloo_advantages

        def grpo_advantages(scores, group_size, std_normalize=True, eps=1e-6):  # type: ignore[no-untyped-def]
            return call(scores, group_size, epsilon=eps, norm_adv_by_std_in_grpo=std_normalize)

        return grpo_advantages

    return build


def _verl_reinforce_pp(m: Modules) -> Callable[..., Any]:
    fn = m["estimators"].compute_reinforce_plus_plus_outcome_advantage

    def reinforce_pp_advantages(rewards, mask, gamma=1.0):  # type: ignore[no-untyped-def]
        adv, _returns = fn(rewards, mask.to(rewards.dtype), config=SimpleNamespace(gamma=gamma))
        return adv

    return reinforce_pp_advantages


def _verl_reinforce_pp_baseline(m: Modules) -> Callable[..., Any]:
    fn = m["estimators"].compute_reinforce_plus_plus_baseline_outcome_advantage

    def reinforce_pp_baseline_advantages(scores, group_size, mask, kl_rewards=None):  # type: ignore[no-untyped-def]
        # token_level_rewards: the score at the first valid token (verl sums them) plus the KL rewards
        m_float = mask.to(scores.dtype)
        first = torch.nn.functional.one_hot(mask.to(torch.int64).argmax(-1), mask.shape[1]).to(scores.dtype)
        token_rewards = first * scores[:, None]
        if kl_rewards is not None:
            token_rewards = token_rewards + kl_rewards * m_float
        index = np.arange(scores.shape[0]) // int(group_size)
        adv, _ = fn(token_rewards, m_float, index)
        return adv

    return reinforce_pp_baseline_advantages


def _verl_remax(m: Modules) -> Callable[..., Any]:
    fn = m["estimators"].compute_remax_outcome_advantage

    def remax_advantages(rewards, mask, baseline_scores):  # type: ignore[no-untyped-def]
        adv, _returns = fn(rewards, baseline_scores, mask.to(rewards.dtype))
        return adv

    return remax_advantages


def _verl_overlong(m: Modules) -> Callable[..., Any]:
    block = m["dapo"].overlong

    def overlong_penalty(lengths, max_length, cache_length, factor=1.0):  # type: ignore[no-untyped-def]
        cfg = SimpleNamespace(enable=True, len=cache_length, penalty_factor=factor, log=False)
        manager = SimpleNamespace(overlong_buffer_cfg=cfg, max_resp_len=max_length)
        return torch.tensor([float(block(manager, float(n), 0.0, {})) for n in lengths.tolist()],
                            dtype=torch.float64)  # fmt: skip

    return overlong_penalty


# ----------------------------------------------------------------------------------------------------------------
# OpenRLHF 0.11.2: rewards [n_prompts, n_samples], then compute_reward / get_cumulative_returns / the whitening


def _orl_args(estimator: str, **advantage: Any) -> SimpleNamespace:
    adv = SimpleNamespace(estimator=estimator, no_std_norm=False, **advantage)
    return SimpleNamespace(algo=SimpleNamespace(advantage=adv))


def _orl_rloo(m: Modules) -> Callable[..., Any]:
    block = m["experience"].rloo

    def rloo_advantages(scores, group_size):  # type: ignore[no-untyped-def]
        args = _orl_args("rloo")
        args.rollout = SimpleNamespace(n_samples_per_prompt=int(group_size))
        return block(None, args, scores.reshape(-1, int(group_size))).reshape(-1)

    return rloo_advantages


def _orl_whitened(m: Modules, estimator: str, token_rewards: torch.Tensor, mask: torch.Tensor,
                  gamma: float) -> torch.Tensor:  # fmt: skip
    returns = m["experience"].returns(None, token_rewards, mask.to(token_rewards.dtype), gamma)
    experience = SimpleNamespace(advantages=returns, action_mask=mask.to(token_rewards.dtype))
    m["experience"].whiten(None, _orl_args(estimator), [experience])
    return experience.advantages  # type: ignore[no-any-return]


def _orl_reinforce_pp(m: Modules) -> Callable[..., Any]:
    def reinforce_pp_advantages(rewards, mask, gamma=1.0):  # type: ignore[no-untyped-def]
        return _orl_whitened(m, "reinforce", rewards, mask, gamma)

    return reinforce_pp_advantages


def _orl_reinforce_pp_baseline(m: Modules) -> Callable[..., Any]:
    group_mean = m["experience"].group_mean
    compute_reward = m["utils"].compute_reward

    def reinforce_pp_baseline_advantages(scores, group_size, mask, kl_rewards=None):  # type: ignore[no-untyped-def]
        centred = group_mean(None, _orl_args("reinforce_baseline"), scores.reshape(-1, int(group_size))).reshape(-1)
        kl = torch.zeros(mask.shape, dtype=scores.dtype) if kl_rewards is None else -kl_rewards  # kl_coef 1: +k_t
        token_rewards = compute_reward(centred, 1.0, kl, action_mask=mask, reward_clip_range=(-10.0, 10.0))
        return _orl_whitened(m, "reinforce_baseline", token_rewards, mask, 1.0)

    return reinforce_pp_baseline_advantages


def _orl_overlong(m: Modules) -> Callable[..., Any]:
    fn = m["length_penalty"].apply_overlong_penalty

    def overlong_penalty(lengths, max_length, cache_length, factor=1.0):  # type: ignore[no-untyped-def]
        experience = SimpleNamespace(response_length=lengths.to(torch.int64),
                                     rewards=torch.zeros(lengths.shape, dtype=torch.float64))  # fmt: skip
        fn([experience], max_length, cache_length, factor)
        return experience.rewards

    return overlong_penalty


# ----------------------------------------------------------------------------------------------------------------
# TRL 1.16: GRPOTrainer's advantage block (scale_rewards) and RLOOTrainer's leave-one-out block


def _trl_grpo_advantages(scale_rewards: str) -> Callable[[Modules], Callable[..., Any]]:
    def build(m: Modules) -> Callable[..., Any]:
        block = m["trl_advantages"].grpo

        def grpo_advantages(scores, group_size):  # type: ignore[no-untyped-def]
            trainer = SimpleNamespace(reward_weights=torch.ones(1, dtype=scores.dtype), scale_rewards=scale_rewards)
            per_func = scores[:, None]
            unscorable = torch.isnan(per_func).all(dim=1)
            adv = block(trainer, per_func, unscorable, int(group_size), scores.device)
            return torch.nan_to_num(adv, nan=0.0)  # (the statement after the block)

        return grpo_advantages

    return build


def _trl_rloo(m: Modules) -> Callable[..., Any]:
    span = m["trl_advantages"].rloo

    def rloo_advantages(scores, group_size):  # type: ignore[no-untyped-def]
        return span(SimpleNamespace(normalize_advantages=False), scores.clone(), int(group_size))

    return rloo_advantages


# ----------------------------------------------------------------------------------------------------------------
# the entries


def entries(entry: Callable[..., Any]) -> list[Any]:
    """The estimator rows of the audit; ``entry`` is :class:`~rlhf_oracle.audit.frameworks.AuditEntry`."""
    e = entry
    verl = "verl.trainer.ppo.core_algos"
    orl = "openrlhf.trainer.ppo_utils"
    return [
        e("verl", "verl", f"{verl}:compute_rloo_outcome_advantage", "rloo_advantages",
          _verl_outcome("compute_rloo_outcome_advantage", "rloo"), {"singleton": "score"},
          "verl 0.9.1 'rloo': a group of one keeps its score"),
        e("verl", "verl", f"{verl}:compute_rloo_vectorized_outcome_advantage", "rloo_advantages",
          _verl_outcome("compute_rloo_vectorized_outcome_advantage", "rloo"), {"singleton": "zero"},
          "verl 0.9.1 'rloo_vectorized': a group of one gets 0"),
        e("verl", "verl", f"{verl}:compute_grpo_vectorized_outcome_advantage", "grpo_advantages",
          _verl_outcome("compute_grpo_vectorized_outcome_advantage", "grpo"), {"unbiased": True},
          "verl 0.9.1 'grpo_vectorized': group_mean_std (Bessel), epsilon 1e-6"),
        e("verl", "verl", f"{verl}:compute_reinforce_plus_plus_outcome_advantage", "reinforce_pp_advantages",
          _verl_reinforce_pp, {"unbiased": True, "eps": 1e-8},
          "verl 0.9.1 'reinforce_plus_plus': masked_whiten (Bessel, +1e-8), holes carried"),
        e("verl", "verl", f"{verl}:compute_reinforce_plus_plus_baseline_outcome_advantage",
          "reinforce_pp_baseline_advantages", _verl_reinforce_pp_baseline,
          {"unbiased": True, "eps": 1e-8, "kl_position": "before"},
          "verl 0.9.1: scores = sum of token_level_rewards (KL included), masked_whiten (Bessel)"),
        e("verl", "verl", f"{verl}:compute_remax_outcome_advantage", "remax_advantages", _verl_remax),
        e("verl", "verl", "verl.experimental.reward_loop.reward_manager.dapo:DAPORewardManager (overlong buffer)",
          "overlong_penalty", _verl_overlong, {}, "verl 0.9.1 DAPO reward manager: overlong_buffer len, "
          "penalty_factor"),
        e("openrlhf", "openrlhf", f"{orl}.experience_maker:compute_advantages_and_returns (rloo)",
          "rloo_advantages", _orl_rloo, {"singleton": "error"}, "OpenRLHF 0.11.2: n_samples_per_prompt > 1"),
        e("openrlhf", "openrlhf", f"{orl}.experience_maker:get_cumulative_returns + whitening (reinforce)",
          "reinforce_pp_advantages", _orl_reinforce_pp, {"unbiased": False, "eps": 1e-8},
          "OpenRLHF 0.11.2 'reinforce': population variance, var.clamp(min=1e-8).rsqrt()"),
        e("openrlhf", "openrlhf", f"{orl}.experience_maker + models.utils:compute_reward (reinforce_baseline)",
          "reinforce_pp_baseline_advantages", _orl_reinforce_pp_baseline,
          {"unbiased": False, "eps": 1e-8, "kl_position": "after"},
          "OpenRLHF 0.11.2 'reinforce_baseline': group mean, KL as a return-to-go, population whitening"),
        e("openrlhf", "openrlhf", f"{orl}.length_penalty:apply_overlong_penalty", "overlong_penalty",
          _orl_overlong, {}, "OpenRLHF 0.11.2: overlong_buffer_len, overlong_penalty_factor 1.0"),
        *(e("trl", "trl", f"GRPOTrainer advantages (scale_rewards='{scale}')", "grpo_advantages",
            _trl_grpo_advantages(scale), {"std_level": scale, "unbiased": True, "std_normalize": True, "eps": 1e-4},
            "TRL 1.16 GRPOConfig: one reward function, nanstd (Bessel), + 1e-4")
          for scale in ("group", "batch")),
        e("trl", "trl", "trl.trainer.rloo_trainer:RLOOTrainer leave-one-out advantages", "rloo_advantages", _trl_rloo,
          {"singleton": "zero"}, "TRL 1.16 RLOOConfig: beta 0 here, normalize_advantages False; a group of one: 0"),
    ]  # fmt: skip
