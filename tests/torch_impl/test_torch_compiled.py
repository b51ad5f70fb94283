"""The compiled forward-only kernel of half-precision log-probabilities (torch_impl/_compiled.py, logprobs.py).

Expected values come from the NumPy reference in float64 (one rounding of the exact value to bf16/fp16) and from
the eager forward-only path (an independent implementation: PyTorch's fused ``log_softmax``). The threshold that
sends inputs to the compiled kernel is lowered here so that small inputs reach it; one compilation per dtype and
test process (dynamic shapes) serves every test.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from rlhf_oracle import reference as ref
from rlhf_oracle import torch_impl as ti
from rlhf_oracle.torch_impl import _compiled
from rlhf_oracle.torch_impl import logprobs as L


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _spacing(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype`` numbers at |x| (bf16: 8 significant bits, fp16: 11)."""
    bits, smallest_normal = (7, 2.0**-126) if dtype == torch.bfloat16 else (10, 2.0**-14)  # fp16: subnormals below
    return torch.pow(2.0, torch.floor(torch.log2(x.abs().clamp_min(smallest_normal))) - bits)


@pytest.fixture(scope="module")
def inductor() -> None:
    """Skip where Inductor cannot compile for this CPU (no working C++ compiler): the twin then falls back by
    itself, which test_a_failed_compilation_falls_back_once_with_one_warning covers."""
    try:
        torch.compile(lambda x: x + 1, dynamic=True, fullgraph=True)(torch.ones(3))
    except Exception as exc:
        pytest.skip(f"torch.compile cannot build CPU kernels here: {type(exc).__name__}")


