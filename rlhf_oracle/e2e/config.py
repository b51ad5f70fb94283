"""The demo's configuration: one dataclass, every field with a one-line docstring that becomes ``--help``.

Every convention the training loop could make silently (where the score lands, which KL estimator, whitening
variance, loss aggregation, value clip range, ...) is a field here and is passed by keyword to the
``rlhf_oracle.torch_impl`` function that implements it (and to its ``rlhf_oracle.reference`` twin in the oracle).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_oracle.reference import ACTOR_LOSSES

POLICY_LOSSES: tuple[str, ...] = ACTOR_LOSSES
"""The demo's --policy-loss choices: the policy losses ``actor_loss`` names."""

ADVANTAGES: tuple[str, ...] = ("gae", "grpo", "rloo", "reinforce++", "reinforce++-baseline", "remax")
"""The demo's --advantage choices: GAE with a critic, or a critic-free estimator (docs page 9)."""

GROUP_ADVANTAGES: tuple[str, ...] = ("grpo", "rloo", "reinforce++-baseline")
"""The estimators whose baseline is the other samples of the same prompt (samples_per_prompt of them)."""


@dataclass
class DemoConfig:
    """Built-in defaults of ``rlhf-oracle demo``: SFT -> reward model -> PPO on the letter-repeat task."""

    # --- run ---------------------------------------------------------------------------------------
    seed: int = 0
    """Seed of every random draw (task data, initialisation, sampling, minibatch order)."""
    device: str = "cpu"
    """Torch device: 'cpu' (bit-for-bit reproducible), 'cuda', 'cuda:1', ... or 'auto' (cuda if available)."""
    dtype: str = "float32"
    """'float32', or 'bfloat16' (bf16 autocast for the model forward passes; CUDA only). Losses stay float32."""
    num_threads: int = 1
    """torch.set_num_threads on CPU (fixed for reproducibility; 1 is fastest for these tiny models on shared cores)."""
    deterministic: bool = True
    """Call torch.use_deterministic_algorithms(True) (warn_only on CUDA)."""

    # --- task --------------------------------------------------------------------------------------
    alphabet: str = "abcdefgh"
    """Letters of prompts and replies; the gold reward counts the prompt's first letter in the reply."""
    prompt_len: int = 4
    """Letters per prompt (the prompt text is these letters followed by ':')."""
    max_new_tokens: int = 12
    """Response budget in tokens (EOS included); a reply without EOS in the budget is truncated."""
    demo_target_rate: float = 0.25
    """Chance that a demonstration letter is the target letter (uniform otherwise): mediocre demonstrations."""
    demo_min_len: int = 3
    """Shortest demonstration reply, in letters."""
    demo_max_len: int = 8
    """Longest demonstration reply, in letters."""

    # --- models ------------------------------------------------------------------------------------
    n_layer: int = 2
    """GPT-2 layers (policy, reference, reward model and critic share the architecture)."""
    n_embd: int = 64
    """GPT-2 width."""
    n_head: int = 4
    """GPT-2 attention heads."""

    # --- SFT ---------------------------------------------------------------------------------------
    sft_examples: int = 4096
    """Demonstrations in the SFT corpus (also the corpus of the ptx term)."""
    sft_steps: int = 200
    """SFT optimiser steps."""
    sft_batch_size: int = 64
    """SFT batch size (sequences)."""
    sft_lr: float = 3e-3
    """SFT Adam learning rate."""

    # --- reward model ------------------------------------------------------------------------------
    rm_prompts: int = 2048
    """Training prompts for the reward model, each with rm_k ranked replies (InstructGPT: K = 4..9)."""
    rm_k: int = 4
    """Replies ranked per prompt; ranking_loss averages over its C(K, 2) pairs."""
    rm_label_noise: float = 0.5
    """Std of the Gaussian noise added to the gold reward before ranking (imperfect labellers)."""
    rm_steps: int = 200
    """Reward-model optimiser steps."""
    rm_batch_size: int = 16
    """Prompts per reward-model batch (each with rm_k replies)."""
    rm_lr: float = 2e-3
    """Reward-model Adam learning rate."""
    rm_normalize_std: bool = True
    """Scale the RM so pi_SFT samples also have std 1 (Ziegler et al.); the mean is always shifted to 0."""
    rm_eval_prompts: int = 512
    """Held-out prompts for the RM's pairwise accuracy against the gold (noise-free) ordering."""

    # --- PPO ---------------------------------------------------------------------------------------
    ppo_steps: int = 60
    """PPO iterations (each: one batch of rollouts, then ppo_epochs passes of minibatch updates)."""
    rollout_batch_size: int = 64
    """Prompts (= episodes) per PPO iteration."""
    minibatch_size: int = 32
    """Episodes per PPO minibatch update."""
    ppo_epochs: int = 4
    """Passes over each rollout batch (Ziegler: 4; InstructGPT: 1)."""
    policy_lr: float = 5e-4
    """Policy Adam learning rate (constant)."""
    critic_lr: float = 1e-3
    """Critic Adam learning rate (constant; a separate optimiser, so there is no value-loss coefficient)."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip, applied to the policy and the critic separately."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts; token_logprobs uses the same one (pure sampling: no top-k/top-p)."""
    beta: float = 0.1
    """Initial KL coefficient beta of the per-token penalty -beta * kl_t in the reward."""
    betas: tuple[float, ...] = ()
    """Several initial betas: one PPO phase each from the same SFT and RM (reward-KL frontier); () = just beta."""
    target_kl: float | None = 6.0
    """Adaptive-KL target in nats per response (Ziegler's sum over tokens); None keeps beta fixed."""
    kl_horizon: float = 320.0
    """Horizon of the adaptive KL controller in episodes (beta moves by at most 20% * batch / horizon a step)."""
    kl_kind: str = "k1"
    """KL estimator in the reward: 'k1' (Ziegler, TRL, verl), 'k2' or 'k3'."""
    gamma: float = 1.0
    """GAE discount (InstructGPT: no discount)."""
    lam: float = 0.95
    """GAE lambda (lm-human-preferences default)."""
    whiten_advantages: bool = True
    """Standardise the advantages over the rollout batch (N+ detail 25)."""
    whiten_unbiased: bool = True
    """Bessel-corrected variance in whitening (TRL, verl) rather than population (OpenAI, OpenRLHF)."""
    clip_eps: float = 0.2
    """PPO ratio clip epsilon."""
    clip_eps_high: float | None = None
    """Upper ratio clip (DAPO clip-higher); None = clip_eps."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 for negative advantages (Ye et al. 2020); None = off."""
    loss_agg: str = "seq-mean-token-mean"
    """Aggregation of the policy loss and entropy over tokens (see rlhf_oracle aggregate modes)."""
    value_clip_eps: float | None = 0.2
    """Value-loss clip range around the old values (separate from clip_eps); None = unclipped."""
    value_agg: str = "token-mean"
    """Aggregation of the value loss over tokens."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient: the loss subtracts ent_coef * aggregated entropy."""
    policy_loss: str = "ppo"
    """The actor's policy loss: 'ppo' (PPO-Clip), 'pg' (REINFORCE/GPG), 'cispo', 'gspo' or 'sapo' (papers' defaults)."""
    kl_loss_coef: float = 0.0
    """GRPO's beta: weight of the KL loss term kl_loss(kind=kl_kind) in the actor loss (beside the reward's KL)."""
    rollout_correction: str | None = None
    """'tis': a bf16 copy of the policy samples; tokens weighted by min(pi_old / mu, 2) in the ppo/pg loss."""
    advantage: str = "gae"
    """'gae' (PPO with a critic), or critic-free 'grpo', 'rloo', 'reinforce++', 'reinforce++-baseline', 'remax'."""
    samples_per_prompt: int = 4
    """Responses per prompt for grpo, rloo and reinforce++-baseline (rollout_batch_size counts responses)."""
    overlong_buffer: int | None = None
    """DAPO's soft overlong penalty: its L_cache in tokens (L_max = max_new_tokens), added to the score; None = off."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling: groups whose scores are all equal are left out of the update (not re-sampled)."""
    ptx_coef: float = 0.2
    """InstructGPT's gamma: weight of ptx_loss (SFT-corpus log-likelihood) added to the policy loss."""
    ptx_batch_size: int = 32
    """SFT-corpus sequences per ptx term (one batch per policy minibatch)."""
    no_eos_score: float | None = None
    """Score given to replies with no EOS in the budget instead of the RM score (N+ detail 23); None = RM score."""
    eval_prompts: int = 256
    """Fixed held-out prompts for the before/after evaluation of gold and proxy reward."""

    # --- oracle ------------------------------------------------------------------------------------
    oracle_every: int = 1
    """Recompute every n-th PPO step with the float64 NumPy reference (0 = never)."""
    oracle_rtol: float = 1e-4
    """Largest allowed normwise relative discrepancy torch vs reference before the run stops (float32: ~1e-6)."""

    # --- checkpoints -------------------------------------------------------------------------------
    save_every: int = 20
    """Write a PPO checkpoint every n steps (and at the last step)."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept per PPO phase."""
    halt_after_step: int | None = None
    """Stop (as if killed) right after this PPO step of the first unfinished phase; for testing --resume."""

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):  # from JSON
            self.betas = tuple(self.betas)
        self.validate()
        self.betas = tuple(float(b) for b in self.betas)

    def validate(self) -> None:
        """Raise ValueError naming the field when a value has the wrong type or is out of range (every field)."""
        self._check_types()
        aggs = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
        pos = ">= 1"
        checks: list[tuple[str, bool, str]] = [
            ("device", self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")
             or self.device == "mps", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
            ("dtype", self.dtype in ("float32", "bfloat16"), "one of 'float32', 'bfloat16'"),
            ("num_threads", self.num_threads >= 1, pos),
            ("alphabet", len(set(self.alphabet)) == len(self.alphabet) >= 2, "at least 2 distinct characters"),
            ("alphabet", all(c.isalnum() for c in self.alphabet), "letters or digits only"),
            ("prompt_len", self.prompt_len >= 1, pos),
            ("max_new_tokens", self.max_new_tokens >= 2, ">= 2"),
            ("demo_target_rate", 0.0 <= self.demo_target_rate <= 1.0, "in [0, 1]"),
            ("demo_min_len", 1 <= self.demo_min_len <= self.demo_max_len, "in [1, demo_max_len]"),
            ("demo_max_len", self.demo_max_len < self.max_new_tokens, "< max_new_tokens (room for EOS)"),
            ("n_layer", self.n_layer >= 1, pos),
            ("n_head", self.n_head >= 1, pos),
            ("n_embd", self.n_embd >= 1 and self.n_embd % max(1, self.n_head) == 0, "a positive multiple of n_head"),
            ("sft_examples", self.sft_examples >= 1, pos),
            ("sft_steps", self.sft_steps >= 1, pos),
            ("sft_batch_size", self.sft_batch_size >= 1, pos),
            ("sft_lr", _positive(self.sft_lr), "> 0"),
            ("rm_prompts", self.rm_prompts >= 1, pos),
            ("rm_k", self.rm_k >= 2, ">= 2"),
            ("rm_label_noise", _finite(self.rm_label_noise) and self.rm_label_noise >= 0, ">= 0"),
            ("rm_steps", self.rm_steps >= 1, pos),
            ("rm_batch_size", self.rm_batch_size >= 1, pos),
            ("rm_lr", _positive(self.rm_lr), "> 0"),
            ("rm_eval_prompts", self.rm_eval_prompts >= 1, pos),
            ("ppo_steps", self.ppo_steps >= 1, pos),
            ("rollout_batch_size", self.rollout_batch_size >= 1, pos),
            ("minibatch_size", 0 < self.minibatch_size <= self.rollout_batch_size, "in [1, rollout_batch_size]"),
            ("rollout_batch_size", self.minibatch_size > 0 and self.rollout_batch_size % self.minibatch_size == 0,
             "a multiple of minibatch_size"),
            ("ppo_epochs", self.ppo_epochs >= 1, pos),
            ("policy_lr", _positive(self.policy_lr), "> 0"),
            ("critic_lr", _positive(self.critic_lr), "> 0"),
            ("max_grad_norm", _positive(self.max_grad_norm), "> 0"),
            ("temperature", _positive(self.temperature), "> 0"),
            ("beta", _finite(self.beta) and self.beta >= 0, ">= 0"),
            ("betas", all(_finite(b) and b >= 0 for b in self.betas), "all >= 0"),
            ("target_kl", self.target_kl is None or _positive(self.target_kl), "> 0 or None"),
            ("kl_horizon", _positive(self.kl_horizon), "> 0"),
            ("kl_kind", self.kl_kind in ("k1", "k2", "k3", "abs"), "one of 'k1', 'k2', 'k3', 'abs'"),
            ("gamma", 0.0 <= self.gamma <= 1.0, "in [0, 1]"),
            ("lam", 0.0 <= self.lam <= 1.0, "in [0, 1]"),
            ("clip_eps", 0.0 < self.clip_eps < 1.0, "in (0, 1)"),
            ("clip_eps_high", self.clip_eps_high is None or _positive(self.clip_eps_high),
             "> 0 or None"),
            ("dual_clip", self.dual_clip is None or (_finite(self.dual_clip) and self.dual_clip > 1), "> 1 or None"),
            ("loss_agg", self.loss_agg in aggs, f"one of {aggs}"),
            ("value_clip_eps", self.value_clip_eps is None or _positive(self.value_clip_eps), "> 0 or None"),
            ("value_agg", self.value_agg in aggs, f"one of {aggs}"),
            ("ent_coef", _finite(self.ent_coef) and self.ent_coef >= 0, ">= 0"),
            ("policy_loss", self.policy_loss in POLICY_LOSSES, f"one of {POLICY_LOSSES}"),
            ("kl_loss_coef", _finite(self.kl_loss_coef) and self.kl_loss_coef >= 0, ">= 0"),
            ("rollout_correction", self.rollout_correction in (None, "tis"), "'tis' or None"),
            ("rollout_correction", self.rollout_correction is None or self.policy_loss in ("ppo", "pg"),
             "None unless policy_loss is 'ppo' or 'pg' (the losses that take per-token weights)"),
            ("advantage", self.advantage in ADVANTAGES, f"one of {ADVANTAGES}"),
            ("samples_per_prompt", self.samples_per_prompt >= 2, ">= 2 (a group baseline needs other samples)"),
            ("rollout_batch_size", self.advantage not in GROUP_ADVANTAGES
             or self.rollout_batch_size % self.samples_per_prompt == 0, "a multiple of samples_per_prompt"),
            ("overlong_buffer", self.overlong_buffer is None or 1 <= self.overlong_buffer <= self.max_new_tokens,
             "in [1, max_new_tokens] or None"),
            ("dynamic_sampling", not self.dynamic_sampling or self.advantage in GROUP_ADVANTAGES,
             f"False unless advantage is one of {GROUP_ADVANTAGES} (it drops whole groups)"),
            ("ptx_coef", _finite(self.ptx_coef) and self.ptx_coef >= 0, ">= 0"),
            ("ptx_batch_size", self.ptx_batch_size >= 1, pos),
            ("no_eos_score", self.no_eos_score is None or _finite(self.no_eos_score), "finite or None"),
            ("eval_prompts", self.eval_prompts >= 1, pos),
            ("oracle_every", self.oracle_every >= 0, ">= 0"),
            ("oracle_rtol", _positive(self.oracle_rtol), "> 0"),
            ("save_every", self.save_every >= 1, pos),
            ("keep_checkpoints", self.keep_checkpoints >= 1, pos),
            ("halt_after_step", self.halt_after_step is None or self.halt_after_step >= 1, ">= 1 or None"),
        ]  # fmt: skip
        for name, ok, condition in checks:
            if not ok:
                raise ValueError(f"DemoConfig: '{name}' must be {condition}, got {getattr(self, name)!r}")

    def _check_types(self) -> None:
        """Each field holds its annotated type (bool is not an int here; an int is accepted for a float)."""
        for f in dataclasses.fields(self):
            base, optional, is_tuple = field_kind(f)
            value = getattr(self, f.name)
            if value is None and optional:
                continue
            items = value if is_tuple and isinstance(value, tuple | list) else (value,)
            if is_tuple and not isinstance(value, tuple | list):
                ok = False
            elif base is bool:
                ok = all(isinstance(x, bool) for x in items)
            elif base is int:
                ok = all(isinstance(x, int) and not isinstance(x, bool) for x in items)
            elif base is float:
                ok = all(isinstance(x, int | float) and not isinstance(x, bool) for x in items)
            else:
                ok = all(isinstance(x, base) for x in items)
            if not ok:
                what = f"a tuple of {base.__name__}" if is_tuple else base.__name__
                raise ValueError(f"DemoConfig: '{f.name}' must be {what}" + (" or None" if optional else "")
                                 + f", got {value!r}")  # fmt: skip

    @property
    def phase_betas(self) -> tuple[float, ...]:
        """The initial beta of each PPO phase."""
        return self.betas if self.betas else (self.beta,)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DemoConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"DemoConfig: unknown field(s) {unknown}")
        return cls(**d)

    @classmethod
    def load(cls, path: Path) -> DemoConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _finite(x: float) -> bool:
    return math.isfinite(x)


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def field_docs(cls: type = DemoConfig) -> dict[str, str]:
    """The docstring under each dataclass field, read from the class source (cleanrl/tyro style)."""
    source = textwrap.dedent(inspect.getsource(cls))
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    docs: dict[str, str] = {}
    stmts = body.body
    for stmt, nxt in zip(stmts, [*stmts[1:], None], strict=True):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[stmt.target.id] = nxt.value.value.strip()
    return docs


def field_kind(f: dataclasses.Field[Any]) -> tuple[type, bool, bool]:
    """(base type, optional?, tuple?) of a config field, from its resolved annotation."""
    hints = typing.get_type_hints(DemoConfig)
    tp = hints[f.name]
    optional = False
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
        origin = typing.get_origin(tp)
    if origin is tuple:
        return typing.get_args(tp)[0], optional, True
    return tp, optional, False


__all__ = ["DemoConfig", "field_docs", "field_kind"]
