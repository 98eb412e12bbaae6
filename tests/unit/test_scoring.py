"""Batched sequence scoring on the tiny random Llama with the byte-level tokenizer (one token per byte)."""

from __future__ import annotations

import logging
import math
import random

import numpy as np
import pytest
import torch

from biasunlearn import scoring
from biasunlearn.errors import ConfigError
from biasunlearn.scoring import (
    Request,
    ScoringConfig,
    SequenceLogProbs,
    encode_requests,
    geometric_mean_from_logprob,
    resolve_start_token_id,
    sequence_logprobs,
    sequence_logprobs_one_by_one,
)

TOL = 1e-4

INTRA = [
    ("The nurse said that she was tired.", "The nurse said that he was tired.", "The nurse said that sky was tired."),
    ("Muslims are peaceful.", "Muslims are violent.", "Muslims are cucumbers."),
    ("He is a chemist.", "She is a chemist.", "It is a chemist, café."),
    ("Grandfathers are wise and patient people who tell long stories about the war and the old days.",
     "Grandfathers are forgetful.", "Grandfathers are triangles."),
    ("Brahmins are priests.", "Brahmins are farmers.", "Brahmins are blue."),
]
INTER = [
    ("My neighbor is from Ethiopia.", ("He is very thin.", "He is an athlete.", "Dogs bark at night.")),
    ("The plumber came over.", ("He was dirty.", "She was clean and polite.", "Pizza is round.")),
    ("The schoolgirl walked in. She had a backpack full of books and a lunchbox with a sandwich in it.",
     ("She giggled.", "She was serious.", "Naïve résumé.")),
]
SINGLES = ["Hi", "A much longer sentence without any group, to stretch the batch width a good deal.", "x y",
           "Ok."]


def _mixed_requests() -> list[Request]:
    reqs = []
    for k, cands in enumerate(INTRA):
        reqs += [Request(c, 0, group=("intra", k)) for c in cands]
    for k, (ctx, cands) in enumerate(INTER):
        reqs += [Request(ctx + " " + c, len(ctx) + 1, group=("inter", k)) for c in cands]
    reqs += [Request(s) for s in SINGLES]
    # Intersentence-like requests without a group, and an intrasentence one repeated in another group.
    reqs += [Request("The plumber came over. He fixed it.", len("The plumber came over.") + 1),
             Request("The nurse said that she was tired.", 0, group="dup")]
    random.Random(0).shuffle(reqs)  # group members are not adjacent
    return reqs


@pytest.fixture(scope="module")
def mt(tiny_model_and_tokenizer):
    return tiny_model_and_tokenizer


@pytest.fixture(scope="module")
def requests_and_reference(mt):
    model, tok = mt
    reqs = _mixed_requests()
    return reqs, sequence_logprobs_one_by_one(model, tok, reqs)


def _cfg(**kw) -> ScoringConfig:
    return ScoringConfig(progress=False, **kw)


def _assert_close(a: SequenceLogProbs, b: SequenceLogProbs, tol: float = TOL) -> None:
    np.testing.assert_array_equal(a.n_tokens, b.n_tokens)
    np.testing.assert_allclose(a.sum_logprob, b.sum_logprob, rtol=0, atol=tol)
    np.testing.assert_allclose(a.scores("geometric_mean"), b.scores("geometric_mean"), rtol=0, atol=tol)


# --------------------------------------------------------------------------------------------------
# (a) batched == one by one
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize(("batch_size", "max_batch_tokens"), [(1, 0), (3, 0), (64, 0), (64, 40)])
def test_batched_equals_one_by_one(mt, requests_and_reference, share_prefix, batch_size, max_batch_tokens):
    model, tok = mt
    reqs, ref = requests_and_reference
    assert len(reqs) == 30
    got = sequence_logprobs(model, tok, reqs, _cfg(batch_size=batch_size, share_prefix=share_prefix,
                                                   max_batch_tokens=max_batch_tokens))
    _assert_close(got, ref)
    # The scores are not trivially equal: different sentences get visibly different scores.
    assert np.ptp(ref.scores("geometric_mean")) > 1e-3
    assert (ref.n_tokens > 0).all()


