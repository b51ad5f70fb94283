"""Everything the docs compute at build time: figures and tables from ``rlhf_oracle.reference``.

Nothing here is typed by hand into a page: the pages hold markers (``<!-- plot: NAME -->``,
``<!-- table: NAME -->``) that :mod:`mkdocs_hooks` replaces with the output of the functions below, so a page
cannot drift from the code. Every function takes the page language (``"en"`` or ``"zh"``).
"""

from __future__ import annotations

import base64
import inspect
import io
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rlhf_oracle import reference as ref

Lang = str


def _tr(lang: Lang, en: str, zh: str) -> str:
    return zh if lang == "zh" else en


# ----------------------------------------------------------------------------------------------------------------
# figures (matplotlib, Agg, SVG embedded as a data URI: no binary file in the repository, no extra request)


def _svg_data_uri(fig: object) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


CJK_FONT_HINTS = ("WenQuanYi", "Noto Sans CJK", "Noto Serif CJK", "Source Han", "Droid Sans Fallback", "SimHei")


def _cjk_font() -> str | None:
    """A font with Chinese glyphs known to matplotlib, if the machine has one."""
    from matplotlib import font_manager

    names = sorted({f.name for f in font_manager.fontManager.ttflist if f.name.startswith(CJK_FONT_HINTS)})
    return names[0] if names else None


