"""Phase 3, PPO with a KL penalty in the reward (InstructGPT / Ziegler et al. 2019), read top to bottom.

One PPO iteration:

1. **Rollout**: ``rollout_batch_size`` fresh prompts; replies sampled from the policy with ``model.generate``
   (pure sampling at ``temperature``).
2. **Score**: log-probs of the replies under the policy and the frozen reference pi_SFT (``token_logprobs``), the
   critic's values, the reward model's score at the last valid token (EOS) and, for the record only, the gold reward.
3. **Rewards and advantages**: ``kl_shaped_rewards`` (r_t = -beta kl_t, plus the score on the last valid token),
   ``gae`` (gamma, lambda) and ``whiten``.
4. **Update**: ``ppo_epochs`` passes of shuffled minibatches. The policy minimises
   ``policy_loss - ent_coef * entropy + ptx_coef * ptx_loss`` (the ptx term is the log-likelihood of a batch of the
   SFT corpus: InstructGPT's gamma term); the critic, a separate model initialised from the reward model, minimises
   ``value_loss`` with its own optimiser.
5. **KL control**: the adaptive controller of Ziegler et al. updates beta from the batch's per-response KL.
6. **Oracle** (every ``oracle_every`` steps): the same step recomputed in float64 by ``rlhf_oracle.reference``.

Every formula is a call into ``rlhf_oracle.torch_impl``, and every convention those functions leave open is a
``DemoConfig`` field passed by keyword: this loop makes no silent choice.

Metrics written per step to ``metrics.jsonl`` (all means over the rollout batch unless noted):
``gold`` gold reward; ``proxy`` reward-model score; ``kl`` per-response KL(pi || pi_SFT), the k1 sum over tokens
(what the controller sees); ``kl_token`` its token mean; ``beta`` the coefficient used this step; ``reward`` the
summed shaped reward; ``policy_loss``, ``value_loss``, ``entropy``, ``ptx_loss`` minibatch means; ``clipfrac`` the
fraction of valid tokens where the ratio clip binds; ``approx_kl`` k3 between the policy after and before the
update (per token, PPO's trust-region diagnostic); ``explained_var`` 1 - Var(returns - values) / Var(returns) of the
critic at rollout time; ``reply_len`` response tokens incl. EOS; ``eos_rate`` replies that ended within the budget;
``oracle`` per-quantity discrepancy vs the reference and ``oracle_max`` the largest (absent on unchecked steps);
``kept`` the fraction of responses dynamic sampling keeps (with ``dynamic_sampling``).

Critic-free (``advantage`` other than 'gae', docs page 9): each prompt is sampled ``samples_per_prompt`` times
(grpo, rloo, reinforce++-baseline) as consecutive rows, step 3 computes the estimator's advantages from the same
shaped rewards (no critic, no value loss, no extra whitening; ``value_loss`` and ``explained_var`` are None),
ReMax scores one extra greedy reply per prompt, and DAPO's overlong penalty and dynamic sampling are options.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from . import oracle as O
from . import parallel
from .config import GROUP_ADVANTAGES, DemoConfig
from .models import (
    Batch,
    ScalarHeadModel,
    decode_replies,
    encode_prompts,
    response_logits,
    response_values,
    sample_responses,
    sequence_scores,
)
from .oracle import F  # rlhf_oracle.torch_impl, recorded for the oracle
from .runtime import autocast, backward, derive_seed, eval_mode, numpy_rng, rng_state, set_rng_state
from .sft import SFTCorpus
from .task import LetterRepeatTask

PPO_STREAM = 3
EVAL_STREAM = 4


class Halted(Exception):
    """Raised after the step named by ``DemoConfig.halt_after_step`` (simulates a killed run)."""


@dataclass
class PPOState:
    """Everything a checkpoint holds."""

    policy: GPT2LMHeadModel
    critic: ScalarHeadModel
    policy_opt: torch.optim.Optimizer
    critic_opt: torch.optim.Optimizer
    beta: float
    kl_ctl: Any | None  # F.AdaptiveKLController when cfg.target_kl is set
    step: int


@dataclass
class Rollout:
    """One rollout batch, scored. Per-token tensors are [B, L]."""

    batch: Batch
    prompts: list[str]
    logits: torch.Tensor  # [B, L, V] policy logits at rollout time
    ref_logits: torch.Tensor
    logp: torch.Tensor
    logp_ref: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor  # [B] proxy (reward model) score used in the reward
    gold: np.ndarray  # [B] gold reward (logged only)
    kl: torch.Tensor  # per-token estimator of kind cfg.kl_kind, 0 where masked
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    whitened: torch.Tensor
    is_weights: torch.Tensor | None = None  # rollout-correction weights (cfg.rollout_correction), else None
    keep: torch.Tensor | None = None  # [B] rows of the update (dynamic sampling), else None: all rows


# --------------------------------------------------------------------------------------------------
# rollout and scoring
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def rollout(
    cfg: DemoConfig,
    state: PPOState,
    ref: GPT2LMHeadModel,
    rm: ScalarHeadModel,
    task: LetterRepeatTask,
    tok: PreTrainedTokenizerFast,
    prompts: list[str],
    device: torch.device,
) -> Rollout:
    prompt_ids = encode_prompts(tok, prompts, device)
    behaviour_logp = None
    with eval_mode(state.policy, state.critic), autocast(cfg, device):
        if cfg.rollout_correction is None:
            batch = sample_responses(
                state.policy, tok, prompt_ids, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature
            )
        else:  # the "inference engine": a bf16 copy of the policy samples, and its own log-probs are mu
            engine = copy.deepcopy(state.policy).bfloat16()  # (in eval mode: copied inside eval_mode)
            batch = sample_responses(
                engine, tok, prompt_ids, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature
            )
            behaviour_logp = F.token_logprobs(response_logits(engine, batch), batch.responses,
                                              temperature=cfg.temperature).float()  # fmt: skip
        logits = response_logits(state.policy, batch)
        ref_logits = response_logits(ref, batch)
        critic_free = cfg.advantage != "gae"
        values = torch.zeros_like(logits[..., 0]) if critic_free else response_values(state.critic, batch)
        scores = sequence_scores(rm, batch)
        greedy_scores = None
        if cfg.advantage == "remax":  # ReMax's baseline: the reward model's score of the greedy reply
            greedy = sample_responses(state.policy, tok, prompt_ids, max_new_tokens=cfg.max_new_tokens,
                                      temperature=cfg.temperature, greedy=True)  # fmt: skip
            greedy_scores = _overlong(cfg, sequence_scores(rm, greedy), greedy.response_mask)
    mask = batch.response_mask
    logp = F.token_logprobs(logits, batch.responses, temperature=cfg.temperature)
    logp_ref = F.token_logprobs(ref_logits, batch.responses, temperature=cfg.temperature)
    if cfg.no_eos_score is not None:  # N+ detail 23: a reply that never ends gets a fixed score
        has_eos = (batch.responses == tok.eos_token_id).any(dim=1)
        scores = torch.where(has_eos, scores, torch.full_like(scores, cfg.no_eos_score))
    gold = task.gold_rewards(prompts, decode_replies(tok, batch))
    scores = _overlong(cfg, scores, mask)

    kl = torch.where(mask, F.kl_estimate(logp, logp_ref, cfg.kl_kind), torch.zeros_like(logp))
    # The fixed layout ends truncated replies at the last slot, so the score goes on the last valid token
    # (= EOS when there is one): verl/OpenRLHF's convention. TRL's "after_last" would need a pad slot.
    rewards = F.kl_shaped_rewards(scores, logp, logp_ref, mask, state.beta, kind=cfg.kl_kind, score_position="last")
    keep = None
    if critic_free:  # the estimator's own scale: no critic, no extra whitening
        advantages, keep = _critic_free_advantages(cfg, scores, rewards, kl, mask, state.beta, greedy_scores)
        returns = whitened = advantages
    else:
        advantages, returns = F.gae(rewards, values, mask, gamma=cfg.gamma, lam=cfg.lam)
        if cfg.whiten_advantages:
            whitened = F.whiten(advantages, mask, shift_mean=True, unbiased=cfg.whiten_unbiased)
        else:
            whitened = advantages
    is_weights = None
    if behaviour_logp is not None:  # token TIS (Yao et al. 2025): min(pi_old / mu, 2), 0 at padding
        is_weights = F.rollout_is_weights(logp, behaviour_logp, mask, "token", "truncate", 2.0)
    return Rollout(
        batch,
        prompts,
        logits,
        ref_logits,
        logp,
        logp_ref,
        values,
        scores,
        gold,
        kl,
        rewards,
        advantages,
        returns,
        whitened,
        is_weights,
        keep,
    )


def _overlong(cfg: DemoConfig, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The score plus DAPO's soft overlong penalty (L_max = max_new_tokens, L_cache = overlong_buffer), if on."""
    if cfg.overlong_buffer is None:
        return scores
    lengths = mask.sum(dim=1).to(scores.dtype)
    penalised: torch.Tensor = scores + F.overlong_penalty(lengths, cfg.max_new_tokens, cfg.overlong_buffer)
    return penalised


