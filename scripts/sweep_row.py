"""Print one row of the README's sweep table from a run's results.json.

Usage: python scripts/sweep_row.py NAME RESULTS_JSON [--base results/base-smollm2/results.json]
(ΔLMS is taken against the base model's LMS in --base.)
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("name")
    ap.add_argument("results")
    ap.add_argument("--base", default="results/base-smollm2/results.json")
    a = ap.parse_args()
    with open(a.results) as fh:
        bench = json.load(fh)["benchmarks"]
    with open(a.base) as fh:
        base_lms = json.load(fh)["benchmarks"]["stereoset"]["metrics"]["both"]["overall"]["LMS"]
    st = bench["stereoset"]["metrics"]
    overall = st["both"]["overall"]
    crows = bench["crows_pairs"]["metrics"]
    row = [a.name] + [f"{st[t]['overall']['SS']:.2f}" for t in ("both", "intrasentence", "intersentence")]
    row += [f"{st['both'][t]['SS']:.2f}" for t in ("gender", "profession", "race", "religion")]
    row += [f"{overall['LMS']:.2f}", f"{overall['LMS'] - base_lms:+.2f}", f"{overall['ICAT']:.2f}"]
    row += [f"{crows[t]['SS']:.2f}" for t in ("gender", "race-color", "religion")]
    print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