def _pyplot(lang: Lang):  # type: ignore[no-untyped-def]
    """pyplot, set up for the page language; returns (plt, the language the labels can be written in).

    The SVG holds text as paths, so the browser needs no font; matplotlib needs one with Chinese glyphs to draw
    Chinese labels. Without one (a bare CI machine), the Chinese page gets the English labels, not empty boxes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cjk = _cjk_font() if lang == "zh" else None
    plt.rcParams.update(
        {
            "svg.hashsalt": "rlhf_oracle",
            "svg.fonttype": "path",
            "font.size": 9,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "font.family": ["DejaVu Sans", cjk] if cjk else ["DejaVu Sans"],
        }
    )
    return plt, ("zh" if cjk else "en")


def plot_ppo_clip(lang: Lang) -> tuple[str, str]:
    """Objective and gradient of PPO-Clip against r, for A = +1 and A = -1 (eps = 0.2)."""
    page_lang, (plt, lang) = lang, _pyplot(lang)  # lang: the language of the labels
    eps = 0.2
    r = np.linspace(0.3, 1.8, 601)
    logp, logp_old = np.log(r), np.zeros_like(r)
    fig, axes = plt.subplots(2, 2, figsize=(8.0, 5.2), sharex=True)
    for col, adv_value in enumerate((1.0, -1.0)):
        adv = np.full_like(r, adv_value)
        objective = ref.ppo_clip_objective(logp, logp_old, adv, eps)
        grad = ref.ppo_clip_grad(logp, logp_old, adv, eps)
        ax = axes[0, col]
        ax.plot(r, r * adv_value, color="0.6", ls="--", lw=1, label=_tr(lang, "unclipped $rA$", "未截断 r·A"))
        ax.plot(r, objective, color="C0", lw=2, label=r"$L^{CLIP}$")
        ax.set_title(f"$A = {adv_value:+g}$, $\\epsilon = {eps}$")
        ax.set_ylabel(_tr(lang, "objective", "目标函数"))
        ax.legend(loc="best", fontsize=8)
        ax = axes[1, col]
        ax.plot(r, grad, color="C3", lw=2, label=r"$\partial L^{CLIP} / \partial \log\pi$")
        ax.set_xlabel(r"$r = \pi_\theta / \pi_{\theta_{old}}$")
        ax.set_ylabel(_tr(lang, "gradient", "梯度"))
        ax.legend(loc="best", fontsize=8)
        for a in axes[:, col]:
            for bound in (1 - eps, 1 + eps):
                a.axvline(bound, color="0.3", lw=0.8, ls=":")
            flat = (1 + eps, r[-1]) if adv_value > 0 else (r[0], 1 - eps)
            a.axvspan(*flat, color="C1", alpha=0.12)
    fig.tight_layout()
    alt = _tr(
        page_lang,
        "PPO-Clip objective and its gradient against r for A = +1 and A = -1",
        "A = +1 与 A = -1 时 PPO-Clip 目标函数及其梯度随 r 的变化",
    )
    return _svg_data_uri(fig), alt


def plot_kl_estimators(lang: Lang) -> tuple[str, str]:
    """k1, k2, k3 and abs as functions of the log-ratio Delta = log pi - log pi_ref."""
    page_lang, (plt, lang) = lang, _pyplot(lang)  # lang: the language of the labels
    delta = np.linspace(-2.0, 2.0, 401)
    zeros = np.zeros_like(delta)
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    for kind, color in zip(ref.KL_ESTIMATORS, ("C0", "C1", "C2", "C3"), strict=True):
        style = ":" if kind == "abs" else "-"
        ax.plot(delta, ref.kl_estimate(delta, zeros, kind), color=color, lw=2, ls=style, label=_kl_label(kind, "$"))
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xlabel(r"$\Delta = \log\pi_\theta(o_t|\cdot) - \log\pi_{ref}(o_t|\cdot)$")
    ax.set_ylabel(_tr(lang, "per-token estimate", "逐 token 估计值"))
    ax.set_ylim(-2.2, 4.5)
    ax.legend()
    fig.tight_layout()
    return _svg_data_uri(fig), _tr(page_lang, "The KL estimators against the log-ratio", "各 KL 估计量随对数比的变化")


def _kl_label(kind: str, math: str = "$") -> str:
    """k_1 / |Delta| as inline maths."""
    return f"{math}|\\Delta|{math}" if kind == "abs" else f"{math}k_{kind[1]}{math}"


def plot_pairwise_loss(lang: Lang) -> tuple[str, str]:
    """-log sigmoid(Delta) and its derivative sigmoid(Delta) - 1, from reference.reward_model_loss."""
    page_lang, (plt, lang) = lang, _pyplot(lang)  # lang: the language of the labels
    gaps = np.linspace(-5.0, 5.0, 201)
    loss = np.array([ref.reward_model_loss([g], [0.0]) for g in gaps])
    h = 1e-5
    slope = np.array(
        [(ref.reward_model_loss([g + h], [0.0]) - ref.reward_model_loss([g - h], [0.0])) / (2 * h) for g in gaps]
    )
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    ax.plot(gaps, loss, lw=2, label=r"$-\log\sigma(\Delta)$")
    ax.plot(gaps, slope, lw=2, ls="--", label=_tr(lang, r"slope (central difference)", r"斜率（中心差分）"))
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xlabel(r"$\Delta = r_\theta(x, y_w) - r_\theta(x, y_l)$")
    ax.legend()
    fig.tight_layout()
    return _svg_data_uri(fig), _tr(page_lang, "Pairwise reward-model loss and its slope", "成对奖励模型损失及其斜率")


PLOTS: dict[str, Callable[[Lang], tuple[str, str]]] = {
    "ppo_clip": plot_ppo_clip,
    "kl_estimators": plot_kl_estimators,
    "pairwise_loss": plot_pairwise_loss,
}


# ----------------------------------------------------------------------------------------------------------------
# tables (Markdown)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


#: the worked example of the aggregation page: a short and a long response, padded to T = 6
AGG_MASK = np.array([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=bool)
AGG_LOSS = np.array([[-1.0, -1.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])


def aggregation_weights() -> dict[str, tuple[float, float, float]]:
    """Per mode: (weight of one token of the short row, of the long row, aggregate of AGG_LOSS)."""
    out = {}
    for mode in ref.AGGREGATION_MODES:
        weights = []
        for b in range(2):
            one_hot = np.zeros_like(AGG_LOSS)
            one_hot[b, 0] = 1.0
            weights.append(ref.aggregate(one_hot, AGG_MASK, mode))
        out[mode] = (weights[0], weights[1], ref.aggregate(AGG_LOSS, AGG_MASK, mode))
    return out


def table_aggregation(lang: Lang) -> str:
    header = [
        _tr(lang, "mode", "模式"),
        _tr(lang, "weight of one token, short row (|o|=2)", "短序列 (|o|=2) 单个 token 的权重"),
        _tr(lang, "weight of one token, long row (|o|=6)", "长序列 (|o|=6) 单个 token 的权重"),
        _tr(lang, "long row / short row, whole sequence", "整条序列：长 / 短"),
        _tr(lang, "loss of the example", "示例的损失值"),
    ]
    rows = []
    for mode, (w_short, w_long, value) in aggregation_weights().items():
        seq_ratio = (6 * w_long) / (2 * w_short)
        rows.append([f"`{mode}`", _fmt(w_short), _fmt(w_long), _fmt(seq_ratio), _fmt(value)])
    return _table(header, rows)


#: Schulman's blog, tables A and B (bias/true and stdev/true of each estimator), as printed there
SCHULMAN_PRINTED = {
    0.1: {"k1": (0.0, 20.0), "k2": (0.002, 1.42), "k3": (0.0, 1.42)},
    1.0: {"k1": (0.0, 2.0), "k2": (0.25, 1.73), "k3": (0.0, 1.7)},
}


def kl_estimator_moments(mu: float, n_nodes: int = 160) -> dict[str, tuple[float, float]]:
    """Exact (Gauss-Hermite) bias/true and stdev/true of k1, k2, k3 for q = N(0,1), p = N(mu,1), x ~ q.

    The estimators come from ``reference.kl_estimate`` with ``logp = log q(x)`` (the sampling policy) and
    ``logp_ref = log p(x)``; the true KL(q || p) is mu^2 / 2.
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_nodes)
    weights = weights / weights.sum()
    logq = -0.5 * nodes**2
    logp = -0.5 * (nodes - mu) ** 2
    true_kl = mu**2 / 2
    out = {}
    for kind in ref.KL_ESTIMATORS:
        k = ref.kl_estimate(logq, logp, kind)
        mean = float(weights @ k)
        std = math.sqrt(float(weights @ (k - mean) ** 2))
        out[kind] = ((mean - true_kl) / true_kl, std / true_kl)
    return out


