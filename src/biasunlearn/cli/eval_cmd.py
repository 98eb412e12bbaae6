"""``biasunlearn eval``: bias evaluation of a model, optionally with an adapter."""

from __future__ import annotations

import argparse
from typing import Any

from biasunlearn.benchmarks import CROWS_SCORES
from biasunlearn.config import add_dataclass_arguments, build_config
from biasunlearn.evaluation import EvalConfig


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate bias (StereoSet SS/LMS/ICAT, CrowS-Pairs, BBQ) of a model",
        description="Evaluate a model on bias benchmarks; writes results.json and predictions files to --out.",
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (flags override it)")
    add_dataclass_arguments(p, EvalConfig)
    p.set_defaults(func=run)


def format_tables(results: dict[str, Any]) -> str:
    """Plain-text tables of the results (StereoSet per task and domain, CrowS-Pairs per type, BBQ per category)."""
    lines: list[str] = []
    model = results.get("model", {}).get("name", "?")
    adapter = results.get("adapter")
    lines.append(f"model: {model}" + (f"  adapter: {adapter['path']}" if adapter else ""))
    bm = results["benchmarks"]
    if "stereoset" in bm:
        st = bm["stereoset"]["metrics"]
        lines.append(f"\nStereoSet ({results['config']['split']} split, {bm['stereoset']['n_items']} examples)")
        lines.append(f"{'task':<15}{'domain':<12}{'n':>6}{'SS':>8}{'LMS':>8}{'ICAT':>8}")
        for task, doms in st.items():
            for dom, m in doms.items():
                lines.append(f"{task:<15}{dom:<12}{m['Count']:>6}{m['SS']:>8.2f}{m['LMS']:>8.2f}{m['ICAT']:>8.2f}")
    for key, how in CROWS_SCORES.items():
        if key not in bm:
            continue
        lines.append(f"\nCrowS-Pairs, {how} ({bm[key]['n_items']} pairs; % preferring the stereotype, 50 ideal)")
        lines.append(f"{'bias type':<22}{'n':>6}{'SS':>8}")
        for k, m in bm[key]["metrics"].items():
            lines.append(f"{k:<22}{m['Count']:>6}{m['SS']:>8.2f}")
    if "bbq" in bm:
        bq = bm["bbq"]["metrics"]
        lines.append(f"\nBBQ ({bm['bbq']['n_items']} examples; accuracy %; bias x100 in [-100, 100], 0 ideal, "
                     "> 0 toward the stereotype)")
        lines.append(f"{'category':<22}{'n':>6}{'acc amb':>9}{'acc dis':>9}{'bias amb':>10}{'bias dis':>10}")
        for k, m in bq.items():
            lines.append(f"{k:<22}{m['n']:>6}{m['accuracy_ambig']:>9.2f}{m['accuracy_disambig']:>9.2f}"
                         f"{m['bias_ambig']:>10.2f}{m['bias_disambig']:>10.2f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from biasunlearn.evaluation import evaluate

    cfg = build_config(EvalConfig, args, args.config)
    results = evaluate(cfg)
    print(format_tables(results))
    if cfg.out:
        print(f"\nwrote {cfg.out}/results.json")
    return 0
