"""Capability evaluation: loaders, macro-F1, zero-shot classification and perplexity on the tiny model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from biasunlearn import capability as cap
from biasunlearn.benchmarks import BENCHMARKS
from biasunlearn.errors import ConfigError, DataError
from biasunlearn.evaluation import evaluate
from biasunlearn.scoring import Request, ScoringConfig, SequenceLogProbs, sequence_logprobs

CAP_TASKS = ("sst2", "cola", "mrpc", "rte", "flute", "amazon_polarity")
FIXTURE_COUNTS = {"sst2": 6, "cola": 6, "mrpc": 5, "rte": 5, "flute": 5, "amazon_polarity": 6}
QUIET = ScoringConfig(progress=False)


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- loaders on the fixtures --------------------------------------------------------------------------------


def test_load_sst2(fixture_data_dir):
    ex = cap.load_task(fixture_data_dir, "sst2")
    assert len(ex) == 6
    assert ex[0].fields == {"sentence": "a warm , funny little film that never overstays its welcome ."}
    assert [e.label for e in ex] == [1, 0, 0, 1, 0, 1]
    assert ex[0].line == 2 and ex[-1].line == 7
    assert '"twist"' in ex[4].fields["sentence"]  # GLUE TSVs are not quoted


def test_load_cola(fixture_data_dir):
    ex = cap.load_task(fixture_data_dir, "cola")
    assert [e.label for e in ex] == [1, 0, 1, 0, 1, 0]
    assert ex[1].fields["sentence"] == "The gardener watered roses the the."
    assert ex[1].meta == {"source": "tst01", "author_mark": "*"}
    assert ex[0].line == 1  # no header


def test_load_mrpc(fixture_data_dir):
    ex = cap.load_task(fixture_data_dir, "mrpc")
    assert [e.label for e in ex] == [1, 0, 1, 0, 1]
    assert ex[0].fields["sentence1"] == "The council approved the new bus routes on Tuesday."
    assert ex[0].meta == {"id1": "9001", "id2": "9002"}


def test_load_rte(fixture_data_dir):
    ex = cap.load_task(fixture_data_dir, "rte")
    assert [cap.RTE_LABELS[e.label] for e in ex] == [
        "entailment", "not_entailment", "entailment", "not_entailment", "entailment"]
    assert ex[1].fields == {"sentence1": "Marta painted the fence blue last summer.", "sentence2": "The fence is red."}


def test_load_flute(fixture_data_dir):
    ex = cap.load_task(fixture_data_dir, "flute")
    assert [cap.FLUTE_LABELS[e.label] for e in ex] == [
        "Contradiction", "Entailment", "Entailment", "Contradiction", "Entailment"]
    assert ex[2].meta["type"] == "Sarcasm" and ex[2].meta["id"] == "t3"
    assert set(ex[0].fields) == {"premise", "hypothesis"}


def test_load_amazon_polarity(fixture_data_dir):
    ex = cap.load_task(fixture_data_dir, "amazon_polarity")
    assert [e.label for e in ex] == [1, 0, 1, 0, 1, 0]  # 2 -> positive (1), 1 -> negative (0)
    assert ex[1].fields["content"] == "The lid cracked after five days.\nCustomer service never answered."
    assert 'the "warm white" setting' in ex[2].fields["content"]
    assert ex[4].fields["title"] == ""


def test_limit_reads_first_rows(fixture_data_dir):
    for name in CAP_TASKS:
        ex = cap.load_task(fixture_data_dir, name, limit=2)
        assert [e.index for e in ex] == [0, 1]


# --- loader errors ------------------------------------------------------------------------------------------


def test_sst2_bad_label(tmp_path):
    p = _write(tmp_path / "dev.tsv", "sentence\tlabel\ngood .\t1\nbad .\t2\n")
    with pytest.raises(DataError, match=r"dev\.tsv: line 3: field 'label': expected one of '0', '1', got '2'"):
        cap.load_sst2(p)


def test_sst2_missing_column(tmp_path):
    p = _write(tmp_path / "dev.tsv", "sentence\ngood .\n")
    with pytest.raises(DataError, match=r"line 1: expected the header 'sentence<TAB>label'"):
        cap.load_sst2(p)
    p = _write(tmp_path / "dev2.tsv", "sentence\tlabel\ngood .\t1\nno label here\n")
    with pytest.raises(DataError, match=r"dev2\.tsv: line 3: expected 2 tab-separated fields \(sentence, label\), "
                                        r"got 1"):
        cap.load_sst2(p)


def test_sst2_test_file_without_labels_is_refused(tmp_path):
    p = _write(tmp_path / "test.tsv", "index\tsentence\n0\tgood .\n")
    with pytest.raises(DataError, match="expected the header"):
        cap.load_sst2(p)


def test_cola_wrong_column_count(tmp_path):
    p = _write(tmp_path / "dev.tsv", "a\t1\t\tFine.\nb\t0\tBroken row.\n")
    with pytest.raises(DataError, match=r"line 2: expected 4 tab-separated fields, got 3"):
        cap.load_cola(p)


def test_empty_sentence(tmp_path):
    p = _write(tmp_path / "dev.tsv", "a\t1\t\t   \n")
    with pytest.raises(DataError, match=r"line 1: field 'sentence \(column 4\)': empty"):
        cap.load_cola(p)


def test_mrpc_bom_and_crlf_accepted(tmp_path):
    header = "\t".join(cap.MRPC_HEADER)
    p = _write(tmp_path / "dev.tsv", ("\ufeff" + header + "\r\n1\t1\t2\tA b c.\tA, b, c.\r\n").encode("utf-8"))
    ex = cap.load_mrpc(p)
    assert ex[0].fields == {"sentence1": "A b c.", "sentence2": "A, b, c."} and ex[0].label == 1


def test_rte_bad_label(tmp_path):
    p = _write(tmp_path / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n7\tA.\tB.\tneutral\n")
    with pytest.raises(DataError, match=r"line 2 \(index=7\): field 'label': expected one of 'entailment', "
                                        r"'not_entailment', got 'neutral'"):
        cap.load_rte(p)


def test_flute_missing_field_and_bad_label(tmp_path):
    good = {"id": "a", "premise": "P.", "hypothesis": "H.", "label": "Entailment"}
    p = _write(tmp_path / "test.jsonl", json.dumps(good) + "\n" + json.dumps({"id": "b", "premise": "P.",
                                                                              "label": "Entailment"}) + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl: line 2 \(id='b'\): field 'hypothesis': missing"):
        cap.load_flute(p)
    p = _write(tmp_path / "t2.jsonl", json.dumps({**good, "label": "Neutral"}) + "\n")
    with pytest.raises(DataError, match=r"line 1 \(id='a'\): field 'label': expected one of Entailment, "
                                        r"Contradiction, got 'Neutral'"):
        cap.load_flute(p)
    p = _write(tmp_path / "t3.jsonl", json.dumps(good) + "\n{not json\n")
    with pytest.raises(DataError, match=r"t3\.jsonl: line 2: invalid JSON"):
        cap.load_flute(p)


def test_flute_json_list_and_lowercase_labels(tmp_path):
    recs = [{"premise": "P1.", "hypothesis": "H1.", "label": "entailment"},
            {"premise": "P2.", "hypothesis": "H2.", "label": "CONTRADICTION"}]
    p = _write(tmp_path / "test.json", json.dumps(recs, indent=1))
    ex = cap.load_flute(p)
    assert [e.label for e in ex] == [0, 1] and [e.line for e in ex] == [1, 2]


def test_amazon_bad_label_and_field_count(tmp_path):
    p = _write(tmp_path / "test.csv", '"2","t","fine"\n"3","t","odd"\n')
    with pytest.raises(DataError, match=r"line 2: field 'label \(column 1\)': expected one of '1', '2', got '3'"):
        cap.load_amazon_polarity(p)
    p = _write(tmp_path / "t2.csv", '"2","title only"\n')
    with pytest.raises(DataError, match=r"line 1: expected 3 comma-separated fields"):
        cap.load_amazon_polarity(p)


def test_amazon_line_numbers_after_quoted_newline(tmp_path):
    p = _write(tmp_path / "test.csv", '"2","a","two\nlines"\n"1","b","x"\n"9","c","y"\n')
    with pytest.raises(DataError, match=r"line 4: field 'label"):
        cap.load_amazon_polarity(p)


def test_not_utf8(tmp_path):
    p = _write(tmp_path / "dev.tsv", b"sentence\tlabel\ngood\t1\nbad \xff\t0\n")
    with pytest.raises(DataError, match=r"dev\.tsv: line 3: not valid UTF-8"):
        cap.load_sst2(p)


def test_missing_task_file_names_expected_path(tmp_path):
    with pytest.raises(DataError) as ei:
        cap.load_task(tmp_path, "flute")
    msg = str(ei.value)
    assert str(tmp_path / "capability/flute/test.jsonl") in msg and "test.json" in msg
    assert "biasunlearn.capability" in msg


# --- macro-F1 -----------------------------------------------------------------------------------------------


def test_macro_f1_by_hand():
    # class 0: TP 1, FP 0, FN 1 -> 2/3; class 1: TP 2, FP 1, FN 0 -> 4/5
    assert cap.macro_f1([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert cap.macro_f1([0, 1, 0], [0, 1, 0]) == 1.0


def test_macro_f1_class_never_predicted_counts_zero():
    gold, pred = [0, 1, 1, 2], [0, 1, 1, 1]
    # class 0: F1 1; class 1: TP 2, FP 1, FN 0 -> 4/5; class 2 never predicted: TP 0 -> F1 0
    assert cap.f1_per_class(gold, pred, [0, 1, 2]) == {0: 1.0, 1: pytest.approx(0.8), 2: 0.0}
    assert cap.macro_f1(gold, pred) == pytest.approx(0.6)
    # An explicit class absent from both gold and predictions counts as 0 (zero_division=0).
    assert cap.macro_f1(gold, pred, labels=[0, 1, 2, 3]) == pytest.approx(0.45)


def test_macro_f1_all_one_class_predicted():
    # A model that always says class 1 on a balanced set: class 0 F1 0, class 1 F1 2*2/(4+2) = 2/3.
    assert cap.macro_f1([0, 0, 1, 1], [1, 1, 1, 1]) == pytest.approx(1 / 3)


def test_macro_f1_input_errors():
    with pytest.raises(ValueError, match="length"):
        cap.macro_f1([0, 1], [0])
    with pytest.raises(ValueError, match="no examples"):
        cap.macro_f1([], [])


def test_classification_metrics_percent_and_counts():
    m = cap.classification_metrics([0, 1, 1, 2], [0, 1, 1, 1], ("a", "b", "c"))
    assert m["n"] == 4
    assert m["accuracy"] == pytest.approx(75.0)
    assert m["macro_f1"] == pytest.approx(60.0)
    assert m["f1_per_class"] == {"a": 100.0, "b": pytest.approx(80.0), "c": 0.0}
    assert m["gold_counts"] == {"a": 1, "b": 2, "c": 1} and m["pred_counts"] == {"a": 1, "b": 3, "c": 0}


# --- zero-shot classification -------------------------------------------------------------------------------


def test_prompts_and_label_words():
    ex = cap.ClassificationExample(0, 1, {"sentence": "nice ."}, 1)
    reqs = cap.classification_requests(cap.TASKS["sst2"], [ex])
    assert [r.text for r in reqs] == ["Review: nice .\nSentiment: negative", "Review: nice .\nSentiment: positive"]
    assert {r.score_from for r in reqs} == {len("Review: nice .\nSentiment:")}
    demo = cap.ClassificationExample(0, 1, {"sentence": "awful ."}, 0)
    fs = cap.classification_requests(cap.TASKS["sst2"], [ex], demos=[demo])
    assert fs[1].text == "Review: awful .\nSentiment: negative\n\nReview: nice .\nSentiment: positive"
    assert fs[1].score_from == len(fs[1].text) - len(" positive")
    for t in cap.TASKS.values():
        assert len(t.label_names) == len(t.verbalizers) == 2
        assert all(w.startswith(" ") for w in t.verbalizers)


def test_only_label_word_tokens_are_scored(tiny_model_and_tokenizer, fixture_data_dir):
    model, tok = tiny_model_and_tokenizer
    task = cap.TASKS["amazon_polarity"]
    ex = cap.load_task(fixture_data_dir, task, limit=2)
    reqs = cap.classification_requests(task, ex)
    s = sequence_logprobs(model, tok, reqs, QUIET)
    # Byte-level tokenizer: one token per byte of the label word.
    assert s.n_tokens.tolist() == [len(" negative"), len(" positive")] * 2
    res = cap.classify(model, tok, task, ex, QUIET)
    np.testing.assert_allclose(res.scores.ravel(), s.sum_logprob, atol=1e-9)
    assert res.pred == [int(np.argmax(row)) for row in res.scores]


def test_classify_ties_go_to_first_class(fixture_data_dir):
    ex = cap.load_task(fixture_data_dir, "rte", limit=3)

    def flat(_m, _t, reqs, _cfg, _desc):
        return SequenceLogProbs(np.full(len(reqs), -1.0), np.ones(len(reqs), dtype=np.int64))

    assert cap.classify(None, None, "rte", ex, QUIET, score_fn=flat).pred == [0, 0, 0]


# --- perplexity ---------------------------------------------------------------------------------------------


def _direct_nll(model, tok, text: str, score_from: int = 0) -> tuple[float, int]:
    """Sum of -log p over the tokens of ``text`` (those ending after ``score_from``), after the start token."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = [0, *enc["input_ids"]]  # 0 = <|endoftext|>, the start token
    first = next(i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > score_from) + 1
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    return -sum(float(logp[t - 1, ids[t]]) for t in range(first, len(ids))), len(ids) - first


