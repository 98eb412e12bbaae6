"""One bias type along a training run: the control split's reading and the report split's SS, step by step.

Train with every checkpoint kept, score each checkpoint on the report split, then join the two:

    biasunlearn train --out runs/NAME --no-early-stop --save-steps 25 --save-total-limit 0 ...
    biasunlearn eval --adapter runs/NAME/checkpoints/checkpoint-25 --benchmarks stereoset \\
        --bias-types gender --out runs/traj/NAME/25          # one folder per step, named by the step
    python scripts/trajectory.py --run runs/NAME --evals runs/traj/NAME --bias-type gender \\
        --base results/base-smollm2/results.json

The control columns come from the run's ``adapter/provenance.json`` (``control_history``: the SS and soft
SS the trainer read on its held-out control targets), or, while the run is still going, from its latest
checkpoint's ``biasunlearn_state.json``; the report columns from ``EVALS/STEP/results.json``
(SS of the type, and SS within the pairs whose stereotype is the more pleasant sentence, the less pleasant
one, and neither, where results.json has them). ``--base`` adds the untrained model as step 0. A step
the trainer read but that has no evaluation (or the reverse) shows "–" in the missing columns.

This is a diagnostic: choosing the step by the report split would be selection on the test set.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SENTIMENTS = ("positive", "negative", "neutral")


def _load(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"{path}: cannot read the {what} ({e})")


def _history(run: Path) -> tuple[Path, object]:
    """The control history of a finished run (its provenance), else of its latest checkpoint (a run going on).

    ``run`` is the run's --out folder, or a provenance.json itself (e.g. a copy committed with the results).
    """
    prov = run if run.suffix == ".json" else run / "adapter" / "provenance.json"
    if prov.is_file():
        return prov, _load(prov, "run's provenance").get("control_history")
    # the same checkpoint and state file that `biasunlearn train --resume` would continue from
    from transformers.trainer_utils import get_last_checkpoint

    from biasunlearn.methods.trainer import load_checkpoint_state

    ckpts = run / "checkpoints"
    last = get_last_checkpoint(str(ckpts)) if ckpts.is_dir() else None
    state = Path(last) / "biasunlearn_state.json" if last else None
    if state is None or not state.is_file():
        sys.exit(f"--run: neither {prov} nor a checkpoint's biasunlearn_state.json under {run}")
    try:
        return state, load_checkpoint_state(state.parent)[1]
    except (OSError, ValueError) as e:
        sys.exit(f"{state}: cannot read the checkpoint state ({e})")


def control_readings(run: Path, bias_type: str) -> dict[int, dict]:
    """Step -> the control reading of ``bias_type`` (SS, soft SS and its standard error)."""
    src, history = _history(run)
    if not isinstance(history, list):
        sys.exit(f"{src}: no control history (a run trained by biasunlearn train?)")
    out = {}
    for h in history:
        try:
            out[int(h["step"])] = h["types"][bias_type]
        except (KeyError, TypeError, ValueError):
            sys.exit(f"{src}: a control reading without {bias_type!r} figures: {str(h)[:120]}")
    return out


def report_figures(path: Path, bias_type: str) -> dict:
    """SS of ``bias_type`` and its SS per sentiment direction from a results.json."""
    try:
        st = _load(path, "results.json")["benchmarks"]["stereoset"]
        ss = st["metrics"]["both"][bias_type]["SS"]
        sent = st.get("ss_by_sentiment", {}).get(bias_type, {})
        return {"SS": float(ss), **{d: float(sent[d]["SS"]) for d in SENTIMENTS if d in sent}}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        sys.exit(f"{path}: not a results.json with StereoSet {bias_type!r} figures ({e!r})")


def report_by_step(evals: Path, bias_type: str) -> dict[int, dict]:
    """Step -> report figures, from ``EVALS/STEP/results.json`` (folders not named by a number are skipped)."""
    if not evals.is_dir():
        sys.exit(f"--evals: {evals} is not a folder")
    out = {int(p.parent.name): report_figures(p, bias_type)
           for p in evals.glob("*/results.json") if p.parent.name.isdigit()}
    if not out:
        sys.exit(f"--evals: no STEP/results.json under {evals}")
    return out


def table(control: dict[int, dict], report: dict[int, dict], bias_type: str) -> list[str]:
    def f(v: float | None) -> str:
        return "–" if v is None else f"{v:.2f}"

    lines = [f"| step | control {bias_type} SS | control soft SS (± se) | report {bias_type} SS | "
             "pleasant-stereotype pairs | unpleasant-stereotype pairs | neutral pairs |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for step in sorted(set(control) | set(report)):
        c, r = control.get(step, {}), report.get(step, {})
        soft = f"{c['soft_ss']:.2f} ± {c['soft_ss_se']:.2f}" if "soft_ss" in c and "soft_ss_se" in c else "–"
        cells = [str(step), f(c.get("SS")), soft, f(r.get("SS")), *(f(r.get(d)) for d in SENTIMENTS)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True,
                    help="the run's --out folder (adapter/provenance.json), or a provenance.json")
    ap.add_argument("--evals", type=Path, required=True, help="folder of STEP/results.json evaluations")
    ap.add_argument("--bias-type", default="gender", help="gender, profession, race or religion")
    ap.add_argument("--base", type=Path, help="results.json of the untrained model, shown as step 0")
    args = ap.parse_args(argv)
    report = report_by_step(args.evals, args.bias_type)
    if args.base:
        if 0 in report:
            sys.exit(f"--base: {args.evals} already has a step 0 evaluation")
        report[0] = report_figures(args.base, args.bias_type)
    print("\n".join(table(control_readings(args.run, args.bias_type), report, args.bias_type)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