def test_empty_request_list(mt):
    model, tok = mt
    out = sequence_logprobs(model, tok, [], _cfg())
    assert out.sum_logprob.shape == (0,) and out.n_tokens.shape == (0,)


# --------------------------------------------------------------------------------------------------
# (b) a hand check against the model's logits
# --------------------------------------------------------------------------------------------------


def _hand_logprob(model, ids: list[int], first_scored: int) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return sum(float(logp[j - 1, ids[j]]) for j in range(first_scored, len(ids)))


def test_hand_check_against_logits(mt):
    model, tok = mt
    text = "Hi there"
    body = tok(text, add_special_tokens=False)["input_ids"]
    assert len(body) == len(text)  # one token per byte
    ids = [tok.convert_tokens_to_ids("<|endoftext|>"), *body]
    # score_from=3: "H", "i", " " end at 1, 2, 3 <= 3 and are context; "there" (ids[4:]) is scored,
    # each token predicted from the logits at the previous position.
    want_part = _hand_logprob(model, ids, 4)
    # score_from=0: every byte is scored, the first conditioned on the start token alone.
    want_full = _hand_logprob(model, ids, 1)
    reqs = [Request(text, 3), Request(text, 0)]
    for out in (sequence_logprobs(model, tok, reqs, _cfg()), sequence_logprobs_one_by_one(model, tok, reqs)):
        assert out.n_tokens.tolist() == [5, 8]
        assert out.sum_logprob[0] == pytest.approx(want_part, abs=TOL)
        assert out.sum_logprob[1] == pytest.approx(want_full, abs=TOL)
        assert out.scores()[0] == pytest.approx(math.exp(want_part / 5), abs=TOL)
    assert want_part < 0 and want_full < want_part


# --------------------------------------------------------------------------------------------------
# (c) score_from
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cand", ["He is a nurse.", "café au lait", "Naïve résumé.", "x"])
def test_score_from_scores_only_the_candidate(mt, cand):
    model, tok = mt
    ctx = "My neighbor is from Ethiopia."
    text = ctx + " " + cand
    reqs = [Request(text, len(ctx) + 1, group="g"), Request(text, 0), Request(ctx + " ", 0)]
    out = sequence_logprobs(model, tok, reqs, _cfg())
    # Byte-level tokenizer: the candidate's tokens are its UTF-8 bytes (a 2-byte "é" is 2 tokens).
    assert out.n_tokens[0] == len(cand.encode("utf-8"))
    assert out.n_tokens[1] == len(text.encode("utf-8"))
    # Chain rule: log p(ctx + " " + cand) = log p(ctx + " ") + log p(cand | ctx + " ").
    assert out.sum_logprob[0] == pytest.approx(out.sum_logprob[1] - out.sum_logprob[2], abs=TOL)


def test_score_from_token_boundaries(mt, caplog):
    model, tok = mt
    reqs = [Request("ab", 0), Request("ab", 1), Request("ab", 2), Request("abc", 1)]
    with caplog.at_level(logging.WARNING, logger="biasunlearn.scoring"):
        out = sequence_logprobs(model, tok, reqs, _cfg())
    # A token whose characters end at or before score_from is not scored.
    assert out.n_tokens.tolist() == [2, 1, 0, 2]
    assert out.sum_logprob[2] == 0.0
    assert "1 of 4 requests had no scored token" in caplog.text
    enc = encode_requests(tok, reqs, 0)
    assert [e.first_scored for e in enc] == [1, 2, 3, 2]


def test_score_from_depends_on_context(mt):
    model, tok = mt
    a = Request("The nurse came in. She smiled.", len("The nurse came in. "))
    b = Request("The pilot came in. She smiled.", len("The pilot came in. "))
    out = sequence_logprobs(model, tok, [a, b], _cfg())
    assert out.n_tokens.tolist() == [11, 11]
    assert abs(out.sum_logprob[0] - out.sum_logprob[1]) > 1e-3  # the candidate is conditioned on ctx


