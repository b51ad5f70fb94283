"""The demo driver: SFT -> reward model -> PPO phase(s) -> evaluation, plots and a summary, in one run folder.

Run folder layout::

    config.json                 the full DemoConfig of the run
    tokenizer/                  the character-level tokenizer (save_pretrained)
    sft/                        pi_SFT as a transformers folder (config.json + weights), metrics.json
    rm/                         reward model state_dict (model.pt), metrics.json (held-out accuracy, normalisation)
    ppo_beta<b>/                one per initial beta: metrics.jsonl (one line per PPO step), checkpoints/,
                                policy/ (final policy, transformers folder), summary.json
    plots/                      reward_kl.png, gold_vs_proxy.png, frontier.png (several betas)
    summary.json                before/after numbers of every phase, RM accuracy, max oracle discrepancy, wall time

Every phase is seeded from (seed, phase) alone, and finished phases are loaded rather than recomputed, so
``--resume`` continues a killed run and ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast
from transformers.utils import logging as transformers_logging

from . import parallel
from .config import DemoConfig
from .models import ScalarHeadModel, build_scalar_model
from .plots import write_plots
from .ppo import evaluate, phase_dirname, read_metrics, run_ppo_phase
from .reward_model import train_reward_model
from .runtime import phase_key, resolve_device, torch_settings
from .sft import build_corpus, train_sft
from .task import LetterRepeatTask
from .tokenizer import build_tokenizer


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _load_or_train_sft(
    cfg: DemoConfig, tok: PreTrainedTokenizerFast, out: Path, corpus: Any, device: torch.device, progress: bool
) -> tuple[GPT2LMHeadModel, dict[str, Any]]:
    sft_dir = out / "sft"
    if (sft_dir / "metrics.json").exists():
        policy = GPT2LMHeadModel.from_pretrained(sft_dir)
        torch.nn.Module.to(policy, device)
        policy.train(False)
        return policy, json.loads((sft_dir / "metrics.json").read_text())
    policy, metrics = train_sft(cfg, tok, corpus, device, progress=progress)
    policy.save_pretrained(sft_dir)
    _write_json(sft_dir / "metrics.json", metrics)
    return policy, metrics


def _load_or_train_rm(
    cfg: DemoConfig,
    task: LetterRepeatTask,
    tok: PreTrainedTokenizerFast,
    sft_policy: GPT2LMHeadModel,
    out: Path,
    device: torch.device,
    progress: bool,
) -> tuple[ScalarHeadModel, dict[str, Any]]:
    rm_dir = out / "rm"
    if (rm_dir / "metrics.json").exists():
        rm = build_scalar_model(cfg, tok).to(device)
        rm.load_state_dict(torch.load(rm_dir / "model.pt", map_location=device))
        rm.eval()
        return rm, json.loads((rm_dir / "metrics.json").read_text())
    rm, metrics = train_reward_model(cfg, task, tok, sft_policy, device, progress=progress)
    rm_dir.mkdir(parents=True, exist_ok=True)
    torch.save(rm.state_dict(), rm_dir / "model.pt")
    _write_json(rm_dir / "metrics.json", metrics)
    return rm, metrics


def default_run_dir(root: Path = Path("runs")) -> Path:
    return root / time.strftime("%Y%m%d-%H%M%S")


def run_demo(cfg: DemoConfig, out: Path, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) the whole pipeline in ``out``; returns the summary (also summary.json).

    Raises :class:`rlhf_oracle.e2e.ppo.Halted` after ``cfg.halt_after_step`` and
    :class:`rlhf_oracle.e2e.oracle.OracleDivergenceError` when a torch quantity leaves the reference's tolerance.
    """
    t0 = time.perf_counter()
    out = Path(out)
    joined = parallel.init_from_env()  # under torchrun: the PPO update is data-parallel (gloo)
    rank, world = parallel.rank_and_world()
    if world > 1:
        if (cfg.policy_loss, cfg.kl_loss_coef, cfg.rollout_correction, cfg.advantage) != ("ppo", 0.0, None, "gae"):
            raise ValueError(
                "DemoConfig: the data-parallel update (torchrun) runs PPO's loss only: policy_loss 'ppo', "
                "kl_loss_coef 0, rollout_correction None and advantage 'gae'"
            )
        for name in ("minibatch_size", "ptx_batch_size"):
            if getattr(cfg, name) % world:
                value = getattr(cfg, name)
                raise ValueError(f"DemoConfig: '{name}' ({value}) must be a multiple of the {world} ranks (torchrun)")
        if rank > 0:  # only rank 0 writes the run folder; the others keep their (identical) files aside
            out = out / f".rank{rank}"
            progress = False
    try:
        return _run_demo(cfg, out, resume=resume, progress=progress, t0=t0)
    finally:
        if joined:
            parallel.destroy()


def _run_demo(cfg: DemoConfig, out: Path, *, resume: bool, progress: bool, t0: float) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        cfg.save(out / "config.json")
    device = resolve_device(cfg)
    with torch_settings(cfg, device):
        return _run_pipeline(cfg, out, device, t0, resume=resume, progress=progress)


