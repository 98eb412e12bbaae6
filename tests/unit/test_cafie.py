"""CAFIE counterfactual decoding: word lists and swapping, the pure mixing function, the scorer
and the generation processor, on the tiny random Llama with the byte-level tokenizer."""

from __future__ import annotations

import math

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


def test_defaults_are_the_authors_stereoset_settings(mt):
    # cafie_stereoset.py / utils/stereoset_scoring.py: lmbda=1000, alpha_ratio=0.99, softmax_temperature=1,
    # and the unnormalised p_final.
    assert (cafie_mod.DEFAULT_LAMBDA, cafie_mod.DEFAULT_ALPHA, cafie_mod.DEFAULT_TEMPERATURE) == (1000, 0.99, 1)
    assert cafie_mod.REFERENCE_LAMBDAS == {"stereoset": 1000, "crows_pairs": 500, "generation": 100}
    model, tok = mt
    assert CAFIE(model, tok).hparams == {"lam": 1000, "alpha": 0.99, "temperature": 1, "normalize": False}
    proc = CAFIE(model, tok).logits_processor()
    assert (proc.lam, proc.alpha, proc.temperature, proc.normalize) == (1000, 0.99, 1, False)
    assert CAFIE(model, tok, alpha=0.5).logits_processor(lam=100).lam == 100


def test_hand_case_one_counterfactual():
    # p_0 = (.6, .3, .1), p_1 = (.2, .5, .3): S = p_0 - p_1 = (.4, -.2, -.2). One counterfactual: w_1 = 1.
    # lambda = ln(3) / .4 = 2.5 ln 3, so lambda * .4 = ln 3 and lambda * .2 = ln(3) / 2:
    #   tanh(ln 3) = (9 - 1) / (9 + 1) = .8,  tanh(ln(3) / 2) = (3 - 1) / (3 + 1) = .5
    #   W = 1 + tanh(-lambda S) = (1 - .8, 1 + .5, 1 + .5) = (.2, 1.5, 1.5)
    #   p_fair = W * p_0 = (.12, .45, .15)                      (sum .72: not renormalised)
    # alpha = .99: .99 (.12, .45, .15) + .01 (.6, .3, .1) = (.1248, .4485, .1495)
    # alpha = .5:  .5 (.12, .45, .15) + .5 (.6, .3, .1) = (.36, .375, .125); normalised: / .86
    orig, cf = _logits(0.6, 0.3, 0.1), _logits(0.2, 0.5, 0.3)
    lam = 2.5 * math.log(3)

    def p(**kw):
        return cafie_logprobs(orig, [cf], lam=lam, **kw).exp().numpy()

    np.testing.assert_allclose(p(), [0.1248, 0.4485, 0.1495], atol=1e-12)
    np.testing.assert_allclose(p(alpha=0.5), [0.36, 0.375, 0.125], atol=1e-12)
    np.testing.assert_allclose(p(alpha=0.5, normalize=True), np.array([0.36, 0.375, 0.125]) / 0.86, atol=1e-12)
    np.testing.assert_allclose(p(alpha=1.0), [0.12, 0.45, 0.15], atol=1e-12)
    np.testing.assert_allclose(p(alpha=0.0), [0.6, 0.3, 0.1], atol=1e-12)
    # lambda = 0: W = 1, so p_fair = p_0 and nothing changes.
    np.testing.assert_allclose(cafie_logprobs(orig, [cf], lam=0.0).exp().numpy(), [0.6, 0.3, 0.1], atol=1e-12)