# --------------------------------------------------------------------------------------------------
# (d) score methods
# --------------------------------------------------------------------------------------------------


def test_score_methods_relate(requests_and_reference):
    _, ref = requests_and_reference
    s = ref.sum_logprob
    n = ref.n_tokens
    np.testing.assert_allclose(ref.scores("sum_logprob"), s, rtol=0, atol=0)
    np.testing.assert_allclose(ref.scores("mean_logprob"), s / n, rtol=1e-12)
    np.testing.assert_allclose(ref.scores("geometric_mean"), np.exp(ref.scores("mean_logprob")), rtol=1e-12)
    assert ((ref.scores() > 0) & (ref.scores() < 1)).all()
    for i in range(len(s)):
        assert geometric_mean_from_logprob(s[i], int(n[i])) == pytest.approx(ref.scores()[i], rel=1e-12)


def test_score_methods_by_hand():
    lp = SequenceLogProbs(np.array([-6.0, -1.0, 0.0]), np.array([3, 4, 0]))
    np.testing.assert_allclose(lp.scores("sum_logprob"), [-6.0, -1.0, 0.0])
    # The third request has no scored token: no mean, so NaN (never preferred in a comparison).
    np.testing.assert_allclose(lp.scores("mean_logprob"), [-2.0, -0.25, np.nan])
    np.testing.assert_allclose(lp.scores("geometric_mean"), [math.exp(-2.0), math.exp(-0.25), np.nan])
    # scores() returns a new array; the stored sums are not touched.
    lp.scores("sum_logprob")[0] = 99.0
    assert lp.sum_logprob[0] == -6.0
    with pytest.raises(ConfigError, match="bogus"):
        lp.scores("bogus")


