"""Phase 1, supervised fine-tuning: a tiny GPT-2 learns the (mediocre) demonstrations.

The SFT loss is the negative log-likelihood of the reply tokens (and the EOS) given the prompt:
``ptx_loss(token_logprobs(logits, responses), response_mask)``, the same two catalogue functions the PPO phase
uses for the InstructGPT ptx term. The result is pi_SFT: the PPO starting point and the frozen reference policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from rlhf_oracle import torch_impl as F

from .config import DemoConfig
from .models import Batch, build_policy, encode_pairs, response_logits
from .runtime import autocast, backward, numpy_rng
from .task import LetterRepeatTask

SFT_STREAM = 1  # sub-seed ids of the phases (runtime.derive_seed)


@dataclass
class SFTCorpus:
    """The demonstrations: prompts, replies and their encoded batch."""

    prompts: list[str]
    replies: list[str]
    batch: Batch


def build_corpus(
    cfg: DemoConfig, task: LetterRepeatTask, tok: PreTrainedTokenizerFast, device: torch.device
) -> SFTCorpus:
    rng = numpy_rng(cfg.seed, SFT_STREAM, 0)
    prompts = task.sample_prompts(cfg.sft_examples, rng)
    replies = task.sample_replies(
        prompts, rng, target_rate=cfg.demo_target_rate, min_len=cfg.demo_min_len, max_len=cfg.demo_max_len
    )
    return SFTCorpus(prompts, replies, encode_pairs(tok, prompts, replies, cfg.max_new_tokens, device))


def sft_loss(policy: GPT2LMHeadModel, batch: Batch) -> torch.Tensor:
    """Mean NLL of the response tokens (token-mean), via the catalogue's token_logprobs and ptx_loss."""
    logp = F.token_logprobs(response_logits(policy, batch), batch.responses)
    loss: torch.Tensor = F.ptx_loss(logp, batch.response_mask, agg="token-mean")
    return loss


def train_sft(
    cfg: DemoConfig,
    tok: PreTrainedTokenizerFast,
    corpus: SFTCorpus,
    device: torch.device,
    *,
    progress: bool = True,
) -> tuple[GPT2LMHeadModel, dict[str, float]]:
    """Train pi_SFT from scratch on the corpus; returns the model (eval mode) and its final training loss."""
    torch.manual_seed(cfg.seed * 1000 + SFT_STREAM)
    policy = build_policy(cfg, tok)
    torch.nn.Module.to(policy, device)  # PreTrainedModel.to is typed for dtype casts only
    policy.train()
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.sft_lr)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + SFT_STREAM)
    n = len(corpus.prompts)
    losses: list[float] = []
    bar = tqdm(range(cfg.sft_steps), desc="SFT", disable=not progress, leave=False)
    for _ in bar:
        idx = torch.randint(0, n, (cfg.sft_batch_size,), generator=gen).to(device)
        with autocast(cfg, device):
            loss = sft_loss(policy, corpus.batch.select(idx))
        optimizer.zero_grad(set_to_none=True)
        backward(loss)
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    policy.train(False)
    tail = losses[-20:]
    return policy, {"sft_final_loss": sum(tail) / len(tail)}