def table_kl_estimators(lang: Lang) -> str:
    header = [
        _tr(lang, "estimator", "估计量"),
        _tr(lang, "sign", "符号"),
        *[
            _tr(lang, f"{label} {mu:g}: {stat}", f"{label_zh} {mu:g}：{stat}")
            for mu, label, label_zh in ((0.1, "μ =", "μ ="), (1.0, "μ =", "μ ="))
            for stat in ("bias/KL", "stdev/KL")
        ],
    ]
    signs = {
        "k1": _tr(lang, "either (negative for about half the samples)", "可正可负（约一半样本为负）"),
        "k2": "≥ 0",
        "k3": "≥ 0",
        "abs": "≥ 0",
    }
    computed = {mu: kl_estimator_moments(mu) for mu in (0.1, 1.0)}
    rows = []
    for kind in ref.KL_ESTIMATORS:
        cells = [_kl_label(kind), signs[kind]]
        for mu in (0.1, 1.0):
            bias, std = computed[mu][kind]
            printed = SCHULMAN_PRINTED[mu].get(kind)  # abs is not in Schulman's table
            bias = 0.0 if abs(bias) < 5e-5 else bias  # no "-0.0000" for an unbiased estimator
            cells.append(f"{bias:.4f}" + ("" if printed is None else f" ({printed[0]:g})"))
            cells.append(f"{std:.4f}" + ("" if printed is None else f" ({printed[1]:g})"))
        rows.append(cells)
    return _table(header, rows)


def table_ranking_normaliser(lang: Lang) -> str:
    header = [
        "K",
        _tr(lang, "comparisons C(K,2)", "比较对数 C(K,2)"),
        "K/2",
        "C(K,2) / (K/2)",
        _tr(lang, "`ranking_loss` at equal rewards", "奖励全相等时的 `ranking_loss`"),
        _tr(lang, "same sum divided by K/2", "同一求和除以 K/2"),
    ]
    rows = []
    for k in range(2, 10):
        pairs = math.comb(k, 2)
        loss = ref.ranking_loss(np.zeros((1, k)))
        rows.append(
            [str(k), str(pairs), f"{k / 2:g}", f"{pairs / (k / 2):g}", f"{loss:.4f}", f"{loss * pairs / (k / 2):.4f}"]
        )
    return _table(header, rows)


