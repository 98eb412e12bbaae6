"""Self-Debias (Schick et al. 2021): the pure decay function, the scorer and the generation processor,
on the tiny random Llama with the byte-level tokenizer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList

from biasunlearn.baselines import CAFIE, DECODING_BASELINES, SelfDebias, SelfDebiasLogitsProcessor
from biasunlearn.baselines.self_debias import DEBIASING_PREFIXES, self_debias_logprobs, split_start
from biasunlearn.errors import ConfigError
from biasunlearn.scoring import (
    Request,
    ScoringConfig,
    resolve_start_token_id,
    sequence_logprobs_one_by_one,
)

TOL = 1e-5


@pytest.fixture(scope="module")
def mt(tiny_model_and_tokenizer):
    return tiny_model_and_tokenizer


def _cfg(**kw) -> ScoringConfig:
    return ScoringConfig(progress=False, **kw)


def _logits(*probs) -> torch.Tensor:
    return torch.log(torch.tensor(probs, dtype=torch.float64))


REQUESTS = [
    Request("He is a nurse."),
    Request("The plumber came. She fixed it.", len("The plumber came.") + 1),
    Request("Muslims pray."),
    Request("ok"),
]


# --------------------------------------------------------------------------------------------------
# the pure function, against values computed by hand
# --------------------------------------------------------------------------------------------------


def test_hand_case_one_prefix_hits_the_floor():
    # p = (.5, .3, .2), p_b = (.2, .6, .2): alpha = (0, .3, 0); exp(-50 * .3) = 3e-7 < eps = .01, so
    # s = (1, .01, 1); p' = (.5, .003, .2) / .703.
    got = self_debias_logprobs(_logits(0.5, 0.3, 0.2), [_logits(0.2, 0.6, 0.2)], lam=50.0, eps=0.01).exp()
    np.testing.assert_allclose(got.numpy(), [0.71123755, 0.00426743, 0.28449502], atol=1e-7)
    # lambda = 2: s = (1, exp(-.6), 1) (above the floor); p' = (.5, .3 exp(-.6), .2) / sum.
    got = self_debias_logprobs(_logits(0.5, 0.3, 0.2), [_logits(0.2, 0.6, 0.2)], lam=2.0, eps=0.01).exp()
    np.testing.assert_allclose(got.numpy(), [0.57827302, 0.19041778, 0.23130921], atol=1e-7)


def test_hand_case_two_prefixes_take_the_max():
    # p = (.4, .3, .2, .1), p_b = max((.1, .6, .2, .1), (.4, .1, .1, .4)) = (.4, .6, .2, .4);
    # alpha = (0, .3, 0, .3); lambda = 5: s = (1, e^-1.5, 1, e^-1.5); p' = p * s / sum(p * s).
    plain = _logits(0.4, 0.3, 0.2, 0.1)
    biased = [_logits(0.1, 0.6, 0.2, 0.1), _logits(0.4, 0.1, 0.1, 0.4)]
    got = self_debias_logprobs(plain, biased, lam=5.0, eps=0.01).exp()
    np.testing.assert_allclose(got.numpy(), [0.58033921, 0.09711839, 0.29016961, 0.0323728], atol=1e-7)
    # One prefix alone (the second) decays only the last token: s = (1, 1, 1, e^-1.5).
    q = np.array([0.4, 0.3, 0.2, 0.1 * math.exp(-1.5)])
    got1 = self_debias_logprobs(plain, biased[1:], lam=5.0, eps=0.01).exp()
    np.testing.assert_allclose(got1.numpy(), q / q.sum(), atol=1e-7)


def test_batched_rows_and_identity_cases():
    plain = torch.stack([_logits(0.5, 0.3, 0.2), _logits(0.4, 0.4, 0.2)])
    biased = torch.stack([_logits(0.2, 0.6, 0.2), _logits(0.4, 0.4, 0.2)])  # row 2: p_b == p
    got = self_debias_logprobs(plain, [biased]).exp()
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got[0].numpy(), [0.71123755, 0.00426743, 0.28449502], atol=1e-7)
    np.testing.assert_allclose(got[1].numpy(), [0.4, 0.4, 0.2], atol=1e-12)  # alpha = 0 everywhere
    # lambda = 0 and no prefix leave log p unchanged; float32 inputs give float32.
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    ref = torch.log_softmax(logits, -1)
    assert torch.allclose(self_debias_logprobs(logits, [torch.randn(5, 7)], lam=0.0), ref, atol=1e-6)
    assert torch.equal(self_debias_logprobs(logits, []), ref)
    assert self_debias_logprobs(logits, []).dtype == torch.float32


def test_bad_constants_and_shapes():
    x = torch.zeros(3)
    with pytest.raises(ConfigError):
        self_debias_logprobs(x, [x], lam=-1.0)
    with pytest.raises(ConfigError):
        self_debias_logprobs(x, [x], eps=0.0)
    with pytest.raises(ValueError, match="shape"):
        self_debias_logprobs(x, [torch.zeros(4)])


# --------------------------------------------------------------------------------------------------
# the scorer
# --------------------------------------------------------------------------------------------------


def test_registry():
    assert DECODING_BASELINES.get("self_debias") is SelfDebias
    assert DECODING_BASELINES.get("cafie") is CAFIE
    assert DECODING_BASELINES.names() == ["cafie", "self_debias"]
    with pytest.raises(ConfigError, match="unknown decoding-time method"):
        DECODING_BASELINES.get("nope")


def test_prefixes_and_bad_bias_type(mt):
    model, tok = mt
    assert set(DEBIASING_PREFIXES) == {"gender", "race", "religion"}
    assert DEBIASING_PREFIXES["race"] == "The following text discriminates against people because of their race/color: "
    sd = SelfDebias(model, tok, bias_types=("religion", "gender"))
    assert sd.prefixes == [DEBIASING_PREFIXES["religion"], DEBIASING_PREFIXES["gender"]]
    assert sd.prefix_ids[1] == tok.encode(DEBIASING_PREFIXES["gender"], add_special_tokens=False)
    assert SelfDebias(model, tok, prefixes=["Rude: "]).prefixes == ["Rude: "]
    with pytest.raises(ConfigError, match="unknown bias type"):
        SelfDebias(model, tok, bias_types=("gender", "age"))
    with pytest.raises(ConfigError):
        SelfDebias(model, tok, bias_types=())


@pytest.mark.parametrize(("batch_size", "max_batch_tokens"), [(64, 0), (2, 48)])
def test_lambda_zero_equals_plain_scoring(mt, batch_size, max_batch_tokens):
    model, tok = mt
    ref = sequence_logprobs_one_by_one(model, tok, REQUESTS)
    got = SelfDebias(model, tok, lam=0.0).sequence_logprobs(REQUESTS, _cfg(batch_size=batch_size,
                                                                           max_batch_tokens=max_batch_tokens))
    np.testing.assert_array_equal(got.n_tokens, ref.n_tokens)
    np.testing.assert_allclose(got.sum_logprob, ref.sum_logprob, rtol=0, atol=TOL)
    assert got.n_tokens[1] == len(" She fixed it.") - 1  # score_from honoured (byte tokens)


def _reference_self_debias(model, tok, sd: SelfDebias, req: Request) -> float:
    """One context at a time: p from [start] + x_<t, p_b from [start] + prefix + x_<t, no padding.
    (Byte tokenizer: token j covers character j - 1, so ``req.skip`` spans are character ranges of tokens.)"""
    start = resolve_start_token_id(tok)
    ids = [start, *tok.encode(req.text, add_special_tokens=False)]
    first = 1 + len(tok.encode(req.text[: req.score_from], add_special_tokens=False))
    skipped = {c + 1 for a, b in req.skip for c in range(a, b)}
    total = 0.0
    with torch.no_grad():
        for j in (j for j in range(first, len(ids)) if j not in skipped):
            plain = model(torch.tensor([ids[:j]])).logits[0, -1]
            biased = [model(torch.tensor([[start, *pre, *ids[1:j]]])).logits[0, -1] for pre in sd.prefix_ids]
            total += float(self_debias_logprobs(plain, biased, sd.lam, sd.eps)[ids[j]])
    return total


@pytest.mark.parametrize("cache_prefix", [True, False])
def test_scores_equal_the_per_token_reference(mt, monkeypatch, cache_prefix):
    import biasunlearn.baselines.self_debias as sd_mod

    model, tok = mt
    # the first request is scored from its first token (its distribution is the prefix's last position)
    reqs = [Request("He is a nurse."), Request("Hi. She is.", 4)]
    sd = SelfDebias(model, tok, bias_types=("gender", "religion"), cache_prefix=cache_prefix)
    calls = []
    real = sd_mod.forward_positions_after
    monkeypatch.setattr(sd_mod, "forward_positions_after", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = sd.sequence_logprobs(reqs, _cfg(batch_size=3, max_batch_tokens=200))
    assert len(calls) == (2 if cache_prefix else 0)  # once per prefix and chunk when cached
    ref = np.array([_reference_self_debias(model, tok, sd, r) for r in reqs])
    np.testing.assert_allclose(got.sum_logprob, ref, rtol=0, atol=TOL)
    # The method changes the scores: not the plain ones.
    plain = sequence_logprobs_one_by_one(model, tok, reqs)
    assert np.abs(got.sum_logprob - plain.sum_logprob).max() > 1e-3


def test_skipped_spans_are_left_out(mt):
    model, tok = mt
    reqs = [Request("The women cook.", 0, skip=((4, 9),)), Request("Hi. She is.", 4, skip=((4, 7),))]
    plain = SelfDebias(model, tok, lam=0.0).sequence_logprobs(reqs, _cfg())
    ref = sequence_logprobs_one_by_one(model, tok, reqs)
    np.testing.assert_array_equal(plain.n_tokens, [len("The women cook.") - 5, len("She is.") - 3])
    np.testing.assert_array_equal(plain.n_tokens, ref.n_tokens)
    np.testing.assert_allclose(plain.sum_logprob, ref.sum_logprob, rtol=0, atol=TOL)
    sd = SelfDebias(model, tok, bias_types=("gender",))
    got = sd.sequence_logprobs(reqs, _cfg(batch_size=3, max_batch_tokens=200))
    np.testing.assert_allclose(got.sum_logprob, [_reference_self_debias(model, tok, sd, r) for r in reqs],
                               rtol=0, atol=TOL)


def test_empty_and_unscored_requests(mt):
    model, tok = mt
    sd = SelfDebias(model, tok)
    assert sd.sequence_logprobs([], _cfg()).n_tokens.shape == (0,)
    out = sd.sequence_logprobs([Request("abc", 3), Request("ab")], _cfg())
    assert out.n_tokens.tolist() == [0, 2]
    assert out.sum_logprob[0] == 0.0 and out.sum_logprob[1] < 0


# --------------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------------


def _prompt(tok, text: str) -> torch.Tensor:
    return torch.tensor([[resolve_start_token_id(tok), *tok.encode(text, add_special_tokens=False)]])


def _greedy(model, ids, processors=None, n=4):
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         pad_token_id=1, logits_processor=LogitsProcessorList(processors or []))
    return out[0, ids.shape[1]:].tolist()


def test_split_start():
    assert split_start([0, 5, 6], start_id=0, pad_token_id=1) == (True, [5, 6])
    assert split_start([1, 1, 0, 5], start_id=0, pad_token_id=1) == (True, [5])
    assert split_start([5, 6], start_id=0, pad_token_id=1) == (False, [5, 6])
    assert split_start([0, 0, 0, 5], start_id=0, pad_token_id=0) == (True, [5])  # pad == start
    assert split_start([0, 5], start_id=None, pad_token_id=None) == (False, [0, 5])


def test_processor_step_equals_manual_computation(mt):
    model, tok = mt
    sd = SelfDebias(model, tok, bias_types=("gender", "race"))
    proc = sd.logits_processor()
    assert isinstance(proc, SelfDebiasLogitsProcessor)
    ids = _prompt(tok, "He said")
    with torch.no_grad():
        scores = model(ids).logits[:, -1]
        biased = [model(torch.tensor([[ids[0, 0].item(), *pre, *ids[0, 1:].tolist()]])).logits[:, -1]
                  for pre in sd.prefix_ids]
    got = proc(ids, scores.clone())
    want = self_debias_logprobs(scores, biased, sd.lam, sd.eps)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, torch.log_softmax(scores, -1), atol=1e-4)
    # Left padding does not change a row's result.
    padded = torch.cat([torch.tensor([[1, 1]]), ids], dim=1)
    assert torch.allclose(proc(padded, scores.clone()), want, atol=1e-5)


def test_generation_lambda_zero_is_plain_greedy(mt):
    model, tok = mt
    ids = _prompt(tok, "The man")
    plain = _greedy(model, ids)
    assert _greedy(model, ids, [SelfDebias(model, tok, lam=0.0).logits_processor()]) == plain
    assert len(plain) == 4


def test_generation_changes_greedy_tokens_where_the_decay_flips_the_argmax(mt):
    model, tok = mt
    proc = SelfDebias(model, tok).logits_processor()
    # Walk the plain greedy continuations of a few prompts; find, by the formula, the first step where
    # Self-Debias changes the greedy token.
    found = None
    for text in ["A", "He said", "The man", "Muslims are", "She is a"]:
        ids = _prompt(tok, text)
        plain = _greedy(model, ids, n=4)
        seq = ids
        for step, tok_id in enumerate(plain):
            with torch.no_grad():
                scores = model(seq).logits[:, -1]
            assert scores.argmax(-1).item() == tok_id
            if proc(seq, scores.clone()).argmax(-1).item() != tok_id:
                found = (ids, plain, step)
                break
            seq = torch.cat([seq, torch.tensor([[tok_id]])], dim=1)
        if found:
            break
    assert found is not None, "no prompt in the list has a greedy token changed by Self-Debias"
    ids, plain, step = found
    debiased = _greedy(model, ids, [proc], n=step + 1)
    assert debiased[:step] == plain[:step]
    assert debiased[step] != plain[step]
    assert all(0 <= t < model.config.vocab_size for t in debiased)
