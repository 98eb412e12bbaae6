"""CAFIE-style counterfactual decoding: word lists and swapping, the pure mixing function, the scorer
and the generation processor, on the tiny random Llama with the byte-level tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList

from biasunlearn.baselines import cafie as cafie_mod
from biasunlearn.baselines.cafie import (
    CAFIE,
    CAFIELogitsProcessor,
    WordList,
    cafie_logprobs,
    counterfactual_texts,
    load_wordlist,
    match_case,
    swap_words,
)
from biasunlearn.errors import ConfigError
from biasunlearn.scoring import Request, ScoringConfig, resolve_start_token_id, sequence_logprobs_one_by_one

TOL = 1e-5


@pytest.fixture(scope="module")
def mt(tiny_model_and_tokenizer):
    return tiny_model_and_tokenizer


@pytest.fixture(scope="module")
def lists():
    return {n: load_wordlist(n) for n in ("gender", "race", "religion")}


def _cfg(**kw) -> ScoringConfig:
    return ScoringConfig(progress=False, **kw)


def _logits(*probs) -> torch.Tensor:
    return torch.log(torch.tensor(probs, dtype=torch.float64))


# --------------------------------------------------------------------------------------------------
# word lists and swapping
# --------------------------------------------------------------------------------------------------


def test_builtin_wordlists_parse_with_consistent_columns(lists):
    assert lists["gender"].n_columns == 2 and lists["race"].n_columns == 3 and lists["religion"].n_columns == 3
    for wl in lists.values():
        assert len(wl.groups) >= 5
        assert all(len(g) == wl.n_columns for g in wl.groups), wl.name
    assert ("he", "she") in lists["gender"].groups
    assert ("christian", "muslim", "jewish") in lists["religion"].groups


def test_match_case():
    assert match_case("He", "she") == "She"
    assert match_case("HE", "she") == "SHE"
    assert match_case("he", "she") == "she"
    assert match_case("Mr.", "mrs") == "Mrs"


def test_swap_keeps_capitalisation_and_whole_words(lists):
    g = lists["gender"]
    assert swap_words("He said he saw HIM.", g, 1) == "She said she saw HER."
    assert swap_words("She said she saw HER.", g, 0) == "He said he saw HIS."  # "her" maps by its first line
    # Whole words only: not inside "The", "hero", "other", "hello", "shed".
    text = "The hero and the other man said hello in the shed."
    assert swap_words(text, g, 1) == "The hero and the other woman said hello in the shed."
    # Punctuation and apostrophes delimit words.
    assert swap_words("(he) he's he-man, he.", g, 1) == "(she) she's she-woman, she."
    assert swap_words("Mr. Smith and his wife", g, 1) == "Mrs. Smith and her wife"
    assert swap_words("no group words here", g, 1) == "no group words here"


def test_multi_way_groups(lists):
    r = lists["religion"]
    text = "A Christian went to CHURCH."
    assert [swap_words(text, r, c) for c in range(3)] == [
        text, "A Muslim went to MOSQUE.", "A Jewish went to SYNAGOGUE."]
    assert counterfactual_texts(text, [r]) == ["A Muslim went to MOSQUE.", "A Jewish went to SYNAGOGUE."]
    # Several lists: one attribute at a time; the original and duplicates are left out.
    both = counterfactual_texts("He is a Christian.", [lists["gender"], r])
    assert both == ["She is a Christian.", "He is a Muslim.", "He is a Jewish."]
    assert counterfactual_texts("He and she.", [lists["gender"]]) == ["He and he.", "She and she."]
    assert counterfactual_texts("Nothing to see.", list(lists.values())) == []


def test_multi_word_entries_longest_first_and_missing_columns():
    wl = WordList("t", [["new york", "paris", "rome"], ["new", "old"]])
    assert wl.n_columns == 3
    assert swap_words("New  York is new.", wl, 1) == "Paris is old."
    # "new" has no third column: it stays; "new york" has one.
    assert swap_words("new york is new", wl, 2) == "rome is new"
    assert [(m.start, m.end, m.line, m.column) for m in wl.find("a new york")] == [(2, 10, 0, 0)]
    with pytest.raises(ValueError):
        wl.swap("new", 3)


def test_wordlist_file_format(tmp_path):
    p = tmp_path / "mine.txt"
    p.write_text("# comment\n\nKing | Queen\n  lord|lady  \n", encoding="utf-8")
    wl = load_wordlist(p)
    assert wl.name == "mine" and wl.groups == (("king", "queen"), ("lord", "lady"))
    assert swap_words("The King and the lord.", wl, 1) == "The Queen and the lady."
    (tmp_path / "bad.txt").write_text("alone\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="two or more"):
        load_wordlist(tmp_path / "bad.txt")
    with pytest.raises(ConfigError, match="unknown word list"):
        load_wordlist("no_such_list")


# --------------------------------------------------------------------------------------------------
# the pure function, against values computed by hand
# --------------------------------------------------------------------------------------------------


def test_hand_case_one_counterfactual():
    # p_orig = (.6, .3, .1), p_cf = (.2, .5, .3): p_fair = (.4, .4, .2);
    # w = .5: p = .5 p_orig + .5 p_fair = (.5, .35, .15); w = 1: p_fair.
    orig, cf = _logits(0.6, 0.3, 0.1), _logits(0.2, 0.5, 0.3)
    np.testing.assert_allclose(cafie_logprobs(orig, [cf]).exp().numpy(), [0.5, 0.35, 0.15], atol=1e-12)
    np.testing.assert_allclose(cafie_logprobs(orig, [cf], weight=1.0).exp().numpy(), [0.4, 0.4, 0.2], atol=1e-12)
    np.testing.assert_allclose(cafie_logprobs(orig, [cf], weight=0.0).exp().numpy(), [0.6, 0.3, 0.1], atol=1e-12)


def test_hand_case_two_counterfactuals_and_masks():
    # p_orig = (.7, .1, .1, .1), cf1 = (.1, .7, .1, .1), cf2 = (.1, .1, .7, .1):
    # p_fair = (.3, .3, .3, .1); w = .25: .75 p_orig + .25 p_fair = (.6, .15, .15, .1).
    orig = _logits(0.7, 0.1, 0.1, 0.1)
    cf1, cf2 = _logits(0.1, 0.7, 0.1, 0.1), _logits(0.1, 0.1, 0.7, 0.1)
    np.testing.assert_allclose(cafie_logprobs(orig, [cf1, cf2], weight=0.25).exp().numpy(),
                               [0.6, 0.15, 0.15, 0.1], atol=1e-12)
    # Three rows: both counterfactuals; only cf1 (p_fair = (.4, .4, .1, .1), p = (.625, .175, .1, .1));
    # none (p_orig exactly).
    o, c1, c2 = (torch.stack([x] * 3) for x in (orig, cf1, cf2))
    masks = [torch.tensor([True, True, False]), torch.tensor([True, False, False])]
    got = cafie_logprobs(o, [c1, c2], weight=0.25, cf_masks=masks)
    np.testing.assert_allclose(got.exp().numpy(), [[0.6, 0.15, 0.15, 0.1], [0.625, 0.175, 0.1, 0.1],
                                                   [0.7, 0.1, 0.1, 0.1]], atol=1e-12)
    assert torch.equal(got[2], torch.log_softmax(orig, -1))


def test_bad_weight_and_shapes():
    x = torch.zeros(3)
    with pytest.raises(ConfigError):
        cafie_logprobs(x, [x], weight=1.5)
    with pytest.raises(ValueError, match="shape"):
        cafie_logprobs(x, [torch.zeros(4)])
    with pytest.raises(ValueError, match="masks"):
        cafie_logprobs(x, [x], cf_masks=[])


# --------------------------------------------------------------------------------------------------
# the scorer
# --------------------------------------------------------------------------------------------------

NO_GROUP = [
    Request("The nurse was tired."),
    Request("The herd ran to the shed."),  # "her" and "he" only inside longer words
    Request("The plumber came over. It rained.", len("The plumber came over.") + 1),
    Request("x"),
]


@pytest.mark.parametrize(("batch_size", "max_batch_tokens"), [(64, 0), (1, 16)])
def test_texts_without_group_words_score_like_plain(mt, batch_size, max_batch_tokens):
    model, tok = mt
    ref = sequence_logprobs_one_by_one(model, tok, NO_GROUP)
    got = CAFIE(model, tok, weight=1.0).sequence_logprobs(
        NO_GROUP, _cfg(batch_size=batch_size, max_batch_tokens=max_batch_tokens))
    np.testing.assert_array_equal(got.n_tokens, ref.n_tokens)
    np.testing.assert_allclose(got.sum_logprob, ref.sum_logprob, rtol=0, atol=TOL)


def _reference_cafie(model, tok, scorer: CAFIE, req: Request) -> float:
    """Token by token: the context text, its complete group words swapped, each context run alone."""
    start = resolve_start_token_id(tok)
    enc = tok(req.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = [start, *enc["input_ids"]], enc["offset_mapping"]
    first = 1 + next(i for i, (_, e) in enumerate(offs) if e > req.score_from)
    total = 0.0
    with torch.no_grad():
        for j in range(first, len(ids)):
            c = offs[j - 2][1] if j >= 2 else 0
            ctx = req.text[:c]
            cf_ctxs = []
            for wl in scorer.wordlists:
                complete = [m for m in wl.find(req.text) if m.end <= c]
                for col in range(wl.n_columns):
                    s = ctx
                    for m in reversed(complete):
                        s = s[: m.start] + wl.counterpart(s[m.start : m.end], col, m.line) + s[m.end :]
                    if s != ctx and s not in cf_ctxs:
                        cf_ctxs.append(s)
            orig = model(torch.tensor([ids[:j]])).logits[0, -1]
            cfs = [model(torch.tensor([[start, *tok.encode(s, add_special_tokens=False)]])).logits[0, -1]
                   for s in cf_ctxs]
            total += float(cafie_logprobs(orig, cfs, scorer.weight)[ids[j]])
    return total


WITH_GROUPS = [
    Request("He is a nurse."),
    Request("The man met her and a Muslim."),
    Request("My neighbor is a priest. He sang.", len("My neighbor is a priest.") + 1),
]


def test_scores_equal_the_per_token_reference(mt):
    model, tok = mt
    scorer = CAFIE(model, tok, weight=0.7)
    got = scorer.sequence_logprobs(WITH_GROUPS, _cfg(batch_size=4, max_batch_tokens=64))
    ref = np.array([_reference_cafie(model, tok, scorer, r) for r in WITH_GROUPS])
    np.testing.assert_allclose(got.sum_logprob, ref, rtol=0, atol=TOL)
    plain = sequence_logprobs_one_by_one(model, tok, WITH_GROUPS)
    np.testing.assert_array_equal(got.n_tokens, plain.n_tokens)
    assert (np.abs(got.sum_logprob - plain.sum_logprob) > 1e-3).all()  # the group words change the scores


def test_separately_encoded_contexts_give_the_same_scores(mt, monkeypatch):
    """The fallback (each counterfactual context encoded on its own) agrees with reading the contexts off
    one pass over the swapped text."""
    model, tok = mt
    scorer = CAFIE(model, tok)
    fast = scorer.sequence_logprobs(WITH_GROUPS[:2], _cfg())
    calls = []

    def no_boundary(offsets, char_end, nth=1):
        calls.append(char_end)
        return None

    monkeypatch.setattr(cafie_mod, "_boundary_index", no_boundary)
    slow = scorer.sequence_logprobs(WITH_GROUPS[:2], _cfg())
    assert calls  # the fallback path ran
    np.testing.assert_allclose(slow.sum_logprob, fast.sum_logprob, rtol=0, atol=TOL)


def test_scorer_needs_a_fast_tokenizer_and_known_lists(mt):
    model, tok = mt

    class Slow:
        is_fast = False

    with pytest.raises(ConfigError, match="fast tokenizer"):
        CAFIE(model, Slow()).sequence_logprobs([Request("he")], _cfg())
    with pytest.raises(ConfigError, match="unknown word list"):
        CAFIE(model, tok, wordlists=("gender", "caste"))
    assert [w.name for w in CAFIE(model, tok, wordlists="religion").wordlists] == ["religion"]


# --------------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------------


def _prompt(tok, text: str) -> torch.Tensor:
    return torch.tensor([[resolve_start_token_id(tok), *tok.encode(text, add_special_tokens=False)]])


def _greedy(model, ids, processors=None, n=4):
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         pad_token_id=1, logits_processor=LogitsProcessorList(processors or []))
    return out[0, ids.shape[1]:].tolist()


def test_processor_step_equals_manual_computation(mt):
    model, tok = mt
    proc = CAFIE(model, tok, weight=0.8).logits_processor()
    assert isinstance(proc, CAFIELogitsProcessor)
    # Batch of two left-padded rows: one with a group word at its end, one without.
    a, b = _prompt(tok, "Then he"), _prompt(tok, "Then")
    batch = torch.cat([a, torch.cat([torch.tensor([[1, 1, 1]]), b], dim=1)])
    with torch.no_grad():
        scores = torch.cat([model(a).logits[:, -1], model(b).logits[:, -1]])
        cf = model(_prompt(tok, "Then she")).logits[:, -1]
    got = proc(batch, scores.clone())
    assert torch.allclose(got[0], cafie_logprobs(scores[0], [cf[0]], 0.8), atol=1e-5)
    assert torch.allclose(got[1], torch.log_softmax(scores[1], -1), atol=1e-6)  # no group word
    assert not torch.allclose(got[0], torch.log_softmax(scores[0], -1), atol=1e-4)


def test_generation(mt):
    model, tok = mt
    ids = _prompt(tok, "The man")
    plain = _greedy(model, ids)
    assert _greedy(model, ids, [CAFIE(model, tok, weight=0.0).logits_processor()]) == plain
    proc = CAFIE(model, tok, weight=1.0).logits_processor()
    # Walk the plain greedy continuation; at the first step where the formula changes the greedy token,
    # generation with the processor must follow plain greedy up to there and then differ.
    seq, step = ids, None
    for s, tok_id in enumerate(plain):
        with torch.no_grad():
            scores = model(seq).logits[:, -1]
        if proc(seq, scores.clone()).argmax(-1).item() != tok_id:
            step = s
            break
        seq = torch.cat([seq, torch.tensor([[tok_id]])], dim=1)
    assert step is not None, "CAFIE never changes the greedy token after 'The man'"
    fair = _greedy(model, ids, [proc])
    assert fair[:step] == plain[:step] and fair[step] != plain[step]
    assert all(0 <= t < model.config.vocab_size for t in fair)
    # No group word in the prompt nor in its plain continuation: nothing changes.
    neutral = _prompt(tok, "x")
    neutral_plain = _greedy(model, neutral, n=3)
    assert counterfactual_texts("x" + tok.decode(neutral_plain), proc.wordlists) == []
    assert _greedy(model, neutral, [proc], n=3) == neutral_plain