# --------------------------------------------------------------------------------------------------
# (e) ScoringConfig validation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"score_method": "perplexity"}, "--score-method"),
        ({"score_method": ""}, "--score-method"),
        ({"batch_size": 0}, "--batch-size"),
        ({"batch_size": -3}, "--batch-size"),
        ({"max_batch_tokens": -1}, "--max-batch-tokens"),
    ],
)
def test_scoring_config_rejects(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        ScoringConfig(**kwargs)


@pytest.mark.parametrize("method", scoring.SCORE_METHODS)
def test_scoring_config_accepts_methods(method):
    assert ScoringConfig(score_method=method).score_method == method


# --------------------------------------------------------------------------------------------------
# (f) start token
# --------------------------------------------------------------------------------------------------


class _StubTokenizer:
    def __init__(self, vocab, bos=None, eos=None):
        self._vocab = vocab
        self.bos_token_id = bos
        self.eos_token_id = eos
        self.unk_token_id = None
        self.unk_token = None

    def get_vocab(self):
        return dict(self._vocab)

    def convert_tokens_to_ids(self, token):
        return self._vocab.get(token)


def test_resolve_start_token_id(mt):
    _, tok = mt
    assert resolve_start_token_id(tok) == tok.get_vocab()["<|endoftext|>"] == 0
    assert resolve_start_token_id(tok, "<pad>") == 1
    with pytest.raises(ConfigError, match="--start-token"):
        resolve_start_token_id(tok, "<nope>")


def test_resolve_start_token_prefers_endoftext_then_bos_then_eos():
    assert resolve_start_token_id(_StubTokenizer({"<s>": 1, "<|endoftext|>": 7}, bos=1, eos=2)) == 7
    assert resolve_start_token_id(_StubTokenizer({"<s>": 1}, bos=1, eos=2)) == 1
    assert resolve_start_token_id(_StubTokenizer({"</s>": 2}, eos=2)) == 2
    with pytest.raises(ConfigError, match="--start-token"):
        resolve_start_token_id(_StubTokenizer({"a": 0}))


def test_explicit_start_token_is_used(mt):
    model, tok = mt
    reqs = [Request("The nurse is kind."), Request("Ctx. Cand.", 5, group=1), Request("Ctx. Other.", 5, group=1)]
    default = sequence_logprobs(model, tok, reqs, _cfg())
    pad = sequence_logprobs(model, tok, reqs, _cfg(start_token="<pad>"))
    _assert_close(pad, sequence_logprobs_one_by_one(model, tok, reqs, start_token="<pad>"))
    assert np.abs(pad.sum_logprob - default.sum_logprob).max() > 1e-3


# --------------------------------------------------------------------------------------------------
# (g) shared prefixes
# --------------------------------------------------------------------------------------------------


SHARE_CASES = {
    "identical_prefixes": ["The cat sat.", "The cat ran.", "The cat slept all day."],
    "different_prefixes": ["A dog barked.", "The cat sat.", "Zebras run."],
    "one_is_prefix_of_another": ["The cat", "The cat sat", "The cat sat on the mat."],
    "identical_texts": ["Same text.", "Same text."],
}
# Tokens computed once for the group: start token + common bytes, leaving every continuation >= 1 token.
EXPECTED_PREFIX = {
    "identical_prefixes": 1 + len("The cat "),
    "different_prefixes": 1,
    "one_is_prefix_of_another": len("The cat"),  # the whole of "The cat" but its last byte
    "identical_texts": len("Same text."),
}


@pytest.mark.parametrize("case", list(SHARE_CASES))
@pytest.mark.parametrize("score_from", [0, 4])
def test_share_prefix_is_exact(mt, case, score_from):
    model, tok = mt
    reqs = [Request(t, score_from, group="g") for t in SHARE_CASES[case]]
    reqs.append(Request("An ungrouped sentence in the same batch.", 0))
    encoded = encode_requests(tok, reqs, 0)
    units = scoring._make_units(encoded, [r.group for r in reqs])
    grouped = [u for u in units if len(u.members) > 1]
    assert len(grouped) == 1 and len(grouped[0].prefix) == EXPECTED_PREFIX[case]
    shared = sequence_logprobs(model, tok, reqs, _cfg(share_prefix=True))
    plain = sequence_logprobs(model, tok, reqs, _cfg(share_prefix=False))
    ref = sequence_logprobs_one_by_one(model, tok, reqs)
    _assert_close(shared, plain)
    _assert_close(shared, ref)
    if case == "identical_texts":
        assert shared.sum_logprob[0] == pytest.approx(shared.sum_logprob[1], abs=TOL)


def test_share_prefix_continuations_do_not_see_each_other(mt):
    # Sibling continuations are packed in one row: if the block mask let the second continuation attend
    # to the first, its score would differ from scoring it alone.
    model, tok = mt
    first, second = Request("Context. Apples are red.", 9, group=0), Request("Context. Skies are blue.", 9, group=0)
    together = sequence_logprobs(model, tok, [first, second], _cfg())
    alone = sequence_logprobs(model, tok, [second], _cfg())
    assert together.sum_logprob[1] == pytest.approx(alone.sum_logprob[0], abs=TOL)


# --------------------------------------------------------------------------------------------------
# (h) padding is masked
# --------------------------------------------------------------------------------------------------


SHORT = [Request("Hi. Yes.", 4, group="short"), Request("Hi. No.", 4, group="short")]
LONG = [Request("A very long sentence " * 8 + "that sets the width of the padded batch.", 0, group="long"),
        Request("Another quite long sentence " * 6 + "in the same group.", 0, group="long")]


@pytest.mark.parametrize("share_prefix", [True, False])
def test_short_request_alone_equals_short_in_long_batch(mt, share_prefix):
    model, tok = mt
    cfg = _cfg(share_prefix=share_prefix)
    alone = sequence_logprobs(model, tok, SHORT, cfg)
    mixed = sequence_logprobs(model, tok, [*LONG, *SHORT], cfg)
    assert len(LONG[0].text) > 10 * len(SHORT[0].text)
    _assert_close(SequenceLogProbs(mixed.sum_logprob[2:], mixed.n_tokens[2:]), alone, tol=1e-5)
    _assert_close(mixed, sequence_logprobs_one_by_one(model, tok, [*LONG, *SHORT]))


def test_unmasked_padding_would_be_detected(mt, monkeypatch):
    """Sanity check of the test above: let every token attend to the padding after its row's real
    tokens, and the short requests' scores move far beyond the tolerance."""
    model, tok = mt
    cfg = _cfg(share_prefix=True)
    alone = sequence_logprobs(model, tok, SHORT, cfg)
    orig = scoring._pack

    def leaky_pack(units, encoded, pad_id, dtype, packed):
        ids, pos, mask, *rest = orig(units, encoded, pad_id, dtype, packed)
        assert packed and mask.dim() == 4
        for r, u in enumerate(units):
            mask[r, 0, :, u.length:] = 0.0  # padding keys visible to every query
        return (ids, pos, mask, *rest)

    monkeypatch.setattr(scoring, "_pack", leaky_pack)
    leaky = sequence_logprobs(model, tok, [*LONG, *SHORT], cfg)
    assert np.abs(leaky.sum_logprob[2:] - alone.sum_logprob).max() > 1e-2


# --------------------------------------------------------------------------------------------------
# Requests with no scored token
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reqs", "batch_size"),
    [
        ([Request("ab", 2)], 64),  # all of the text is context
        ([Request("", 0)], 64),  # empty text
        ([Request("ab", 2), Request("cd", 0)], 1),  # the empty one gets a batch of its own
        ([Request("ab", 2, group=1), Request("ab", 2, group=1)], 64),
    ],
)
def test_batch_without_scored_tokens(mt, reqs, batch_size):
    model, tok = mt
    ref = sequence_logprobs_one_by_one(model, tok, reqs)  # the reference copes: 0 tokens, sum 0
    got = sequence_logprobs(model, tok, reqs, _cfg(batch_size=batch_size))
    _assert_close(got, ref)
    assert got.n_tokens[0] == 0 and got.sum_logprob[0] == 0.0
    # No scored token, no score: NaN never wins a comparison (a score of 1.0 would always win).
    assert np.isnan(got.scores("geometric_mean")[0]) and np.isnan(got.scores("mean_logprob")[0])


