"""TRL's, verl's and OpenRLHF's option names accepted where they name a convention (issue 18): each translates into
the oracle's keywords (read from the frameworks' documented semantics), a correct candidate written to that option
passes, and a contradiction or an option the formula does not have is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_oracle.properties import run_check
from rlhf_oracle.properties.presets import translate_options

from .mutants import _grpo_batch_std, _policy_loss, _token_mean
from .test_cli import _parse, cli, losses  # noqa: F401  (the fixture)

# (formula, framework options) -> the oracle conventions, from the frameworks' docs: TRL GRPOConfig.loss_type
# (grpo: per-sequence mean; bnpo/dapo: token mean; dr_grpo: sum / max_completion_length), scale_rewards; verl
# kl_penalty kinds (low_var_kl: k3 clamped to +-20 / +-10, "+" straight-through); OpenRLHF kl_estimator
TRANSLATIONS = [
    ("policy_loss", {"loss_type": "grpo"}, {"agg": "seq-mean-token-mean"}),
    ("policy_loss", {"loss_type": "dapo"}, {"agg": "token-mean"}),
    ("policy_loss", {"loss_type": "dr_grpo"}, {"agg": "seq-mean-token-sum-norm"}),
    ("policy_loss", {"loss_agg_mode": "seq-mean-token-sum"}, {"agg": "seq-mean-token-sum"}),
    ("actor_loss", {"loss_type": "sapo"}, {"agg": "seq-mean-token-mean", "loss": "sapo"}),
    ("grpo_advantages", {"scale_rewards": "batch"}, {"std_normalize": True, "std_level": "batch"}),
    ("grpo_advantages", {"scale_rewards": "none"}, {"std_normalize": False}),
    ("grpo_advantages", {"norm_adv_by_std_in_grpo": False}, {"std_normalize": False}),
    ("kl_estimate", {"kl_penalty": "mse"}, {"kind": "k2"}),
    ("kl_estimate", {"kl_penalty": "low_var_kl"}, {"kind": "k3", "log_ratio_clamp": 20.0, "output_clamp": 10.0}),
    ("kl_loss", {"kl_loss_type": "low_var_kl+"},
     {"kind": "k3", "log_ratio_clamp": 20.0, "output_clamp": 10.0, "grad": "k2"}),
    ("kl_estimate", {"kl_estimator": "k3"}, {"kind": "k3"}),
    ("actor_loss", {"kl_penalty": "abs"}, {"kl_kind": "abs"}),
]  # fmt: skip


@pytest.mark.parametrize(("formula", "options", "expected"), TRANSLATIONS)
def test_framework_options_translate(formula: str, options: dict[str, object], expected: dict[str, object]) -> None:
    assert translate_options(formula, options) == expected


@pytest.mark.parametrize(
    ("formula", "options", "message"),
    [
        ("policy_loss", {"loss_type": "dapo", "agg": "seq-mean-token-mean"}, "loss_type='dapo' sets agg="),
        ("policy_loss", {"scale_rewards": "batch"}, "'scale_rewards' names no convention of policy_loss"),
        ("kl_estimate", {"kl_penalty": "full"}, "'kl_penalty' must be one of"),
        ("policy_loss", {"loss_type": "ppo2"}, "'loss_type' must be one of"),
        ("grpo_advantages", {"norm_adv_by_std_in_grpo": "no"}, "must be True or False"),
    ],
)
def test_bad_framework_options_are_refused_by_name(formula: str, options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        translate_options(formula, options)


def test_a_candidate_written_to_the_option_passes() -> None:
    token_mean = run_check("policy_loss", _policy_loss(reduce=_token_mean), properties=("values", "gradients"),
                           loss_type="dapo")  # fmt: skip
    assert token_mean.property("values").passed and token_mean.property("gradients").passed
    wrong = run_check("policy_loss", _policy_loss(reduce=_token_mean), properties=("values",), loss_type="grpo")
    assert wrong.property("values").passed is False
    batch = run_check("grpo_advantages", _grpo_batch_std(), properties=("values",), scale_rewards="batch")
    assert batch.property("values").passed


def test_cli_takes_the_option_names(losses: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    argv = [f"{losses}:token_mean_loss", "-f", "policy_loss", "--max-examples", "10"]
    assert cli.run(_parse([*argv, "--loss-type", "dapo"])) == 0
    assert cli.run(_parse([*argv, "--loss-type", "dapo", "--agg", "seq-mean-token-mean"])) == 2
    assert "loss_type='dapo' sets agg='token-mean'" in capsys.readouterr().err
