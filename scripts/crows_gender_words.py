"""Which way a model's CrowS-Pairs gender preferences move: by the gendered words of the two sentences.

Splits the gender pairs by whether ``sent_more`` carries the female words and ``sent_less`` the male ones
(or the reverse, or neither), and prints, before and after, the share of pairs where ``sent_more`` scores
higher and the share preferring the stereotype. A general shift toward female (or male) words shows as
the same move in both word groups whatever the stereotype direction.

    python scripts/crows_gender_words.py --data ../shared/data/crows_pairs/crows_pairs_anonymized.csv \
        --before results/base-smollm2/crows_pairs_predictions.json \
        --after results/biasunlearn-smollm2/crows_pairs_predictions.json \
        [--train ../shared/data/stereoset/test.json] [--bias-type race-color]

``--bias-type race-color`` splits the race-color pairs the same way by Black and white group words
(``black / white``, ``white / black``, other) instead.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from biasunlearn.data.crows_pairs import load_crows_pairs

FEMALE = r"she|her|hers|herself|woman|women|girl|girls|mother|mom|wife|lady|ladies|daughter|sister|female|girlfriend"
MALE = r"he|him|his|himself|man|men|boy|boys|father|dad|husband|gentleman|son|brother|male|boyfriend|guy|guys"
BLACK = r"black|blacks|african|africans|african-american|african-americans"
WHITE = r"white|whites|caucasian|caucasians|european|europeans"
#: --bias-type: (first group's name, its words, second group's name, its words)
GROUPS = {"gender": ("female", FEMALE, "male", MALE), "race-color": ("black", BLACK, "white", WHITE)}


def _words(pattern: str) -> re.Pattern[str]:
    return re.compile(rf"\b({pattern})\b", re.IGNORECASE)


def _scores(path: Path) -> dict[int, tuple[float, float]]:
    try:
        pairs = json.loads(path.read_text())["pairs"]
        return {int(r["index"]): (float(r["sent_more"]), float(r["sent_less"])) for r in pairs}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        sys.exit(f"{path}: not a CrowS-Pairs predictions file of `biasunlearn eval` ({e})")


def _count_words(path: Path, fem: re.Pattern[str], mal: re.Pattern[str]) -> None:
    try:
        data = json.loads(path.read_text())["data"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        sys.exit(f"--train: {path} is not a StereoSet file with a 'data' field ({e})")
    print("| task | bias type | stereotype female | stereotype male | anti-stereotype female | anti-stereotype male |")
    print("|---|---|---:|---:|---:|---:|")
    for task in ("intersentence", "intrasentence"):
        counts: dict[tuple[str, str, str], int] = {}
        for ex in data.get(task, []):
            for s in ex["sentences"]:
                if s["gold_label"] in ("stereotype", "anti-stereotype"):
                    for sex, pat in (("F", fem), ("M", mal)):
                        key = (ex["bias_type"], s["gold_label"], sex)
                        counts[key] = counts.get(key, 0) + len(pat.findall(s["sentence"]))
        for bt in sorted({k[0] for k in counts}):
            cells = [counts.get((bt, lab, sex), 0) for lab in ("stereotype", "anti-stereotype") for sex in "FM"]
            print(f"| {task} | {bt} | " + " | ".join(map(str, cells)) + " |")
    print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="crows_pairs_anonymized.csv")
    ap.add_argument("--before", required=True, type=Path, help="crows_pairs_predictions.json before")
    ap.add_argument("--after", required=True, type=Path, help="crows_pairs_predictions.json after")
    ap.add_argument("--bias-type", choices=sorted(GROUPS), default="gender",
                    help="which CrowS-Pairs type to split, by its two groups' words (default gender)")
    ap.add_argument("--train", type=Path, help="also count the gendered words of a StereoSet file's stereotype "
                    "and anti-stereotype sentences per task and bias type (e.g. stereoset/test.json)")
    args = ap.parse_args(argv)
    if args.train:
        _count_words(args.train, _words(FEMALE), _words(MALE))
    name_a, words_a, name_b, words_b = GROUPS[args.bias_type]
    ga, gb = _words(words_a), _words(words_b)
    pairs = [p for p in load_crows_pairs(args.data) if p.bias_type == args.bias_type]
    before, after = _scores(args.before), _scores(args.after)
    missing = [p.index for p in pairs if p.index not in before or p.index not in after]
    if missing:
        sys.exit(f"--before/--after: {len(missing)} {args.bias_type} pair(s) missing, e.g. index {missing[0]}")
    print("| sent_more / sent_less | direction | pairs | sent_more higher before | after "
          "| prefers stereotype before | after |")
    print("|---|---|---:|---:|---:|---:|---:|")
    groups = ((f"{name_a} / {name_b}", lambda p: bool(ga.search(p.sent_more) and gb.search(p.sent_less))),
              (f"{name_b} / {name_a}", lambda p: bool(gb.search(p.sent_more) and ga.search(p.sent_less))))
    for label, test in (*groups, ("other", lambda p: not any(g(p) for _, g in groups))):
        for direction in ("stereo", "antistereo"):
            sel = [p for p in pairs if test(p) and p.direction == direction]
            if not sel:
                continue
            row = [label, direction, str(len(sel))]
            more = [sum(s[p.index][0] > s[p.index][1] for p in sel) / len(sel) for s in (before, after)]
            stereo = [m if direction == "stereo" else 1 - m for m in more]
            row += [f"{100 * v:.1f}" for v in (*more, *stereo)]
            print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
