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
    bits = 7 if dtype == torch.bfloat16 else 10
    return torch.pow(2.0, torch.floor(torch.log2(x.abs().clamp_min(2.0**-126))) - bits)


@pytest.fixture
def compiled_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Small inputs take the compiled kernel; records which forward-only path each call took."""
    monkeypatch.setattr(L, "COMPILED_MIN_ELEMENTS", 0)
    taken: list[str] = []
    eager, compiled = L._forward_only_half, L._forward_only_compiled

    def eager_spy(*args: Any) -> torch.Tensor:
        taken.append("eager")
        return eager(*args)

    def compiled_spy(*args: Any) -> torch.Tensor | None:
        try:
            out = compiled(*args)
        except ValueError:  # refused by the kernel's probe
            taken.append("compiled")
            raise
        if out is not None:
            taken.append("compiled")
        return out

    monkeypatch.setattr(L, "_forward_only_half", eager_spy)
    monkeypatch.setattr(L, "_forward_only_compiled", compiled_spy)
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
    ti.token_logprobs(logits.requires_grad_(True), tokens)  # autograd: the custom Function, neither path
    ti.token_logprobs(logits.float().detach(), tokens)  # float32: the chunked kernel
    assert compiled_path == []


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
    code = "from rlhf_oracle import torch_impl as ti; print(ti.compiled_kernels_enabled())"
    for value, expected in (("0", "False"), ("1", "True")):
        env = {**os.environ, "RLHF_ORACLE_COMPILE": value}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        assert out.stdout.strip() == expected
