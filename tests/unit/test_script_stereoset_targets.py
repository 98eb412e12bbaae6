"""scripts/stereoset_targets.py: SS per StereoSet target before and after, on the fixture dev.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import load_script

GOLD = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "stereoset" / "dev.json"


def _load():
    return load_script("stereoset_targets")


def _preds(tmp_path: Path, name: str, stereo_wins: dict[str, bool]) -> Path:
    """Scores where the stereotype beats the anti-stereotype exactly for the targets marked True."""
    data = json.loads(GOLD.read_text())["data"]
    out = {}
    for task, exs in data.items():
        rows = []
        for ex in exs:
            win = stereo_wins.get(ex["target"], False)
            for s in ex["sentences"]:
                score = {"stereotype": 0.6 if win else 0.4, "anti-stereotype": 0.5, "unrelated": 0.1}[s["gold_label"]]
                rows.append({"id": s["id"], "score": score})
        out[task] = rows
    path = tmp_path / name
    path.write_text(json.dumps(out))
    return path


def test_ss_per_target_by_hand(tmp_path, capsys):
    before = _preds(tmp_path, "b.json", {"sister": True, "grandfather": True})
    after = _preds(tmp_path, "a.json", {"sister": True, "grandfather": False})
    assert _load().main(["--gold", str(GOLD), "--before", str(before), "--after", str(after)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| gender target |")
    # sorted by change: grandfather (100 -> 0) first; then the whole type: 2 examples, 100 -> 50
    assert lines[2] == "| grandfather | 1 | 100.00 | 0.00 | -100.00 |"
    assert lines[3] == "| sister | 1 | 100.00 | 100.00 | +0.00 |"
    assert lines[4] == "| all gender | 2 | 100.00 | 50.00 | -50.00 |"


def test_bad_input_names_the_file(tmp_path):
    good = _preds(tmp_path, "g.json", {})
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(SystemExit, match=r"bad\.json"):
        _load().main(["--gold", str(GOLD), "--before", str(bad), "--after", str(good)])
    with pytest.raises(SystemExit, match="--bias-type"):
        _load().main(["--gold", str(GOLD), "--before", str(good), "--after", str(good), "--bias-type", "age"])
    partial = tmp_path / "p.json"
    partial.write_text(json.dumps({"intrasentence": []}))
    with pytest.raises(SystemExit, match="no score"):
        _load().main(["--gold", str(GOLD), "--before", str(partial), "--after", str(good)])


def test_scored_only_keeps_the_examples_both_files_score(tmp_path, capsys):
    """``--scored-only`` drops the examples the predictions leave out (a split of the gold file)."""
    before = _preds(tmp_path, "b.json", {"sister": True, "grandfather": True})
    after = _preds(tmp_path, "a.json", {"sister": True, "grandfather": False})
    data = json.loads(after.read_text())
    sister_ids = {s["id"] for exs in json.loads(GOLD.read_text())["data"].values() for ex in exs
                  if ex["target"] == "sister" for s in ex["sentences"]}
    assert sister_ids
    after.write_text(json.dumps({t: [r for r in rows if r["id"] not in sister_ids] for t, rows in data.items()}))
    args = ["--gold", str(GOLD), "--before", str(before), "--after", str(after)]
    with pytest.raises(SystemExit, match="no score"):
        _load().main(args)
    assert _load().main([*args, "--scored-only"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == ["| grandfather | 1 | 100.00 | 0.00 | -100.00 |",
                         "| all gender | 1 | 100.00 | 0.00 | -100.00 |"]
    gender_ids = {s["id"] for exs in json.loads(GOLD.read_text())["data"].values() for ex in exs
                  if ex["bias_type"] == "gender" for s in ex["sentences"]}
    after.write_text(json.dumps({t: [r for r in rows if r["id"] not in gender_ids] for t, rows in data.items()}))
    with pytest.raises(SystemExit, match="scored in both"):
        _load().main([*args, "--scored-only"])


def test_by_group_words_splits_each_task(tmp_path, capsys):
    """``--by group-words``: grandfather's pair made to differ in its gendered word (He -> She in the
    anti-stereotype) is counted apart from sister's pair, whose two sentences share ``sister``."""
    data = json.loads(GOLD.read_text())
    for ex in data["data"]["intersentence"]:
        for s in ex["sentences"]:
            if ex["target"] == "grandfather" and s["gold_label"] == "anti-stereotype":
                s["sentence"] = "She played video games."
    gold = tmp_path / "dev.json"
    gold.write_text(json.dumps(data))
    before = _preds(tmp_path, "b.json", {"sister": True, "grandfather": True})
    after = _preds(tmp_path, "a.json", {"sister": False, "grandfather": True})
    assert _load().main(["--gold", str(gold), "--before", str(before), "--after", str(after),
                         "--by", "group-words"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| gender task, group words |")
    assert lines[2:] == ["| intersentence, different | 1 | 100.00 | 100.00 | +0.00 |",
                         "| intrasentence, same | 1 | 100.00 | 0.00 | -100.00 |",
                         "| all gender | 2 | 100.00 | 50.00 | -50.00 |"]
    with pytest.raises(SystemExit, match="--by group-words"):
        _load().main(["--gold", str(gold), "--before", str(before), "--after", str(after),
                      "--by", "group-words", "--bias-type", "profession"])
