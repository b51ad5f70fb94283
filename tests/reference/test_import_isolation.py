"""`import rlhf_oracle.reference` must need only NumPy: other projects import it on machines without torch."""

import subprocess
import sys


def test_reference_imports_neither_torch_nor_sympy() -> None:
    code = (
        "import sys, rlhf_oracle.reference\n"
        "heavy = [m for m in ('torch', 'sympy', 'hypothesis', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reference_public_api_is_the_spec_catalogue() -> None:
    import rlhf_oracle.reference as ref

    catalogue = {
        "token_logprobs", "entropy_from_logits", "ppo_clip_objective", "ppo_clip_grad", "aggregate", "policy_loss",
        "kl_estimate", "kl_exact", "kl_shaped_rewards", "rlhf_objective", "ptx_loss", "reward_model_loss",
        "ranking_loss", "gae", "whiten", "value_loss", "adaptive_kl_update", "AdaptiveKLController",
        "grpo_advantages",
    }  # fmt: skip
    assert catalogue <= set(ref.__all__)
    for name in catalogue:
        doc = getattr(ref, name).__doc__ or ""
        assert "Source" in doc or "source" in doc, f"{name}: docstring must cite its source"
        if name != "AdaptiveKLController":
            assert ".. math::" in doc, f"{name}: docstring must carry the formula in LaTeX"
