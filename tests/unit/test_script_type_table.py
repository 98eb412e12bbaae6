"""scripts/type_table.py: one bias type's SS per task and sentiment direction from results.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import load_script


def _load():
    return load_script("type_table")


def _results(folder: Path, ss: float) -> Path:
    fig = {"SS": ss, "LMS": 80.0, "ICAT": 0.0, "Count": 4}
    st = {"metrics": {"intrasentence": {"gender": {**fig, "SS": ss + 1}}, "intersentence": {"gender": fig},
                      "both": {"gender": fig}},
          "ss_by_sentiment": {"gender": {"positive": {"SS": 75.0, "Count": 4}, "negative": {"SS": 25.0, "Count": 2}}}}
    folder.mkdir()
    path = folder / "results.json"
    path.write_text(json.dumps({"benchmarks": {"stereoset": st}}))
    return path


def test_rows_by_hand(tmp_path, capsys):
    a, b = _results(tmp_path / "base", 60.0), _results(tmp_path / "run1", 52.5)
    assert _load().main([str(a), str(b)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| run | gender SS | intrasentence |")
    assert lines[2] == "| base | 60.00 | 61.00 | 60.00 | 75.00 (4) | 25.00 (2) | – | 80.00 |"
    assert lines[3] == "| run1 | 52.50 | 53.50 | 52.50 | 75.00 (4) | 25.00 (2) | – | 80.00 |"
    old = json.loads(b.read_text())
    del old["benchmarks"]["stereoset"]["ss_by_sentiment"]  # written before SS by sentiment existed
    b.write_text(json.dumps(old))
    assert _load().main([str(b)]) == 0
    assert capsys.readouterr().out.splitlines()[2] == "| run1 | 52.50 | 53.50 | 52.50 | – | – | – | 80.00 |"


def test_missing_type_names_the_file(tmp_path):
    path = _results(tmp_path / "base", 60.0)
    with pytest.raises(SystemExit, match=r"base/results\.json.*'race'"):
        _load().main([str(path), "--bias-type", "race"])
