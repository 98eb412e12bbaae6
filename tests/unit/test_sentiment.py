"""Sentiment directions of StereoSet pairs (VADER valence) and the --positive-share draw weights."""

from __future__ import annotations

import pytest

from biasunlearn.data.sentiment import direction_of, sentiment_direction, valence
from biasunlearn.data.stereoset import StereoExample, StereoSentence
from biasunlearn.errors import ConfigError
from biasunlearn.methods.data import TrainItem, build_pools, sentiment_weights
from biasunlearn.metrics.stereoset import ss_by_sentiment
from biasunlearn.train import TrainConfig


def _ex(stereo: str, anti: str, task: str = "intrasentence") -> StereoExample:
    # anti-stereotype first: the direction must be read by gold label, not position
    sents = (StereoSentence("a", anti, "anti-stereotype"), StereoSentence("u", "Fish fly.", "unrelated"),
             StereoSentence("s", stereo, "stereotype"))
    context = "Her mommy is very BLANK." if task == "intrasentence" else "I met her mommy."
    return StereoExample("x", task, "gender", "mommy", context, sents)


def test_valence_signs():
    assert valence("Her mommy is very caring.") > 0.3
    assert valence("He is a criminal.") < -0.3
    assert valence("The man is tall.") == 0.0


@pytest.mark.parametrize(("stereo", "anti", "expected"), [
    ("Her mommy is very caring.", "Her mommy is very standoffish.", "positive"),  # the StereoSet dev pair
    ("He is a criminal.", "He is a lawyer.", "negative"),
    ("The man is tall.", "The man is short.", "neutral"),
])
def test_direction_of(stereo, anti, expected):
    assert direction_of(stereo, anti) == expected


def test_margin_makes_small_differences_neutral():
    assert direction_of("He is a criminal.", "He is a lawyer.", margin=0.9) == "neutral"


def test_sentiment_direction_reads_gold_labels():
    assert sentiment_direction(_ex("Her mommy is very caring.", "Her mommy is very standoffish.")) == "positive"
    assert sentiment_direction(_ex("Her mommy is very standoffish.", "Her mommy is very caring.")) == "negative"
    assert sentiment_direction(_ex("She is a criminal.", "She is a lawyer.", "intersentence")) == "negative"


def test_build_pools_labels_both_sentences_of_a_pair(caplog):
    exs = [_ex("Her mommy is very caring.", "Her mommy is very standoffish."),
           _ex("He is a criminal.", "He is a lawyer.")]
    with caplog.at_level("INFO", logger="biasunlearn.methods.data"):
        pools = build_pools(exs, sentiment=True)
    assert "(positive/negative/neutral): gender 1/1/0" in caplog.text
    assert [i.sentiment for i in pools.stereo["gender"]] == ["positive", "negative"]
    assert [i.sentiment for i in pools.anti["gender"]] == ["positive", "negative"]
    assert all(i.sentiment == "" for i in build_pools(exs).stereo["gender"])


def _items(**counts: int) -> list[TrainItem]:
    return [TrainItem("t", 0, 1, "race", "stereotype", f"{d}{k}", "intersentence", sentiment=d)
            for d, n in counts.items() for k in range(n)]


def test_sentiment_weights_by_hand():
    # 2 neutral of 10 keep 0.2; the other 0.8 is split by the share, whatever the 6:2 ratio of the pool
    assert sentiment_weights(_items(negative=6, positive=2, neutral=2), 0.5) == pytest.approx(
        {"neutral": 0.2, "positive": 0.4, "negative": 0.4})
    assert sentiment_weights(_items(negative=6, positive=2, neutral=2), 0.75) == pytest.approx(
        {"neutral": 0.2, "positive": 0.6, "negative": 0.2})
    # one signed direction missing: it gets all of the rest
    assert sentiment_weights(_items(negative=3, neutral=1), 0.5) == pytest.approx({"neutral": 0.25, "negative": 0.75})
    assert sentiment_weights(_items(positive=4), 0.25) == pytest.approx({"positive": 1.0})


def test_sentiment_weights_need_directions():
    with pytest.raises(ConfigError, match="--positive-share"):
        sentiment_weights([TrainItem("t", 0, 1, "race", "stereotype", "x", "intersentence")])


@pytest.mark.parametrize("share", [-0.1, 1.01, 1.5])
def test_train_config_rejects_share_out_of_range(share):
    with pytest.raises(ConfigError, match="--positive-share"):
        TrainConfig(positive_share=share)


def test_ss_by_sentiment_by_hand():
    pos = _ex("Her mommy is very caring.", "Her mommy is very standoffish.")
    neg = _ex("He is a criminal.", "He is a lawyer.", "intersentence")
    pos2 = StereoExample("y", "intrasentence", "race", "x", "They are BLANK.",
                         (StereoSentence("ya", "They are nasty.", "anti-stereotype"),
                          StereoSentence("yu", "They are fish.", "unrelated"),
                          StereoSentence("ys", "They are lovely.", "stereotype")))
    # the stereotype wins in both positive pairs, loses in the negative one
    scores = {"s": 0.6, "a": 0.5, "u": 0.1, "ys": 0.9, "ya": 0.2, "yu": 0.1}
    neg_scores = {**scores, "s": 0.4}
    got = ss_by_sentiment([pos, pos2], scores)
    assert got["gender"] == {"positive": {"Count": 1, "SS": 100.0}}
    assert got["race"] == {"positive": {"Count": 1, "SS": 100.0}}
    assert got["all"] == {"positive": {"Count": 2, "SS": 100.0}}
    assert ss_by_sentiment([neg], neg_scores) == {"gender": {"negative": {"Count": 1, "SS": 0.0}},
                                                  "all": {"negative": {"Count": 1, "SS": 0.0}}}