def test_hand_case_two_counterfactuals_weighted_by_norm_and_masks():
    # Two tokens, p_0 = (.85, .15). With d_1 = ln(3) / sqrt 2 and d_2 = ln(2) / sqrt 2:
    #   p_1 = (.85 - d_1, .15 + d_1): S_1 = (d_1, -d_1), ||S_1|| = sqrt 2 d_1 = ln 3, exp(||S_1||) = 3
    #   p_2 = (.85 - d_2, .15 + d_2): S_2 = (d_2, -d_2), ||S_2|| = ln 2,            exp(||S_2||) = 2
    #   w = (3, 2) / 5 = (.6, .4)
    # lambda = sqrt 2, so lambda d_1 = ln 3 (tanh .8) and lambda d_2 = ln 2 (tanh (4 - 1) / (4 + 1) = .6):
    #   W_1 = (1 - .8, 1 + .8) = (.2, 1.8),  W_2 = (1 - .6, 1 + .6) = (.4, 1.6)
    #   w_1 W_1 + w_2 W_2 = (.12 + .16, 1.08 + .64) = (.28, 1.72)
    #   p_fair = (.85 * .28, .15 * 1.72) = (.238, .258)
    #   alpha = .99: (.99 * .238 + .01 * .85, .99 * .258 + .01 * .15) = (.24412, .25692)
    d1, d2 = math.log(3) / math.sqrt(2), math.log(2) / math.sqrt(2)
    orig, cf1, cf2 = _logits(0.85, 0.15), _logits(0.85 - d1, 0.15 + d1), _logits(0.85 - d2, 0.15 + d2)
    lam = math.sqrt(2)
    np.testing.assert_allclose(cafie_logprobs(orig, [cf1, cf2], lam=lam).exp().numpy(), [0.24412, 0.25692],
                               atol=1e-12)
    # Order does not matter.
    np.testing.assert_allclose(cafie_logprobs(orig, [cf2, cf1], lam=lam).exp().numpy(), [0.24412, 0.25692],
                               atol=1e-12)
    # Three rows: both counterfactuals; only cf1 (w_1 = 1: p_fair = (.85 * .2, .15 * 1.8) = (.17, .27),
    # p = (.99 * .17 + .0085, .99 * .27 + .0015) = (.1768, .2688)); none (p_0 exactly).
    o, c1, c2 = (torch.stack([x] * 3) for x in (orig, cf1, cf2))
    masks = [torch.tensor([True, True, False]), torch.tensor([True, False, False])]
    got = cafie_logprobs(o, [c1, c2], lam=lam, cf_masks=masks)
    np.testing.assert_allclose(got.exp().numpy(), [[0.24412, 0.25692], [0.1768, 0.2688], [0.85, 0.15]], atol=1e-12)
    assert torch.equal(got[2], torch.log_softmax(orig, -1))


def _linear_space_reference(orig, cfs, masks, lam, alpha, temperature):
    """The equations written out directly in probability space (numpy), one row at a time."""
    def softmax(z):
        e = np.exp(z / temperature - np.max(z / temperature))
        return e / e.sum()

    out = []
    for r in range(orig.shape[0]):
        p0 = softmax(orig[r])
        ks = [k for k in range(len(cfs)) if masks[k][r]]
        if not ks:
            out.append(p0)
            continue
        s = [p0 - softmax(cfs[k][r]) for k in ks]
        d = np.array([np.exp(np.linalg.norm(x)) for x in s])
        fair = sum(dk / d.sum() * (1.0 + np.tanh(-lam * x)) * p0 for dk, x in zip(d, s, strict=True))
        out.append(alpha * fair + (1.0 - alpha) * p0)
    return np.array(out)


@pytest.mark.parametrize(("lam", "alpha", "temperature"), [(1000.0, 0.99, 1.0), (50.0, 0.7, 1.0), (3.0, 0.99, 2.0)])
def test_matches_the_equations_in_probability_space(lam, alpha, temperature):
    gen = torch.Generator().manual_seed(0)
    orig = torch.randn(5, 11, generator=gen, dtype=torch.float64)
    cfs = [orig + 0.7 * torch.randn(5, 11, generator=gen, dtype=torch.float64) for _ in range(3)]
    masks = [torch.tensor(m) for m in ([1, 1, 0, 1, 0], [1, 0, 0, 1, 0], [1, 1, 0, 0, 0])]
    masks = [m.bool() for m in masks]
    got = cafie_logprobs(orig, cfs, lam=lam, alpha=alpha, temperature=temperature, cf_masks=masks).exp().numpy()
    ref = _linear_space_reference(orig.numpy(), [c.numpy() for c in cfs], [m.numpy() for m in masks],
                                  lam, alpha, temperature)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-14)
    assert abs(got[0].sum() - 1.0) > 1e-6  # not renormalised
    norm = cafie_logprobs(orig, cfs, lam=lam, alpha=alpha, temperature=temperature, cf_masks=masks,
                          normalize=True).exp().numpy()
    np.testing.assert_allclose(norm, ref / ref.sum(-1, keepdims=True), rtol=1e-10, atol=1e-14)


def test_large_lambda_stays_finite_in_log_space():
    # p_0 = (.9, .1), p_1 = (.1, .9), lambda = 1000, alpha = 1: S = (.8, -.8).
    # W_0 = 1 + tanh(-800) = 2 sigmoid(-1600) ~ 2 e^-1600 (0 in floating point), W_1 = 1 + tanh(800) ~ 2:
    # log p = (ln .9 + ln 2 - 1600, ln .2).
    got = cafie_logprobs(_logits(0.9, 0.1), [_logits(0.1, 0.9)], alpha=1.0)
    np.testing.assert_allclose(got.numpy(), [math.log(0.9) + math.log(2) - 1600, math.log(0.2)], rtol=1e-12)


def test_temperature_divides_every_logit():
    orig, cf = _logits(0.6, 0.3, 0.1), _logits(0.2, 0.5, 0.3)
    np.testing.assert_allclose(cafie_logprobs(3 * orig, [3 * cf], lam=5.0, temperature=3.0).numpy(),
                               cafie_logprobs(orig, [cf], lam=5.0).numpy(), atol=1e-12)


