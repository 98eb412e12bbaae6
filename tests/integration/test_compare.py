"""``biasunlearn compare`` on the tiny model: trained, decoding-time and base methods side by side."""

from __future__ import annotations

import csv
import json

import pytest

from biasunlearn.cli.main import main
from biasunlearn.compare import CompareConfig, crows_comparison_table, stereoset_comparison_table, tidy_rows
from biasunlearn.errors import ConfigError


def _fake(ss: float, lms: float, crows: float) -> dict:
    doms = {d: {"SS": ss, "LMS": lms, "ICAT": lms * min(ss, 100 - ss) / 50, "Count": 10}
            for d in ("gender", "profession", "race", "religion", "overall")}
    return {"benchmarks": {"stereoset": {"metrics": {"both": doms}},
                           "crows_pairs": {"metrics": {"gender": {"Count": 4, "SS": crows, "neutral": 0}}}}}


def test_tables_and_tidy_rows_from_hand_made_results():
    res = {"base": _fake(60.0, 80.0, 75.0), "x": _fake(52.0, 79.0, 50.0)}
    table = stereoset_comparison_table(res).splitlines()
    assert table[0].startswith("| method | SS gender |")
    # ICAT of x: 79 * 48 / 50 = 75.84; ΔLMS -1.00
    assert table[3] == "| x | 52.00 | 52.00 | 52.00 | 52.00 | 52.00 | 79.00 | -1.00 | 75.84 |"
    assert table[2].endswith("| 80.00 | +0.00 | 64.00 |")
    assert crows_comparison_table(res).splitlines()[3] == "| x | 50.00 |"
    rows = tidy_rows("m", "x", res["x"])
    assert {"model": "m", "method": "x", "benchmark": "stereoset", "task": "both", "domain": "race",
            "metric": "SS", "value": 52.0} in rows
    assert {"model": "m", "method": "x", "benchmark": "crows_pairs", "task": "", "domain": "gender",
            "metric": "SS", "value": 50.0} in rows


def test_bad_methods_and_adapters_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'magic'"):
        CompareConfig(methods="base,magic").method_list()
    with pytest.raises(ConfigError, match="NAME=DIR"):
        CompareConfig(adapters="biasunlearn").adapter_map()
    with pytest.raises(ConfigError, match="not a trained method"):
        CompareConfig(adapters=f"cafie={tmp_path}").adapter_map()
    with pytest.raises(ConfigError, match="not an adapter folder"):
        CompareConfig(adapters=f"cda={tmp_path}").adapter_map()


def test_compare_command_on_the_tiny_model(tiny_model_dir, fixture_data_dir, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    rc = main(["compare", "--model", str(tiny_model_dir), "--data-dir", str(fixture_data_dir), "--out", str(out),
               "--methods", "base,cda,self_debias", "--benchmarks", "stereoset,crows_pairs",
               "--control-per-type", "1", "--max-steps", "2", "--control-every", "1", "--n-forget", "1",
               "--n-retain", "2", "--n-kl", "1", "--save-steps", "2", "--cost-sentences", "12"])
    assert rc == 0
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["method"] for r in rows} == {"base", "cda", "self_debias"}
    assert {r["benchmark"] for r in rows} == {"stereoset", "crows_pairs"}
    tables = (out / "tables.md").read_text()
    assert "| cda |" in tables and "Inference cost" in tables
    cost = json.loads((out / "inference_cost.json").read_text())
    assert set(cost["relative_to_base"]) == {"base", "cda", "self_debias"} and cost["relative_to_base"]["base"] == 1.0
    assert cost["seconds"]["self_debias"] > 0
    for png in ("ss_per_domain.png", "ss_vs_step.png"):
        assert (out / png).stat().st_size > 1000
    assert (out / "train" / "cda" / "adapter" / "provenance.json").is_file()
    # a second run into the same folder is refused
    assert main(["compare", "--model", str(tiny_model_dir), "--data-dir", str(fixture_data_dir), "--out", str(out),
                 "--methods", "base"]) == 2
    # --resume reuses the finished training and evaluations; only the missing one is computed again
    import biasunlearn.evaluation as evaluation
    import biasunlearn.train as train_mod

    (out / "eval" / "self_debias" / "results.json").unlink()
    evaluated, trained = [], []
    real_eval, real_train = evaluation.evaluate, train_mod.train
    monkeypatch.setattr(evaluation, "evaluate", lambda c: evaluated.append(c.out) or real_eval(c))
    monkeypatch.setattr(train_mod, "train", lambda c: trained.append(c.method) or real_train(c))
    args = ["compare", "--model", str(tiny_model_dir), "--data-dir", str(fixture_data_dir), "--out", str(out),
            "--methods", "base,cda,self_debias", "--benchmarks", "stereoset,crows_pairs", "--control-per-type", "1",
            "--max-steps", "2", "--control-every", "1", "--n-forget", "1", "--n-retain", "2", "--n-kl", "1",
            "--save-steps", "2", "--cost-sentences", "0", "--resume"]
    assert main(args) == 0
    assert trained == [] and evaluated == [str(out / "eval" / "self_debias")]
    # an evaluation made with other options (here: --limit) is not reused
    evaluated.clear()
    assert main([*args[:8], "base", *args[9:], "--limit", "3"]) == 0
    assert evaluated == [str(out / "eval" / "base")]
    # an adapter rewritten in place (same path, other weights) is evaluated again
    from safetensors.torch import load_file, save_file

    weights = out / "train" / "cda" / "adapter" / "adapter_model.safetensors"
    save_file({k: v + 0.01 for k, v in load_file(str(weights)).items()}, str(weights))
    evaluated.clear()
    assert main(args) == 0
    # base again too: its last evaluation was the --limit 3 one above
    assert evaluated == [str(out / "eval" / "base"), str(out / "eval" / "cda")]
