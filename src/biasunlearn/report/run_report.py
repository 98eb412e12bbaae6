"""The report of ``biasunlearn run``: before/after tables and plots of the training run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from biasunlearn.benchmarks import CROWS_SCORES
from biasunlearn.data.stereoset import BIAS_TYPES
from biasunlearn.utils import atomic_write_text

log = logging.getLogger(__name__)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def stereoset_table(before: dict[str, Any], after: dict[str, Any], task: str = "both") -> str:
    b = before["benchmarks"]["stereoset"]["metrics"][task]
    a = after["benchmarks"]["stereoset"]["metrics"][task]
    rows = ["| domain | SS before | SS after | LMS before | LMS after | ΔLMS | ICAT before | ICAT after |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for dom in [*BIAS_TYPES, "overall"]:
        if dom in b and dom in a:
            rows.append(f"| {dom} | {b[dom]['SS']:.2f} | {a[dom]['SS']:.2f} | {b[dom]['LMS']:.2f} | "
                        f"{a[dom]['LMS']:.2f} | {a[dom]['LMS'] - b[dom]['LMS']:+.2f} | {b[dom]['ICAT']:.2f} | "
                        f"{a[dom]['ICAT']:.2f} |")
    return "\n".join(rows)


def crows_table(before: dict[str, Any], after: dict[str, Any], key: str = "crows_pairs") -> str:
    b = before["benchmarks"][key]["metrics"]
    a = after["benchmarks"][key]["metrics"]
    rows = ["| bias type | n | SS before | SS after | closer to 50 |", "|---|---:|---:|---:|:---:|"]
    for k in b:
        if k in a:
            closer = "yes" if abs(a[k]["SS"] - 50) < abs(b[k]["SS"] - 50) else "no"
            rows.append(f"| {k} | {b[k]['Count']} | {b[k]['SS']:.2f} | {a[k]['SS']:.2f} | {closer} |")
    return "\n".join(rows)


def sentiment_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """SS by sentiment direction before and after (``ss_by_sentiment`` of the StereoSet results); empty when
    either result lacks it."""
    b = before["benchmarks"]["stereoset"].get("ss_by_sentiment")
    a = after["benchmarks"]["stereoset"].get("ss_by_sentiment")
    if not b or not a:
        return ""
    rows = ["| domain | stereotype is | n | SS before | SS after |", "|---|---|---:|---:|---:|"]
    for dom in [*BIAS_TYPES, "all"]:
        for d in ("positive", "negative", "neutral"):
            if d in b.get(dom, {}) and d in a.get(dom, {}):
                rows.append(f"| {dom} | {d} | {b[dom][d]['Count']} | {b[dom][d]['SS']:.2f} | {a[dom][d]['SS']:.2f} |")
    return "\n".join(rows)


def target_checks(before: dict[str, Any], after: dict[str, Any], ss_tol: float = 2.0, domain_tol: float = 4.0,
                  lms_tol: float = 2.0, crows_types: tuple[str, ...] = ("gender", "race-color", "religion"),
                  ) -> list[dict[str, Any]]:
    """The paper-level targets of a debiasing run, checked on the report split: overall SS within ``ss_tol``
    of 50, every domain within ``domain_tol``, |ΔLMS| at most ``lms_tol``, ICAT up, and CrowS-Pairs closer
    to 50 for ``crows_types``. One ``{"check", "value", "ok"}`` per target."""
    b = before["benchmarks"]["stereoset"]["metrics"]["both"]
    a = after["benchmarks"]["stereoset"]["metrics"]["both"]
    out = [{"check": f"overall SS within 50 ± {ss_tol:g}", "value": f"{a['overall']['SS']:.2f}",
            "ok": abs(a["overall"]["SS"] - 50) <= ss_tol}]
    for dom in BIAS_TYPES:
        if dom in a:
            out.append({"check": f"{dom} SS within 50 ± {domain_tol:g}", "value": f"{a[dom]['SS']:.2f}",
                        "ok": abs(a[dom]["SS"] - 50) <= domain_tol})
    dl = a["overall"]["LMS"] - b["overall"]["LMS"]
    out.append({"check": f"LMS change within ±{lms_tol:g}", "value": f"{dl:+.2f}", "ok": abs(dl) <= lms_tol})
    out.append({"check": "ICAT higher than before", "value": f"{b['overall']['ICAT']:.2f} → {a['overall']['ICAT']:.2f}",
                "ok": a["overall"]["ICAT"] > b["overall"]["ICAT"]})
    for key in CROWS_SCORES:
        if key not in before["benchmarks"] or key not in after["benchmarks"]:
            continue
        cb, ca = before["benchmarks"][key]["metrics"], after["benchmarks"][key]["metrics"]
        label = "CrowS-Pairs" if key == "crows_pairs" else "CrowS-Pairs unmodified-token"
        for t in crows_types:
            if t in cb and t in ca:
                out.append({"check": f"{label} {t} closer to 50", "value": f"{cb[t]['SS']:.2f} → {ca[t]['SS']:.2f}",
                            "ok": abs(ca[t]["SS"] - 50) < abs(cb[t]["SS"] - 50)})
    return out


def checks_table(checks: list[dict[str, Any]]) -> str:
    rows = ["| target | measured | met |", "|---|---:|:---:|"]
    rows += [f"| {c['check']} | {c['value']} | {'yes' if c['ok'] else 'no'} |" for c in checks]
    return "\n".join(rows)


def plot_ss_per_domain(before: dict[str, Any], after: dict[str, Any], path: Path) -> None:
    plt = _plt()
    b = before["benchmarks"]["stereoset"]["metrics"]["both"]
    a = after["benchmarks"]["stereoset"]["metrics"]["both"]
    doms = [d for d in [*BIAS_TYPES, "overall"] if d in b and d in a]
    x = range(len(doms))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar([i - 0.2 for i in x], [b[d]["SS"] for d in doms], width=0.4, label="before")
    ax.bar([i + 0.2 for i in x], [a[d]["SS"] for d in doms], width=0.4, label="after")
    ax.axhline(50, color="k", lw=1, ls="--", label="ideal (50)")
    ax.set_xticks(list(x), doms)
    ax.set_ylabel("StereoSet SS (%)")
    lo = min(min(b[d]["SS"], a[d]["SS"]) for d in doms)
    ax.set_ylim(max(0, min(40, lo - 5)), max(70, max(b[d]["SS"] for d in doms) + 5))
    ax.set_title("SS per domain, report split (both tasks)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bbq(before: dict[str, Any], after: dict[str, Any], path: Path) -> None:
    """BBQ bias score per category, ambiguous and disambiguated contexts, before and after (paper Figure 2)."""
    plt = _plt()
    b = before["benchmarks"]["bbq"]["metrics"]
    a = after["benchmarks"]["bbq"]["metrics"]
    cats = [c for c in b if c in a and c != "overall"] + ["overall"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(cats) + 1.6), sharey=True)
    y = range(len(cats))
    for ax, cond in zip(axes, ("ambig", "disambig"), strict=True):
        ax.barh([i + 0.2 for i in y], [b[c][f"bias_{cond}"] for c in cats], height=0.4, label="before")
        ax.barh([i - 0.2 for i in y], [a[c][f"bias_{cond}"] for c in cats], height=0.4, label="after")
        ax.axvline(0, color="k", lw=1)
        ax.set_title(f"BBQ bias score, {'ambiguous' if cond == 'ambig' else 'disambiguated'} contexts")
        ax.set_xlabel("bias score (0 = unbiased, > 0 toward the stereotype)")
    axes[0].set_yticks(list(y), cats)
    axes[0].invert_yaxis()
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loss_term_keys(train_log: list[dict[str, Any]]) -> list[str]:
    """The loss keys logged in ``train_log``: the total and the paper's three terms first, then any
    optional term (``loss_pair``, ``loss_invariance``) in the order first logged."""
    first = ["loss", "loss_forget", "loss_retain", "loss_kl"]
    seen = list(dict.fromkeys(k for r in train_log for k in r if k.startswith("loss_") and k not in first))
    return [k for k in first if any(k in r for r in train_log)] + seen


def plot_loss_terms(train_log: list[dict[str, Any]], path: Path) -> None:
    plt = _plt()
    keys = loss_term_keys(train_log)
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(3.2 * max(1, len(keys)), 3), squeeze=False)
    for ax, k in zip(axes[0], keys, strict=False):
        pts = [(r["step"], r[k]) for r in train_log if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1)
        ax.set_title(k.replace("loss_", "") if k != "loss" else "total")
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_control(history: list[dict[str, Any]], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    steps = [h["step"] for h in history]
    for t in history[0]["types"] if history else []:
        if all(t in h["types"] for h in history):
            axes[0].plot(steps, [h["types"][t]["SS"] for h in history], marker=".", label=t)
            key = "soft_ss" if "soft_ss" in history[0]["types"][t] else "gap"
            axes[1].plot(steps, [h["types"][t][key] for h in history], marker=".", label=t)
    for h in history:
        for t in h.get("changed", []):
            state = "swap" if h["swapped"].get(t) else "unswap"
            axes[0].axvline(h["step"], color="grey", lw=0.6, ls=":")
            axes[0].annotate(f"{state} {t}", (h["step"], 50), fontsize=6, rotation=90, va="bottom")
    axes[0].axhline(50, color="k", lw=1, ls="--")
    axes[0].set_title("control SS per type (dotted: swaps)")
    soft = bool(history) and "soft_ss" in next(iter(history[0]["types"].values()), {})
    axes[1].axhline(50 if soft else 0, color="k", lw=1, ls="--")
    axes[1].set_title("control soft SS per type" if soft else "control log-prob gap (stereo - anti)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_run_report(out: Path, before: dict[str, Any], after: dict[str, Any], provenance: dict[str, Any],
                     train_log: list[dict[str, Any]], command: str) -> Path:
    """Write ``report.md`` and its plots into ``out``; returns the Markdown path."""
    out = Path(out)
    plot_ss_per_domain(before, after, out / "ss_per_domain.png")
    plot_loss_terms(train_log, out / "loss_terms.png")
    if provenance.get("control_history"):
        plot_control(provenance["control_history"], out / "control.png")
    has_bbq = "bbq" in before["benchmarks"] and "bbq" in after["benchmarks"]
    if has_bbq:
        plot_bbq(before, after, out / "bbq.png")
    sel = provenance.get("selected", {})
    lines = [
        f"# biasunlearn run: {provenance['base_model']['name']}",
        "",
        f"Command: `{command}`",
        "",
        f"Method `{provenance['method']}`, {provenance['steps']} steps in {provenance['train_seconds']} s; "
        f"adapter kept from step {sel.get('step')}"
        + (f" (control ICAT {sel['ICAT']:.2f})." if "ICAT" in sel else "."),
        "",
        "## Targets (report split)",
        "",
        checks_table(target_checks(before, after)),
        "",
        "## StereoSet, report split (dev.json), both tasks",
        "",
        stereoset_table(before, after),
        "",
    ]
    for task in ("intrasentence", "intersentence"):
        if task in before["benchmarks"]["stereoset"]["metrics"]:
            lines += [f"### {task}", "", stereoset_table(before, after, task), ""]
    sentiment = sentiment_table(before, after)
    if sentiment:
        lines += ["### SS by sentiment direction", "",
                  "Pairs whose stereotype is the more pleasant sentence (positive), the less pleasant one "
                  "(negative) or neither (VADER valence). If SS falls only on the negative pairs, the model "
                  "has learned to prefer pleasant sentences rather than to drop the stereotype.", "",
                  sentiment, ""]
    for key, how in CROWS_SCORES.items():
        if key in before["benchmarks"] and key in after["benchmarks"]:
            lines += [f"## CrowS-Pairs, {how} (% preferring the stereotype; 50 ideal)", ""]
            if key == "crows_pairs_unmodified":
                lines += ["Only the tokens the two sentences share are scored, each conditioned on the words "
                          "before it, the modified (group) words included; the modified words themselves are "
                          "not scored, so a change in how likely a group's own words are does not move it.", ""]
            lines += [crows_table(before, after, key), ""]
    lines += ["## Plots", "", "![SS per domain](ss_per_domain.png)", "", "![loss terms](loss_terms.png)", ""]
    if provenance.get("control_history"):
        lines += ["![control signal](control.png)", ""]
    if has_bbq:
        lines += ["![BBQ bias scores](bbq.png)", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
