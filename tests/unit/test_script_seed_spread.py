"""scripts/seed_spread.py: mean ± sample standard deviation of the headline figures, by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import load_script


def _results(path: Path, ss: float, gender: float, lms: float, icat: float) -> Path:
    both = {"overall": {"SS": ss, "LMS": lms, "ICAT": icat}, "gender": {"SS": gender}}
    path.write_text(json.dumps({"benchmarks": {"stereoset": {"metrics": {"both": both}}}}))
    return path


def test_spread_by_hand(tmp_path, capsys):
    base = _results(tmp_path / "base.json", 58.0, 61.0, 82.0, 69.0)
    r1 = _results(tmp_path / "r1.json", 51.0, 53.0, 81.0, 78.0)
    r2 = _results(tmp_path / "r2.json", 52.0, 55.0, 83.0, 80.0)
    r3 = _results(tmp_path / "r3.json", 54.0, 54.0, 82.0, 79.0)
    assert load_script("seed_spread").main([f"a={r1}", f"b={r2}", f"c={r3}", "--base", str(base)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| a | 51.00 | 53.00 | -1.00 | 78.00 |"
    # SS 51, 52, 54: mean 52.33, sample SD sqrt((1.78 + 0.11 + 2.78) / 2) = 1.53; gender 53, 55, 54: 54 ± 1;
    # ΔLMS -1, +1, 0: 0 ± 1; ICAT 78, 80, 79: 79 ± 1
    assert lines[-1] == "| mean ± SD | 52.33 ± 1.53 | 54.00 ± 1.00 | 0.00 ± 1.00 | 79.00 ± 1.00 |"


def test_bad_arguments_are_named(tmp_path):
    r1 = _results(tmp_path / "r1.json", 51.0, 53.0, 81.0, 78.0)
    with pytest.raises(SystemExit):
        load_script("seed_spread").main([str(r1), f"b={r1}"])
    with pytest.raises(SystemExit):
        load_script("seed_spread").main([f"a={r1}"])
