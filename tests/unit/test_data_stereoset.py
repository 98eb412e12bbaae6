"""StereoSet loader: fixture contents, strict validation, caching, and the real files' counts."""

from __future__ import annotations

import copy
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from biasunlearn.data.stereoset import (
    BIAS_TYPES,
    LABELS,
    StereoExample,
    StereoSentence,
    clear_cache,
    load_stereoset,
)
from biasunlearn.errors import ConfigError, DataError


@pytest.fixture
def test_json(fixture_data_dir) -> dict:
    return json.loads((fixture_data_dir / "stereoset" / "test.json").read_text(encoding="utf-8"))


def _write(tmp_path: Path, obj, name: str = "broken.json") -> Path:
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=1), encoding="utf-8")
    return p


def test_fixture_files_load_and_cover_everything(fixture_data_dir):
    dev = load_stereoset(fixture_data_dir / "stereoset" / "dev.json")
    test = load_stereoset(fixture_data_dir / "stereoset" / "test.json")
    assert len(dev) == 8 and len(test) == 24
    for examples in (dev, test):
        assert {e.bias_type for e in examples} == set(BIAS_TYPES)
        assert {e.task for e in examples} == {"intrasentence", "intersentence"}
        for e in examples:
            assert isinstance(e, StereoExample)
            assert len(e.sentences) == 3
            assert sorted(s.gold_label for s in e.sentences) == sorted(LABELS)
            assert all(isinstance(s, StereoSentence) and len(s.text) < 60 for s in e.sentences)
    targets = Counter(e.target for e in test)
    assert targets.most_common(1)[0][1] >= 2  # at least two examples share a target term
    # the default order is intrasentence first, then intersentence, each in file order
    assert [e.task for e in test] == ["intrasentence"] * 12 + ["intersentence"] * 12


def test_fields_match_the_file(fixture_data_dir, test_json):
    test = load_stereoset(fixture_data_dir / "stereoset" / "test.json", tasks=("intersentence",))
    raw = test_json["data"]["intersentence"]
    assert [e.id for e in test] == [r["id"] for r in raw]
    first, rec = test[0], raw[0]
    assert (first.target, first.bias_type, first.context) == (rec["target"], rec["bias_type"], rec["context"])
    assert [(s.id, s.text, s.gold_label) for s in first.sentences] == [
        (s["id"], s["sentence"], s["gold_label"]) for s in rec["sentences"]
    ]
    # sentences keep file order, which is not label order in the fixture
    assert len({tuple(s.gold_label for s in e.sentences) for e in test}) > 1


def test_by_label(fixture_data_dir):
    ex = load_stereoset(fixture_data_dir / "stereoset" / "test.json", tasks=("intrasentence",))[0]
    assert ex.context == "The mother was very BLANK."
    assert ex.by_label("stereotype").text == "The mother was very caring."
    assert ex.by_label("anti-stereotype").text == "The mother was very strict."
    assert ex.by_label("unrelated").text == "The mother was very purple."
    with pytest.raises(ValueError, match="neutral"):
        ex.by_label("neutral")


def test_task_selection_and_order(fixture_data_dir):
    p = fixture_data_dir / "stereoset" / "dev.json"
    inter_first = load_stereoset(p, tasks=("intersentence", "intrasentence"))
    assert [e.task for e in inter_first[:4]] == ["intersentence"] * 4
    assert load_stereoset(p, tasks="intrasentence") == load_stereoset(p, tasks=("intrasentence",))
    assert len(load_stereoset(p, tasks=("intrasentence",))) == 4
    with pytest.raises(ConfigError, match="sentiment"):
        load_stereoset(p, tasks=("sentiment",))


def test_examples_are_immutable_and_hashable(fixture_data_dir):
    ex = load_stereoset(fixture_data_dir / "stereoset" / "dev.json")[0]
    with pytest.raises(AttributeError):
        ex.context = "changed"  # type: ignore[misc]
    assert len({ex, ex}) == 1


def _mut_bias_type(d):
    d["data"]["intrasentence"][1]["bias_type"] = "politics"


def _mut_gold_label(d):
    d["data"]["intrasentence"][1]["sentences"][1]["gold_label"] = "neutral"


def _mut_two_sentences(d):
    d["data"]["intrasentence"][1]["sentences"].pop()


def _mut_missing_target(d):
    del d["data"]["intrasentence"][1]["target"]


def _mut_sentence_not_str(d):
    d["data"]["intrasentence"][1]["sentences"][0]["sentence"] = 42


def _mut_sentence_missing_id(d):
    del d["data"]["intrasentence"][1]["sentences"][2]["id"]


def _mut_label_twice(d):
    sents = d["data"]["intrasentence"][1]["sentences"]
    sents[2]["gold_label"] = sents[0]["gold_label"]


def _mut_context_empty(d):
    d["data"]["intrasentence"][1]["context"] = "  "


def _mut_sentences_not_list(d):
    d["data"]["intrasentence"][1]["sentences"] = {"a": 1}


