"""The oracle in the loop: a recorder of the loop's ``torch_impl`` calls, replayed in float64 by the reference.

Honest float32 calls agree far below the tolerance; a corrupted twin function, or a wrong keyword between the
loop and the twin, stops the run naming the function; the demo's steps replay every formula the loop calls,
ptx loss, KL estimate and the adaptive controller included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rlhf_oracle.torch_impl as T
from rlhf_oracle.e2e import oracle as O
from rlhf_oracle.e2e.config import DemoConfig
from rlhf_oracle.e2e.run import run_demo


def test_discrepancy_is_normwise_relative() -> None:
    assert O.discrepancy([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert O.discrepancy([1.0, 2.0 + 1e-3], [1.0, 2.0]) == pytest.approx(5e-4)
    assert O.discrepancy([0.0, 1e-9], [0.0, 0.0]) == pytest.approx(1e-9 / O.TINY)  # absolute below TINY
    assert O.discrepancy(0.1, 0.0, scale=2.0) == pytest.approx(0.05)
    assert O.discrepancy([np.nan], [1.0]) == float("inf")


def _step_calls(seed: int, batch: int = 16, length: int = 8, vocab: int = 11) -> list[O.Call]:
    """The formulas of one PPO step on random float32 tensors, called through a recorder."""
    g = torch.Generator().manual_seed(seed)
    F = O.Recorder()
    logits = 3 * torch.randn(batch, length, vocab, generator=g)
    tokens = torch.randint(0, vocab, (batch, length), generator=g)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    with F.recording() as calls:
        logp = F.token_logprobs(logits, tokens)
        logp_ref = F.token_logprobs(logits + 0.1 * torch.randn(logits.shape, generator=g), tokens)
        F.kl_estimate(logp, logp_ref, "k1")
        rewards = F.kl_shaped_rewards(torch.randn(batch, generator=g), logp, logp_ref, mask, 0.1, kind="k1")
        values = torch.randn(batch, length, generator=g)
        adv, ret = F.gae(rewards, values, mask, gamma=1.0, lam=0.95)
        white = F.whiten(adv, mask, shift_mean=True, unbiased=True)
        new_logp = logp + 0.05 * torch.randn(batch, length, generator=g)
        F.policy_loss(new_logp, logp, white, mask, clip_eps=0.2, agg="seq-mean-token-mean")
        F.aggregate(F.entropy_from_logits(logits), mask, "seq-mean-token-mean")
        F.ptx_loss(logp, mask, agg="token-mean")
        F.value_loss(values + 0.1, values, ret, mask, clip_eps=0.2, agg="token-mean")
        F.aggregate(F.kl_estimate(new_logp, logp, "k3"), mask, "token-mean")
        F.adaptive_kl_update(0.1, 5.0, 6.0, batch, 320.0)
        F.logprobs_and_entropy(logits, tokens)
    return calls


@pytest.mark.parametrize("seed", range(3))
def test_honest_float32_calls_agree_far_below_tolerance(seed: int) -> None:
    result = O.check_calls(1, _step_calls(seed), rtol=1e-4)
    assert set(result) == {"token_logprobs", "kl_estimate", "kl_shaped_rewards", "gae", "whiten", "policy_loss",
                           "entropy_from_logits", "aggregate", "ptx_loss", "value_loss", "adaptive_kl_update",
                           "logprobs_and_entropy"}  # fmt: skip
    assert max(result.values()) < 1e-5  # float32 roundoff is ~1e-7; the tolerance 1e-4 leaves a margin


def test_the_recorder_is_the_twin_and_records_only_when_asked() -> None:
    F = O.Recorder()
    x, m = torch.randn(2, 3), torch.ones(2, 3, dtype=torch.bool)
    assert F.AGGREGATION_MODES == T.AGGREGATION_MODES and F.GAEResult is T.GAEResult  # constants, classes as is
    with F.recording(False) as calls:
        out = F.aggregate(x, m, "token-mean")
    assert calls == [] and out == T.aggregate(x, m, "token-mean")
    with F.recording() as calls:
        F.aggregate(x, m, agg="token-mean")
    (call,) = calls
    assert call.name == "aggregate" and call.kwargs == {"agg": "token-mean"}
    assert call.args[0].dtype == np.float64 and call.args[1].dtype == np.bool_


def test_a_corrupted_output_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _step_calls(0)
    i = next(k for k, c in enumerate(calls) if c.name == "gae")
    adv, ret = calls[i].output
    adv = adv.copy()
    adv[0, 0] += 1e-2
    calls[i] = O.Call("gae", calls[i].args, calls[i].kwargs, (adv, ret))
    with pytest.raises(O.OracleDivergenceError, match=r"^oracle: 'gae' diverged .* at PPO step 7") as info:
        O.check_calls(7, calls, rtol=1e-4)
    assert list(info.value.diverged) == ["gae"]


def test_a_convention_slip_is_caught_bessel_vs_population_variance() -> None:
    """The twin was called with Bessel's variance but the recorded keyword says population: the replay uses the
    recorded keyword, so it sees ~1/(2N) apart (N = 16 * 8 tokens at most)."""
    calls = _step_calls(1)
    i = next(k for k, c in enumerate(calls) if c.name == "whiten")
    calls[i] = O.Call("whiten", calls[i].args, {**calls[i].kwargs, "unbiased": False}, calls[i].output)
    with pytest.raises(O.OracleDivergenceError, match="'whiten'"):
        O.check_calls(1, calls, rtol=1e-4)


def test_calls_without_a_reference_twin_are_not_replayed() -> None:
    F = O.Recorder()
    with F.recording() as calls:
        counts = F.global_normaliser(torch.ones(2, 3, dtype=torch.bool))
        F.micro_batch_aggregate(torch.randn(2, 3), torch.ones(2, 3, dtype=torch.bool), "token-mean", counts)
    assert [c.name for c in calls] == ["global_normaliser", "micro_batch_aggregate"]
    assert O.check_calls(1, calls, rtol=1e-4) == {}


def test_corrupted_gae_stops_the_run_naming_it(
    tmp_path: Path, tiny: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A planted bug in the torch GAE (advantages off by 1%) stops the very first PPO step, naming 'gae'."""
    honest_gae = T.gae

    def corrupted_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, **kw: Any) -> T.GAEResult:
        adv, ret = honest_gae(rewards, values, mask, **kw)
        return T.GAEResult(adv * 1.01, ret)

    monkeypatch.setattr(T, "gae", corrupted_gae)
    cfg = DemoConfig(**{**tiny, "ppo_steps": 2})
    with pytest.raises(O.OracleDivergenceError, match=r"'gae' diverged .* at PPO step 1") as info:
        run_demo(cfg, tmp_path / "run", progress=False)
    assert list(info.value.diverged) == ["gae"]  # nothing upstream was touched


def test_the_demo_replays_every_formula_it_calls(tmp_path: Path, tiny: dict[str, Any]) -> None:
    import json

    cfg = DemoConfig(**{**tiny, "ppo_steps": 1})
    run_demo(cfg, tmp_path / "run", progress=False)
    (line,) = (tmp_path / "run" / "ppo_beta0.1" / "metrics.jsonl").read_text().splitlines()
    checked = set(json.loads(line)["oracle"])
    assert checked >= {"token_logprobs", "kl_estimate", "kl_shaped_rewards", "gae", "whiten", "policy_loss",
                       "entropy_from_logits", "aggregate", "ptx_loss", "value_loss", "adaptive_kl_update"}  # fmt: skip
