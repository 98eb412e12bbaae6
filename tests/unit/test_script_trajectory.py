"""scripts/trajectory.py: a run's control readings joined with report-split evaluations, step by step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import load_script


def _load():
    return load_script("trajectory")


def _run(folder: Path) -> Path:
    reading = {"gender": {"SS": 56.5, "soft_ss": 56.0, "soft_ss_se": 3.1, "n": 195}, "race": {"SS": 50.0}}
    later = {"gender": {"SS": 51.25, "soft_ss": 52.0, "soft_ss_se": 3.0, "n": 195}}
    prov = {"control_history": [{"step": 0, "types": reading}, {"step": 25, "types": later},
                                {"step": 50, "types": later}]}
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "provenance.json").write_text(json.dumps(prov))
    return folder


def _results(path: Path, ss: float, sentiment: bool = True) -> Path:
    st: dict = {"metrics": {"both": {"gender": {"SS": ss, "LMS": 80.0}}}}
    if sentiment:
        st["ss_by_sentiment"] = {"gender": {"positive": {"SS": ss + 5, "Count": 2},
                                            "negative": {"SS": ss - 5, "Count": 2}}}
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"benchmarks": {"stereoset": st}}))
    return path


def test_table_by_hand(tmp_path, capsys):
    run = _run(tmp_path / "run")
    evals = tmp_path / "evals"
    _results(evals / "25" / "results.json", 57.0)
    _results(evals / "75" / "results.json", 55.5, sentiment=False)
    _results(evals / "notes" / "results.json", 1.0)  # not a step folder: skipped
    base = _results(tmp_path / "base" / "results.json", 61.1)
    assert _load().main(["--run", str(run), "--evals", str(evals), "--base", str(base)]) == 0
    lines = capsys.readouterr().out.splitlines()
    prov = run / "adapter" / "provenance.json"  # the provenance file itself, as committed with results
    assert _load().main(["--run", str(prov), "--evals", str(evals), "--base", str(base)]) == 0
    assert capsys.readouterr().out.splitlines() == lines
    assert lines[0].startswith("| step | control gender SS | control soft SS (± se) | report gender SS |")
    assert lines[2:] == ["| 0 | 56.50 | 56.00 ± 3.10 | 61.10 | 66.10 | 56.10 | – |",
                         "| 25 | 51.25 | 52.00 ± 3.00 | 57.00 | 62.00 | 52.00 | – |",
                         "| 50 | 51.25 | 52.00 ± 3.00 | – | – | – | – |",
                         "| 75 | – | – | 55.50 | – | – | – |"]


def test_a_run_still_going_is_read_from_its_latest_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    for step, ss in ((25, 57.0), (100, 52.0)):  # 100 sorts before 25 as text
        d = run / "checkpoints" / f"checkpoint-{step}"
        d.mkdir(parents=True)
        history = [{"step": s, "types": {"gender": {"SS": ss + s}}} for s in (0, step)]
        (d / "biasunlearn_state.json").write_text(json.dumps({"history": history}))
    evals = tmp_path / "evals"
    _results(evals / "100" / "results.json", 55.0)
    assert _load().main(["--run", str(run), "--evals", str(evals)]) == 0
    assert capsys.readouterr().out.splitlines()[2:] == ["| 0 | 52.00 | – | – | – | – | – |",
                                                        "| 100 | 152.00 | – | 55.00 | 60.00 | 50.00 | – |"]


def test_bad_inputs_name_what_is_wrong(tmp_path):
    run = _run(tmp_path / "run")
    evals = tmp_path / "evals"
    evals.mkdir()
    with pytest.raises(SystemExit, match=r"--evals: no STEP/results\.json"):
        _load().main(["--run", str(run), "--evals", str(evals)])
    _results(evals / "25" / "results.json", 57.0)
    with pytest.raises(SystemExit, match=r"25/results\.json: not a results\.json with StereoSet 'race'"):
        _load().main(["--run", str(run), "--evals", str(evals), "--bias-type", "race"])
    with pytest.raises(SystemExit, match="without 'race' figures"):  # step 25 has no race reading
        _load().control_readings(run, "race")
    with pytest.raises(SystemExit, match=r"--run: neither .*provenance\.json nor a checkpoint"):
        _load().main(["--run", str(tmp_path / "nope"), "--evals", str(evals)])
    with pytest.raises(SystemExit, match=r"--evals: .* is not a folder"):
        _load().main(["--run", str(run), "--evals", str(tmp_path / "missing")])
    _results(evals / "0" / "results.json", 60.0)
    with pytest.raises(SystemExit, match=r"--base: .* already has a step 0"):
        _load().main(["--run", str(run), "--evals", str(evals), "--base", str(evals / "0" / "results.json")])