@pytest.mark.parametrize("mutate, field, problem", [
    (_mut_bias_type, "'bias_type'", "expected one of gender, profession, race, religion, got 'politics'"),
    (_mut_gold_label, "'sentences[1].gold_label'", "expected one of stereotype, anti-stereotype, unrelated"),
    (_mut_two_sentences, "'sentences'", "expected exactly 3 sentences, got 2"),
    (_mut_missing_target, "'target'", "missing"),
    (_mut_sentence_not_str, "'sentences[0].sentence'", "expected a string, got int"),
    (_mut_sentence_missing_id, "'sentences[2].id'", "missing"),
    (_mut_label_twice, "'sentences[2].gold_label'", "already used by sentences[0]"),
    (_mut_context_empty, "'context'", "empty"),
    (_mut_sentences_not_list, "'sentences'", "expected a list"),
])
def test_malformed_example_names_file_record_field(tmp_path, test_json, mutate, field, problem):
    d = copy.deepcopy(test_json)
    ex_id = d["data"]["intrasentence"][1]["id"]
    mutate(d)
    p = _write(tmp_path, d)
    with pytest.raises(DataError) as ei:
        load_stereoset(p)
    msg = str(ei.value)
    assert "broken.json" in msg
    assert f"data.intrasentence[1] (id={ex_id})" in msg
    assert f"field {field}" in msg
    assert problem in msg


def test_non_string_id_is_reported_without_id(tmp_path, test_json):
    test_json["data"]["intersentence"][3]["id"] = 7
    p = _write(tmp_path, test_json)
    pattern = r"broken\.json: data\.intersentence\[3\]: field 'id': expected a string"
    with pytest.raises(DataError, match=pattern):
        load_stereoset(p)


def test_duplicate_example_id(tmp_path, test_json):
    dup = test_json["data"]["intrasentence"][0]["id"]
    test_json["data"]["intersentence"][2]["id"] = dup
    p = _write(tmp_path, test_json)
    with pytest.raises(DataError) as ei:
        load_stereoset(p)
    msg = str(ei.value)
    assert "broken.json" in msg and f"data.intersentence[2] (id={dup})" in msg
    assert "duplicate example id" in msg and "data.intrasentence[0]" in msg
    # each task alone has unique ids, so loading one task works
    assert len(load_stereoset(p, tasks=("intersentence",))) == 12


def test_missing_task_list(tmp_path, test_json):
    del test_json["data"]["intersentence"]
    p = _write(tmp_path, test_json)
    assert len(load_stereoset(p, tasks=("intrasentence",))) == 12
    with pytest.raises(DataError, match=r"broken\.json: field 'data\.intersentence': expected a list"):
        load_stereoset(p)


@pytest.mark.parametrize("text, pattern", [
    ('{"version": "1.0",\n  "data": {"intrasentence": [}\n}',
     r"bad\.json: invalid JSON at line 2, column 30"),
    ("[1, 2]", r"bad\.json: top level must be a JSON object"),
    ('{"version": "1.0"}', r"bad\.json: top-level field 'data'"),
])
def test_invalid_json(tmp_path, text, pattern):
    p = _write(tmp_path, text, name="bad.json")
    with pytest.raises(DataError, match=pattern):
        load_stereoset(p)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.json"):
        load_stereoset(tmp_path / "nothere.json")


def test_cache_reuses_parse_and_notices_changes(tmp_path, test_json):
    p = _write(tmp_path, test_json, name="cached.json")
    first = load_stereoset(p)
    again = load_stereoset(p)
    assert all(a is b for a, b in zip(first, again, strict=True))  # same objects: served from the cache
    test_json["data"]["intrasentence"][0]["target"] = "grandmother"
    p.write_text(json.dumps(test_json), encoding="utf-8")  # different size, so a different cache key
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert load_stereoset(p)[0].target == "grandmother"
    clear_cache()
    assert load_stereoset(p)[0].target == "grandmother"


@pytest.fixture(scope="module")
def real_sets(shared_data_dir):
    return {name: load_stereoset(shared_data_dir / "stereoset" / f"{name}.json") for name in ("dev", "test")}


def test_real_counts_match_readme(real_sets):
    expected = {
        ("dev", "intersentence"): (242, 827, 976, 78),
        ("dev", "intrasentence"): (255, 810, 962, 79),
        ("test", "intersentence"): (751, 2435, 2947, 241),
        ("test", "intrasentence"): (771, 2398, 2976, 247),
    }
    for (name, task), want in expected.items():
        c = Counter(e.bias_type for e in real_sets[name] if e.task == task)
        assert tuple(c[b] for b in BIAS_TYPES) == want, (name, task)
    assert len(real_sets["dev"]) == 4229 and len(real_sets["test"]) == 12766
    dev_ids = {e.id for e in real_sets["dev"]}
    assert not dev_ids & {e.id for e in real_sets["test"]}
