"""torch.compile smoke tests: policy_loss, gae and the log-prob kernels compile with fullgraph=True, agree with eager.

Backend: on this 2-core CPU machine inductor works but compiling the three functions takes ~40 s (C++ codegen),
which is over the test-time budget, so the default suite uses backend="aot_eager" (Dynamo tracing + AOT autograd,
the part that would break on data-dependent Python control flow); the inductor variant is marked ``slow``.
Value checks are skipped automatically inside the trace (``torch.compiler.is_compiling()``).
"""

from __future__ import annotations

import pytest
import torch

from rlhf_oracle import torch_impl as ti

F32 = torch.float32


def _inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    b, t, v = 2, 8, 16
    return {
        "logits": torch.randn(b, t, v, generator=gen),
        "tokens": torch.randint(0, v, (b, t), generator=gen),
        "logp": torch.randn(b, t, generator=gen) * 0.3 - 1,
        "logp_old": torch.randn(b, t, generator=gen) * 0.3 - 1,
        "adv": torch.randn(b, t, generator=gen),
        "rewards": torch.randn(b, t, generator=gen),
        "values": torch.randn(b, t, generator=gen),
        "mask": torch.rand(b, t, generator=gen) > 0.3,
    }


def _check(backend: str) -> None:
    torch._dynamo.reset()
    x = _inputs()

    def policy(logp: torch.Tensor) -> torch.Tensor:
        return ti.policy_loss(logp, x["logp_old"], x["adv"], x["mask"], 0.2, 0.28, 3.0)

    def advantages(values: torch.Tensor) -> torch.Tensor:
        out = ti.gae(x["rewards"], values, x["mask"], 1.0, 0.95)
        return out.advantages + out.returns

    def logprobs(logits: torch.Tensor) -> torch.Tensor:
        return ti.token_logprobs(logits, x["tokens"], temperature=0.9, chunk_size=3)

    def fused(logits: torch.Tensor) -> torch.Tensor:  # default chunking: one chunk inside the trace
        lp, h = ti.logprobs_and_entropy(logits, x["tokens"])
        return lp + 0.5 * h

    cases = ((policy, x["logp"]), (advantages, x["values"]), (logprobs, x["logits"]), (fused, x["logits"]))
    for fn, arg in cases:
        compiled = torch.compile(fn, backend=backend, fullgraph=True)
        a = arg.clone().requires_grad_(True)
        b = arg.clone().requires_grad_(True)
        out_compiled, out_eager = compiled(a), fn(b)
        torch.testing.assert_close(out_compiled, out_eager, rtol=1e-5, atol=1e-6)
        out_compiled.sum().backward()
        out_eager.sum().backward()
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_compile_aot_eager() -> None:
    _check("aot_eager")


@pytest.mark.slow
def test_compile_inductor() -> None:
    _check("inductor")


def test_value_checks_are_skipped_inside_a_compiled_call() -> None:
    torch._dynamo.reset()
    logp = torch.tensor([[0.0, float("nan")]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="contains NaN"):
        ti.policy_loss(logp, torch.zeros(1, 2), torch.ones(1, 2), mask)
    compiled = torch.compile(ti.policy_loss, backend="aot_eager", fullgraph=True)
    assert torch.isnan(compiled(logp, torch.zeros(1, 2), torch.ones(1, 2), mask))