def _run_pipeline(
    cfg: DemoConfig, out: Path, device: torch.device, t0: float, *, resume: bool, progress: bool
) -> dict[str, Any]:
    """The body of :func:`run_demo`, under its torch settings."""
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # save_pretrained's one-shard bars

    task = LetterRepeatTask(cfg.alphabet, cfg.prompt_len)
    tok = build_tokenizer(cfg.alphabet)
    if not (out / "tokenizer").exists():
        tok.save_pretrained(out / "tokenizer")
    corpus = build_corpus(cfg, task, tok, device)

    sft_policy, sft_metrics = _load_or_train_sft(cfg, tok, out, corpus, device, progress)
    rm, rm_metrics = _load_or_train_rm(cfg, task, tok, sft_policy, out, device, progress)
    before = evaluate(cfg, sft_policy, sft_policy, rm, task, tok, device)

    phases: dict[float, list[dict[str, Any]]] = {}
    finals: dict[float, dict[str, Any]] = {}
    phase_summaries = []
    for beta0 in cfg.phase_betas:
        phase_dir = out / phase_dirname(beta0)
        summary_path = phase_dir / "summary.json"
        if summary_path.exists():  # finished in an earlier invocation
            phase_summary = json.loads(summary_path.read_text())
            history = read_metrics(phase_dir / "metrics.jsonl")
        else:
            policy, history = run_ppo_phase(
                cfg,
                beta0=beta0,
                phase_key=phase_key(beta0),
                phase_dir=phase_dir,
                sft_policy=sft_policy,
                rm=rm,
                task=task,
                tok=tok,
                corpus=corpus,
                device=device,
                progress=progress,
            )
            policy.save_pretrained(phase_dir / "policy")
            after = evaluate(cfg, policy, sft_policy, rm, task, tok, device)
            oracle = [m["oracle_max"] for m in history if "oracle_max" in m]
            phase_summary = {
                "beta0": beta0,
                "beta_final": history[-1]["beta"],
                "steps": len(history),
                "gold_before": before["gold"],
                "gold_after": after["gold"],
                "gold_after_std": after["gold_std"],
                "proxy_before": before["proxy"],
                "proxy_after": after["proxy"],
                "kl_final": after["kl"],
                "reply_len_after": after["reply_len"],
                "oracle_checked_steps": len(oracle),
                "oracle_max": max(oracle) if oracle else None,
                "examples_after": after["examples"],
            }
            _write_json(summary_path, phase_summary)
        phases[beta0] = history
        finals[beta0] = {"gold": phase_summary["gold_after"], "kl": phase_summary["kl_final"]}
        phase_summaries.append(phase_summary)

    plots = write_plots(out / "plots", phases, finals, sft_gold=before["gold"], target_kl=cfg.target_kl)
    oracle_all = [p["oracle_max"] for p in phase_summaries if p["oracle_max"] is not None]
    summary = {
        "run_dir": str(out),
        "device": str(device),
        "seed": cfg.seed,
        "sft": {
            **sft_metrics,
            "gold": before["gold"],
            "gold_std": before["gold_std"],
            "proxy": before["proxy"],
            "reply_len": before["reply_len"],
            "examples": before["examples"],
        },
        "reward_model": rm_metrics,
        "phases": phase_summaries,
        "max_oracle_discrepancy": max(oracle_all) if oracle_all else None,
        "oracle_rtol": cfg.oracle_rtol,
        "plots": [str(p) for p in plots],
        "wall_time_s": time.perf_counter() - t0,
        "resumed": resume,
    }
    _write_json(out / "summary.json", summary)
    return summary


def summary_table(summary: dict[str, Any]) -> Any:
    """A rich Table: one column for pi_SFT and one per PPO phase; gold/proxy reward, KL, beta, oracle."""
    from rich.table import Table

    phases = summary["phases"]
    sft = summary["sft"]
    table = Table(title="rlhf-oracle demo: SFT -> reward model -> PPO (letter-repeat task)", title_justify="left")
    table.add_column("held-out evaluation", justify="left")
    table.add_column("pi_SFT", justify="right")
    for p in phases:
        table.add_column(f"PPO beta0={p['beta0']:g}", justify="right")

    def row(label: str, sft_value: str, key: str, fmt: str) -> None:
        table.add_row(label, sft_value, *("n/a" if p[key] is None else format(p[key], fmt) for p in phases))

    row("gold reward (hidden from RM)", f"{sft['gold']:.2f}", "gold_after", ".2f")
    row("proxy reward (RM score)", f"{sft['proxy']:+.2f}", "proxy_after", "+.2f")
    row("KL to pi_SFT (nats/reply)", "0", "kl_final", ".2f")
    row("reply length (tokens)", f"{sft['reply_len']:.1f}", "reply_len_after", ".1f")
    row("final beta", "-", "beta_final", ".3g")
    row("max oracle rel. discrepancy", "-", "oracle_max", ".1e")
    rm = summary["reward_model"]
    mx = summary["max_oracle_discrepancy"]
    table.caption = (
        f"RM held-out pairwise accuracy {rm['rm_accuracy']:.1%}; oracle max "
        f"{'n/a' if mx is None else f'{mx:.1e}'} (tolerance {summary['oracle_rtol']:.0e}); "
        f"wall time {summary['wall_time_s']:.0f} s on {summary['device']}"
    )
    return table