def table_audit(lang: Lang) -> str:
    """The conformance matrix of the committed audit snapshot ``docs/data/audit.json`` (written by
    ``rlhf-oracle audit all --format json --output docs/data/audit.json``; a slow test re-runs the audit and
    compares the verdicts with it)."""
    from rlhf_oracle.audit.matrix import render_markdown, rows_from_json

    path = Path(__file__).resolve().parents[2] / "docs" / "data" / "audit.json"
    return render_markdown(rows_from_json(path.read_text(encoding="utf-8")))


def _plain_signature(obj: object) -> inspect.Signature:
    """The signature without annotations (defaults, kinds and order are the contract)."""
    sig = inspect.signature(obj)  # type: ignore[arg-type]
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return sig.replace(parameters=params, return_annotation=inspect.Signature.empty)


def _paragraph(doc: str, prefix: str) -> str:
    for block in doc.split("\n\n"):
        if block.strip().startswith(prefix):
            text = " ".join(line.strip() for line in block.strip().splitlines())
            return text[len(prefix) :].strip(" :")
    return ""


def _md_cell(text: str) -> str:
    text = re.sub(r":math:`([^`]*)`", r"$\1$", text)
    text = text.replace("|", "\\|").replace(":func:", "").replace(":data:", "").replace(":class:", "")
    return text.replace("``", "`")


def catalogue_rows() -> list[tuple[str, str, str, str, str]]:
    """Per public callable of ``rlhf_oracle.reference``: (name, signature, summary, shapes, source), read from the
    code. Raises when the torch twin's signature differs (a twin-only or reference-only name is allowed for the
    documented exceptions: classes with state and the twin's fused functions)."""
    from rlhf_oracle import torch_impl as ti

    rows = []
    for name in ref.__all__:
        obj = getattr(ref, name)
        if not callable(obj) or (inspect.isclass(obj) and issubclass(obj, tuple)):
            continue  # constants and result tuples
        sig = _plain_signature(obj)
        twin = getattr(ti, name, None)
        if twin is None:
            raise ValueError(f"api contract: {name} has no torch twin")
        twin_params = list(_plain_signature(twin).parameters.values())
        shared, extra = twin_params[: len(sig.parameters)], twin_params[len(sig.parameters) :]
        if shared != list(sig.parameters.values()) or any(
            p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is inspect.Parameter.empty for p in extra
        ):  # the twin may add keyword-only tuning knobs with defaults (chunk_size), nothing else
            raise ValueError(f"api contract: torch_impl.{name}{_plain_signature(twin)} differs from reference {sig}")
        doc = inspect.getdoc(obj) or ""
        summary = doc.splitlines()[0] if doc else ""
        rows.append((name, f"{name}{sig}", summary, _paragraph(doc, "Shapes"), _paragraph(doc, "Source")))
    return rows


def table_catalogue(lang: Lang) -> str:
    """The catalogue of the API contract: every formula's exact signature (generated; the twin's must be the same)."""
    header = [
        _tr(lang, "signature (reference = torch twin)", "签名（reference 与 torch 孪生实现相同）"),
        _tr(lang, "what it computes", "计算内容"),
        _tr(lang, "shapes", "形状"),
        _tr(lang, "source", "出处"),
    ]
    rows = [
        [f"[`{sig}`][rlhf_oracle.reference.{name}]", _md_cell(summary), _md_cell(shapes), _md_cell(source)]
        for name, sig, summary, shapes, source in catalogue_rows()
    ]
    return _table(header, rows)


TABLES: dict[str, Callable[[Lang], str]] = {
    "audit": table_audit,
    "catalogue": table_catalogue,
    "aggregation": table_aggregation,
    "kl_estimators": table_kl_estimators,
    "ranking_normaliser": table_ranking_normaliser,
}
