"""BBQ loader: fixture contents, metadata deduplication and join, validation errors, real-file counts."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest

from biasunlearn.data.bbq import BBQExample, bbq_categories, load_bbq, load_bbq_metadata
from biasunlearn.errors import DataError

META = Path("bbq") / "analysis_scripts" / "additional_metadata.csv"


@pytest.fixture
def bbq_copy(fixture_data_dir, tmp_path) -> Path:
    """A writable copy of the fixture BBQ folder under tmp_path/"data"."""
    root = tmp_path / "data"
    shutil.copytree(fixture_data_dir / "bbq", root / "bbq")
    return root


def _rewrite_line(root: Path, category: str, line_no: int, mutate) -> Path:
    path = root / "bbq" / "data" / f"{category}.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[line_no - 1])
    out = mutate(rec)
    lines[line_no - 1] = out if isinstance(out, str) else json.dumps(rec)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_categories(fixture_data_dir, tmp_path):
    assert bbq_categories(fixture_data_dir) == ["Age", "Gender_identity"]
    with pytest.raises(DataError, match="BBQ folder"):
        bbq_categories(tmp_path)


def test_fixture_loads_with_metadata(fixture_data_dir):
    examples = load_bbq(fixture_data_dir)
    assert len(examples) == 20
    assert all(isinstance(e, BBQExample) for e in examples)
    assert Counter(e.category for e in examples) == {"Age": 8, "Gender_identity": 12}
    assert Counter(e.context_condition for e in examples) == {"ambig": 10, "disambig": 10}
    assert Counter(e.question_polarity for e in examples) == {"neg": 10, "nonneg": 10}
    first = examples[0]
    assert first.example_id == 0 and first.category == "Age" and first.question_index == "1"
    assert first.answers == ("The grandmother", "The teenager", "Unknown")
    assert first.answer_info["ans2"] == ("Unknown", "unknown")
    assert first.label == 2 and first.stereotyped_groups == ("old",)
    by_key = {(e.category, e.example_id): e for e in examples}
    assert [by_key["Age", i].target_loc for i in range(8)] == [0, 0, 1, 1, 1, 1, 2, 2]
    assert [by_key["Gender_identity", i].target_loc for i in range(8)] == [2, 2, 0, 0, 0, 0, 1, 1]
    # "NA" target_loc becomes None
    assert [by_key["Gender_identity", i].target_loc for i in range(8, 12)] == [None] * 4
    # in ambiguous contexts the right answer is the "unknown" one
    for e in examples:
        if e.context_condition == "ambig":
            assert e.answer_info[f"ans{e.label}"][1] == "unknown"


def test_category_selection_and_no_metadata(bbq_copy):
    only = load_bbq(bbq_copy, categories=["Gender_identity"])
    assert {e.category for e in only} == {"Gender_identity"} and len(only) == 12
    assert load_bbq(bbq_copy, categories="Age") == load_bbq(bbq_copy, categories=["Age"])
    (bbq_copy / META).unlink()
    with pytest.raises(DataError, match=r"additional_metadata\.csv"):
        load_bbq(bbq_copy)
    plain = load_bbq(bbq_copy, metadata=False)
    assert len(plain) == 20 and all(e.target_loc is None for e in plain)
    with pytest.raises(DataError, match=r"Religion\.jsonl: BBQ file not found"):
        load_bbq(bbq_copy, categories=["Religion"], metadata=False)


def test_metadata_duplicates_dropped_and_logged(fixture_data_dir, caplog):
    raw_rows = (fixture_data_dir / META).read_text(encoding="utf-8").splitlines()[1:]
    assert len(raw_rows) == 21  # 20 examples + one duplicated Gender_identity row
    with caplog.at_level(logging.INFO, logger="biasunlearn.data.bbq"):
        meta = load_bbq_metadata(fixture_data_dir / META)
    assert len(meta) == 20
    assert meta["Gender_identity", 5] == 0 and meta["Gender_identity", 9] is None
    assert any("dropped 1 duplicate" in r.getMessage() and "Gender_identity" in r.getMessage()
               for r in caplog.records)


def _edit_meta(root: Path, old: str, new: str, count: int = 1) -> Path:
    p = root / META
    text = p.read_text(encoding="utf-8")
    assert old in text
    p.write_text(text.replace(old, new, count), encoding="utf-8")
    return p


def test_metadata_duplicates_that_disagree_fail(bbq_copy):
    p = _edit_meta(bbq_copy, '"Gender_identity","2",5,0,"label",NA,NA,"aggression",NA,NA,NA,"M, boys"',
                   '"Gender_identity","2",5,1,"label",NA,NA,"aggression",NA,NA,NA,"M, boys"')
    with pytest.raises(DataError) as ei:
        load_bbq_metadata(p)
    msg = str(ei.value)
    assert "additional_metadata.csv" in msg and "example_id=5" in msg and "Gender_identity" in msg
    assert "'target_loc'" in msg and "disagrees" in msg


@pytest.mark.parametrize("old, new, pattern", [
    ('"Age","1",2,1,', '"Age","1",2,7,', r"row 3 .*field 'target_loc': expected 0, 1, 2 or NA, got '7'"),
    ('"Age","1",2,1,', '"Age","1",two,1,', r"row 3 .*field 'example_id': expected an integer, got 'two'"),
    ('"category"', '"kategory"', r"missing column 'category'"),
])
def test_metadata_bad_values(bbq_copy, old, new, pattern):
    p = _edit_meta(bbq_copy, old, new)
    with pytest.raises(DataError, match=pattern):
        load_bbq_metadata(p)


def test_metadata_row_missing_for_example(bbq_copy):
    p = bbq_copy / META
    lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if not ln.startswith('"Age","2",6,')]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as ei:
        load_bbq(bbq_copy)
    msg = str(ei.value)
    assert "Age.jsonl: line 7 (example_id=6)" in msg and "no row for (category=Age, example_id=6)" in msg


def _set(field, value):
    def mutate(rec):
        rec[field] = value
    return mutate


def _del(field):
    def mutate(rec):
        del rec[field]
    return mutate


def _answer_info(rec):
    rec["answer_info"]["ans1"] = ["grandson"]


def _groups(rec):
    rec["additional_metadata"]["stereotyped_groups"] = "old"


@pytest.mark.parametrize("mutate, field, problem", [
    (_set("label", 3), "'label'", "expected 0, 1 or 2, got 3"),
    (_set("label", True), "'label'", "got True"),
    (_set("question_polarity", "positive"), "'question_polarity'", "expected one of neg, nonneg"),
    (_set("context_condition", "vague"), "'context_condition'", "expected one of ambig, disambig"),
    (_set("category", "Religion"), "'category'", "expected 'Age' (the file name), got 'Religion'"),
    (_set("question_index", 1), "'question_index'", "expected a string, got int"),
    (_del("context"), "'context'", "missing"),
    (_set("ans2", ""), "'ans2'", "empty"),
    (_answer_info, "'answer_info.ans1'", "expected [answer text, group]"),
    (_groups, "'additional_metadata.stereotyped_groups'", "expected a list of strings"),
])
def test_bad_line_names_file_line_field(bbq_copy, mutate, field, problem):
    _rewrite_line(bbq_copy, "Age", 3, mutate)
    with pytest.raises(DataError) as ei:
        load_bbq(bbq_copy)
    msg = str(ei.value)
    assert "Age.jsonl: line 3 (example_id=2)" in msg
    assert f"field {field}" in msg and problem in msg


def test_bad_example_id_invalid_json_and_duplicates(bbq_copy):
    _rewrite_line(bbq_copy, "Age", 2, _set("example_id", "1"))
    with pytest.raises(DataError, match=r"Age\.jsonl: line 2: field 'example_id': expected an integer"):
        load_bbq(bbq_copy)
    _rewrite_line(bbq_copy, "Age", 2, _set("example_id", 0))
    dup = r"Age\.jsonl: line 2 \(example_id=0\): .*duplicate .*first at line 1"
    with pytest.raises(DataError, match=dup):
        load_bbq(bbq_copy)
    _rewrite_line(bbq_copy, "Age", 2, lambda rec: '{"example_id": 1, "label": ')
    with pytest.raises(DataError, match=r"Age\.jsonl: line 2: invalid JSON at column"):
        load_bbq(bbq_copy)


@pytest.fixture(scope="module")
def real_bbq(shared_data_dir):
    return load_bbq(shared_data_dir)


def test_real_counts_and_join(real_bbq, shared_data_dir, caplog):
    expected = {
        "Age": 3680, "Disability_status": 1556, "Gender_identity": 5672, "Nationality": 3080,
        "Physical_appearance": 1576, "Race_ethnicity": 6880, "Race_x_SES": 11160, "Race_x_gender": 15960,
        "Religion": 1200, "SES": 6864, "Sexual_orientation": 864,
    }
    assert Counter(e.category for e in real_bbq) == expected
    assert len(real_bbq) == 58492
    assert Counter(e.context_condition for e in real_bbq)["ambig"] == 58492 // 2
    none_loc = [e for e in real_bbq if e.target_loc is None]
    assert len(none_loc) == 16 and {e.category for e in none_loc} == {"Gender_identity"}
    for e in real_bbq:
        if e.target_loc is not None:
            assert e.answer_info[f"ans{e.target_loc}"][1] != "unknown"
    with caplog.at_level(logging.INFO, logger="biasunlearn.data.bbq"):
        meta = load_bbq_metadata(shared_data_dir / META)
    assert len(meta) == 58492
    assert any("dropped 64 duplicate" in r.getMessage() and "Gender_identity" in r.getMessage()
               for r in caplog.records)
