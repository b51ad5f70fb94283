"""The character-level tokenizer built in code, and the model configs that use its ids."""

from __future__ import annotations

import numpy as np
import torch

from rlhf_oracle.e2e.config import DemoConfig
from rlhf_oracle.e2e.models import build_policy, decode_replies, encode_pairs, response_mask_from_tokens
from rlhf_oracle.e2e.task import LetterRepeatTask
from rlhf_oracle.e2e.tokenizer import BOS, EOS, PAD, build_tokenizer, decode_reply, encode_text


def test_round_trip_of_every_character() -> None:
    tok = build_tokenizer("abcdefgh")
    text = "hgfedcba:abc"
    ids = encode_text(tok, text)
    assert len(ids) == len(text)  # one token per character
    assert tok.decode(ids) == text
    assert len(set(ids)) == len(set(text))


def test_special_tokens_are_distinct_and_skipped_on_decode() -> None:
    tok = build_tokenizer("abcd")
    ids = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}
    assert len(ids) == 4  # pad is not EOS (N+ detail 3)
    assert tok.convert_ids_to_tokens([tok.pad_token_id, tok.bos_token_id, tok.eos_token_id]) == [PAD, BOS, EOS]
    seq = [tok.bos_token_id, *encode_text(tok, "ab:cd"), tok.eos_token_id, tok.pad_token_id]
    assert tok.decode(seq, skip_special_tokens=True) == "ab:cd"
    assert decode_reply(tok, [*encode_text(tok, "dc"), tok.eos_token_id, *encode_text(tok, "aa")]) == "dc"


def test_model_config_uses_the_tokenizer_ids() -> None:
    cfg = DemoConfig()
    tok = build_tokenizer(cfg.alphabet)
    model = build_policy(cfg, tok)
    assert model.config.vocab_size == len(tok)
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    assert model.config.resid_pdrop == model.config.embd_pdrop == model.config.attn_pdrop == 0.0


def test_batch_layout_masks_up_to_and_including_eos() -> None:
    eos, pad = 2, 0
    responses = torch.tensor([[5, 6, eos, 7, 7], [5, 5, 5, 5, 5], [eos, 6, 6, 6, 6]])
    mask = response_mask_from_tokens(responses, eos)
    assert mask.tolist() == [
        [True, True, True, False, False],
        [True, True, True, True, True],  # no EOS: truncated, every token is an action
        [True, False, False, False, False],
    ]
    cfg = DemoConfig()
    tok = build_tokenizer(cfg.alphabet)
    task = LetterRepeatTask(cfg.alphabet, cfg.prompt_len)
    prompts = task.sample_prompts(3, np.random.default_rng(0))
    batch = encode_pairs(tok, prompts, ["abc", "", "a" * 20], cfg.max_new_tokens, "cpu")
    assert batch.response_mask.sum(dim=1).tolist() == [4, 1, cfg.max_new_tokens]
    assert decode_replies(tok, batch) == ["abc", "", "a" * cfg.max_new_tokens]
    assert batch.last_index.tolist() == [batch.prompt_len + 3, batch.prompt_len, batch.prompt_len + 11]
    del pad
