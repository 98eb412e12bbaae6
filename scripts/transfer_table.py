"""Table of the sibling-transfer comparison (written by ``scripts/transfer_sibling.sh``).

Reads, under ``--work``: ``model/sibling.json``, ``eval-none/results.json`` (the sibling alone),
``transferred/transfer.json`` and ``transferred/eval/results.json`` (with the adapter trained on the
built-in model), ``eval-own/results.json`` (with an adapter trained on the sibling) and
``own/adapter/provenance.json``; writes ``--out/README.md`` (the table, with the commands) and copies the
result files next to it.

    python scripts/transfer_table.py --work runs/sibling --adapter results/biasunlearn-smollm2/adapter \
        --out results/transfer/sibling
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

DOMAINS = ("gender", "profession", "race", "religion")
CROWS = ("gender", "race-color", "religion")


def row(name: str, res: dict, base_lms: float | None) -> str:
    ss = res["benchmarks"]["stereoset"]["metrics"]["both"]
    cells = [f"{ss['overall']['SS']:.2f}"] + [f"{ss[d]['SS']:.2f}" for d in DOMAINS]
    lms = ss["overall"]["LMS"]
    delta = f"{lms - base_lms:+.2f}" if base_lms is not None else "+0.00"
    cells += [f"{lms:.2f}", delta, f"{ss['overall']['ICAT']:.2f}"]
    crows = res["benchmarks"].get("crows_pairs", {}).get("metrics", {})
    cells += [f"{crows[c]['SS']:.2f}" if c in crows else "–" for c in CROWS]
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--adapter", required=True, help="the transferred adapter (trained on the built-in model)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    files = {
        "none": work / "eval-none" / "results.json",
        "transferred": work / "transferred" / "eval" / "results.json",
        "own": work / "eval-own" / "results.json",
    }
    missing = [str(p) for k, p in files.items() if k != "own" and not p.is_file()]
    if missing:
        raise SystemExit(f"transfer_table: missing {', '.join(missing)}; run scripts/transfer_sibling.sh first")
    # (c) takes longest; until it exists the table says so instead of showing a row
    if not files["own"].is_file():
        del files["own"]
    res = {k: json.loads(p.read_text()) for k, p in files.items()}
    sibling = json.loads((work / "model" / "sibling.json").read_text())
    own_prov = work / "own" / "adapter" / "provenance.json"
    own = json.loads(own_prov.read_text()) if "own" in res else None
    base_lms = res["none"]["benchmarks"]["stereoset"]["metrics"]["both"]["overall"]["LMS"]
    header = ("| sibling with | SS | gender | profession | race | religion | LMS | ΔLMS | ICAT | CrowS gender "
              "| CrowS race-color | CrowS religion |\n|---|" + "---:|" * 11)
    lines = [
        "# Debiasing-weight transfer to a sibling of the built-in model",
        "",
        f"Sibling: SmolLM2-135M-Instruct fully fine-tuned for {sibling['steps']} steps of {sibling['batch']} "
        f"paragraphs of SQLite documentation (lr {sibling['learning_rate']}; training loss "
        f"{sibling['loss_first_20']:.3f} → {sibling['loss_last_20']:.3f}, first and last 20 steps; "
        f"{sibling['seconds']:.0f} s). Report split (StereoSet dev.json, 4229 examples) and all of CrowS-Pairs.",
        "",
        header,
        row("no adapter", res["none"], None),
        row(f"adapter transferred from the built-in model (`{args.adapter}`)", res["transferred"], base_lms),
        row(f"adapter trained on the sibling ({own['steps']} steps, {own['train_seconds']:.0f} s)", res["own"],
            base_lms) if own else "| adapter trained on the sibling | not run yet |" + " |" * 10,
        "",
        "ΔLMS is against the sibling without adapter.",
        "",
        "Made with `bash scripts/transfer_sibling.sh " + args.adapter + " " + str(work) + "` "
        "(`BIASUNLEARN_DATA=../shared/data`), which runs `scripts/make_sibling.py`, `biasunlearn eval`, "
        "`biasunlearn transfer --eval` and `biasunlearn train` with the transferred adapter's own options; "
        "files: `sibling.json`, `transfer.json`, `results-*.json`, `own-provenance.json`.",
        "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text("\n".join(lines))
    shutil.copy(work / "model" / "sibling.json", out / "sibling.json")
    shutil.copy(work / "transferred" / "transfer.json", out / "transfer.json")
    if own:
        shutil.copy(own_prov, out / "own-provenance.json")
    for k, p in files.items():
        shutil.copy(p, out / f"results-{k}.json")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