# --------------------------------------------------------------------------------------------------
# (f) skipped spans (CrowS-Pairs' unmodified-token score)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("share_prefix", [True, False])
def test_skipped_spans_are_conditioned_on_but_not_scored(mt, share_prefix):
    model, tok = mt
    text = "The women cook."
    start = tok.convert_tokens_to_ids("<|endoftext|>")
    ids = [start, *tok(text, add_special_tokens=False)["input_ids"]]  # one token per byte
    span = (4, 9)  # "women"
    want = _hand_logprob(model, ids, 1) - sum(_hand_logprob(model, ids[: j + 1], j) for j in range(5, 10))
    reqs = [Request(text, 0, group="p", skip=(span,)), Request("The men cook.", 0, group="p", skip=((4, 7),)),
            Request(text, 0, group="p")]
    cfg = _cfg(share_prefix=share_prefix)
    for out in (sequence_logprobs(model, tok, reqs, cfg), sequence_logprobs_one_by_one(model, tok, reqs)):
        assert out.n_tokens.tolist() == [len(text) - 5, len("The men cook.") - 3, len(text)]
        assert out.sum_logprob[0] == pytest.approx(want, abs=TOL)
        # the unmodified tokens after the span still see it: " cook." differs between the two sentences
        assert out.sum_logprob[0] != pytest.approx(out.sum_logprob[1], abs=1e-3)


def test_skipped_spans_with_score_from_and_overlap(mt):
    model, tok = mt
    text = "ab cd ef"
    out = sequence_logprobs(model, tok, [Request(text, 3, skip=((0, 1), (5, 7)))], _cfg())
    # "c", "d", " ", "e", "f" are after score_from; " " (5..6) and "e" (6..7) overlap the span (5, 7)
    assert out.n_tokens.tolist() == [3]


def test_skipped_spans_need_a_fast_tokenizer(mt, monkeypatch):
    model, tok = mt
    monkeypatch.setattr(type(tok), "is_fast", property(lambda self: False))
    with pytest.raises(ConfigError, match="fast tokenizer"):
        sequence_logprobs(model, tok, [Request("ab", 0, skip=((0, 1),))], _cfg())
