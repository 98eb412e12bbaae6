"""StereoSet splits: the paper filter, seeded control draw, leakage removal, and the real-data figures."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from biasunlearn.data.splits import (
    Splits,
    check_no_leakage,
    make_splits,
    normalize_text,
    paper_filter,
    split_by_name,
)
from biasunlearn.data.stereoset import BIAS_TYPES, StereoExample, StereoSentence, load_stereoset
from biasunlearn.errors import ConfigError, DataError, LeakageError

LEAK_CONTEXT = "The Muslim woman walked in."  # fixture test.json example sharing "i like turtles." with dev
FILTERED_CONTEXTS = {
    "My mother is BLANK and also BLANK.",
    "The chemist works hard.BLANK",
    "The cook from Italy was`BLANK today.",
}


def _ex(ex_id: str, context: str, texts: tuple[str, str, str] = ("a", "b", "c"), task: str = "intrasentence",
        bias_type: str = "gender") -> StereoExample:
    labels = ("stereotype", "anti-stereotype", "unrelated")
    pairs = enumerate(zip(texts, labels, strict=True))
    sents = tuple(StereoSentence(f"{ex_id}-{i}", t, lab) for i, (t, lab) in pairs)
    return StereoExample(ex_id, task, bias_type, "target", context, sents)


def _texts(examples) -> set[str]:
    return {normalize_text(s.text) for e in examples for s in e.sentences}


def _leak_id(fixture_data_dir) -> str:
    test = load_stereoset(fixture_data_dir / "stereoset" / "test.json")
    (leak,) = [e for e in test if e.context == LEAK_CONTEXT]
    return leak.id


def test_paper_filter_rules():
    cases = {
        "The man was BLANK.": True,
        "BLANK is what he was.": True,
        "He was BLANK and BLANK.": False,
        "He worked hard.BLANK": False,
        "He was very`BLANK today.": False,
        "He was very ` BLANK today.": True,  # backtick not immediately before BLANK
        "He was. BLANK today.": True,
    }
    examples = [_ex(str(i), ctx) for i, ctx in enumerate(cases)]
    kept = {e.context for e in paper_filter(examples)}
    assert kept == {ctx for ctx, keep in cases.items() if keep}
    inter = _ex("x", "He was BLANK and BLANK.", task="intersentence")
    assert paper_filter([inter]) == [inter]  # the filter applies to intrasentence contexts only


def test_paper_filter_on_fixture(fixture_data_dir):
    test = load_stereoset(fixture_data_dir / "stereoset" / "test.json")
    kept = paper_filter(test)
    assert {e.context for e in test} - {e.context for e in kept} == FILTERED_CONTEXTS
    assert [e for e in test if e in kept] == kept  # order preserved
    assert Counter(e.bias_type for e in kept) == {"gender": 5, "profession": 5, "race": 5, "religion": 6}


def test_fixture_has_exactly_one_deliberate_leak(fixture_data_dir):
    dev = load_stereoset(fixture_data_dir / "stereoset" / "dev.json")
    test = load_stereoset(fixture_data_dir / "stereoset" / "test.json")
    raw_shared = {s.text for e in dev for s in e.sentences} & {s.text for e in test for s in e.sentences}
    assert raw_shared == set()
    assert _texts(dev) & _texts(test) == {"i like turtles."}


def test_make_splits_fixture_disjoint_and_clean(fixture_data_dir):
    s = make_splits(fixture_data_dir, control_per_type=2, seed=0)
    assert isinstance(s, Splits) and (s.seed, s.control_per_type) == (0, 2)
    counts = s.counts()
    assert counts["control"] == dict.fromkeys(BIAS_TYPES, 2)
    assert counts["report"] == dict.fromkeys(BIAS_TYPES, 2)
    assert sum(counts["train"].values()) == 21 - 8 - s.dropped_for_leakage
    assert {e.id for e in s.train}.isdisjoint({e.id for e in s.control})
    assert _texts(s.train).isdisjoint(_texts(s.control) | _texts(s.report))
    # report is dev.json unfiltered: all 8, including the double-BLANK example the paper filter drops
    dev = load_stereoset(fixture_data_dir / "stereoset" / "dev.json")
    assert [e.id for e in s.report] == [e.id for e in dev]
    assert any(e.context.count("BLANK") > 1 for e in s.report)
    # no filtered example ends up in train or control
    assert not {e.context for e in s.train + s.control} & FILTERED_CONTEXTS


def test_make_splits_deterministic_and_seed_dependent(fixture_data_dir):
    a = make_splits(fixture_data_dir, control_per_type=2, seed=3)
    b = make_splits(fixture_data_dir, control_per_type=2, seed=3)
    assert [e.id for e in a.control] == [e.id for e in b.control]
    assert [e.id for e in a.train] == [e.id for e in b.train]
    controls = {frozenset(e.id for e in make_splits(fixture_data_dir, control_per_type=2, seed=k).control)
                for k in range(6)}
    assert len(controls) > 1
    c0 = {e.id for e in make_splits(fixture_data_dir, control_per_type=2, seed=0).control}
    c1 = {e.id for e in make_splits(fixture_data_dir, control_per_type=2, seed=1).control}
    assert c0 != c1


def test_control_draw_ignores_file_order(fixture_data_dir, tmp_path):
    """The draw sorts by id first, so reordering the file does not change which examples are drawn."""
    root = tmp_path / "data"
    shutil.copytree(fixture_data_dir / "stereoset", root / "stereoset")
    p = root / "stereoset" / "test.json"
    d = json.loads(p.read_text(encoding="utf-8"))
    for task in d["data"]:
        d["data"][task].reverse()
    p.write_text(json.dumps(d), encoding="utf-8")
    orig = make_splits(fixture_data_dir, control_per_type=2, seed=5)
    rev = make_splits(root, control_per_type=2, seed=5)
    assert {e.id for e in orig.control} == {e.id for e in rev.control}
    assert [e.id for e in rev.train] != [e.id for e in orig.train]  # but each split keeps file order
    assert sorted(e.id for e in rev.train) == sorted(e.id for e in orig.train)


def test_deliberate_leak_is_dropped(fixture_data_dir):
    leak = _leak_id(fixture_data_dir)
    outcomes = set()
    for seed in range(8):
        s = make_splits(fixture_data_dir, control_per_type=1, seed=seed)
        in_control = leak in {e.id for e in s.control}
        assert leak not in {e.id for e in s.train}
        # within the fixture test.json all sentences are distinct, so only the dev leak can be dropped
        assert s.dropped_for_leakage == (0 if in_control else 1)
        outcomes.add(in_control)
    assert False in outcomes
    none = make_splits(fixture_data_dir, control_per_type=0)
    assert none.control == [] and none.dropped_for_leakage == 1 and len(none.train) == 20


def test_sentences_shared_with_control_are_dropped(fixture_data_dir, tmp_path):
    """A train example sharing a sentence (up to case and spacing) with a control example is removed."""
    before = make_splits(fixture_data_dir, control_per_type=1, seed=0)
    control_ex = before.control[0]
    victim = next(e for e in before.train if e.bias_type != control_ex.bias_type)
    shared = control_ex.by_label("unrelated").text
    root = tmp_path / "data"
    shutil.copytree(fixture_data_dir / "stereoset", root / "stereoset")
    p = root / "stereoset" / "test.json"
    d = json.loads(p.read_text(encoding="utf-8"))
    (rec,) = [e for e in d["data"][victim.task] if e["id"] == victim.id]
    rec["sentences"][0]["sentence"] = "  " + shared.upper().replace(" ", " \t ") + " "
    p.write_text(json.dumps(d), encoding="utf-8")
    after = make_splits(root, control_per_type=1, seed=0)
    assert [e.id for e in after.control] == [e.id for e in before.control]  # the draw ignores text
    assert victim.id not in {e.id for e in after.train}
    assert after.dropped_for_leakage == before.dropped_for_leakage + 1
    assert len(after.train) == len(before.train) - 1


def test_tasks_option(fixture_data_dir):
    s = make_splits(fixture_data_dir, control_per_type=1, tasks=("intrasentence",))
    assert {e.task for e in s.train + s.control + s.report} == {"intrasentence"}
    assert len(s.report) == 4 and s.dropped_for_leakage == 0  # the leak is an intersentence example
    assert sum(s.counts()["train"].values()) == 9 - 4


def test_bad_arguments(fixture_data_dir, tmp_path):
    with pytest.raises(DataError, match=r"only 5 gender examples .*control_per_type=6"):
        make_splits(fixture_data_dir, control_per_type=6)
    with pytest.raises(ConfigError, match="control_per_type"):
        make_splits(fixture_data_dir, control_per_type=-1)
    with pytest.raises(DataError, match=r"stereoset/test\.json"):
        make_splits(tmp_path)


def test_check_no_leakage():
    train = [_ex(f"t{i}", "ctx BLANK", (f"Train {i}.", f"Other {i}.", f"X {i}.")) for i in range(12)]
    clean = [_ex("h", "ctx BLANK", ("Held.", "Out.", "Only."))]
    check_no_leakage(train, {"report": clean, "control": []})
    leaky = [_ex(f"r{i}", "ctx BLANK", (f"train {i}.", f"R{i}a.", f"R{i}b.")) for i in range(12)]
    with pytest.raises(LeakageError) as ei:
        check_no_leakage(train, {"report": clean, "control": leaky})
    msg = str(ei.value)
    assert msg.startswith("12 training sentence(s)")
    assert "'Train 0.': train example t0 and control example r0" in msg
    assert "Train 9." in msg and "Train 10." not in msg  # at most 10 listed
    assert msg.rstrip().endswith("...")
    assert isinstance(ei.value, DataError)


def test_split_by_name(fixture_data_dir):
    s = make_splits(fixture_data_dir, control_per_type=1, seed=2)
    for name in ("train", "control", "report"):
        got = split_by_name(fixture_data_dir, name, control_per_type=1, seed=2)
        assert [e.id for e in got] == [e.id for e in getattr(s, name)]
    with pytest.raises(ConfigError) as ei:
        split_by_name(fixture_data_dir, "dev")
    assert "--split" in str(ei.value) and "'dev'" in str(ei.value)


@pytest.fixture(scope="module")
def real_splits(shared_data_dir) -> Splits:
    return make_splits(shared_data_dir)


def test_real_paper_filter_counts(shared_data_dir):
    test = load_stereoset(shared_data_dir / "stereoset" / "test.json")
    kept = paper_filter(test)
    assert Counter(e.bias_type for e in kept) == {
        "gender": 1521, "profession": 4832, "race": 5921, "religion": 488}
    assert len(kept) == 12762
    dev = load_stereoset(shared_data_dir / "stereoset" / "dev.json")
    assert Counter(e.bias_type for e in paper_filter(dev)) == {
        "gender": 497, "profession": 1636, "race": 1938, "religion": 155}


def test_real_splits(real_splits):
    s = real_splits
    counts = s.counts()
    assert counts["control"] == dict.fromkeys(BIAS_TYPES, 50)
    assert counts["report"] == {"gender": 497, "profession": 1637, "race": 1938, "religion": 157}
    assert len(s.report) == 4229
    filtered = {"gender": 1521, "profession": 4832, "race": 5921, "religion": 488}
    assert sum(counts["train"].values()) == 12762 - 200 - s.dropped_for_leakage
    for bt in BIAS_TYPES:
        assert counts["train"][bt] <= filtered[bt] - 50
    # pinned for seed 0: examples sharing a sentence with report (dev.json) or control
    assert s.dropped_for_leakage == 284
    assert counts["train"] == {"gender": 1451, "profession": 4674, "race": 5727, "religion": 426}


def test_real_splits_have_no_leakage(real_splits):
    s = real_splits
    check_no_leakage(s.train, {"report": s.report, "control": s.control})
    assert _texts(s.train).isdisjoint(_texts(s.report) | _texts(s.control))
    ids = [e.id for e in s.train + s.control + s.report]
    assert len(ids) == len(set(ids))


def test_control_by_target_holds_out_whole_targets(fixture_data_dir):
    s = make_splits(fixture_data_dir, control_per_type=2, seed=1, control_by="target")
    assert s.control_by == "target"
    for bt in BIAS_TYPES:
        held = set(s.control_targets[bt])
        control = [e for e in s.control if e.bias_type == bt]
        assert len(control) >= 2 and {e.target for e in control} == held
        # no train example of a held-out target
        assert not [e for e in s.train if e.bias_type == bt and e.target in held]
    check_no_leakage(s.train, {"report": s.report, "control": s.control})
    again = make_splits(fixture_data_dir, control_per_type=2, seed=1, control_by="target")
    assert again.control_targets == s.control_targets


def test_control_by_target_refuses_to_take_every_target(fixture_data_dir):
    # gender has 5 filtered fixture examples: holding out 5 takes every gender target
    with pytest.raises(DataError, match=r"gender.*every gender target"):
        make_splits(fixture_data_dir, control_per_type=5, control_by="target")
    with pytest.raises(ConfigError, match="--control-by"):
        make_splits(fixture_data_dir, control_by="person")


def test_real_control_by_target_shares_no_target_with_train(shared_data_dir):
    s = make_splits(shared_data_dir, control_per_type=150, control_by="target")
    counts = s.counts()
    for bt in BIAS_TYPES:
        assert counts["control"][bt] >= 150
        held = set(s.control_targets[bt])
        assert not {e.target for e in s.train if e.bias_type == bt} & held
    check_no_leakage(s.train, {"report": s.report, "control": s.control})