def test_perplexity_matches_direct_computation(tiny_model_and_tokenizer, fixture_data_dir):
    model, tok = tiny_model_and_tokenizer
    texts = cap.load_texts(fixture_data_dir / "text/heldout.txt")
    assert len(texts) == 4  # the blank line is skipped
    res = cap.perplexity(model, tok, texts, QUIET)
    nll, n = zip(*(_direct_nll(model, tok, t) for t in texts), strict=True)
    assert res.n_tokens == sum(n) == sum(len(t.encode()) for t in texts)  # every byte token is scored
    assert res.n_chunks == 4
    assert res.perplexity == pytest.approx(math.exp(sum(nll) / sum(n)), rel=1e-4)
    assert res.per_text_nll == pytest.approx(list(nll), rel=1e-4)
    assert res.bits_per_byte == pytest.approx(sum(nll) / math.log(2) / res.n_bytes)


def test_perplexity_chunks_long_texts(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    text = "Café owners say the festival — now in its tenth year — draws visitors from the coast."
    reqs, n = cap.text_chunks(tok, text, max_tokens=7)
    assert n == len(text.encode())
    assert "".join(r.text for r in reqs) == text and all(r.score_from == 0 for r in reqs)
    assert all(len(r.text.encode()) <= 7 for r in reqs)  # never cuts inside "é" or "—"
    res = cap.perplexity(model, tok, [text], QUIET, max_length=8)
    nll, cnt = zip(*(_direct_nll(model, tok, r.text) for r in reqs), strict=True)
    assert res.n_chunks == len(reqs) > 10 and res.n_tokens == sum(cnt) == n
    assert res.perplexity == pytest.approx(math.exp(sum(nll) / sum(cnt)), rel=1e-4)


def test_perplexity_overlapping_windows(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    text = "The mill wheel turned slowly while the miller counted sacks of grain by the door."
    reqs, n = cap.text_chunks(tok, text, max_tokens=20, overlap=5)
    assert all(len(r.text) <= 20 for r in reqs) and reqs[0].score_from == 0
    assert all(r.score_from == 5 for r in reqs[1:])
    assert sum(len(r.text) - r.score_from for r in reqs) == n == len(text)  # each token scored once
    res = cap.perplexity(model, tok, [text], QUIET, max_length=21, overlap=5)
    parts = [_direct_nll(model, tok, r.text, r.score_from) for r in reqs]
    assert res.n_tokens == len(text)
    assert res.perplexity == pytest.approx(math.exp(sum(p[0] for p in parts) / len(text)), rel=1e-4)
    with pytest.raises(ConfigError, match="overlap"):
        cap.text_chunks(tok, text, max_tokens=5, overlap=5)


def test_text_exactly_max_tokens_is_one_chunk(tiny_model_and_tokenizer):
    _, tok = tiny_model_and_tokenizer
    reqs, n = cap.text_chunks(tok, "abcdefgh", max_tokens=8)
    assert n == 8 and reqs == [Request("abcdefgh", 0)]


def test_load_texts_errors(tmp_path):
    with pytest.raises(DataError, match="no text"):
        cap.load_texts(_write(tmp_path / "blank.txt", "\n  \n"))
    with pytest.raises(DataError, match=r"bad\.txt: line 2: not valid UTF-8"):
        cap.load_texts(_write(tmp_path / "bad.txt", b"fine\nbroken \xc3\n"))
    assert cap.load_texts(_write(tmp_path / "ok.txt", "a\r\n\r\nb  \nc\n"), limit=2) == ["a", "b"]


# --- benchmarks end to end ----------------------------------------------------------------------------------


def test_registered():
    for name in (*CAP_TASKS, "perplexity"):
        assert name in BENCHMARKS


def test_evaluate_all_capability_benchmarks(tiny_model_and_tokenizer, fixture_data_dir, tmp_path):
    model, tok = tiny_model_and_tokenizer
    names = ",".join((*CAP_TASKS, "perplexity"))
    out = tmp_path / "run"
    res = evaluate(model=model, tokenizer=tok, benchmarks=names, data_dir=str(fixture_data_dir), out=str(out),
                   scoring=ScoringConfig(progress=False))
    for name in CAP_TASKS:
        b = res["benchmarks"][name]
        assert b["n_items"] == FIXTURE_COUNTS[name]
        m = b["metrics"]
        assert 0.0 <= m["accuracy"] <= 100.0 and 0.0 <= m["macro_f1"] <= 100.0
        assert sum(m["pred_counts"].values()) == sum(m["gold_counts"].values()) == FIXTURE_COUNTS[name]
        pred = json.loads((out / f"{name}_predictions.json").read_text())["examples"]
        assert len(pred) == FIXTURE_COUNTS[name]
        gold = [t.label_names.index(r["gold"]) for t in [cap.TASKS[name]] for r in pred]
        chosen = [cap.TASKS[name].label_names.index(r["pred"]) for r in pred]
        assert chosen == [int(np.argmax(r["scores"])) for r in pred]
        assert m["accuracy"] == pytest.approx(100.0 * np.mean(np.array(gold) == np.array(chosen)))
        assert m["macro_f1"] == pytest.approx(100.0 * cap.macro_f1(gold, chosen))
    for rel in (cap.SST2_DEV, cap.COLA_DEV, cap.MRPC_DEV, cap.RTE_DEV, cap.FLUTE_TEST[0], cap.AMAZON_TEST,
                cap.HELDOUT_TEXT):
        assert len(res["data"][rel]) == 64
    ppl = res["benchmarks"]["perplexity"]
    texts = cap.load_texts(fixture_data_dir / cap.HELDOUT_TEXT)
    assert ppl["n_items"] == 4 and ppl["max_length"] == 512  # the tiny model's context
    direct = cap.perplexity(model, tok, texts, QUIET)
    assert ppl["metrics"]["perplexity"] == pytest.approx(direct.perplexity, rel=1e-9)
    assert json.loads((out / "results.json").read_text())["benchmarks"]["sst2"]["prompt"].startswith("Review:")


def test_evaluate_limit(tiny_model_and_tokenizer, fixture_data_dir):
    model, tok = tiny_model_and_tokenizer
    res = evaluate(model=model, tokenizer=tok, benchmarks="mrpc,perplexity", data_dir=str(fixture_data_dir),
                   limit=2, scoring=ScoringConfig(progress=False))
    assert res["benchmarks"]["mrpc"]["n_items"] == 2 and res["benchmarks"]["perplexity"]["n_items"] == 2


def test_evaluate_missing_files(tiny_model_and_tokenizer, tmp_path):
    model, tok = tiny_model_and_tokenizer
    with pytest.raises(DataError, match=r"SST-2 data not found: expected .*capability/SST-2/dev\.tsv.*"
                                        r"biasunlearn\.capability"):
        evaluate(model=model, tokenizer=tok, benchmarks="sst2", data_dir=str(tmp_path), scoring=QUIET)
    with pytest.raises(DataError, match=r"expected .*text/heldout\.txt.*prepare_text\.py"):
        evaluate(model=model, tokenizer=tok, benchmarks="perplexity", data_dir=str(tmp_path), scoring=QUIET)


def test_no_import_cycle():
    code = ("import biasunlearn.capability\n"
            "from biasunlearn.benchmarks import BENCHMARKS\n"
            "assert {'perplexity', 'sst2', 'amazon_polarity', 'stereoset'} <= set(BENCHMARKS.names())\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


# --- scripts/prepare_text.py (HTML to one paragraph per line) -----------------------------------------------


@pytest.fixture(scope="module")
def prepare_text():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "prepare_text.py"
    spec = importlib.util.spec_from_file_location("_prepare_text_script", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def test_html_paragraphs(prepare_text):
    page = """<html><head><title>A page title that is long enough to count as words</title></head><body>
    <div class=nosearch><div class="menu mainmenu"><ul><li>Home of the menu with many many words here</ul></div>
      <div>nested navigation text that would otherwise be long enough to keep</div></div>
    <h1>Short heading</h1>
    <p>The <code>VACUUM</code> command rebuilds the database file, repacking it into a minimal amount
       of disk&nbsp;space &amp; time.
    <pre>SELECT * FROM t WHERE a &lt; 1; -- a code block that is long enough to be kept as words</pre>
    <p>Too short to keep.</p>
    <table><tr><td>cells of a table are dropped even when they hold enough words</td></tr></table>
    <div class="navfooter">Prev Up Next and a few more words to pass the length</div>
    <p>A second paragraph&#x2014;with an entity&mdash;ends here after enough words.<br>Line two is short.</p>
    </body></html>"""
    assert prepare_text.html_paragraphs(page, min_words=8) == [
        "The VACUUM command rebuilds the database file, repacking it into a minimal amount of disk space & time.",
        "A second paragraph—with an entity—ends here after enough words.",
    ]
