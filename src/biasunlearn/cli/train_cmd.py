"""``biasunlearn train``: train a BiasUnlearn (or ablation / baseline) LoRA adapter."""

from __future__ import annotations

import argparse

from biasunlearn.config import add_dataclass_arguments, build_config
from biasunlearn.train import TrainConfig, with_preset


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a debiasing LoRA adapter (BiasUnlearn, its ablations, GA/NPO/GradDiff)",
        description="Train a LoRA adapter on the StereoSet train split; writes OUT/adapter, checkpoints and a log.",
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (flags override it)")
    add_dataclass_arguments(p, TrainConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from biasunlearn.train import train

    cfg = build_config(TrainConfig, args, args.config, transform=with_preset)
    rec = train(cfg)
    sel = rec["selected"]
    print(f"adapter: {cfg.out}/adapter  (method {rec['method']}, {rec['steps']} steps, {rec['train_seconds']} s; "
          f"kept step {sel.get('step')}" + (f", control ICAT {sel['ICAT']:.2f})" if "ICAT" in sel else ")"))
    return 0
