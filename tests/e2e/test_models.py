"""Rollouts: model.generate samples exactly the distribution that token_logprobs scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rlhf_oracle.torch_impl as F
from rlhf_oracle.e2e.config import DemoConfig
from rlhf_oracle.e2e.models import build_policy, encode_prompts, response_logits, sample_responses
from rlhf_oracle.e2e.tokenizer import build_tokenizer


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_generate_samples_softmax_of_logits_over_temperature(temperature: float) -> None:
    cfg = DemoConfig(n_embd=32, n_head=2)
    tok = build_tokenizer(cfg.alphabet)
    torch.manual_seed(0)
    policy = build_policy(cfg, tok).eval()
    with torch.no_grad():  # a spread-out first-token distribution, so that frequencies are informative
        policy.lm_head.weight.mul_(30.0)
    n = 4000
    prompt_ids = encode_prompts(tok, ["abcd:"] * n, "cpu")
    batch = sample_responses(policy, tok, prompt_ids, max_new_tokens=2, temperature=temperature)
    with torch.no_grad():
        logits = response_logits(policy, batch)[0, 0]
    probs = torch.softmax(logits / temperature, dim=-1).numpy()
    counts = np.bincount(batch.responses[:, 0].numpy(), minlength=len(probs))
    tv = 0.5 * np.abs(counts / n - probs).sum()
    assert tv < 0.04, (tv, probs.round(3), (counts / n).round(3))
    # and token_logprobs agrees with the same distribution on the sampled tokens
    lp = F.token_logprobs(logits.expand(n, -1)[:, None, :], batch.responses[:, :1], temperature=temperature)
    np.testing.assert_allclose(lp[:, 0].exp().numpy(), probs[batch.responses[:, 0].numpy()], rtol=1e-5)
