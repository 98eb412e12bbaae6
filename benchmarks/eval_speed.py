"""Batched scorer vs one-sentence-at-a-time scoring, side by side in one run, on the built-in model.

Scores the same StereoSet report-split sentences both ways and prints sentences per second of each,
the speed ratio and the largest score difference (geometric-mean score and summed log-probability).

    python benchmarks/eval_speed.py --examples 100 --out results/eval_speed.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from biasunlearn.benchmarks import limit_per_task, stereoset_requests
from biasunlearn.data.paths import resolve_data_dir
from biasunlearn.data.splits import split_by_name
from biasunlearn.models import DEFAULT_MODEL, load_model_and_tokenizer
from biasunlearn.scoring import ScoringConfig, sequence_logprobs, sequence_logprobs_one_by_one
from biasunlearn.utils import atomic_write_json, package_versions


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--examples", type=int, default=100, help="report-split examples per task")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="", help="write the measurements as JSON here")
    args = ap.parse_args(argv)

    model, tok, _ = load_model_and_tokenizer(args.model)
    examples = limit_per_task(split_by_name(resolve_data_dir(args.data_dir), "report"), args.examples)
    reqs, _ = stereoset_requests(examples)
    n = len(reqs)

    rows = {}
    for name, fn in (
        ("one_at_a_time", lambda: sequence_logprobs_one_by_one(model, tok, reqs)),
        ("batched_no_prefix_sharing",
         lambda: sequence_logprobs(model, tok, reqs, ScoringConfig(batch_size=args.batch_size, share_prefix=False,
                                                                  progress=False))),
        ("batched", lambda: sequence_logprobs(model, tok, reqs, ScoringConfig(batch_size=args.batch_size,
                                                                             progress=False))),
    ):
        t = time.perf_counter()
        res = fn()
        dt = time.perf_counter() - t
        rows[name] = {"seconds": dt, "sentences_per_s": n / dt, "res": res}

    ref = rows["one_at_a_time"]["res"]
    out = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "model": args.model,
        "sentences": n,
        "torch_threads": torch.get_num_threads(),
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version()},
        "packages": package_versions(("torch", "transformers")),
        "results": {},
    }
    for name, r in rows.items():
        res = r.pop("res")
        out["results"][name] = {
            "seconds": round(r["seconds"], 2),
            "sentences_per_s": round(r["sentences_per_s"], 2),
            "speedup_vs_one_at_a_time": round(rows["one_at_a_time"]["seconds"] / r["seconds"], 2),
            "max_abs_diff_geometric_mean": float(np.abs(res.scores() - ref.scores()).max()),
            "max_abs_diff_sum_logprob": float(np.abs(res.sum_logprob - ref.sum_logprob).max()),
        }
    print(f"{n} sentences of {len(examples)} report-split examples, model {args.model}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'scorer':<28}{'s':>8}{'sent/s':>9}{'speedup':>9}{'max|dscore|':>13}{'max|dlogp|':>12}")
    for name, r in out["results"].items():
        print(f"{name:<28}{r['seconds']:>8.1f}{r['sentences_per_s']:>9.1f}{r['speedup_vs_one_at_a_time']:>8.2f}x"
              f"{r['max_abs_diff_geometric_mean']:>13.2e}{r['max_abs_diff_sum_logprob']:>12.2e}")
    if args.out:
        atomic_write_json(Path(args.out), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
