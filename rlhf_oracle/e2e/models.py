"""Tiny GPT-2 models built from configs (no download), and the batch layout shared by every phase.

Batch layout: every sequence is ``[BOS] prompt-letters ':'`` (all prompts have the same length ``P``) followed by a
response slot of ``L = max_new_tokens`` tokens: the reply letters, ``[EOS]``, then ``[PAD]``. The response mask
``[B, L]`` marks the reply letters and the EOS (the EOS is an action the policy takes). A reply that does not end
within ``L`` tokens is truncated: its mask covers all ``L`` tokens.

Alignment: the logits/values that score response token ``t`` are read at sequence position ``P - 1 + t`` (the
hidden state *before* the token), as TRL's ``logits[:, context_length - 1 : -1]``. The reward model and the
critic read their score at the last valid token (the EOS, or the last token of a truncated reply).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model, PreTrainedTokenizerFast
from transformers.utils import logging as transformers_logging

from .config import DemoConfig


def gpt2_config(cfg: DemoConfig, tok: PreTrainedTokenizerFast) -> GPT2Config:
    """GPT-2 config sized by ``cfg`` with the tokenizer's vocabulary and bos/eos/pad ids; dropout off (N+ detail 7)."""
    return GPT2Config(
        vocab_size=len(tok),
        n_positions=cfg.prompt_len + 2 + cfg.max_new_tokens,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def build_policy(cfg: DemoConfig, tok: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 language model (the SFT starting point)."""
    model = GPT2LMHeadModel(gpt2_config(cfg, tok))
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


class ScalarHeadModel(nn.Module):
    """GPT-2 backbone + linear head: one scalar per position. The reward model and the critic.

    As a reward model its score is read at the last valid token; as a critic, at every response position.
    """

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.backbone = GPT2Model(config)
        self.head = nn.Linear(config.n_embd, 1)
        nn.init.normal_(self.head.weight, std=1.0 / (config.n_embd + 1) ** 0.5)  # lm-human-preferences RM head
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        out: torch.Tensor = self.head(hidden).squeeze(-1)
        return out


def build_scalar_model(cfg: DemoConfig, tok: PreTrainedTokenizerFast) -> ScalarHeadModel:
    return ScalarHeadModel(gpt2_config(cfg, tok))


@dataclass
class Batch:
    """Prompts + responses in the fixed layout above. Tensors live on one device."""

    input_ids: torch.Tensor  # [B, P + L]
    attention_mask: torch.Tensor  # [B, P + L] long: 1 on prompt and valid response tokens
    response_mask: torch.Tensor  # [B, L] bool
    prompt_len: int  # P

    @property
    def responses(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]

    @property
    def last_index(self) -> torch.Tensor:
        """Sequence position of each row's last valid token (where the RM reads its score)."""
        length = self.response_mask.long().sum(dim=1)
        return self.prompt_len + length - 1

    def select(self, idx: torch.Tensor) -> Batch:
        return Batch(self.input_ids[idx], self.attention_mask[idx], self.response_mask[idx], self.prompt_len)


def response_mask_from_tokens(responses: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, L] bool: True up to and including the first EOS (all True when there is none: truncation)."""
    is_eos = responses == eos_id
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # EOS strictly before t
    return eos_before == 0


def make_batch(prompt_ids: torch.Tensor, responses: torch.Tensor, eos_id: int, pad_id: int) -> Batch:
    """Batch from prompt ids [B, P] and raw response ids [B, L]; tokens after the first EOS become pad."""
    mask = response_mask_from_tokens(responses, eos_id)
    responses = torch.where(mask, responses, torch.full_like(responses, pad_id))
    input_ids = torch.cat([prompt_ids, responses], dim=1)
    attention_mask = torch.cat([torch.ones_like(prompt_ids), mask.long()], dim=1)
    return Batch(input_ids, attention_mask, mask, prompt_ids.shape[1])


def response_logits(model: GPT2LMHeadModel, batch: Batch) -> torch.Tensor:
    """[B, L, V] logits that predict each response token (float32 even under autocast)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    logits: torch.Tensor = out.logits[:, batch.prompt_len - 1 : -1, :]
    return logits.float()


def response_values(critic: ScalarHeadModel, batch: Batch) -> torch.Tensor:
    """[B, L] value of the state before each response token (float32)."""
    values: torch.Tensor = critic(batch.input_ids, batch.attention_mask)
    return values[:, batch.prompt_len - 1 : -1].float()


def sequence_scores(rm: ScalarHeadModel, batch: Batch) -> torch.Tensor:
    """[B] reward-model score read at each row's last valid token (float32)."""
    per_position: torch.Tensor = rm(batch.input_ids, batch.attention_mask).float()
    return per_position.gather(1, batch.last_index[:, None]).squeeze(1)


def encode_prompts(tok: PreTrainedTokenizerFast, prompts: list[str], device: torch.device | str) -> torch.Tensor:
    """[B, P] ids of ``[BOS] + prompt`` (all prompts of the task have the same length)."""
    rows = [[tok.bos_token_id, *tok.encode(p, add_special_tokens=False)] for p in prompts]
    return torch.tensor(rows, dtype=torch.long, device=device)


def encode_pairs(
    tok: PreTrainedTokenizerFast,
    prompts: list[str],
    replies: list[str],
    max_new_tokens: int,
    device: torch.device | str,
) -> Batch:
    """Batch of ``[BOS] prompt`` + ``reply [EOS] [PAD]...`` (a reply longer than the budget is truncated)."""
    prompt_ids = encode_prompts(tok, prompts, device)
    rows = []
    for reply in replies:
        ids = [*tok.encode(reply, add_special_tokens=False), tok.eos_token_id][:max_new_tokens]
        rows.append(ids + [tok.pad_token_id] * (max_new_tokens - len(ids)))
    responses = torch.tensor(rows, dtype=torch.long, device=device)
    return make_batch(prompt_ids, responses, tok.eos_token_id, tok.pad_token_id)


@torch.no_grad()
def sample_responses(
    policy: GPT2LMHeadModel,
    tok: PreTrainedTokenizerFast,
    prompt_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    greedy: bool = False,
) -> Batch:
    """Rollouts with ``model.generate``: pure ancestral sampling at ``temperature`` (top_k=0, top_p=1), or the
    greedy (argmax) reply with ``greedy`` (ReMax's baseline).

    The generation config is explicit, so that the sampling distribution is exactly softmax(logits / temperature),
    the distribution ``token_logprobs(..., temperature=temperature)`` scores (Hugging Face's default top_k=50
    would silently truncate it).
    """
    verbosity = transformers_logging.get_verbosity()
    # generate() drops the all-ones attention mask on decoding steps and then warns about the pad tokens it
    # appends to finished rows itself; those rows are masked out here, so the warning is noise.
    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_k": 0,
                                                          "top_p": 1.0}  # fmt: skip
        out = policy.generate(
            input_ids=prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            **sampling,
            max_new_tokens=max_new_tokens,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
        )
    finally:
        transformers_logging.set_verbosity(verbosity)
    responses = out[:, prompt_ids.shape[1] :]
    if responses.shape[1] < max_new_tokens:  # every row ended early: generate stops; pad to the fixed layout
        pad = torch.full(
            (responses.shape[0], max_new_tokens - responses.shape[1]), tok.pad_token_id, device=responses.device
        )
        responses = torch.cat([responses, pad], dim=1)
    return make_batch(prompt_ids, responses, tok.eos_token_id, tok.pad_token_id)


def decode_replies(tok: PreTrainedTokenizerFast, batch: Batch) -> list[str]:
    """Reply text of every row (up to the EOS, special tokens removed)."""
    replies = []
    for row, mask in zip(batch.responses.tolist(), batch.response_mask.tolist(), strict=True):
        ids = [t for t, m in zip(row, mask, strict=True) if m and t != tok.eos_token_id]
        replies.append(str(tok.decode(ids, skip_special_tokens=True)))
    return replies
