"""Half precision (bf16/fp16) and float32 smoke tests, and gradients (gradcheck in float64, analytic forms).

Tolerance policy for half precision: every torch_impl function computes bf16/fp16 input in float32 and rounds
the result once, so the output must be within about one rounding of the output dtype (relative 2^-8 for bf16,
2^-11 for fp16) of the float64 result *on the same (rounded) inputs*. We allow 2 roundings (the float32 work adds
~2^-24 relative, and an input-dtype result near a rounding midpoint may land on either side), plus an absolute
floor for results that are near 0 through cancellation between terms of size ~1: 2 ulps at 1.
float32 input is computed in float32, so its bound is a few ulps of the largest intermediate instead.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from rlhf_oracle import torch_impl as ti

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


B, T, V = 3, 5, 11
MASK = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)


def _bt(seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(B, T, dtype=F64, generator=gen(seed))


# name -> (float64 inputs, function); the function receives the inputs cast to the dtype under test
HALF_CASES: dict[str, tuple[list[torch.Tensor], Callable[..., torch.Tensor]]] = {
    "token_logprobs": (
        [3 * torch.randn(B, T, V, dtype=F64, generator=gen(0))],
        lambda z: ti.token_logprobs(z, torch.arange(B * T).reshape(B, T) % V, temperature=0.7),
    ),
    "entropy_from_logits": ([3 * torch.randn(B, T, V, dtype=F64, generator=gen(1))], ti.entropy_from_logits),
    "kl_exact": (
        [torch.randn(B, T, V, dtype=F64, generator=gen(2)), torch.randn(B, T, V, dtype=F64, generator=gen(3))],
        ti.kl_exact,
    ),
    "ppo_clip_objective": ([_bt(4, 0.3) - 2, _bt(5, 0.3) - 2, _bt(6)], ti.ppo_clip_objective),
    "ppo_clip_grad": ([_bt(4, 0.3) - 2, _bt(5, 0.3) - 2, _bt(6)], ti.ppo_clip_grad),
    "policy_loss": ([_bt(4, 0.3) - 2, _bt(5, 0.3) - 2, _bt(6)], lambda a, b, c: ti.policy_loss(a, b, c, MASK)),
    "aggregate": ([_bt(7)], lambda x: ti.aggregate(x, MASK, "token-mean")),
    "kl_estimate-k3": ([_bt(8, 0.1) - 3, _bt(9, 0.1) - 3], lambda a, b: ti.kl_estimate(a, b, "k3")),
    "kl_estimate-k2": ([_bt(8, 0.1) - 3, _bt(9, 0.1) - 3], lambda a, b: ti.kl_estimate(a, b, "k2")),
    "kl_shaped_rewards": (
        [torch.randn(B, dtype=F64, generator=gen(10)), _bt(11), _bt(12)],
        lambda s, a, b: ti.kl_shaped_rewards(s, a, b, MASK, 0.05),
    ),
    "rlhf_objective": (
        [torch.randn(B, dtype=F64, generator=gen(10)), _bt(11), _bt(12)],
        lambda s, a, b: ti.rlhf_objective(s, a, b, MASK, 0.05),
    ),
    "ptx_loss": ([_bt(13) - 3], lambda x: ti.ptx_loss(x, MASK)),
    "reward_model_loss": (
        [torch.randn(7, dtype=F64, generator=gen(14)), torch.randn(7, dtype=F64, generator=gen(15))],
        ti.reward_model_loss,
    ),
    "ranking_loss": ([torch.randn(4, 5, dtype=F64, generator=gen(16))], ti.ranking_loss),
    "gae": ([_bt(17), _bt(18)], lambda r, v: ti.gae(r, v, MASK, 1.0, 0.95).advantages),
    "whiten": ([_bt(19)], lambda x: ti.whiten(x, MASK)),
    "grpo_advantages": ([torch.randn(6, dtype=F64, generator=gen(20))], lambda s: ti.grpo_advantages(s, 3)),
    "value_loss": ([_bt(21), _bt(22), _bt(23)], lambda a, b, c: ti.value_loss(a, b, c, MASK)),
}

EPS = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("name", sorted(HALF_CASES))
def test_low_precision_close_to_float64_on_rounded_inputs(name: str, dtype: torch.dtype) -> None:
    inputs, fn = HALF_CASES[name]
    low = [x.to(dtype) for x in inputs]
    actual = fn(*low)
    expected = fn(*[x.to(F64) for x in low])
    assert actual.dtype == dtype, name
    # float32 is computed natively (no upcast): a few float32 ulps of the largest intermediate (|z|, logsumexp up to
    # ~16 here) rather than one rounding of the output: 64 ulps at 1.
    tol = 64 * EPS[dtype] if dtype == torch.float32 else 2 * EPS[dtype]
    torch.testing.assert_close(actual.to(F64), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_backward_through_chunked_logprobs(dtype: torch.dtype) -> None:
    logits64 = 3 * torch.randn(B, T, V, dtype=F64, generator=gen(30))
    tokens = torch.randint(0, V, (B, T), generator=gen(31))
    logits = logits64.to(dtype).requires_grad_(True)
    (
        ti.token_logprobs(logits, tokens, chunk_size=2).sum() + ti.entropy_from_logits(logits, chunk_size=2).sum()
    ).backward()
    ref = logits.detach().to(F64).requires_grad_(True)
    (ti.token_logprobs(ref, tokens).sum() + ti.entropy_from_logits(ref).sum()).backward()
    assert logits.grad is not None and ref.grad is not None and logits.grad.dtype == dtype
    torch.testing.assert_close(logits.grad.to(F64), ref.grad, rtol=2 * EPS[dtype], atol=2 * EPS[dtype])


# --- gradients in float64 -------------------------------------------------------------------------------------------


def test_gradcheck_policy_loss() -> None:
    logp = (_bt(40, 0.3) - 1).requires_grad_(True)
    logp_old = (_bt(41, 0.3) - 1).requires_grad_(True)
    adv = _bt(42).requires_grad_(True)
    for kwargs in ({}, {"clip_eps_high": 0.28, "dual_clip": 2.0, "agg": "token-mean"}):
        assert torch.autograd.gradcheck(
            lambda a, b, c, kw=kwargs: ti.policy_loss(a, b, c, MASK, **kw), (logp, logp_old, adv)
        )


def test_gradcheck_token_logprobs_and_entropy_chunked() -> None:
    logits = torch.randn(2, 5, 4, dtype=F64, generator=gen(43), requires_grad=True)
    tokens = torch.randint(0, 4, (2, 5), generator=gen(44))
    assert torch.autograd.gradcheck(lambda z: ti.token_logprobs(z, tokens, temperature=0.7, chunk_size=2), (logits,))
    assert torch.autograd.gradcheck(lambda z: ti.entropy_from_logits(z, temperature=1.3, chunk_size=2), (logits,))
    logits4 = torch.randn(2, 2, 3, 4, dtype=F64, generator=gen(45), requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: ti.entropy_from_logits(z, chunk_size=2), (logits4,))


def test_logprob_and_entropy_gradients_equal_the_naive_autograd() -> None:
    logits = 4 * torch.randn(3, 17, 9, dtype=F64, generator=gen(46))
    tokens = torch.randint(0, 9, (3, 17), generator=gen(47))
    weights = torch.randn(3, 17, dtype=F64, generator=gen(48))
    a = logits.clone().requires_grad_(True)
    ((ti.token_logprobs(a, tokens, chunk_size=4) + ti.entropy_from_logits(a, chunk_size=5)) * weights).sum().backward()
    b = logits.clone().requires_grad_(True)
    log_p = torch.log_softmax(b, -1)
    naive = log_p.gather(-1, tokens[..., None]).squeeze(-1) - (log_p.exp() * log_p).sum(-1)
    (naive * weights).sum().backward()
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("name", "fn", "shapes"),
    [
        ("kl_exact", ti.kl_exact, [(2, 3, 4), (2, 3, 4)]),
        ("kl_estimate-k3", lambda a, b: ti.kl_estimate(a, b, "k3"), [(5,), (5,)]),
        ("whiten", lambda x: ti.whiten(x, MASK), [(B, T)]),
        ("value_loss", lambda a, b, c: ti.value_loss(a, b, c, MASK, 0.3), [(B, T)] * 3),
        ("reward_model_loss", lambda a, b, m: ti.reward_model_loss(a, b, m), [(4,), (4,), (4,)]),
        ("ranking_loss", ti.ranking_loss, [(3, 4)]),
        ("rlhf_objective", lambda s, a, b: ti.rlhf_objective(s, a, b, MASK, 0.1), [(B,), (B, T), (B, T)]),
        ("grpo_advantages", lambda s: ti.grpo_advantages(s, 3, mask=MASK[:3]), [(3,)]),
    ],
)
def test_gradcheck_others(name: str, fn: Callable[..., torch.Tensor], shapes: list[tuple[int, ...]]) -> None:
    inputs = tuple(torch.randn(*s, dtype=F64, generator=gen(50 + i), requires_grad=True) for i, s in enumerate(shapes))
    assert torch.autograd.gradcheck(fn, inputs), name


def test_policy_loss_autograd_equals_ppo_clip_grad() -> None:
    """d loss / d logp = -ppo_clip_grad * m / (|o_b| B) for the default seq-mean-token-mean."""
    logp = _bt(60, 0.5) - 1
    logp_old = _bt(61, 0.5) - 1
    adv = _bt(62)
    x = logp.clone().requires_grad_(True)
    ti.policy_loss(x, logp_old, adv, MASK, 0.2, 0.3, 2.0).backward()
    analytic = ti.ppo_clip_grad(logp, logp_old, adv, 0.2, clip_eps_high=0.3, dual_clip=2.0)
    lengths = MASK.sum(-1, keepdim=True).to(F64)
    expected = torch.where(MASK, -analytic / (lengths * B), 0.0)
    assert x.grad is not None
    torch.testing.assert_close(x.grad, expected, rtol=1e-14, atol=1e-15)
    # some positions really are clipped (zero gradient) and some are not
    assert (x.grad[MASK] == 0).any() and (x.grad[MASK] != 0).any()


def test_scalars_are_zero_dim_tensors() -> None:
    x = _bt(70)
    for out in (
        ti.aggregate(x, MASK),
        ti.policy_loss(x, x, x, MASK),
        ti.value_loss(x, x, x, MASK),
        ti.ptx_loss(x, MASK),
        ti.rlhf_objective(x[:, 0], x, x, MASK, 0.1),
        ti.reward_model_loss(x[0], x[1]),
        ti.ranking_loss(x),
    ):
        assert isinstance(out, torch.Tensor) and out.shape == () and out.dtype == F64
