"""Print a Markdown table of both CrowS-Pairs scores (whole sentence, unmodified tokens) per run.

Usage: python scripts/crows_scores_table.py base=results/base-smollm2/results.json,runs/crowsu/base/results.json \
           exp50=results/main-smollm2/after/results.json ...

Each argument is ``NAME=FILE[,FILE...]``: the benchmarks of the files are merged (a run's CrowS-Pairs scored
whole in one evaluation and on unmodified tokens in another). The first argument is the base model; every
other row marks with ``*`` the figures that are closer to 50 than the base model's.
"""

from __future__ import annotations

import argparse
import json

TYPES = ("gender", "race-color", "religion")
KEYS = (("crows_pairs", "whole"), ("crows_pairs_unmodified", "unmodified"))


def load(spec: str) -> tuple[str, dict]:
    if "=" not in spec:
        raise SystemExit(f"argument {spec!r}: expected NAME=FILE[,FILE...]")
    name, files = spec.split("=", 1)
    bench: dict = {}
    for f in files.split(","):
        with open(f) as fh:
            bench.update(json.load(fh)["benchmarks"])
    return name, bench


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="NAME=FILE[,FILE...]; the first is the base model")
    rows = [load(s) for s in ap.parse_args(argv).runs]
    base = rows[0][1]
    head = [f"{how} {t}" for _, how in KEYS for t in TYPES]
    print("| run | " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(head))
    for name, bench in rows:
        cells = []
        for key, _ in KEYS:
            for t in TYPES:
                if key not in bench:
                    cells.append("–")
                    continue
                v = bench[key]["metrics"][t]["SS"]
                closer = bench is not base and abs(v - 50) < abs(base[key]["metrics"][t]["SS"] - 50)
                cells.append(f"{v:.2f}" + ("*" if closer else ""))
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
