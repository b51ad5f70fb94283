"""The oracle in the loop: agreement on honest tensors, and a corrupted quantity stops the run by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rlhf_oracle.torch_impl as F
from rlhf_oracle.e2e import oracle as O
from rlhf_oracle.e2e.config import DemoConfig
from rlhf_oracle.e2e.run import run_demo


def _settings(**over: Any) -> O.OracleSettings:
    base: dict[str, Any] = {
        "temperature": 1.0,
        "kl_kind": "k1",
        "gamma": 1.0,
        "lam": 0.95,
        "whiten_advantages": True,
        "whiten_unbiased": True,
        "clip_eps": 0.2,
        "clip_eps_high": None,
        "dual_clip": None,
        "loss_agg": "seq-mean-token-mean",
        "value_clip_eps": 0.2,
        "value_agg": "token-mean",
        "target_kl": 6.0,
        "kl_horizon": 320.0,
        "rtol": 1e-4,
    }
    base.update(over)
    return O.OracleSettings(**base)


def _record(s: O.OracleSettings, seed: int = 0, batch: int = 16, length: int = 8, vocab: int = 11) -> O.StepRecord:
    """A float32 step computed by torch_impl exactly as the training loop does, from random tensors."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=g)
    ref_logits = logits + 0.3 * torch.randn(batch, length, vocab, generator=g)
    tokens = torch.randint(0, vocab, (batch, length), generator=g)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    scores = torch.randn(batch, generator=g)
    values = torch.randn(batch, length, generator=g)
    logp = F.token_logprobs(logits, tokens, temperature=s.temperature)
    logp_ref = F.token_logprobs(ref_logits, tokens, temperature=s.temperature)
    kl = torch.where(mask, F.kl_estimate(logp, logp_ref, s.kl_kind), torch.zeros_like(logp))
    beta = 0.1
    rewards = F.kl_shaped_rewards(scores, logp, logp_ref, mask, beta, kind=s.kl_kind, score_position="last")
    adv, ret = F.gae(rewards, values, mask, gamma=s.gamma, lam=s.lam)
    whitened = F.whiten(adv, mask, shift_mean=True, unbiased=s.whiten_unbiased)
    idx = torch.arange(batch // 2)
    mb_logits = logits[idx] + 0.05 * torch.randn(len(idx), length, vocab, generator=g)
    mb_logp = F.token_logprobs(mb_logits, tokens[idx], temperature=s.temperature)
    mb_values = values[idx] + 0.3 * torch.randn(len(idx), length, generator=g)
    pl = F.policy_loss(mb_logp, logp[idx], whitened[idx], mask[idx], clip_eps=s.clip_eps, agg=s.loss_agg)
    ent = F.aggregate(F.entropy_from_logits(mb_logits, temperature=s.temperature), mask[idx], s.loss_agg)
    vl = F.value_loss(mb_values, values[idx], ret[idx], mask[idx], clip_eps=s.value_clip_eps, agg=s.value_agg)
    kl_sum = float(F.aggregate(F.kl_estimate(logp, logp_ref, "k1"), mask, "seq-mean-token-sum"))
    ctl = F.AdaptiveKLController(beta, s.target_kl, horizon=s.kl_horizon)
    beta_next = float(ctl.update(kl_sum, batch))
    n = O.to_numpy
    return O.StepRecord(
        logits=n(logits),
        ref_logits=n(ref_logits),
        responses=tokens.numpy(),
        mask=mask.numpy(),
        scores=n(scores),
        values=n(values),
        logp=n(logp),
        logp_ref=n(logp_ref),
        kl=n(kl),
        rewards=n(rewards),
        advantages=n(adv),
        returns=n(ret),
        whitened=n(whitened),
        mb_logits=n(mb_logits),
        mb_logp=n(mb_logp),
        mb_logp_old=n(logp[idx]),
        mb_advantages=n(whitened[idx]),
        mb_mask=mask[idx].numpy(),
        mb_values=n(mb_values),
        mb_old_values=n(values[idx]),
        mb_returns=n(ret[idx]),
        policy_loss=float(pl),
        entropy=float(ent),
        value_loss=float(vl),
        beta=beta,
        beta_next=beta_next,
        kl_sum=kl_sum,
        n_episodes=batch,
    )


def test_discrepancy_is_normwise_relative() -> None:
    assert O.discrepancy([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert O.discrepancy([1.0, 2.0 + 1e-3], [1.0, 2.0]) == pytest.approx(5e-4)
    assert O.discrepancy([0.0, 1e-9], [0.0, 0.0]) == pytest.approx(1e-9 / O.TINY)  # absolute below TINY
    assert O.discrepancy(0.1, 0.0, scale=2.0) == pytest.approx(0.05)
    assert O.discrepancy([np.nan], [1.0]) == float("inf")


@pytest.mark.parametrize("seed", range(5))
def test_honest_float32_step_agrees_far_below_tolerance(seed: int) -> None:
    s = _settings()
    result = O.check_step(1, _record(s, seed), s)
    assert set(result) == set(O.QUANTITIES)
    assert max(result.values()) < 1e-5  # float32 roundoff is ~1e-7; the tolerance 1e-4 leaves a margin


@pytest.mark.parametrize(
    ("field", "bump", "name"),
    [("advantages", 1e-2, "advantages"), ("rewards", 1e-2, "rewards"), ("returns", 1e-2, "returns")],
)
def test_a_corrupted_array_is_named_first(field: str, bump: float, name: str) -> None:
    s = _settings()
    rec = _record(s)
    getattr(rec, field)[0, 0] += bump
    with pytest.raises(O.OracleDivergenceError, match=rf"^oracle: '{name}' diverged") as info:
        O.check_step(7, rec, s)
    assert info.value.step == 7
    assert next(iter(info.value.diverged)) == name


def test_a_convention_slip_is_caught_bessel_vs_population_variance() -> None:
    """The reference told the population variance, the torch step used Bessel's: ~1/(2N) apart, N = 16*8 tokens."""
    rec = _record(_settings(whiten_unbiased=True))
    with pytest.raises(O.OracleDivergenceError, match="'whitened_advantages'"):
        O.check_step(1, rec, _settings(whiten_unbiased=False))


def test_corrupted_gae_stops_the_run_naming_advantages(
    tmp_path: Path, tiny: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A planted bug in the torch GAE (advantages off by 1%) stops the very first PPO step, naming 'advantages'."""
    honest_gae = F.gae

    def corrupted_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, **kw: Any) -> F.GAEResult:
        adv, ret = honest_gae(rewards, values, mask, **kw)
        return F.GAEResult(adv * 1.01, ret)

    monkeypatch.setattr(F, "gae", corrupted_gae)
    cfg = DemoConfig(**{**tiny, "ppo_steps": 2})
    with pytest.raises(O.OracleDivergenceError, match=r"'advantages' diverged .* at PPO step 1") as info:
        run_demo(cfg, tmp_path / "run", progress=False)
    assert next(iter(info.value.diverged)) == "advantages"
    assert "returns" not in info.value.diverged  # the returns were left honest
