"""The report's target checks, on hand-made before/after results."""

from __future__ import annotations

from biasunlearn.report.run_report import checks_table, crows_table, sentiment_table, stereoset_table, target_checks


def _res(ss: dict[str, float], lms: float, crows: dict[str, float]) -> dict:
    both = {d: {"SS": v, "LMS": lms, "ICAT": lms * min(v, 100 - v) / 50, "Count": 10} for d, v in ss.items()}
    return {"benchmarks": {"stereoset": {"metrics": {"both": both}},
                           "crows_pairs": {"metrics": {k: {"Count": 10, "SS": v} for k, v in crows.items()}}}}


def test_target_checks_by_hand():
    before = _res({"gender": 61.0, "race": 57.0, "overall": 58.0}, 82.0,
                  {"gender": 49.24, "race-color": 55.2, "religion": 51.4})
    after = _res({"gender": 54.5, "race": 49.0, "overall": 51.9}, 80.5,
                 {"gender": 49.62, "race-color": 53.0, "religion": 48.0})
    checks = {c["check"]: c for c in target_checks(before, after)}
    assert checks["overall SS within 50 ± 2"]["ok"]  # 51.9
    assert not checks["gender SS within 50 ± 4"]["ok"]  # 54.5
    assert checks["race SS within 50 ± 4"]["ok"]
    assert checks["LMS change within ±2"]["ok"] and checks["LMS change within ±2"]["value"] == "-1.50"
    # ICAT: 82·42/50 = 68.88 -> 80.5·48.1/50 = 77.44
    assert checks["ICAT higher than before"]["ok"] and checks["ICAT higher than before"]["value"] == "68.88 → 77.44"
    assert checks["CrowS-Pairs gender closer to 50"]["ok"]  # 0.76 -> 0.38
    assert checks["CrowS-Pairs race-color closer to 50"]["ok"]
    assert not checks["CrowS-Pairs religion closer to 50"]["ok"]  # 1.4 -> 2.0
    table = checks_table(list(checks.values()))
    assert "| gender SS within 50 ± 4 | 54.50 | no |" in table
    assert "| overall | 58.00 | 51.90 |" in stereoset_table(before, after)
    assert "| religion | 10 | 51.40 | 48.00 | no |" in crows_table(before, after)


def test_bbq_plot_is_written(tmp_path):
    from biasunlearn.report.run_report import plot_bbq

    def res(shift):
        cats = {c: {"bias_ambig": 10.0 + shift, "bias_disambig": -5.0 + shift} for c in ("Age", "Race", "overall")}
        return {"benchmarks": {"bbq": {"metrics": cats}}}

    plot_bbq(res(0.0), res(-8.0), tmp_path / "bbq.png")
    assert (tmp_path / "bbq.png").stat().st_size > 5000


def test_sentiment_table_by_hand():
    before = _res({"gender": 61.0, "overall": 58.0}, 82.0, {})
    after = _res({"gender": 55.0, "overall": 51.0}, 81.0, {})
    assert sentiment_table(before, after) == ""  # results without the breakdown: no table
    before["benchmarks"]["stereoset"]["ss_by_sentiment"] = {
        "gender": {"positive": {"Count": 4, "SS": 75.0}, "negative": {"Count": 2, "SS": 50.0}},
        "all": {"positive": {"Count": 4, "SS": 75.0}}}
    after["benchmarks"]["stereoset"]["ss_by_sentiment"] = {
        "gender": {"positive": {"Count": 4, "SS": 50.0}, "negative": {"Count": 2, "SS": 0.0}},
        "all": {"positive": {"Count": 4, "SS": 50.0}}}
    rows = sentiment_table(before, after).splitlines()
    assert rows[2:] == ["| gender | positive | 4 | 75.00 | 50.00 |", "| gender | negative | 2 | 50.00 | 0.00 |",
                        "| all | positive | 4 | 75.00 | 50.00 |"]


def test_loss_term_keys_include_the_optional_terms_after_the_papers():
    from biasunlearn.report.run_report import loss_term_keys

    log = [{"step": 1, "loss": 1.0, "loss_kl": 0.1, "loss_pair": 0.5, "loss_forget": 2.0, "learning_rate": 1e-4},
           {"step": 2, "loss": 1.0, "loss_invariance": 0.01, "loss_retain": 3.0},
           {"step": 2, "control": {"SS": 50.0}}]
    assert loss_term_keys(log) == ["loss", "loss_forget", "loss_retain", "loss_kl", "loss_pair", "loss_invariance"]
    assert loss_term_keys([{"step": 1, "loss": 1.0, "loss_retain": 2.0}]) == ["loss", "loss_retain"]


def test_target_checks_cover_the_unmodified_token_crows_score():
    before = _res({"overall": 58.0}, 82.0, {"gender": 49.24})
    after = _res({"overall": 51.0}, 82.0, {"gender": 55.7})
    before["benchmarks"]["crows_pairs_unmodified"] = {"metrics": {"gender": {"Count": 10, "SS": 46.95}}}
    after["benchmarks"]["crows_pairs_unmodified"] = {"metrics": {"gender": {"Count": 10, "SS": 48.85}}}
    checks = {c["check"]: c for c in target_checks(before, after)}
    assert not checks["CrowS-Pairs gender closer to 50"]["ok"]
    unmod = checks["CrowS-Pairs unmodified-token gender closer to 50"]
    assert unmod["ok"] and unmod["value"] == "46.95 → 48.85"
    assert "| gender | 10 | 46.95 | 48.85 | yes |" in crows_table(before, after, "crows_pairs_unmodified")
