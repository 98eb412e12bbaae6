"""Instruct-aware scoring: benchmark sentences inside the chat template."""

from __future__ import annotations

import pytest

from biasunlearn.errors import ConfigError
from biasunlearn.scoring import Request, ScoringConfig, chat_requests, sequence_logprobs


@pytest.fixture
def chat_tok(tiny_model_and_tokenizer):
    from transformers import AutoTokenizer

    _, tok = tiny_model_and_tokenizer
    t = AutoTokenizer.from_pretrained(tok.name_or_path)
    t.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</>{% endfor %}<assistant>"
    return t


def test_chat_requests_put_context_in_the_user_turn(chat_tok):
    reqs = [Request("My mother is home. She cooks.", 19, group="e1"), Request("He is tall.", 0)]
    out = chat_requests(chat_tok, reqs, user="Write a sentence.")
    assert out[0] == Request("<user>My mother is home.</><assistant>She cooks.", 38, "e1")
    assert out[1].text == "<user>Write a sentence.</><assistant>He is tall."
    assert out[1].text[out[1].score_from:] == "He is tall."


def test_chat_scoring_scores_only_the_reply(tiny_model_and_tokenizer, chat_tok):
    model, _ = tiny_model_and_tokenizer
    reqs = [Request("My mother is home. She cooks.", 19)]
    # no torch.no_grad() here: the scorer runs in inference mode itself
    chat = sequence_logprobs(model, chat_tok, reqs, ScoringConfig(chat_template=True, progress=False))
    direct = sequence_logprobs(model, chat_tok, chat_requests(chat_tok, reqs), ScoringConfig(progress=False))
    raw = sequence_logprobs(model, chat_tok, reqs, ScoringConfig(progress=False))
    assert chat.n_tokens[0] == len("She cooks.")  # byte tokenizer: one token per byte of the reply
    assert chat.sum_logprob[0] == pytest.approx(direct.sum_logprob[0])
    assert raw.sum_logprob[0] != pytest.approx(chat.sum_logprob[0])


def test_chat_scoring_needs_a_template(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    with pytest.raises(ConfigError, match="--chat-template"):
        sequence_logprobs(model, tok, [Request("x y", 0)], ScoringConfig(chat_template=True, progress=False))


def test_chat_requests_move_skipped_spans_with_the_reply(chat_tok):
    text = "Ctx.  The women cook."
    span = (text.index("women"), text.index("women") + 5)
    (out,) = chat_requests(chat_tok, [Request(text, 4, skip=(span,))], user="Write a sentence.")
    a, b = out.skip[0]
    assert out.text[a:b] == "women"
