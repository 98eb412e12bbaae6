"""``biasunlearn compare``: methods side by side on the same model, data and metrics."""

from __future__ import annotations

import argparse

from biasunlearn.compare import CompareConfig
from biasunlearn.config import add_dataclass_arguments, build_config


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="compare debiasing methods (tables, bar chart, SS-vs-step curves, inference cost)",
        description="Evaluate (training where needed) every --methods entry on the same model and report split; "
                    "writes results.csv, tables.md and plots to --out.",
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (flags override it)")
    add_dataclass_arguments(p, CompareConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from biasunlearn.compare import compare, stereoset_comparison_table

    cfg = build_config(CompareConfig, args, args.config)
    res = compare(cfg)
    print(stereoset_comparison_table(res["results"]))
    print(f"\nwrote {Path(cfg.train.out) / 'tables.md'}")
    return 0
