"""Mean and sample standard deviation of the headline StereoSet figures over several runs (seeds).

Usage: python scripts/seed_spread.py NAME=RESULTS_JSON [NAME=RESULTS_JSON ...]
       [--base results/base-smollm2/results.json]
Prints overall SS, gender SS, ΔLMS (against --base's LMS) and ICAT per run, then mean ± sample SD.
"""

from __future__ import annotations

import argparse
import json
import statistics

FIGURES = ("SS", "gender", "ΔLMS", "ICAT")


def figures(results: dict, base_lms: float) -> dict[str, float]:
    both = results["benchmarks"]["stereoset"]["metrics"]["both"]
    return {"SS": both["overall"]["SS"], "gender": both["gender"]["SS"],
            "ΔLMS": both["overall"]["LMS"] - base_lms, "ICAT": both["overall"]["ICAT"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=RESULTS_JSON")
    ap.add_argument("--base", default="results/base-smollm2/results.json")
    a = ap.parse_args(argv)
    if any("=" not in r for r in a.runs):
        ap.error(f"each run must be NAME=FILE, got {[r for r in a.runs if '=' not in r]}")
    if len(a.runs) < 2:
        ap.error("a spread needs at least two runs")
    with open(a.base) as fh:
        base_lms = json.load(fh)["benchmarks"]["stereoset"]["metrics"]["both"]["overall"]["LMS"]
    rows = {}
    for r in a.runs:
        name, path = r.split("=", 1)
        with open(path) as fh:
            rows[name] = figures(json.load(fh), base_lms)
    print("| run | " + " | ".join(FIGURES) + " |")
    print("|---|" + "---:|" * len(FIGURES))
    for name, f in rows.items():
        print(f"| {name} | " + " | ".join(f"{f[k]:.2f}" for k in FIGURES) + " |")
    spread = [f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}"
              for v in ([f[k] for f in rows.values()] for k in FIGURES)]
    print("| mean ± SD | " + " | ".join(spread) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
