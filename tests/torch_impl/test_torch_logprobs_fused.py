"""logprobs_and_entropy (the fused pass) and the chunked kernel shared with token_logprobs / entropy_from_logits.

Expected values come from the NumPy reference (float64), from float64 autograd through ``torch.log_softmax`` (an
independent path: PyTorch's own kernel), and from the separate twin calls (the fused call must equal them
bit for bit: the same arithmetic per chunk).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_oracle import reference as ref
from rlhf_oracle import torch_impl as ti
from rlhf_oracle.torch_impl.logprobs import _row_blocks, _rows_viewable

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@st.composite
def logits_case(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, float, int | None]:
    b, t, v = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 12))
    scale = draw(st.sampled_from([0.1, 3.0, 30.0, 1e4]))
    seed = draw(st.integers(0, 2**31 - 1))
    logits = scale * torch.randn(b, t, v, dtype=F64, generator=gen(seed))
    tokens = torch.randint(0, v, (b, t), generator=gen(seed + 1))
    tau = draw(st.sampled_from([1.0, 0.7, 2.5]))
    chunk = draw(st.one_of(st.none(), st.integers(1, 7)))
    return logits, tokens, tau, chunk


@settings(max_examples=60, deadline=None)
@given(logits_case())
def test_fused_equals_the_reference(case: tuple[torch.Tensor, torch.Tensor, float, int | None]) -> None:
    logits, tokens, tau, chunk = case
    lp, h = ti.logprobs_and_entropy(logits, tokens, temperature=tau, chunk_size=chunk)
    z, o = logits.numpy(), tokens.numpy()
    expected_lp = ref.token_logprobs(z, o, temperature=tau)
    expected_h = ref.entropy_from_logits(z, temperature=tau)
    # |z|/tau up to ~1e5: the reference's own rounding is ~1e5 * eps64 ~ 2e-11 at that scale
    atol = 1e-12 * max(1.0, float(np.abs(z).max()) / tau)
    np.testing.assert_allclose(lp.numpy(), expected_lp, rtol=1e-12, atol=atol)
    np.testing.assert_allclose(h.numpy(), expected_h, rtol=1e-12, atol=atol)
    assert (h >= 0).all() and (lp <= 0).all()


@settings(max_examples=40, deadline=None)
@given(logits_case(), st.sampled_from([torch.float32, torch.bfloat16]))
def test_fused_equals_the_two_separate_calls_bit_for_bit(
    case: tuple[torch.Tensor, torch.Tensor, float, int | None], dtype: torch.dtype
) -> None:
    logits, tokens, tau, chunk = case
    z = logits.to(dtype)
    lp, h = ti.logprobs_and_entropy(z, tokens, temperature=tau, chunk_size=chunk)
    assert lp.dtype == h.dtype == dtype
    zg = z.clone().requires_grad_(True)  # the autograd kernel (forward-only half log-probs have their own path)
    separate = ti.token_logprobs(zg, tokens, temperature=tau, chunk_size=chunk).detach()
    torch.testing.assert_close(lp, separate, rtol=0, atol=0)
    torch.testing.assert_close(h, ti.entropy_from_logits(z, temperature=tau), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_input_is_the_float32_result_rounded_once(dtype: torch.dtype) -> None:
    logits = (5 * torch.randn(3, 40, 300, generator=gen(1))).to(dtype)
    tokens = torch.randint(0, 300, (3, 40), generator=gen(2))
    lp, h = ti.logprobs_and_entropy(logits, tokens, chunk_size=7)
    lp32, h32 = ti.logprobs_and_entropy(logits.float(), tokens, chunk_size=7)
    torch.testing.assert_close(lp, lp32.to(dtype), rtol=0, atol=0)
    torch.testing.assert_close(h, h32.to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("tau", [1.0, 0.6])
@pytest.mark.parametrize("outputs", ["both", "logprobs", "entropy"])
def test_fused_gradient_equals_float64_autograd(tau: float, outputs: str) -> None:
    logits = 4 * torch.randn(3, 11, 9, dtype=F64, generator=gen(3))
    tokens = torch.randint(0, 9, (3, 11), generator=gen(4))
    w_lp, w_h = torch.randn(3, 11, dtype=F64, generator=gen(5)), torch.randn(3, 11, dtype=F64, generator=gen(6))
    use_lp, use_h = outputs in ("both", "logprobs"), outputs in ("both", "entropy")

    a = logits.clone().requires_grad_(True)
    lp, h = ti.logprobs_and_entropy(a, tokens, temperature=tau, chunk_size=4)
    # only the outputs in use enter the loss: the other one's upstream gradient is None, not zeros
    loss = torch.zeros((), dtype=F64)
    if use_lp:
        loss = loss + (lp * w_lp).sum()
    if use_h:
        loss = loss + (h * w_h).sum()
    loss.backward()

    b = logits.clone().requires_grad_(True)
    log_p = torch.log_softmax(b / tau, -1)
    naive_lp = log_p.gather(-1, tokens[..., None]).squeeze(-1)
    naive_h = -(log_p.exp() * log_p).sum(-1)
    (naive_lp * w_lp * use_lp + naive_h * w_h * use_h).sum().backward()
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


def test_gradcheck_fused() -> None:
    logits = torch.randn(2, 5, 4, dtype=F64, generator=gen(7), requires_grad=True)
    tokens = torch.randint(0, 4, (2, 5), generator=gen(8))
    assert torch.autograd.gradcheck(
        lambda z: ti.logprobs_and_entropy(z, tokens, temperature=0.8, chunk_size=3), (logits,)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_half_and_single_gradients_are_rounded_float32_gradients(dtype: torch.dtype) -> None:
    logits = (3 * torch.randn(2, 9, 50, generator=gen(9))).to(dtype)
    tokens = torch.randint(0, 50, (2, 9), generator=gen(10))
    a = logits.clone().requires_grad_(True)
    lp, h = ti.logprobs_and_entropy(a, tokens, chunk_size=4)
    (lp.float().sum() + h.float().sum()).backward()
    b = logits.to(F64).requires_grad_(True)
    log_p = torch.log_softmax(b, -1)
    (log_p.gather(-1, tokens[..., None]).sum() - (log_p.exp() * log_p).sum()).backward()
    assert a.grad is not None and b.grad is not None and a.grad.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(a.grad.to(F64), b.grad, rtol=2 * eps, atol=8 * eps)


def test_sliced_logits_are_walked_without_a_copy() -> None:
    """logits[:, :-1] (the usual shift) is not viewable as rows: it is walked per sequence, never copied."""
    full = torch.randn(3, 8, 20, dtype=F64, generator=gen(11))
    sliced = full[:, :-1]
    assert not _rows_viewable(sliced) and _rows_viewable(full) and _rows_viewable(full[:, 2:3])
    blocks = list(_row_blocks(sliced))
    assert [first for first, _ in blocks] == [0, 7, 14]
    assert all(block.data_ptr() == full[i].data_ptr() for i, (_, block) in enumerate(blocks))
    tokens = torch.randint(0, 20, (3, 7), generator=gen(12))
    a = sliced.clone().requires_grad_(True)
    s = full.clone().requires_grad_(True)
    lp_a, h_a = ti.logprobs_and_entropy(a, tokens, chunk_size=3)
    lp_s, h_s = ti.logprobs_and_entropy(s[:, :-1], tokens, chunk_size=3)
    torch.testing.assert_close(lp_s, lp_a, rtol=0, atol=0)
    torch.testing.assert_close(h_s, h_a, rtol=0, atol=0)
    (lp_a.sum() + h_a.sum()).backward()
    (lp_s.sum() + h_s.sum()).backward()
    assert a.grad is not None and s.grad is not None
    torch.testing.assert_close(s.grad[:, :-1], a.grad, rtol=0, atol=0)
    assert (s.grad[:, -1] == 0).all()


def test_extreme_logits_stay_finite_and_in_range() -> None:
    """|Delta| = 1e4 within a row, a float32 row at +-1e30, and a row with one dominant logit (H ~ 0)."""
    logits = torch.zeros(1, 3, 5)
    logits[0, 0] = torch.tensor([1e4, -1e4, 0.0, 5e3, -5e3])
    logits[0, 1] = torch.tensor([1e30, -1e30, 0.0, 1e30, -1e30])
    logits[0, 2] = torch.tensor([200.0, 0.0, 0.0, 0.0, 0.0])
    tokens = torch.tensor([[1, 0, 0]])
    lp, h = ti.logprobs_and_entropy(logits, tokens)
    assert torch.isfinite(lp).all() and torch.isfinite(h).all()
    assert lp[0, 0].item() == pytest.approx(-2e4, rel=1e-6)
    assert lp[0, 1].item() == pytest.approx(-math.log(2), rel=1e-6)
    assert h[0, 1].item() == pytest.approx(math.log(2), rel=1e-6)
    # one logit 200 above four others: H = 4 e^-200 (201) to leading order; e^-200 underflows float32 (H = 0
    # exactly, lp = 0) but not float64, where the sum of non-negative terms keeps its full relative precision
    assert h[0, 2].item() == 0.0 and lp[0, 2].item() == 0.0
    expected_h = float(ref.entropy_from_logits(logits[0, 2].double().numpy()))
    assert expected_h == pytest.approx(4 * 201 * math.exp(-200), rel=1e-12)
    h64 = ti.entropy_from_logits(logits[0, 2].double())
    assert h64.item() == pytest.approx(expected_h, rel=1e-12)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("which", ["token_logprobs", "entropy_from_logits", "logprobs_and_entropy"])
def test_non_finite_logits_are_refused_by_name(bad: float, which: str) -> None:
    logits = torch.zeros(2, 3, 4)
    logits[1, 2, 3] = bad  # not the chosen token: a -inf here would otherwise pass unnoticed
    tokens = torch.zeros(2, 3, dtype=torch.long)
    call = {
        "token_logprobs": lambda: ti.token_logprobs(logits, tokens),
        "entropy_from_logits": lambda: ti.entropy_from_logits(logits),
        "logprobs_and_entropy": lambda: ti.logprobs_and_entropy(logits, tokens),
    }[which]
    with pytest.raises(ValueError, match=rf"^{which}: 'logits' contains NaN or inf$"):
        call()


def test_empty_batch_and_empty_sequence() -> None:
    for b, t in ((0, 3), (2, 0)):
        logits = torch.randn(b, t, 5, requires_grad=True)
        lp, h = ti.logprobs_and_entropy(logits, torch.zeros(b, t, dtype=torch.long))
        assert lp.shape == h.shape == (b, t)
        (lp.sum() + h.sum()).backward()
        assert logits.grad is not None and logits.grad.shape == (b, t, 5)


def test_fused_errors_name_the_function_and_argument() -> None:
    with pytest.raises(ValueError, match=r"^logprobs_and_entropy: 'tokens' has shape \(2, 4\), expected \(2, 3\)"):
        ti.logprobs_and_entropy(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^logprobs_and_entropy: 'temperature' must be > 0, got 0.0"):
        ti.logprobs_and_entropy(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match=r"^logprobs_and_entropy: 'chunk_size'"):
        ti.logprobs_and_entropy(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), chunk_size=0)


# ----------------------------------------------------------------------------------------------------------------
# the forward-only path of half-precision log-probabilities (no autograd: rollout, reference and old policy)


def _bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """The spacing of bf16 numbers at |x| (8 significant bits)."""
    return torch.pow(2.0, torch.floor(torch.log2(x.abs().clamp_min(2.0**-126))) - 7)


@pytest.mark.parametrize("tau", [1.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_forward_only_half_is_within_one_rounding_of_the_exact_value(dtype: torch.dtype, tau: float) -> None:
    logits = (4 * torch.randn(3, 50, 700, generator=gen(5))).to(dtype)
    tokens = torch.randint(0, 700, (3, 50), generator=gen(6))
    with torch.no_grad():
        lp = ti.token_logprobs(logits, tokens, temperature=tau, chunk_size=9)
    exact = ref.token_logprobs(logits.double().numpy(), tokens.numpy(), temperature=tau)  # float64 reference
    assert lp.dtype == dtype
    err = (lp.double() - torch.from_numpy(exact)).abs()
    if dtype == torch.bfloat16:
        spacing = _bf16_ulp(torch.from_numpy(exact))
    else:
        spacing = torch.pow(2.0, torch.floor(torch.log2(torch.from_numpy(exact).abs())) - 10)
    # one rounding of a float32 value: half a unit of the target dtype plus the float32 error (|z|/tau * 2^-23)
    bound = 0.5 * spacing + 1e-6 * (1.0 + torch.from_numpy(exact).abs()) + 2e-6 * logits.double().abs().max() / tau
    assert (err <= bound).all(), float((err - bound).max())
    # and it is the autograd path's value up to that path's own last float32 bit
    grad_path = ti.token_logprobs(logits.clone().requires_grad_(True), tokens, temperature=tau, chunk_size=9)
    assert (lp.double() - grad_path.detach().double()).abs().le(spacing).all()


def test_forward_only_half_takes_no_full_size_temporary_and_no_copy_of_sliced_logits() -> None:
    from .test_torch_memory import _spy  # the allocation spy of the memory tests

    b, t, v, chunk = 2, 65, 500, 8
    full = torch.randn(b, t, v, generator=gen(7)).to(torch.bfloat16)
    logits = full[:, :-1]  # the usual shift: not viewable as [rows, V] without a copy
    tokens = torch.randint(0, v, (b, t - 1), generator=gen(8))
    with torch.no_grad():
        allocations = _spy(lambda: ti.token_logprobs(logits, tokens, chunk_size=chunk), [full, tokens])
    assert max(n for n, _ in allocations) <= chunk * v * 4  # one float32 chunk at most
    assert sum(n == chunk * v * 4 for n, _ in allocations) == 1  # allocated once, reused by every chunk
    with torch.no_grad():
        expected = ti.token_logprobs(logits.contiguous().float(), tokens).to(torch.bfloat16)
        got = ti.token_logprobs(logits, tokens, chunk_size=chunk)
    assert (got.float() - expected.float()).abs().le(_bf16_ulp(expected.float())).all()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["chosen", "other"])
def test_forward_only_half_refuses_non_finite_logits_anywhere(bad: float, where: str) -> None:
    logits = torch.randn(2, 5, 30, generator=gen(9)).to(torch.bfloat16)
    tokens = torch.zeros(2, 5, dtype=torch.int64)
    logits[1, 3, 0 if where == "chosen" else 17] = bad
    with torch.no_grad(), pytest.raises(ValueError, match=r"token_logprobs: 'logits' contains NaN or inf"):
        ti.token_logprobs(logits, tokens, chunk_size=4)
    with torch.no_grad(), ti.value_checks(False):
        ti.token_logprobs(logits, tokens, chunk_size=4)  # the check is the value checks' business
