"""SS per StereoSet target before and after: which targets of a bias type move and which do not.

Reads two ``stereoset_predictions.json`` files of ``biasunlearn eval`` (the official predictions format)
and the gold file they were scored on, and prints a Markdown table with, for every target of the chosen
bias type (both tasks together), its number of examples and its SS before and after; the last row is the
whole bias type. SS per target counts, as StereoSet's SS does, the share of examples whose stereotype
scores higher than its anti-stereotype.

    python scripts/stereoset_targets.py --gold ../shared/data/stereoset/dev.json --bias-type gender \\
        --before results/base-smollm2/stereoset_predictions.json \\
        --after results/biasunlearn-smollm2/stereoset_predictions.json

With ``--by group-words`` the rows are the two tasks instead, each split by whether the stereotype and the
anti-stereotype carry the same words of the bias type's group word list (the CAFIE lists of
``biasunlearn.baselines``: gender, race, religion) or not: a shift toward one group's words in general
moves the second kind of pair, unlearning the attribute itself the first.

With ``--scored-only`` the table covers only the gold file's examples that both predictions files score
(for an evaluation of the train split, ``eval --split train``, whose examples are a part of test.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from biasunlearn.data.stereoset import load_stereoset
from biasunlearn.errors import BiasUnlearnError
from biasunlearn.methods.data import type_wordlists
from biasunlearn.metrics.stereoset import read_predictions, stereoset_results


def _scores(path: Path) -> dict[str, float]:
    try:
        return read_predictions(path)
    except BiasUnlearnError as e:
        sys.exit(str(e))


def _ss(examples, scores: dict[str, float]) -> float:
    return stereoset_results(examples, scores)["both"]["overall"]["SS"]


def _by_group_words(examples, wordlist) -> list[tuple[str, list]]:
    """``[(row label, examples)]``: each task's examples split by whether the stereotype and the
    anti-stereotype carry the same group words of ``wordlist``."""

    def words(text: str) -> list[str]:
        return sorted(text[m.start:m.end].lower() for m in wordlist.find(text))

    groups: dict[str, list] = {}
    for e in examples:
        s = {x.gold_label: x.text for x in e.sentences}
        same = words(s["stereotype"]) == words(s["anti-stereotype"])
        groups.setdefault(f"{e.task}, {'same' if same else 'different'}", []).append(e)
    return sorted(groups.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gold", required=True, type=Path, help="the StereoSet file the predictions were made on")
    ap.add_argument("--before", required=True, type=Path, help="stereoset_predictions.json before")
    ap.add_argument("--after", required=True, type=Path, help="stereoset_predictions.json after")
    ap.add_argument("--bias-type", default="gender", help="gender, profession, race or religion")
    ap.add_argument("--by", choices=("target", "group-words"), default="target",
                    help="rows per target, or per task and whether the pair's group words are the same")
    ap.add_argument("--scored-only", action="store_true",
                    help="leave out the gold examples that the predictions do not score (a split of the file)")
    args = ap.parse_args(argv)
    wordlist = None
    if args.by == "group-words":
        try:
            wordlist = type_wordlists(args.bias_type, "--by group-words")[args.bias_type]
        except BiasUnlearnError as e:
            sys.exit(str(e))
    try:
        examples = [e for e in load_stereoset(args.gold) if e.bias_type == args.bias_type]
    except BiasUnlearnError as e:
        sys.exit(f"--gold: {e}")
    if not examples:
        sys.exit(f"--bias-type: no {args.bias_type!r} examples in {args.gold}")
    before, after = _scores(args.before), _scores(args.after)
    if args.scored_only:
        examples = [e for e in examples if all(s.id in before and s.id in after for s in e.sentences)]
        if not examples:
            sys.exit(f"--before/--after: no {args.bias_type!r} example of {args.gold} is scored in both")
    missing = [s.id for e in examples for s in e.sentences if s.id not in before or s.id not in after]
    if missing:
        sys.exit(f"--before/--after: {len(missing)} sentences of {args.gold} have no score (first: {missing[0]})")
    if args.by == "group-words":
        title, rows = "task, group words", _by_group_words(examples, wordlist)
    else:
        by_target: dict[str, list] = {}
        for e in examples:
            by_target.setdefault(e.target, []).append(e)
        title = "target"
        rows = sorted(by_target.items(), key=lambda kv: _ss(kv[1], after) - _ss(kv[1], before))
    print(f"| {args.bias_type} {title} | examples | SS before | SS after | change |")
    print("|---|---:|---:|---:|---:|")
    for target, exs in [*rows, (f"all {args.bias_type}", examples)]:
        b, a = _ss(exs, before), _ss(exs, after)
        print(f"| {target} | {len(exs)} | {b:.2f} | {a:.2f} | {a - b:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