def _critic_free_advantages(
    cfg: DemoConfig,
    scores: torch.Tensor,
    rewards: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    greedy_scores: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The advantages of a critic-free estimator ([B, L], 0 at padding) and the rows dynamic sampling keeps.

    Every estimator sees the same KL-regularised reward as PPO (page 3): the token rewards ``rewards`` (score at
    the last valid token, -beta kl_t at every token) for reinforce++ and remax; their per-response sum (score -
    beta sum_t kl_t, as TRL's RLOO puts the KL into the score) for grpo and rloo; the score with the KL rewards
    after the group baseline (OpenRLHF's order) for reinforce++-baseline. Rows are groups of samples_per_prompt
    consecutive responses to one prompt.
    """
    n = cfg.samples_per_prompt
    sequence = torch.where(mask, rewards, torch.zeros_like(rewards)).sum(dim=1)
    keep = F.dynamic_sampling_mask(sequence, n) if cfg.dynamic_sampling else None
    if cfg.advantage == "grpo":
        advantages = F.grpo_advantages(sequence, n, mask=mask)
    elif cfg.advantage == "rloo":
        advantages = F.rloo_advantages(sequence, n, mask=mask)
    elif cfg.advantage == "reinforce++-baseline":
        advantages = F.reinforce_pp_baseline_advantages(scores, n, mask, kl_rewards=-beta * kl)
    elif cfg.advantage == "reinforce++":
        advantages = F.reinforce_pp_advantages(rewards, mask, gamma=cfg.gamma)
    else:
        assert greedy_scores is not None
        advantages = F.remax_advantages(rewards, mask, greedy_scores)
    return advantages, keep


# --------------------------------------------------------------------------------------------------
# one PPO iteration
# --------------------------------------------------------------------------------------------------


def ppo_step(
    cfg: DemoConfig,
    state: PPOState,
    ref: GPT2LMHeadModel,
    rm: ScalarHeadModel,
    task: LetterRepeatTask,
    tok: PreTrainedTokenizerFast,
    corpus: SFTCorpus,
    device: torch.device,
    *,
    phase_key: int,
    oracle_rtol: float | None,
) -> dict[str, Any]:
    """Run PPO iteration ``state.step + 1`` in place; returns its metrics.

    On the steps the oracle checks, every ``torch_impl`` call of the step is recorded and replayed in float64 by
    the reference (:mod:`rlhf_oracle.e2e.oracle`); a discrepancy above ``oracle_rtol`` stops the run.
    """
    step = state.step + 1
    check = oracle_rtol is not None and cfg.oracle_every > 0 and step % cfg.oracle_every == 0
    with F.recording(check) as calls:
        metrics = _run_step(cfg, state, ref, rm, task, tok, corpus, device, phase_key=phase_key)
    if check:
        assert oracle_rtol is not None
        discrepancies = O.check_calls(step, calls, oracle_rtol)
        metrics["oracle"] = discrepancies
        metrics["oracle_max"] = max(discrepancies.values())
    return metrics


def _run_step(
    cfg: DemoConfig,
    state: PPOState,
    ref: GPT2LMHeadModel,
    rm: ScalarHeadModel,
    task: LetterRepeatTask,
    tok: PreTrainedTokenizerFast,
    corpus: SFTCorpus,
    device: torch.device,
    *,
    phase_key: int,
) -> dict[str, Any]:
    """PPO iteration ``state.step + 1`` in place (the oracle aside); returns its metrics."""
    step = state.step + 1
    # Every random draw of this step comes from streams seeded by (seed, phase, step): a resumed run replays them.
    step_seed = derive_seed(cfg.seed, PPO_STREAM, phase_key, step)
    torch.manual_seed(step_seed)
    gen = torch.Generator().manual_seed(step_seed)
    group = cfg.samples_per_prompt if cfg.advantage in GROUP_ADVANTAGES else 1
    drawn = task.sample_prompts(cfg.rollout_batch_size // group, numpy_rng(cfg.seed, PPO_STREAM, phase_key, step))
    prompts = [p for p in drawn for _ in range(group)]  # a group's samples are consecutive rows

    ro = rollout(cfg, state, ref, rm, task, tok, prompts, device)
    mask = ro.batch.response_mask
    n = cfg.rollout_batch_size
    n_corpus = corpus.batch.input_ids.shape[0]

    sums: dict[str, float] = {k: 0.0 for k in ("policy_loss", "value_loss", "entropy", "ptx_loss", "clipfrac")}
    n_updates = 0
    state.policy.train()
    state.critic.train()
    world = parallel.rank_and_world()[1]
    rows = torch.arange(n) if ro.keep is None else torch.nonzero(ro.keep.cpu()).squeeze(1)
    for _epoch in range(cfg.ppo_epochs):
        perm = rows[torch.randperm(rows.numel(), generator=gen)].to(device)
        for idx in torch.split(perm, cfg.minibatch_size):
            ptx_idx = None
            if cfg.ptx_coef > 0:
                ptx_idx = torch.randint(0, n_corpus, (cfg.ptx_batch_size,), generator=gen).to(device)
            if world > 1:  # the same random draws on every rank; the update is data-parallel
                _data_parallel_update(cfg, state, ro, corpus, idx, ptx_idx, device, sums)
                n_updates += 1
                continue
            mb = ro.batch.select(idx)
            mb_mask = mask[idx]
            ptx_batch = corpus.batch.select(ptx_idx) if ptx_idx is not None else None
            logits, ptx_logits = _policy_logits(cfg, state, mb, ptx_batch, device)
            logp = F.token_logprobs(logits, mb.responses, temperature=cfg.temperature)
            pg_loss = _policy_term(cfg, ro, idx, logp, mb_mask)
            entropy = F.aggregate(F.entropy_from_logits(logits, temperature=cfg.temperature), mb_mask, cfg.loss_agg)
            loss = pg_loss - cfg.ent_coef * entropy
            if cfg.kl_loss_coef > 0:  # GRPO's KL loss term, beside the KL penalty in the reward
                loss = loss + cfg.kl_loss_coef * F.kl_loss(logp, ro.logp_ref[idx], mb_mask, cfg.kl_kind, cfg.loss_agg)
            if ptx_batch is not None:
                # ptx: likelihood of the corpus itself (temperature 1: it is data, not a sample of the policy)
                ptx_logp = F.token_logprobs(ptx_logits, ptx_batch.responses)
                ptx = F.ptx_loss(ptx_logp, ptx_batch.response_mask, agg="token-mean")
                loss = loss + cfg.ptx_coef * ptx
                sums["ptx_loss"] += float(ptx.detach())
            _optimizer_step(cfg, loss, state.policy, state.policy_opt)

            if cfg.advantage == "gae":  # the critic (the critic-free estimators have none)
                with autocast(cfg, device):
                    new_values = response_values(state.critic, mb)
                v_loss = F.value_loss(
                    new_values, ro.values[idx], ro.returns[idx], mb_mask, clip_eps=cfg.value_clip_eps,
                    agg=cfg.value_agg,
                )  # fmt: skip
                _optimizer_step(cfg, v_loss, state.critic, state.critic_opt)
                sums["value_loss"] += float(v_loss.detach())

            clipped = _clipped(cfg, logp, ro.logp[idx], ro.whitened[idx])
            sums["clipfrac"] += float(clipped[mb_mask].float().mean())
            sums["policy_loss"] += float(pg_loss.detach())
            sums["entropy"] += float(entropy.detach())
            n_updates += 1
    state.policy.train(False)
    state.critic.train(False)

    # diagnostics after the update: how far did the policy move from its rollout self?
    with torch.no_grad(), autocast(cfg, device):
        new_logits = response_logits(state.policy, ro.batch)
    new_logp = F.token_logprobs(new_logits, ro.batch.responses, temperature=cfg.temperature)
    approx_kl = float(F.aggregate(F.kl_estimate(new_logp, ro.logp, "k3"), mask, "token-mean"))

    # KL to the reference, per response (k1 summed over tokens: Ziegler's "KL in nats" that the controller targets)
    kl_k1 = F.kl_estimate(ro.logp, ro.logp_ref, "k1")
    kl_sum = float(F.aggregate(kl_k1, mask, "seq-mean-token-sum"))
    kl_token = float(F.aggregate(kl_k1, mask, "token-mean"))
    beta_used = state.beta
    if state.kl_ctl is not None:  # the controller's update, called through F so that the oracle replays it
        ctl = state.kl_ctl
        ctl.value = F.adaptive_kl_update(ctl.value, kl_sum, ctl.target, n, ctl.horizon)
        state.beta = float(ctl.value)

    ret = ro.returns[mask]
    explained_var = None
    if cfg.advantage == "gae":
        explained_var = float(1.0 - torch.var(ret - ro.values[mask]) / torch.var(ret).clamp_min(1e-12))
    n_updates = max(n_updates, 1)  # (dynamic sampling may leave no row to update)
    metrics: dict[str, Any] = {
        "step": step,
        "beta": beta_used,
        "gold": float(np.mean(ro.gold)),
        "proxy": float(ro.scores.mean()),
        "kl": kl_sum,
        "kl_token": kl_token,
        "reward": float(F.aggregate(ro.rewards, mask, "seq-mean-token-sum")),
        "policy_loss": sums["policy_loss"] / n_updates,
        "value_loss": sums["value_loss"] / n_updates if cfg.advantage == "gae" else None,
        "entropy": sums["entropy"] / n_updates,
        "ptx_loss": sums["ptx_loss"] / n_updates if cfg.ptx_coef > 0 else None,
        "clipfrac": sums["clipfrac"] / n_updates,
        "approx_kl": approx_kl,
        "explained_var": explained_var,
        "reply_len": float(mask.float().sum(dim=1).mean()),
        "eos_rate": float((ro.batch.responses == tok.eos_token_id).any(dim=1).float().mean()),
    }
    if ro.keep is not None:  # dynamic sampling: the fraction of responses whose group carries a gradient
        metrics["kept"] = float(ro.keep.float().mean())
    if ro.is_weights is not None:  # how far the bf16 engine is from the trainer: the weights' spread, truncations
        w = ro.is_weights[mask]
        metrics["is_weight_min"], metrics["is_weight_max"] = float(w.min()), float(w.max())
        metrics["is_truncated"] = float((w >= 2.0).float().mean())

    state.step = step
    return metrics


def _policy_logits(
    cfg: DemoConfig, state: PPOState, mb: Batch, ptx_batch: Batch | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Response logits of the minibatch and of the ptx batch, from one forward pass (one call, same layout)."""
    joint = mb
    if ptx_batch is not None:
        joint = Batch(
            torch.cat([mb.input_ids, ptx_batch.input_ids]),
            torch.cat([mb.attention_mask, ptx_batch.attention_mask]),
            torch.cat([mb.response_mask, ptx_batch.response_mask]),
            mb.prompt_len,
        )
    with autocast(cfg, device):
        all_logits = response_logits(state.policy, joint)
    n = mb.input_ids.shape[0]
    return all_logits[:n], (all_logits[n:] if ptx_batch is not None else None)


def _optimizer_step(cfg: DemoConfig, loss: torch.Tensor, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """Backward, sum the gradients over the ranks (a no-op in one process), clip, step."""
    opt.zero_grad(set_to_none=True)
    backward(loss)
    parallel.sum_gradients(model.parameters())
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    opt.step()


def _policy_term(
    cfg: DemoConfig, ro: Rollout, idx: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The policy loss ``cfg.policy_loss`` of a minibatch (PPO-Clip by default), with the rollout-correction
    weights when there are some."""
    old, adv = ro.logp[idx], ro.whitened[idx]
    weights = None if ro.is_weights is None else ro.is_weights[idx]
    out: torch.Tensor
    if cfg.policy_loss == "ppo":
        extra = {} if weights is None else {"weights": weights}  # the default run's call is unchanged
        out = F.policy_loss(logp, old, adv, mask, clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high,
                            dual_clip=cfg.dual_clip, agg=cfg.loss_agg, **extra)  # fmt: skip
    elif cfg.policy_loss == "pg":  # REINFORCE: the gradient of -A log pi at the rollout's policy
        out = F.pg_loss(logp, adv, mask, weights, agg=cfg.loss_agg)
    else:
        losses = {"cispo": F.cispo_loss, "gspo": F.gspo_loss, "sapo": F.sapo_loss}
        out = losses[cfg.policy_loss](logp, old, adv, mask, agg=cfg.loss_agg)
    return out


@torch.no_grad()
def _clipped(cfg: DemoConfig, logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """Where the ratio is outside its clip range on the side the advantage pushes it (the clip fraction's tokens)."""
    ratio = torch.exp(logp - logp_old)
    hi = cfg.clip_eps if cfg.clip_eps_high is None else cfg.clip_eps_high
    return ((ratio > 1 + hi) & (adv > 0)) | ((ratio < 1 - cfg.clip_eps) & (adv < 0))


def _data_parallel_update(
    cfg: DemoConfig,
    state: PPOState,
    ro: Any,
    corpus: SFTCorpus,
    idx: torch.Tensor,
    ptx_idx: torch.Tensor | None,
    device: torch.device,
    sums: dict[str, float],
) -> None:
    """One minibatch update with its rows split over the ranks (see :mod:`rlhf_oracle.e2e.parallel`).

    Each rank's losses are its shares of the minibatch's global losses (global token and sequence counts,
    all-reduced), the gradients are summed over the ranks, then clipped and applied as in the single-process
    update. Adds the global loss values to ``sums``.
    """
    mask = ro.batch.response_mask
    local = parallel.shard(idx)
    mb = ro.batch.select(local)
    mb_mask = mask[local]
    counts = F.global_normaliser(mb_mask)
    ptx_batch = corpus.batch.select(parallel.shard(ptx_idx)) if ptx_idx is not None else None
    logits, ptx_logits = _policy_logits(cfg, state, mb, ptx_batch, device)
    logp, entropy_tokens = F.logprobs_and_entropy(logits, mb.responses, temperature=cfg.temperature)
    pg = F.micro_batch_policy_loss(
        logp, ro.logp[local], ro.whitened[local], mb_mask, counts, clip_eps=cfg.clip_eps,
        clip_eps_high=cfg.clip_eps_high, dual_clip=cfg.dual_clip, agg=cfg.loss_agg, rank_gradients="sum",
    )  # fmt: skip
    ent = F.micro_batch_aggregate(entropy_tokens, mb_mask, cfg.loss_agg, counts, rank_gradients="sum")
    loss = pg - cfg.ent_coef * ent
    ptx = torch.zeros(())
    if ptx_batch is not None:
        ptx_logp = F.token_logprobs(ptx_logits, ptx_batch.responses)
        ptx_counts = F.global_normaliser(ptx_batch.response_mask)
        ptx = -F.micro_batch_aggregate(
            ptx_logp, ptx_batch.response_mask, "token-mean", ptx_counts, rank_gradients="sum"
        )
        loss = loss + cfg.ptx_coef * ptx
    _optimizer_step(cfg, loss, state.policy, state.policy_opt)

    with autocast(cfg, device):
        new_values = response_values(state.critic, mb)
    v_loss = F.micro_batch_value_loss(
        new_values, ro.values[local], ro.returns[local], mb_mask, counts, clip_eps=cfg.value_clip_eps,
        agg=cfg.value_agg, rank_gradients="sum",
    )  # fmt: skip
    _optimizer_step(cfg, v_loss, state.critic, state.critic_opt)

    clipped = _clipped(cfg, logp, ro.logp[local], ro.whitened[local])
    n_clipped, n_valid = float(clipped[mb_mask].sum()), float(mb_mask.sum())
    pg_v, ent_v, ptx_v, v_v, n_clipped, n_valid = parallel.all_sum(
        pg.detach(), ent.detach(), ptx.detach(), v_loss.detach(), n_clipped, n_valid
    )
    sums["policy_loss"] += pg_v
    sums["entropy"] += ent_v
    sums["value_loss"] += v_v
    sums["clipfrac"] += n_clipped / n_valid
    if ptx_idx is not None:
        sums["ptx_loss"] += ptx_v


# --------------------------------------------------------------------------------------------------
# evaluation, checkpoints, the phase driver
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    cfg: DemoConfig,
    policy: GPT2LMHeadModel,
    ref: GPT2LMHeadModel,
    rm: ScalarHeadModel,
    task: LetterRepeatTask,
    tok: PreTrainedTokenizerFast,
    device: torch.device,
) -> dict[str, float]:
    """Gold, proxy and KL-to-reference of ``policy`` on the fixed held-out prompts (same prompts and seed always)."""
    prompts = task.sample_prompts(cfg.eval_prompts, numpy_rng(cfg.seed, EVAL_STREAM))
    prompt_ids = encode_prompts(tok, prompts, device)
    torch.manual_seed(derive_seed(cfg.seed, EVAL_STREAM, 1))
    with autocast(cfg, device):
        batch = sample_responses(
            policy, tok, prompt_ids, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature
        )
        logits = response_logits(policy, batch)
        ref_logits = response_logits(ref, batch)
        scores = sequence_scores(rm, batch)
    logp = F.token_logprobs(logits, batch.responses, temperature=cfg.temperature)
    logp_ref = F.token_logprobs(ref_logits, batch.responses, temperature=cfg.temperature)
    kl = float(F.aggregate(F.kl_estimate(logp, logp_ref, "k1"), batch.response_mask, "seq-mean-token-sum"))
    replies = decode_replies(tok, batch)
    gold = task.gold_rewards(prompts, replies)
    return {
        "gold": float(gold.mean()),
        "gold_std": float(gold.std()),
        "proxy": float(scores.mean()),
        "kl": kl,
        "reply_len": float(batch.response_mask.float().sum(dim=1).mean()),
        "examples": [f"{p} {r}" for p, r in zip(prompts[:6], replies[:6], strict=True)],  # type: ignore[dict-item]
    }


def _checkpoint_paths(phase_dir: Path) -> list[Path]:
    return sorted((phase_dir / "checkpoints").glob("step_*.pt"))


def save_checkpoint(phase_dir: Path, state: PPOState, keep: int) -> Path:
    """Atomically write policy/critic/optimiser/RNG/KL-controller state; keep the ``keep`` most recent."""
    ckpt_dir = phase_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{state.step:06d}.pt"
    payload = {
        "step": state.step,
        "policy": state.policy.state_dict(),
        "critic": state.critic.state_dict(),
        "policy_opt": state.policy_opt.state_dict(),
        "critic_opt": state.critic_opt.state_dict(),
        "beta": state.beta,
        "kl_ctl": None if state.kl_ctl is None else {"value": state.kl_ctl.value},
        "rng": rng_state(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    for old in _checkpoint_paths(phase_dir)[:-keep]:
        old.unlink()
    return path


def load_checkpoint(path: Path, state: PPOState) -> None:
    # Load on the CPU (the RNG states must stay CPU tensors); load_state_dict copies parameters and optimiser
    # state onto the models' device. weights_only=False: our own file, it holds Python/NumPy RNG tuples.
    payload = torch.load(path, map_location="cpu", weights_only=False)
    state.policy.load_state_dict(payload["policy"])
    state.critic.load_state_dict(payload["critic"])
    state.policy_opt.load_state_dict(payload["policy_opt"])
    state.critic_opt.load_state_dict(payload["critic_opt"])
    state.beta = float(payload["beta"])
    if state.kl_ctl is not None and payload["kl_ctl"] is not None:
        state.kl_ctl.value = float(payload["kl_ctl"]["value"])
    state.step = int(payload["step"])
    set_rng_state(payload["rng"])


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def phase_dirname(beta: float) -> str:
    return f"ppo_beta{beta:g}"


def run_ppo_phase(
    cfg: DemoConfig,
    *,
    beta0: float,
    phase_key: int,
    phase_dir: Path,
    sft_policy: GPT2LMHeadModel,
    rm: ScalarHeadModel,
    task: LetterRepeatTask,
    tok: PreTrainedTokenizerFast,
    corpus: SFTCorpus,
    device: torch.device,
    progress: bool = True,
) -> tuple[GPT2LMHeadModel, list[dict[str, Any]]]:
    """Train one PPO phase (resuming from its last checkpoint if any); returns the policy and all step metrics."""
    phase_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(derive_seed(cfg.seed, PPO_STREAM, phase_key, 0))
    ref = sft_policy
    ref.requires_grad_(False)
    policy = copy.deepcopy(sft_policy).requires_grad_(True)
    critic = copy.deepcopy(rm).requires_grad_(True)  # value function initialised from the RM (InstructGPT)
    kl_ctl = F.AdaptiveKLController(beta0, cfg.target_kl, horizon=cfg.kl_horizon) if cfg.target_kl is not None else None
    state = PPOState(
        policy=policy,
        critic=critic,
        policy_opt=torch.optim.Adam(policy.parameters(), lr=cfg.policy_lr),
        critic_opt=torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr),
        beta=beta0,
        kl_ctl=kl_ctl,
        step=0,
    )
    metrics_path = phase_dir / "metrics.jsonl"
    checkpoints = _checkpoint_paths(phase_dir)
    if checkpoints:
        load_checkpoint(checkpoints[-1], state)
    # drop metrics of steps after the checkpoint (the run died between a metrics line and the next checkpoint)
    history = [m for m in read_metrics(metrics_path) if m["step"] <= state.step]
    metrics_path.write_text("".join(json.dumps(m) + "\n" for m in history))

    bar = tqdm(total=cfg.ppo_steps, initial=state.step, desc=f"PPO beta={beta0:g}", disable=not progress, leave=False)
    with metrics_path.open("a") as f:
        while state.step < cfg.ppo_steps:
            m = ppo_step(
                cfg, state, ref, rm, task, tok, corpus, device, phase_key=phase_key, oracle_rtol=cfg.oracle_rtol
            )
            history.append(m)
            f.write(json.dumps(m) + "\n")
            f.flush()
            if state.step % cfg.save_every == 0 or state.step == cfg.ppo_steps:
                save_checkpoint(phase_dir, state, cfg.keep_checkpoints)
            bar.update(1)
            bar.set_postfix(gold=f"{m['gold']:.2f}", kl=f"{m['kl']:.2f}", beta=f"{m['beta']:.3g}")
            if cfg.halt_after_step is not None and state.step == cfg.halt_after_step:
                bar.close()
                raise Halted(f"halted after PPO step {state.step} (halt_after_step)")
    bar.close()
    return state.policy, history
