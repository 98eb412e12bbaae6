"""``biasunlearn transfer``: load a debiasing adapter into a sibling model, after a compatibility check."""

from __future__ import annotations

import argparse

from biasunlearn.config import add_dataclass_arguments, build_config
from biasunlearn.transfer import TransferConfig


def add_parser(sub) -> None:
    p = sub.add_parser(
        "transfer",
        help="transfer a debiasing adapter to another (sibling) model",
        description="Check that an adapter fits another model (architecture, module names, tensor shapes, "
                    "tokenizer), then load it there, optionally merge and save it, and evaluate.",
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (flags override it)")
    add_dataclass_arguments(p, TransferConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from biasunlearn.cli.eval_cmd import format_tables
    from biasunlearn.transfer import transfer

    cfg = build_config(TransferConfig, args, args.config)
    rec = transfer(cfg)
    comp = rec["compatibility"]
    print(f"compatible: checked {', '.join(comp['checked'])}")
    if "eval" in rec:
        print(format_tables({"model": {"name": cfg.to_model}, "adapter": rec["adapter"],
                             "config": {"split": "report"}, "benchmarks": rec["eval"]}))
    if cfg.out:
        print(f"wrote {cfg.out}/transfer.json")
    return 0
