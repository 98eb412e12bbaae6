"""End to end: ``biasunlearn eval --benchmarks bbq`` on the tiny model and the BBQ fixture data."""

from __future__ import annotations

import json
import math

import pytest

from biasunlearn.benchmarks import bbq_prompt
from biasunlearn.cli.main import main
from biasunlearn.data.bbq import load_bbq
from biasunlearn.data.paths import BBQ_METADATA
from biasunlearn.metrics.bbq import RESULT_KEYS, bbq_results, choose_answer
from biasunlearn.scoring import Request, ScoringConfig, sequence_logprobs


def _eval(tiny_model_dir, fixture_data_dir, out, capsys, *extra):
    code = main(["-q", "eval", "--model", str(tiny_model_dir), "--data-dir", str(fixture_data_dir),
                 "--benchmarks", "bbq", "--out", str(out), "--no-progress", "--batch-size", "4", *extra])
    stdout = capsys.readouterr().out
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    return res, json.loads((out / "bbq_predictions.json").read_text()), stdout


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-9)


def test_bbq_eval_end_to_end(tiny_model_dir, fixture_data_dir, tmp_path, capsys):
    res, pred, stdout = _eval(tiny_model_dir, fixture_data_dir, tmp_path / "run", capsys)
    bbq = res["benchmarks"]["bbq"]
    assert bbq["n_items"] == 20  # Age 8 + Gender_identity 12
    m = bbq["metrics"]
    assert list(m) == ["Age", "Gender_identity", "overall"]
    for g in m.values():
        assert set(g) == set(RESULT_KEYS)
        assert g["n"] == g["n_ambig"] + g["n_disambig"]
        for k in ("accuracy_ambig", "accuracy_disambig"):
            assert 0.0 <= g[k] <= 100.0
        for k in ("bias_ambig", "bias_disambig"):
            assert math.isnan(g[k]) or -100.0 <= g[k] <= 100.0
    assert (m["Age"]["n"], m["Gender_identity"]["n"], m["overall"]["n"]) == (8, 12, 20)
    assert (m["Age"]["n_no_target"], m["Gender_identity"]["n_no_target"]) == (0, 4)  # the 4 NA rows
    # provenance: the category files used and the metadata file, with sha256
    assert set(res["data"]) == {"bbq/data/Age.jsonl", "bbq/data/Gender_identity.jsonl", BBQ_METADATA}
    assert all(len(v) == 64 for v in res["data"].values())
    # predictions: one row per example, three scores, the choice is their argmax
    rows = pred["examples"]
    assert len(rows) == 20
    assert {(r["category"], r["example_id"]) for r in rows} == {("Age", i) for i in range(8)} | {
        ("Gender_identity", i) for i in range(12)}
    for r in rows:
        assert len(r["scores"]) == 3 and r["choice"] == choose_answer(r["scores"])
        assert 0.0 < max(r["scores"]) <= 1.0  # geometric mean of token probabilities
    # the table
    assert "BBQ (20 examples" in stdout
    for cat in ("Age", "Gender_identity", "overall"):
        line = next(ln for ln in stdout.splitlines() if ln.startswith(cat + " "))
        assert line.split()[1] == str(m[cat]["n"])
        assert float(line.split()[2]) == pytest.approx(m[cat]["accuracy_ambig"], abs=0.006)
    assert "StereoSet" not in stdout and "CrowS-Pairs" not in stdout


def test_bbq_metrics_recomputed_from_predictions(tiny_model_dir, fixture_data_dir, tmp_path, capsys):
    res, pred, _ = _eval(tiny_model_dir, fixture_data_dir, tmp_path / "run", capsys)
    choices = {(r["category"], r["example_id"]): r["choice"] for r in pred["examples"]}
    again = bbq_results(load_bbq(fixture_data_dir), choices)
    reported = res["benchmarks"]["bbq"]["metrics"]
    assert list(again) == list(reported)
    for g in again:
        for k in RESULT_KEYS:
            assert _same(again[g][k], reported[g][k]), (g, k, again[g][k], reported[g][k])
    # and a different set of choices would change the numbers: the check can fail
    flipped = {k: (c + 1) % 3 for k, c in choices.items()}
    other = bbq_results(load_bbq(fixture_data_dir), flipped)
    assert any(not _same(other[g][k], reported[g][k]) for g in other for k in RESULT_KEYS)


def test_bbq_scores_are_the_answer_continuations_and_limit_is_per_category(
    tiny_model_dir, tiny_model_and_tokenizer, fixture_data_dir, tmp_path, capsys
):
    res, pred, stdout = _eval(tiny_model_dir, fixture_data_dir, tmp_path / "run", capsys,
                              "--limit", "3", "--score-method", "sum_logprob")
    assert res["benchmarks"]["bbq"]["n_items"] == 6
    assert [(r["category"], r["example_id"]) for r in pred["examples"]] == [
        ("Age", 0), ("Age", 1), ("Age", 2), ("Gender_identity", 0), ("Gender_identity", 1), ("Gender_identity", 2)]
    assert res["benchmarks"]["bbq"]["metrics"]["overall"]["n"] == 6 and "BBQ (6 examples" in stdout
    # Each score is the summed log-probability of " " + answer after the prompt, computed here one request
    # at a time without prefix sharing.
    model, tok = tiny_model_and_tokenizer
    by_key = {(e.category, e.example_id): e for e in load_bbq(fixture_data_dir)}
    cfg = ScoringConfig(score_method="sum_logprob", batch_size=1, share_prefix=False, progress=False)
    for r in pred["examples"]:
        ex = by_key[r["category"], r["example_id"]]
        prompt = bbq_prompt(ex)
        assert prompt == f"{ex.context} {ex.question} Answer:"
        reqs = [Request(f"{prompt} {a}", len(prompt) + 1) for a in ex.answers]
        lp = sequence_logprobs(model, tok, reqs, cfg)
        # byte-level tokenizer, one token per byte: the space is its own token ending at len(prompt) + 1, so
        # the scored tokens are the answer's bytes (a merged " answer" token would be scored whole)
        assert lp.n_tokens.tolist() == [len(a.encode()) for a in ex.answers]
        assert r["scores"] == pytest.approx(lp.scores("sum_logprob").tolist(), abs=1e-4)
        assert all(s < 0 for s in r["scores"])
