"""End to end: ``biasunlearn eval`` on a tiny local model with fixture data."""

from __future__ import annotations

import json

import pytest

from biasunlearn.cli.main import main
from biasunlearn.data.splits import split_by_name
from biasunlearn.metrics.stereoset import ss_by_sentiment, stereoset_results


def _run(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_eval_end_to_end(tiny_model_dir, fixture_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = _run(
        ["-q", "eval", "--model", str(tiny_model_dir), "--data-dir", str(fixture_data_dir),
         "--benchmarks", "stereoset,crows_pairs", "--out", str(out), "--no-progress", "--batch-size", "5"],
        capsys,
    )
    assert code == 0
    assert "StereoSet (report split" in stdout and "CrowS-Pairs" in stdout
    res = json.loads((out / "results.json").read_text())
    # Provenance: model, data checksums, scoring options, package versions.
    assert res["model"]["architecture"] == "LlamaForCausalLM"
    assert set(res["data"]) == {"stereoset/dev.json", "crows_pairs/crows_pairs_anonymized.csv"}
    assert all(len(v) == 64 for v in res["data"].values())
    assert res["config"]["scoring"]["score_method"] == "geometric_mean"
    assert res["packages"]["torch"]
    st = res["benchmarks"]["stereoset"]["metrics"]
    report = split_by_name(fixture_data_dir, "report")
    assert st["both"]["overall"]["Count"] == len(report)
    # The predictions file is in the official format and reproduces the reported numbers.
    pred = json.loads((out / "stereoset_predictions.json").read_text())
    assert set(pred) == {"intrasentence", "intersentence"}
    scores = {p["id"]: p["score"] for task in pred.values() for p in task}
    assert len(scores) == 3 * len(report)
    again = stereoset_results(report, scores)
    for task in again:
        for dom in again[task]:
            for k in ("SS", "LMS", "ICAT"):
                assert again[task][dom][k] == pytest.approx(st[task][dom][k], abs=1e-9)
    cp = res["benchmarks"]["crows_pairs"]["metrics"]
    assert 0 <= cp["overall"]["SS"] <= 100 and cp["overall"]["Count"] == res["benchmarks"]["crows_pairs"]["n_items"]
    # SS by sentiment direction: the directions partition the examples, and each SS is recomputed from the scores
    by_sent = res["benchmarks"]["stereoset"]["ss_by_sentiment"]
    assert sum(v["Count"] for v in by_sent["all"].values()) == len(report)
    assert by_sent == ss_by_sentiment(report, scores)


def test_eval_crows_pairs_unmodified_scores_fewer_tokens(tiny_model_dir, fixture_data_dir, tmp_path, capsys):
    """The unmodified-token CrowS-Pairs score leaves the differing words out: every sentence's score is
    a mean over fewer tokens than the whole sentence, and the CLI prints both tables."""
    from biasunlearn.data.crows_pairs import load_crows_pairs, modified_spans

    out = tmp_path / "run"
    code, stdout, _ = _run(
        ["-q", "eval", "--model", str(tiny_model_dir), "--data-dir", str(fixture_data_dir),
         "--benchmarks", "crows_pairs,crows_pairs_unmodified", "--out", str(out), "--no-progress",
         "--score-method", "sum_logprob"], capsys)
    assert code == 0
    assert "CrowS-Pairs, whole sentence" in stdout and "CrowS-Pairs, unmodified tokens" in stdout
    res = json.loads((out / "results.json").read_text())
    whole = json.loads((out / "crows_pairs_predictions.json").read_text())["pairs"]
    unmod = json.loads((out / "crows_pairs_unmodified_predictions.json").read_text())["pairs"]
    pairs = load_crows_pairs(fixture_data_dir / "crows_pairs" / "crows_pairs_anonymized.csv")
    assert len(unmod) == len(whole) == len(pairs) == res["benchmarks"]["crows_pairs_unmodified"]["n_items"]
    for p, w, u in zip(pairs, whole, unmod, strict=True):
        assert all(modified_spans(p.sent_more, p.sent_less))
        # sum of log-probabilities over a subset of the tokens: less negative than over all of them
        assert u["sent_more"] > w["sent_more"] and u["sent_less"] > w["sent_less"]


def test_eval_bias_types_scores_only_those_types(tiny_model_dir, fixture_data_dir, tmp_path, capsys):
    """``--bias-types gender,race`` scores exactly the report split's gender and race examples, with the
    scores a full evaluation gives them."""
    base = ["-q", "eval", "--model", str(tiny_model_dir), "--data-dir", str(fixture_data_dir),
            "--benchmarks", "stereoset", "--no-progress", "--batch-size", "5"]
    outs = {}
    for name, extra in (("all", []), ("some", ["--bias-types", "gender,race"])):
        outs[name] = tmp_path / name
        code, _, _ = _run(base + extra + ["--out", str(outs[name])], capsys)
        assert code == 0
    report = split_by_name(fixture_data_dir, "report")
    wanted = [e for e in report if e.bias_type in ("gender", "race")]
    assert 0 < len(wanted) < len(report)
    res = json.loads((outs["some"] / "results.json").read_text())
    st = res["benchmarks"]["stereoset"]
    assert res["config"]["bias_types"] == "gender,race"
    assert st["n_items"] == st["metrics"]["both"]["overall"]["Count"] == len(wanted)
    assert set(st["metrics"]["both"]) == {"overall", "gender", "race"}

    def scores(out):
        pred = json.loads((out / "stereoset_predictions.json").read_text())
        return {p["id"]: p["score"] for task in pred.values() for p in task}

    some, full = scores(outs["some"]), scores(outs["all"])
    assert set(some) == {s.id for e in wanted for s in e.sentences}
    assert all(some[i] == pytest.approx(full[i], abs=1e-5) for i in some)


def test_eval_bias_types_absent_from_the_split_is_a_clear_error(tiny_model_dir, fixture_data_dir, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "stereoset").mkdir(parents=True)
    dev = json.loads((fixture_data_dir / "stereoset" / "dev.json").read_text())
    dev["data"] = {task: [e for e in exs if e["bias_type"] == "gender"] for task, exs in dev["data"].items()}
    (data / "stereoset" / "dev.json").write_text(json.dumps(dev))
    out = tmp_path / "o"
    code, _, err = _run(["eval", "--model", str(tiny_model_dir), "--data-dir", str(data), "--benchmarks", "stereoset",
                         "--bias-types", "race", "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and "--bias-types" in err and "race" in err
    assert not (out / "results.json").exists()


def test_eval_yaml_config_and_flag_override(tiny_model_dir, fixture_data_dir, tmp_path, capsys):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        f"model: {tiny_model_dir}\ndata_dir: {fixture_data_dir}\nbenchmarks: crows_pairs\nlimit: 3\n"
        "scoring:\n  score_method: sum_logprob\n  progress: false\n"
    )
    out = tmp_path / "o"
    code, _, _ = _run(["-q", "eval", "--config", str(cfg), "--limit", "4", "--out", str(out)], capsys)
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["limit"] == 4  # the flag wins over the YAML
    assert res["config"]["scoring"]["score_method"] == "sum_logprob"  # nested YAML section applied
    assert res["benchmarks"]["crows_pairs"]["n_items"] == 4


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--split", "dev"], "--split"),
        (["--bias-types", "gender,nope"], "--bias-types"),
        (["--bias-types", "gender,gender"], "--bias-types"),
        (["--benchmarks", "stereoset,nope"], "--benchmarks"),
        (["--score-method", "max"], "--score-method"),
        (["--model", "/no/such/model"], "/no/such/model"),
        (["--adapter", "/no/such/adapter"], "--adapter"),
    ],
)
def test_eval_bad_input_is_a_clear_error_and_writes_nothing(
    args, needle, tiny_model_dir, fixture_data_dir, tmp_path, capsys
):
    out = tmp_path / "o"
    base = ["eval", "--model", str(tiny_model_dir), "--data-dir", str(fixture_data_dir), "--out", str(out),
            "--no-progress"]
    code, _, err = _run(base + args, capsys)
    assert code == 2
    assert needle in err
    assert not (out / "results.json").exists()


def test_eval_bad_yaml_key(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("modle: x\n")
    code, _, err = _run(["eval", "--config", str(cfg)], capsys)
    assert code == 2 and "modle" in err and str(cfg) in err


def test_eval_missing_data_dir(tiny_model_dir, tmp_path, capsys):
    code, _, err = _run(["eval", "--model", str(tiny_model_dir), "--data-dir", str(tmp_path / "nodata")], capsys)
    assert code == 2 and "nodata" in err


@pytest.mark.parametrize("method", ["self_debias", "cafie"])
def test_eval_with_decoding_time_method(method, tiny_model_dir, fixture_data_dir, tmp_path, capsys):
    """`eval --method` scores with the baseline's adjusted probabilities (different from plain scores)."""
    outs = {}
    for m in ("", method):
        out = tmp_path / (m or "plain")
        args = ["-q", "eval", "--model", str(tiny_model_dir), "--data-dir", str(fixture_data_dir), "--out", str(out),
                "--benchmarks", "crows_pairs", "--no-progress"]
        code, _, _ = _run([*args, "--method", m] if m else args, capsys)
        assert code == 0
        outs[m] = json.loads((out / "crows_pairs_predictions.json").read_text())["pairs"]
        assert json.loads((out / "results.json").read_text())["config"]["method"] == m
    plain = [p["sent_more"] for p in outs[""]]
    adjusted = [p["sent_more"] for p in outs[method]]
    assert len(plain) == len(adjusted) and max(abs(a - b) for a, b in zip(plain, adjusted, strict=True)) > 1e-6


def test_eval_unknown_method(tiny_model_dir, fixture_data_dir, capsys):
    code, _, err = _run(["eval", "--model", str(tiny_model_dir), "--data-dir", str(fixture_data_dir),
                         "--method", "magic"], capsys)
    assert code == 2 and "--method" in err and "self_debias" in err


def test_python_api_takes_a_model_spec(tiny_model_dir, fixture_data_dir, tmp_path):
    import biasunlearn

    res = biasunlearn.evaluate(model=str(tiny_model_dir), data_dir=str(fixture_data_dir), benchmarks="stereoset",
                               out=str(tmp_path / "api"))
    assert res["benchmarks"]["stereoset"]["metrics"]["both"]["overall"]["Count"] == 8
    assert (tmp_path / "api" / "results.json").is_file()


def test_killed_eval_resumes_from_its_partial_scores(tiny_model_dir, fixture_data_dir, tmp_path, capsys,
                                                     monkeypatch):
    import biasunlearn.benchmarks as bm
    import biasunlearn.partial as partial

    args = ["-q", "eval", "--model", str(tiny_model_dir), "--data-dir", str(fixture_data_dir), "--benchmarks",
            "stereoset,crows_pairs", "--no-progress"]
    assert _run([*args, "--out", str(tmp_path / "whole")], capsys)[0] == 0
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert not (tmp_path / "whole" / "partial").exists()  # removed once results.json is written

    monkeypatch.setattr(partial, "DEFAULT_CHUNK", 4)
    real = bm.sequence_logprobs
    calls: list[str] = []
    kill = [True]

    def killed_in_crows(model, tok, reqs, cfg, desc):
        if kill[0] and desc.startswith("CrowS-Pairs") and sum(c.startswith("CrowS-Pairs") for c in calls) == 2:
            kill[0] = False
            raise KeyboardInterrupt
        calls.append(desc)
        return real(model, tok, reqs, cfg, desc=desc)

    monkeypatch.setattr(bm, "sequence_logprobs", killed_in_crows)
    out = tmp_path / "killed"
    code, _, err = _run([*args, "--out", str(out)], capsys)
    assert code != 0 and "interrupted" in err
    assert not (out / "results.json").exists()
    files = {f.name.split("-")[0]: json.loads(f.read_text()) for f in (out / "partial").glob("*.json")}
    assert set(files) == {"stereoset", "crows_pairs"}
    assert files["stereoset"]["done"] == files["stereoset"]["n_requests"] and files["crows_pairs"]["done"] == 8
    n_before = len(calls)
    assert _run([*args, "--out", str(out)], capsys)[0] == 0
    resumed = calls[n_before:]
    assert resumed and all(c.startswith("CrowS-Pairs") for c in resumed)  # StereoSet not scored again
    assert resumed[0].startswith("CrowS-Pairs 8-")  # nor the two finished CrowS-Pairs chunks
    got = json.loads((out / "results.json").read_text())
    for name in ("stereoset", "crows_pairs"):
        assert got["benchmarks"][name]["metrics"] == whole["benchmarks"][name]["metrics"]
    # results.json says which scores came from the partial files, so its timing_s is read correctly
    assert got["resumed_requests"] == {"stereoset": files["stereoset"]["n_requests"], "crows_pairs": 8}
    assert "resumed_requests" not in whole
    pred = [json.loads((d / "stereoset_predictions.json").read_text()) for d in (out, tmp_path / "whole")]
    scores = [[p["score"] for task in sorted(x) for p in x[task]] for x in pred]
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)
    assert not (out / "partial").exists()
