"""SS split by sentiment direction: does a debiased model prefer the anti-stereotype, or just the nicer sentence?

Each StereoSet example is sorted by whether its stereotype is the more positive sentence of the pair, the
more negative one, or neither (VADER valence, :mod:`biasunlearn.data.sentiment`). For the gold file the
predictions were made on, the script prints a Markdown table of SS per bias type and direction, before and
after each given run; with ``--count`` it first prints how many examples of each file fall in each direction.

    python scripts/stereoset_sentiment.py --gold ../shared/data/stereoset/dev.json \\
        --count ../shared/data/stereoset/test.json --count ../shared/data/stereoset/dev.json \\
        --before results/base-smollm2/stereoset_predictions.json \\
        --after exp6=results/biasunlearn-smollm2/stereoset_predictions.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from biasunlearn.data.sentiment import DIRECTIONS, group_by_direction
from biasunlearn.data.stereoset import BIAS_TYPES, StereoExample, load_stereoset
from biasunlearn.errors import BiasUnlearnError
from biasunlearn.metrics.stereoset import read_predictions, ss_of_groups


def _load(path: Path, flag: str) -> list[StereoExample]:
    try:
        return list(load_stereoset(path))
    except BiasUnlearnError as e:
        sys.exit(f"{flag}: {e}")


def _groups() -> list[str]:
    return [*BIAS_TYPES, "all"]


def count_table(files: dict[str, list[StereoExample]], targets_of: str = "") -> list[str]:
    """Markdown rows: per file and bias type (or target of ``targets_of``), the examples in each direction."""
    lines = [f"| file | {'target' if targets_of else 'bias type'} | "
             + " | ".join(f"stereotype {d}" for d in DIRECTIONS) + " |",
             "|---|---|" + "---:|" * len(DIRECTIONS)]
    for name, examples in files.items():
        groups = group_by_direction(examples, targets_of)
        names = sorted({g for g, _ in groups}) if targets_of else _groups()
        for g in names:
            n = [len(groups.get((g, d), [])) for d in DIRECTIONS]
            if sum(n):
                cells = " | ".join(f"{k} ({100 * k / sum(n):.0f}%)" for k in n)
                lines.append(f"| {name} | {g} | {cells} |")
    return lines


def ss_table(examples: list[StereoExample], before: dict[str, float], after: dict[str, dict[str, float]]
             ) -> list[str]:
    """Markdown rows: SS per bias type and direction, before and after each run."""
    lines = ["| bias type | stereotype is | examples | SS before | " + " | ".join(f"SS {n}" for n in after) + " |",
             "|---|---|---:|---:|" + "---:|" * len(after)]
    groups = group_by_direction(examples)
    runs = [ss_of_groups(groups, s) for s in (before, *after.values())]
    for g in _groups():
        for d in DIRECTIONS:
            if d in runs[0].get(g, {}):
                cells = " | ".join(f"{r[g][d]['SS']:.2f}" for r in runs)
                lines.append(f"| {g} | {d} | {runs[0][g][d]['Count']} | {cells} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gold", required=True, type=Path, help="the StereoSet file the predictions were made on")
    ap.add_argument("--before", required=True, type=Path, help="stereoset_predictions.json of the base model")
    ap.add_argument("--after", action="append", default=[], metavar="NAME=PATH",
                    help="stereoset_predictions.json of a debiased run, with a column name (repeatable)")
    ap.add_argument("--count", action="append", default=[], type=Path,
                    help="a StereoSet file whose examples are counted per direction (repeatable)")
    ap.add_argument("--count-targets", default="", metavar="BIAS_TYPE",
                    help="also count the --count files per target of this bias type")
    args = ap.parse_args(argv)
    if args.count_targets and args.count_targets not in BIAS_TYPES:
        sys.exit(f"--count-targets: expected one of {', '.join(BIAS_TYPES)}, got {args.count_targets!r}")
    after_paths: dict[str, Path] = {}
    for spec in args.after:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            sys.exit(f"--after: expected NAME=PATH, got {spec!r}")
        after_paths[name] = Path(path)
    try:
        before = read_predictions(args.before)
        after = {n: read_predictions(p) for n, p in after_paths.items()}
    except BiasUnlearnError as e:
        sys.exit(str(e))
    examples = _load(args.gold, "--gold")
    for name, scores in [("--before", before), *((f"--after {n}", s) for n, s in after.items())]:
        missing = [s.id for e in examples for s in e.sentences if s.id not in scores]
        if missing:
            sys.exit(f"{name}: {len(missing)} sentences of {args.gold} have no score (first: {missing[0]})")
    if args.count:
        files = {str(p): _load(p, "--count") for p in args.count}
        print("\n".join(count_table(files)))
        print()
        if args.count_targets:
            print("\n".join(count_table(files, args.count_targets)))
            print()
    print("\n".join(ss_table(examples, before, after)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
