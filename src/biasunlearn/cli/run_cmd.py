"""``biasunlearn run``: the main job. Evaluate, train, evaluate again, report."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any

from biasunlearn.config import add_dataclass_arguments, build_config
from biasunlearn.train import TrainConfig, with_preset

QUICK_EVAL_LIMIT = 60


@dataclass
class RunConfig:
    """Options of ``biasunlearn run`` (every option of ``train`` is accepted as well).

    Attributes:
        benchmarks: benchmarks evaluated before and after training.
        eval_limit: evaluate only the first N examples per task / pairs (0 = all; the quick preset uses 60).
        train: training options.
    """

    benchmarks: str = "stereoset,crows_pairs,crows_pairs_unmodified"
    eval_limit: int = -1
    train: TrainConfig = field(default_factory=TrainConfig)


def _transform(values: dict[str, Any]) -> dict[str, Any]:
    values["train"] = with_preset(values.get("train", {}))
    if values.get("eval_limit", -1) == -1:
        values["eval_limit"] = QUICK_EVAL_LIMIT if values["train"].get("preset") == "quick" else 0
    return values


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="the main job: evaluate, train BiasUnlearn, evaluate again, write a report",
        description="Evaluate the model on the report split, train an adapter, evaluate with it, and write "
        "OUT/report.md with plots.",
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (flags override it)")
    add_dataclass_arguments(p, RunConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from biasunlearn.cli.eval_cmd import format_tables
    from biasunlearn.evaluation import EvalConfig, evaluate
    from biasunlearn.report.run_report import write_run_report
    from biasunlearn.train import read_train_log, train

    cfg = build_config(RunConfig, args, args.config, transform=_transform)
    t = cfg.train
    out = Path(t.out)

    def ev(adapter: str, sub: str) -> dict[str, Any]:
        return evaluate(EvalConfig(model=t.model, adapter=adapter, benchmarks=cfg.benchmarks, split="report",
                                   limit=cfg.eval_limit, out=str(out / sub), data_dir=t.data_dir, seed=t.seed,
                                   dtype=t.dtype, device=t.device, cache_dir=t.cache_dir,
                                   trust_remote_code=t.trust_remote_code))

    before = ev("", "before")
    print(format_tables(before))
    rec = train(t)
    after = ev(str(out / "adapter"), "after")
    print(format_tables(after))
    command = "biasunlearn " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else "biasunlearn run"
    path = write_run_report(out, before, after, rec, read_train_log(out), command)
    print(f"\nreport: {path}")
    return 0
