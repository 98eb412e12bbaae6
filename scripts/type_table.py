"""One StereoSet bias type across evaluations: SS overall, per task and per sentiment direction, and LMS.

Reads the ``results.json`` of ``biasunlearn eval`` runs (any split; the type must have been scored, and
the sentiment figures need vaderSentiment at evaluation time) and prints a Markdown table, one row per
file, named by the file's folder (sentiment cells are "–" where results.json has no SS by sentiment):

    python scripts/type_table.py --bias-type gender results/sweep/train_split_gender/{base,exp6,exp32}/results.json

The sentiment columns are StereoSet SS within the pairs whose stereotype is the more pleasant sentence,
the more unpleasant one, and neither (VADER valence; ``ss_by_sentiment`` in results.json), with their counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def row(path: Path, bias_type: str) -> str:
    try:
        st = json.loads(path.read_text())["benchmarks"]["stereoset"]
        m = st["metrics"]
        both = m["both"][bias_type]
        tasks = [m[t][bias_type]["SS"] if bias_type in m.get(t, {}) else None
                 for t in ("intrasentence", "intersentence")]
        sent = st.get("ss_by_sentiment", {}).get(bias_type, {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        sys.exit(f"{path}: not a results.json with StereoSet {bias_type!r} figures ({e!r})")
    cells = [path.parent.name, f"{both['SS']:.2f}", *("–" if v is None else f"{v:.2f}" for v in tasks)]
    for d in ("positive", "negative", "neutral"):
        cells.append(f"{sent[d]['SS']:.2f} ({sent[d]['Count']})" if d in sent else "–")
    cells.append(f"{both['LMS']:.2f}")
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="results.json files of biasunlearn eval")
    ap.add_argument("--bias-type", default="gender", help="gender, profession, race or religion")
    args = ap.parse_args(argv)
    rows = [row(p, args.bias_type) for p in args.results]
    print(f"| run | {args.bias_type} SS | intrasentence | intersentence | pleasant-stereotype pairs | "
          "unpleasant-stereotype pairs | neutral pairs | LMS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
