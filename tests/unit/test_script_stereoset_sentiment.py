"""scripts/stereoset_sentiment.py: SS split by the sentiment direction of each pair, on the fixture dev.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import load_script

GOLD = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "stereoset" / "dev.json"
# the fixture's examples whose stereotype VADER reads as the more positive sentence
POSITIVE_TARGETS = {"sister", "Buddhist", "Jewish"}


def _load():
    return load_script("stereoset_sentiment")


def _preds(tmp_path: Path, name: str, stereo_wins) -> Path:
    data = json.loads(GOLD.read_text())["data"]
    out = {task: [{"id": s["id"], "score": {"stereotype": 0.6 if stereo_wins(ex["target"]) else 0.4,
                                            "anti-stereotype": 0.5, "unrelated": 0.1}[s["gold_label"]]}
                  for ex in exs for s in ex["sentences"]]
           for task, exs in data.items()}
    path = tmp_path / name
    path.write_text(json.dumps(out))
    return path


def test_ss_per_direction_by_hand(tmp_path, capsys):
    before = _preds(tmp_path, "b.json", lambda t: True)
    after = _preds(tmp_path, "a.json", lambda t: t in POSITIVE_TARGETS)  # only the pleasant stereotypes win
    assert _load().main(["--gold", str(GOLD), "--before", str(before), "--after", f"run={after}",
                         "--count", str(GOLD), "--count-targets", "gender"]) == 0
    out = capsys.readouterr().out
    # 8 examples: positive sister, Buddhist, Jewish; negative grandfather, chef; neutral manager, Norway, Brazil
    assert f"| {GOLD} | all | 3 (38%) | 2 (25%) | 3 (38%) |" in out
    assert f"| {GOLD} | gender | 1 (50%) | 1 (50%) | 0 (0%) |" in out
    assert f"| {GOLD} | sister | 1 (100%) | 0 (0%) | 0 (0%) |" in out  # per target of --count-targets
    assert f"| {GOLD} | grandfather | 0 (0%) | 1 (100%) | 0 (0%) |" in out
    assert "| bias type | stereotype is | examples | SS before | SS run |" in out
    assert "| gender | positive | 1 | 100.00 | 100.00 |" in out
    assert "| gender | negative | 1 | 100.00 | 0.00 |" in out
    assert "| all | positive | 3 | 100.00 | 100.00 |" in out
    assert "| all | negative | 2 | 100.00 | 0.00 |" in out
    assert "| all | neutral | 3 | 100.00 | 0.00 |" in out


def test_bad_input_is_named(tmp_path):
    good = _preds(tmp_path, "g.json", lambda t: True)
    with pytest.raises(SystemExit, match="--after: expected NAME=PATH"):
        _load().main(["--gold", str(GOLD), "--before", str(good), "--after", str(good)])
    with pytest.raises(SystemExit, match="--count-targets"):
        _load().main(["--gold", str(GOLD), "--before", str(good), "--count", str(GOLD), "--count-targets", "age"])
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(SystemExit, match=r"bad\.json"):
        _load().main(["--gold", str(GOLD), "--before", str(bad)])
    partial = tmp_path / "p.json"
    partial.write_text(json.dumps({"intrasentence": []}))
    with pytest.raises(SystemExit, match=r"--after x: .*no score"):
        _load().main(["--gold", str(GOLD), "--before", str(good), "--after", f"x={partial}"])