def test_bad_hyperparameters_and_shapes(mt):
    x = torch.zeros(3)
    for kw in ({"alpha": 1.5}, {"alpha": -0.1}, {"lam": -1.0}, {"lam": math.inf}, {"temperature": 0.0}):
        with pytest.raises(ConfigError):
            cafie_logprobs(x, [x], **kw)
        with pytest.raises(ConfigError):
            CAFIE(*mt, **kw)
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
    got = CAFIE(model, tok, alpha=1.0).sequence_logprobs(
        NO_GROUP, _cfg(batch_size=batch_size, max_batch_tokens=max_batch_tokens))
    np.testing.assert_array_equal(got.n_tokens, ref.n_tokens)
    np.testing.assert_allclose(got.sum_logprob, ref.sum_logprob, rtol=0, atol=TOL)


def _reference_cafie(model, tok, scorer: CAFIE, req: Request) -> float:
    """Token by token: the context text, its complete group words swapped, each context run alone."""
    start = resolve_start_token_id(tok)
    enc = tok(req.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = [start, *enc["input_ids"]], enc["offset_mapping"]
    first = 1 + next(i for i, (_, e) in enumerate(offs) if e > req.score_from)
    skipped = {j for j in range(1, len(ids)) if any(offs[j - 1][0] < b and offs[j - 1][1] > a for a, b in req.skip)}
    total = 0.0
    with torch.no_grad():
        for j in (j for j in range(first, len(ids)) if j not in skipped):
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
            total += float(cafie_logprobs(orig, cfs, **scorer.hparams)[ids[j]])
    return total


WITH_GROUPS = [
    Request("He is a nurse."),
    Request("The man met her and a Muslim."),
    Request("My neighbor is a priest. He sang.", len("My neighbor is a priest.") + 1),
]


@pytest.mark.parametrize("kw", [{}, {"lam": 300.0, "alpha": 0.7, "normalize": True}])
def test_scores_equal_the_per_token_reference(mt, kw):
    model, tok = mt
    scorer = CAFIE(model, tok, **kw)
    got = scorer.sequence_logprobs(WITH_GROUPS, _cfg(batch_size=4, max_batch_tokens=64))
    ref = np.array([_reference_cafie(model, tok, scorer, r) for r in WITH_GROUPS])
    np.testing.assert_allclose(got.sum_logprob, ref, rtol=0, atol=TOL)
    plain = sequence_logprobs_one_by_one(model, tok, WITH_GROUPS)
    np.testing.assert_array_equal(got.n_tokens, plain.n_tokens)
    assert (np.abs(got.sum_logprob - plain.sum_logprob) > 1e-3).all()  # the group words change the scores


def test_skipped_spans_are_left_out(mt):
    model, tok = mt
    scorer = CAFIE(model, tok)
    reqs = [Request("The man met her.", 0, skip=((4, 7),)), Request("He is a nurse.", 0, skip=((0, 2), (8, 13)))]
    got = scorer.sequence_logprobs(reqs, _cfg(batch_size=4, max_batch_tokens=64))
    np.testing.assert_array_equal(got.n_tokens, [len("The man met her.") - 3, len("He is a nurse.") - 7])
    np.testing.assert_allclose(got.sum_logprob, [_reference_cafie(model, tok, scorer, r) for r in reqs],
                               rtol=0, atol=TOL)
    # nothing skipped: the plain texts
    full = scorer.sequence_logprobs([Request(r.text) for r in reqs], _cfg())
    assert (full.sum_logprob < got.sum_logprob).all()


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
    proc = CAFIE(model, tok, lam=200.0, alpha=0.8).logits_processor()
    assert isinstance(proc, CAFIELogitsProcessor)
    # Batch of two left-padded rows: one with a group word at its end, one without.
    a, b = _prompt(tok, "Then he"), _prompt(tok, "Then")
    batch = torch.cat([a, torch.cat([torch.tensor([[1, 1, 1]]), b], dim=1)])
    with torch.no_grad():
        scores = torch.cat([model(a).logits[:, -1], model(b).logits[:, -1]])
        cf = model(_prompt(tok, "Then she")).logits[:, -1]
    got = proc(batch, scores.clone())
    assert torch.allclose(got[0], cafie_logprobs(scores[0], [cf[0]], lam=200.0, alpha=0.8), atol=1e-5)
    assert torch.allclose(got[1], torch.log_softmax(scores[1], -1), atol=1e-6)  # no group word
    assert not torch.allclose(got[0], torch.log_softmax(scores[0], -1), atol=1e-4)


def test_generation(mt):
    model, tok = mt
    ids = _prompt(tok, "The man")
    plain = _greedy(model, ids)
    assert _greedy(model, ids, [CAFIE(model, tok, alpha=0.0).logits_processor()]) == plain
    proc = CAFIE(model, tok).logits_processor()
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
