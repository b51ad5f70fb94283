"""Phase 2, the reward model: GPT-2 backbone + scalar head, trained on K-way rankings with ``ranking_loss``.

Data (InstructGPT §3.5): for each prompt, ``rm_k`` replies are ranked best to worst by a noisy labeller (gold
reward + Gaussian noise of std ``rm_label_noise``). The replies come from a population of "models" of varied
quality (each reply has its own target-letter rate in [0, 1] and length in [1, max_new_tokens - 1]), as
InstructGPT's labellers compared outputs of several models. All C(K, 2) comparisons of a prompt form one batch
element of ``ranking_loss`` (eq. 1, normaliser C(K, 2)).

After training, the head's bias is shifted so that samples of pi_SFT score mean 0 ("so that the labeler
demonstrations achieve a mean score of 0 before doing RL", InstructGPT; N+ detail 15) and, with
``rm_normalize_std``, its gain so that they have std 1 (Ziegler et al.; lm-human-preferences), which puts beta on
the scale of the literature's values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from rlhf_oracle import torch_impl as F

from .config import DemoConfig
from .models import (
    Batch,
    ScalarHeadModel,
    build_scalar_model,
    encode_pairs,
    encode_prompts,
    sample_responses,
    sequence_scores,
)
from .runtime import autocast, backward, numpy_rng
from .task import LetterRepeatTask

RM_STREAM = 2


@dataclass
class RankedData:
    """``n`` prompts x ``k`` replies, rows of ``batch`` ordered prompt-major and, per prompt, best to worst."""

    batch: Batch  # [n * k, ...]
    gold: np.ndarray  # [n, k] gold reward in the same (ranked) order
    n: int
    k: int


def build_ranked_data(
    cfg: DemoConfig,
    task: LetterRepeatTask,
    tok: PreTrainedTokenizerFast,
    n_prompts: int,
    rng: np.random.Generator,
    device: torch.device,
    *,
    label_noise: float,
) -> RankedData:
    k = cfg.rm_k
    prompts = task.sample_prompts(n_prompts, rng)
    flat_prompts = [p for p in prompts for _ in range(k)]
    rates = rng.random(len(flat_prompts))
    replies: list[str] = []
    for p, rate in zip(flat_prompts, rates, strict=True):
        replies += task.sample_replies([p], rng, target_rate=float(rate), min_len=1, max_len=cfg.max_new_tokens - 1)
    gold = task.gold_rewards(flat_prompts, replies).reshape(n_prompts, k)
    noisy = gold + label_noise * rng.standard_normal(gold.shape)
    order = np.argsort(-noisy, axis=1, kind="stable")  # best first, by the labeller's (noisy) judgement
    ranked_idx = (np.arange(n_prompts)[:, None] * k + order).reshape(-1)
    ranked_prompts = [flat_prompts[i] for i in ranked_idx]
    ranked_replies = [replies[i] for i in ranked_idx]
    batch = encode_pairs(tok, ranked_prompts, ranked_replies, cfg.max_new_tokens, device)
    return RankedData(batch, np.take_along_axis(gold, order, axis=1), n_prompts, k)


def pairwise_accuracy(scores: np.ndarray, gold: np.ndarray) -> float:
    """Fraction of pairs with different gold reward that the scores order like the gold ([n, k] arrays)."""
    right = total = 0
    k = gold.shape[1]
    for i in range(k):
        for j in range(i + 1, k):
            differ = gold[:, i] != gold[:, j]
            agree = np.sign(scores[:, i] - scores[:, j]) == np.sign(gold[:, i] - gold[:, j])
            right += int(np.sum(agree & differ))
            total += int(np.sum(differ))
    return right / max(total, 1)


@torch.no_grad()
def score_batches(
    rm: ScalarHeadModel, batch: Batch, cfg: DemoConfig, device: torch.device, chunk: int = 512
) -> torch.Tensor:
    """[N] RM scores of a large batch, in chunks."""
    n = batch.input_ids.shape[0]
    out = []
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(start + chunk, n), device=device)
        with autocast(cfg, device):
            out.append(sequence_scores(rm, batch.select(idx)))
    return torch.cat(out)


def train_reward_model(
    cfg: DemoConfig,
    task: LetterRepeatTask,
    tok: PreTrainedTokenizerFast,
    sft_policy: GPT2LMHeadModel,
    device: torch.device,
    *,
    progress: bool = True,
) -> tuple[ScalarHeadModel, dict[str, float]]:
    """Train, evaluate and normalise the reward model. Returns it (eval mode) and its metrics."""
    rng = numpy_rng(cfg.seed, RM_STREAM, 0)
    train = build_ranked_data(cfg, task, tok, cfg.rm_prompts, rng, device, label_noise=cfg.rm_label_noise)
    held_out = build_ranked_data(cfg, task, tok, cfg.rm_eval_prompts, rng, device, label_noise=0.0)

    torch.manual_seed(cfg.seed * 1000 + RM_STREAM)
    rm = build_scalar_model(cfg, tok).to(device)
    rm.train()
    optimizer = torch.optim.Adam(rm.parameters(), lr=cfg.rm_lr)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + RM_STREAM)
    k = cfg.rm_k
    losses: list[float] = []
    bar = tqdm(range(cfg.rm_steps), desc="reward model", disable=not progress, leave=False)
    for _ in bar:
        prompts = torch.randint(0, train.n, (cfg.rm_batch_size,), generator=gen)
        rows = (prompts[:, None] * k + torch.arange(k)[None, :]).reshape(-1).to(device)
        with autocast(cfg, device):
            scores = sequence_scores(rm, train.batch.select(rows)).view(cfg.rm_batch_size, k)
        loss = F.ranking_loss(scores)  # columns are best -> worst
        optimizer.zero_grad(set_to_none=True)
        backward(loss)
        torch.nn.utils.clip_grad_norm_(rm.parameters(), cfg.max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    rm.eval()

    held_scores = score_batches(rm, held_out.batch, cfg, device).view(held_out.n, k).cpu().double().numpy()
    accuracy = pairwise_accuracy(held_scores, held_out.gold)
    train_scores = score_batches(rm, train.batch, cfg, device).view(train.n, k).cpu().double().numpy()
    train_accuracy = pairwise_accuracy(train_scores, train.gold)

    # Normalise: pi_SFT samples score mean 0 (InstructGPT's bias shift; the gain is left at 1).
    norm_rng = numpy_rng(cfg.seed, RM_STREAM, 1)
    prompt_ids = encode_prompts(tok, task.sample_prompts(cfg.eval_prompts, norm_rng), device)
    torch.manual_seed(cfg.seed * 1000 + RM_STREAM + 1)
    with autocast(cfg, device):
        sft_samples = sample_responses(
            sft_policy, tok, prompt_ids, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature
        )
    sft_scores = score_batches(rm, sft_samples, cfg, device)
    bias = float(sft_scores.mean())
    gain = 1.0 / float(sft_scores.std()) if cfg.rm_normalize_std else 1.0
    with torch.no_grad():  # new score = gain * (score - bias): a change of the head's weight and bias
        rm.head.weight *= gain
        rm.head.bias.copy_(gain * (rm.head.bias - bias))
    tail = losses[-20:]
    metrics = {
        "rm_final_loss": sum(tail) / len(tail),
        "rm_accuracy": accuracy,
        "rm_train_accuracy": train_accuracy,
        "rm_bias_shift": bias,
        "rm_gain": gain,
    }
    return rm, metrics
