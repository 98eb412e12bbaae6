"""scripts/crows_scores_table.py: both CrowS-Pairs scores per run, merged from several results files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import load_script


def _results(path: Path, key: str, ss: dict[str, float]) -> Path:
    path.write_text(json.dumps({"benchmarks": {key: {"metrics": {t: {"SS": v, "Count": 9} for t, v in ss.items()}}}}))
    return path


def test_table_by_hand(tmp_path, capsys):
    whole = {"gender": 49.24, "race-color": 55.23, "religion": 51.43}
    unmod = {"gender": 46.95, "race-color": 50.19, "religion": 60.95}
    b1 = _results(tmp_path / "b1.json", "crows_pairs", whole)
    b2 = _results(tmp_path / "b2.json", "crows_pairs_unmodified", unmod)
    a1 = _results(tmp_path / "a1.json", "crows_pairs", {"gender": 55.73, "race-color": 53.49, "religion": 51.43})
    assert load_script("crows_scores_table").main([f"base={b1},{b2}", f"run={a1}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| base | 49.24 | 55.23 | 51.43 | 46.95 | 50.19 | 60.95 |"
    # race-color is closer (1.77 < 5.23), gender further, religion equal; no unmodified scores for the run
    assert lines[3] == "| run | 55.73 | 53.49* | 51.43 | – | – | – |"


def test_bad_argument_names_it(tmp_path):
    with pytest.raises(SystemExit, match="NAME=FILE"):
        load_script("crows_scores_table").main(["results.json"])