@pytest.fixture
def small_inputs_compiled(inductor: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The threshold of the compiled kernels lowered to 0, so that small inputs reach them."""
    monkeypatch.setattr(L, "COMPILED_MIN_ELEMENTS", 0)


@pytest.fixture
def compiled_path(small_inputs_compiled: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Small inputs take the compiled kernel; records which path each call took ("compiled": the compiled
    log-sum-exp ran, "eager": the forward-only chunked path)."""
    taken: list[str] = []
    eager, compiled = L._forward_only_half, L._compiled_logsumexp

    def eager_spy(*args: Any) -> torch.Tensor:
        taken.append("eager")
        return eager(*args)

    def compiled_spy(*args: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        try:
            out = compiled(*args)
        except ValueError:  # refused by the kernel's probe
            taken.append("compiled")
            raise
        if out is not None:
            taken.append("compiled")
        return out

    monkeypatch.setattr(L, "_forward_only_half", eager_spy)
    monkeypatch.setattr(L, "_compiled_logsumexp", compiled_spy)
    yield taken


@pytest.mark.parametrize("tau", [1.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_compiled_kernel_rounds_once_from_the_exact_value(
    compiled_path: list[str], dtype: torch.dtype, tau: float
) -> None:
    logits = (4 * torch.randn(3, 50, 700, generator=gen(5))).to(dtype)
    logits[1, 7, 3] = 1e4 if dtype == torch.bfloat16 else 3e4  # |Delta| of 1e4: every other token of that row ~ -1e4
    logits[2, 9] = 0.0  # a uniform row: log(1/700) for every token
    tokens = torch.randint(0, 700, (3, 50), generator=gen(6))
    with torch.no_grad():
        lp = ti.token_logprobs(logits, tokens, temperature=tau)
    assert compiled_path == ["compiled"]
    exact = torch.from_numpy(ref.token_logprobs(logits.double().numpy(), tokens.numpy(), temperature=tau))
    assert lp.dtype == dtype and lp.shape == (3, 50)
    # one rounding of a float32 value: half a unit of the target dtype plus the float32 error of the log-sum-exp
    bound = 0.5 * _spacing(exact, dtype) + 1e-6 * (1.0 + exact.abs()) + 2e-6 * logits.double().abs().max() / tau
    assert ((lp.double() - exact).abs() <= bound).all(), float(((lp.double() - exact).abs() - bound).max())
    assert lp[2, 9].item() == pytest.approx(-math.log(700) / 1.0, rel=2**-7)
    # and the eager forward-only path gives the same numbers, up to one unit in a rare tie
    ti.set_compiled_kernels(False)
    try:
        with torch.no_grad():
            eager = ti.token_logprobs(logits, tokens, temperature=tau)
    finally:
        ti.set_compiled_kernels(True)
    assert compiled_path == ["compiled", "eager"]
    assert ((lp.double() - eager.double()).abs() <= _spacing(exact, dtype)).all()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["chosen", "other"])
def test_compiled_kernel_refuses_non_finite_logits_anywhere(compiled_path: list[str], bad: float, where: str) -> None:
    logits = torch.randn(2, 5, 30, generator=gen(9)).to(torch.bfloat16)
    tokens = torch.zeros(2, 5, dtype=torch.int64)
    logits[1, 3, 0 if where == "chosen" else 17] = bad
    with torch.no_grad(), pytest.raises(ValueError, match=r"^token_logprobs: 'logits' contains NaN or inf$"):
        ti.token_logprobs(logits, tokens)
    assert compiled_path == ["compiled"]  # refused by the compiled kernel's probe, not by a fallback
    with torch.no_grad(), ti.value_checks(False):
        ti.token_logprobs(logits, tokens)  # the check is the value checks' business


def test_compiled_kernel_reads_sliced_logits_without_a_copy(compiled_path: list[str]) -> None:
    full = torch.randn(3, 41, 300, generator=gen(7)).to(torch.bfloat16)
    logits = full[:, :-1]  # the usual shift: one contiguous [T, V] block per sequence
    tokens = torch.randint(0, 300, (3, 40), generator=gen(8))
    assert not L._rows_viewable(logits)
    with torch.no_grad():
        got = ti.token_logprobs(logits, tokens)
        want = ti.token_logprobs(logits.contiguous(), tokens)
    assert compiled_path == ["compiled", "compiled"]
    assert torch.equal(got, want)


def _eager_only(taken: list[str], call: Callable[[], object]) -> None:
    taken.clear()
    with torch.no_grad():
        call()
    assert taken == ["eager"], taken


def test_the_eager_path_is_kept_where_the_kernel_does_not_apply(compiled_path: list[str]) -> None:
    logits = torch.randn(2, 8, 50, generator=gen(1)).to(torch.bfloat16)
    tokens = torch.randint(0, 50, (2, 8), generator=gen(2))
    _eager_only(compiled_path, lambda: ti.token_logprobs(logits, tokens, chunk_size=4))  # an explicit chunk size
    _eager_only(compiled_path, lambda: ti.token_logprobs(logits[:, :1], tokens[:, :1]))  # a block of one row
    _eager_only(compiled_path, lambda: ti.token_logprobs(logits.transpose(0, 1), tokens.T))  # rows not contiguous

    def in_device_mode() -> None:
        with torch.device("cpu"):  # a torch-function mode: Dynamo might run the kernel unfused under it
            ti.token_logprobs(logits, tokens)

    _eager_only(compiled_path, in_device_mode)

    def dynamo_disabled() -> None:
        import torch._dynamo

        with torch._dynamo.config.patch(disable=True):  # what TORCH_COMPILE_DISABLE=1 sets
            ti.token_logprobs(logits, tokens)

    _eager_only(compiled_path, dynamo_disabled)

    def switched_off() -> None:
        ti.set_compiled_kernels(False)
        try:
            ti.token_logprobs(logits, tokens)
        finally:
            ti.set_compiled_kernels(True)

    _eager_only(compiled_path, switched_off)
    compiled_path.clear()
    ti.token_logprobs(logits.requires_grad_(True), tokens)  # autograd: the compiled forward of _CompiledLogprobs
    assert compiled_path == ["compiled"]
    ti.token_logprobs(logits.float().detach(), tokens)  # float32: the chunked kernel, neither path
    assert compiled_path == ["compiled"]


def test_a_failed_compilation_falls_back_once_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(L, "COMPILED_MIN_ELEMENTS", 0)
    monkeypatch.setattr(L, "_COMPILED_LOGSUMEXP", _compiled.CompiledKernel(L._logsumexp_rows))

    def broken_compile(fn: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore lines")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    logits = torch.randn(2, 6, 40, generator=gen(3)).to(torch.bfloat16)
    tokens = torch.randint(0, 40, (2, 6), generator=gen(4))
    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match=r"compiling _logsumexp_rows failed \(RuntimeError: InvalidCxxCompiler"):
            first = ti.token_logprobs(logits, tokens)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second warning
            second = ti.token_logprobs(logits, tokens)
        expected = ti.token_logprobs(logits, tokens, chunk_size=5)  # the eager path, explicitly
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_the_switch_takes_a_real_bool_and_the_environment_turns_it_off() -> None:
    with pytest.raises(ValueError, match=r"^set_compiled_kernels: 'enabled' must be True or False, got 'no'$"):
        ti.set_compiled_kernels("no")  # type: ignore[arg-type]
    assert ti.compiled_kernels_enabled()
    with ti.compiled_kernels(False):
        assert not ti.compiled_kernels_enabled()
        with ti.compiled_kernels(True):
            assert ti.compiled_kernels_enabled()
        assert not ti.compiled_kernels_enabled()
    assert ti.compiled_kernels_enabled()
    with pytest.raises(ValueError, match=r"^compiled_kernels: 'enabled' must be True or False, got 0$"):
        with ti.compiled_kernels(0):  # type: ignore[arg-type]
            pass
    code = "from rlhf_oracle import torch_impl as ti; print(ti.compiled_kernels_enabled())"
    for value, expected in (("0", "False"), ("1", "True")):
        env = {**os.environ, "RLHF_ORACLE_COMPILE": value}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        assert out.stdout.strip() == expected


# ----------------------------------------------------------------------------------------------------------------
# with autograd: the forward by the same kernel, the backward by its compiled gradient


def _exact_grad(logits: torch.Tensor, tokens: torch.Tensor, weights: torch.Tensor, tau: float) -> torch.Tensor:
    """d/dz sum_t w_t log softmax(z_t / tau)[o_t] in float64 autograd through torch.log_softmax (PyTorch's kernel)."""
    z = logits.detach().double().requires_grad_(True)
    lp = torch.log_softmax(z / tau, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
    (lp * weights.double()).sum().backward()
    assert z.grad is not None
    return z.grad


@pytest.mark.parametrize("tau", [1.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_compiled_gradient_is_the_exact_gradient_rounded_once(
    small_inputs_compiled: None, dtype: torch.dtype, tau: float
) -> None:
    logits = (4 * torch.randn(3, 40, 600, generator=gen(11))).to(dtype).requires_grad_(True)
    tokens = torch.randint(0, 600, (3, 40), generator=gen(12))
    weights = torch.randn(3, 40, generator=gen(13))
    lp = ti.token_logprobs(logits, tokens, temperature=tau)
    assert type(lp.grad_fn).__name__ == "_CompiledLogprobsBackward"
    (lp.float() * weights).sum().backward()
    assert logits.grad is not None and logits.grad.dtype == dtype
    exact = _exact_grad(logits, tokens, weights.to(dtype), tau)  # the upstream gradient reaches lp in its dtype
    # one rounding of a float32 value to the half dtype: half a unit, plus the float32 error of p = exp(t - log s)
    # (relative, about |t| 2^-24 for exponents |t| up to ~50 here: 2^-16 bounds it) which can tip a near-tie
    bound = 0.5 * _spacing(exact, dtype) + 2.0**-16 * exact.abs() + 1e-12
    assert ((logits.grad.double() - exact).abs() <= bound).all()
    # and the eager chunked gradient gives the same numbers up to one unit
    eager = logits.detach().clone().requires_grad_(True)
    (ti.token_logprobs(eager, tokens, temperature=tau, chunk_size=7).float() * weights).sum().backward()
    assert eager.grad is not None
    assert ((logits.grad.double() - eager.grad.double()).abs() <= _spacing(exact, dtype)).all()


def test_compiled_forward_with_the_eager_gradient_on_sliced_logits(small_inputs_compiled: None) -> None:
    full = torch.randn(2, 31, 300, generator=gen(14)).to(torch.bfloat16).requires_grad_(True)
    tokens = torch.randint(0, 300, (2, 30), generator=gen(15))
    lp = ti.token_logprobs(full[:, :-1], tokens)  # compiled per sequence block; the gradient is not one block
    assert type(lp.grad_fn).__name__ == "_CompiledLogprobsBackward"
    lp.float().sum().backward()
    assert full.grad is not None
    exact = _exact_grad(full[:, :-1], tokens, torch.ones(2, 30), 1.0)
    assert full.grad[:, -1].abs().max() == 0  # the dropped last position gets no gradient
    bound = 0.5 * _spacing(exact, torch.bfloat16) + 2.0**-16 * exact.abs() + 1e-12
    assert ((full.grad[:, :-1].double() - exact).abs() <= bound).all()


def test_a_failed_gradient_compilation_falls_back_to_the_eager_gradient(
    small_inputs_compiled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = _compiled.CompiledKernel(L._logprob_grad_rows)
    broken.failure = "RuntimeError: no C++ compiler"  # as if its first compilation had failed
    monkeypatch.setattr(L, "_COMPILED_LOGPROB_GRAD", broken)
    logits = torch.randn(2, 6, 40, generator=gen(16)).to(torch.bfloat16).requires_grad_(True)
    tokens = torch.randint(0, 40, (2, 6), generator=gen(17))
    ti.token_logprobs(logits, tokens).float().sum().backward()
    want = logits.detach().clone().requires_grad_(True)
    ti.token_logprobs(want, tokens, chunk_size=3).float().sum().backward()
    assert logits.grad is not None and want.grad is not None
    assert torch.equal(logits.grad, want.grad)  # the same eager arithmetic from the same saved m and log s


def test_a_token_out_of_range_with_the_value_checks_off_raises_and_does_not_abort(compiled_path: list[str]) -> None:
    logits = torch.randn(2, 5, 30, generator=gen(18)).to(torch.bfloat16)
    tokens = torch.zeros(2, 5, dtype=torch.int64)
    with torch.no_grad():
        ti.token_logprobs(logits, tokens)  # compiled once
        tokens[1, 2] = 30  # the kernel's own bounds check would throw inside an OpenMP region: std::terminate
        with ti.value_checks(False), pytest.raises(RuntimeError, match="out of bounds"):
            ti.token_logprobs(logits, tokens)
    assert compiled_path == ["compiled", "eager"]
    assert L._COMPILED_LOGSUMEXP.failure is None  # an input error is not a compilation failure


def test_after_a_successful_call_an_exception_is_the_inputs_and_propagates(inductor: None) -> None:
    kernel = _compiled.CompiledKernel(lambda x: x)
    assert torch.equal(kernel(torch.ones(3)), torch.ones(3)) and kernel.succeeded

    def failing(*args: Any) -> Any:
        raise RuntimeError("index out of bounds")

    kernel.compiled = failing
    with pytest.raises(RuntimeError, match="index out of bounds"):
        kernel(torch.ones(3))
    assert kernel.failure is None
