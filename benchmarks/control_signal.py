"""How well each control statistic separates a bias type from 50, from one evaluation's StereoSet scores.

For every report-split example, ``d`` = log score(stereotype) − log score(anti-stereotype) (the
geometric-mean scores of ``stereoset_predictions.json``, so ``d`` is the difference of mean token
log-probability). Per bias type it prints, in standard errors from "no preference": SS (sign of ``d``,
binomial s.e.), the mean of ``d`` (its s.e.), and the soft SS ``mean σ(d/τ)`` (its s.e.).

    python benchmarks/control_signal.py --predictions results/base-smollm2/stereoset_predictions.json \
        --gold ../shared/data/stereoset/dev.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictions", required=True)
    ap.add_argument("--gold", required=True)
    ap.add_argument("--tau", type=float, default=0.1)
    args = ap.parse_args()
    pred = json.loads(Path(args.predictions).read_text())
    score = {r["id"]: r["score"] for task in pred for r in pred[task]}
    gold = json.loads(Path(args.gold).read_text())["data"]
    rows = []
    for task in gold:
        for e in gold[task]:
            lab = {s["gold_label"]: s["id"] for s in e["sentences"]}
            rows.append((e["bias_type"], math.log(score[lab["stereotype"]]) - math.log(score[lab["anti-stereotype"]])))
    print("type n | SS (z) | mean gap (z) | soft SS (z)")
    for bt in ["gender", "profession", "race", "religion", None]:
        d = np.array([g for t, g in rows if bt is None or t == bt])
        n = len(d)
        ss = (d > 0).mean()
        p = 1.0 / (1.0 + np.exp(-d / args.tau))
        print(f"{bt or 'all'} {n} | {100 * ss:.1f} ({(ss - 0.5) / math.sqrt(0.25 / n):.1f}) | "
              f"{d.mean():.3f} ({d.mean() / (d.std(ddof=1) / math.sqrt(n)):.1f}) | "
              f"{100 * p.mean():.1f} ({(p.mean() - 0.5) / (p.std(ddof=1) / math.sqrt(n)):.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
