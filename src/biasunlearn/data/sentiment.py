"""Sentiment direction of StereoSet examples: is the stereotype the more positive or the more negative
sentence of its pair?

Many StereoSet pairs differ in sentiment as well as in stereotype: ``"Her mommy is very caring."`` (the
stereotype) against ``"Her mommy is very standoffish."``, or ``"He is a criminal."`` against ``"He is a
lawyer."``. A model can lower SS on the second kind by preferring pleasant sentences, without learning
anything about the stereotype, and it then *raises* (or keeps) SS on the first kind. This module sorts
examples by that direction so that the confound can be measured (``scripts/stereoset_sentiment.py``) and
reweighted during training (``--positive-share``).

Valence is VADER's compound score (Hutto & Gilbert 2014; the ``vaderSentiment`` package, MIT licence, a
rule-based lexicon, so it needs no model and no download). For intrasentence examples the two sentences
differ only in the filled-in words; for intersentence examples the two candidate sentences are compared
(the context is the same for both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache

from biasunlearn.data.stereoset import StereoExample
from biasunlearn.errors import ConfigError

#: the stereotype is the more positive sentence / the more negative one / the two are within the margin
DIRECTIONS = ("positive", "negative", "neutral")
MARGIN = 0.05  # compound-score difference below which a pair counts as neutral (VADER's own neutral band)


@lru_cache(maxsize=1)
def _analyzer() -> Callable[[str], float]:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError("sentiment directions (--positive-share, scripts/stereoset_sentiment.py) need the "
                          "vaderSentiment package: pip install vaderSentiment") from e
    analyzer = SentimentIntensityAnalyzer()
    return lambda text: float(analyzer.polarity_scores(text)["compound"])


@lru_cache(maxsize=1 << 16)
def valence(text: str) -> float:
    """VADER compound score of ``text``, in [-1, 1] (negative to positive); cached per text, so that
    grouping the same examples twice (per bias type, then per target) scores each sentence once."""
    return _analyzer()(text)


def direction_of(stereotype: str, anti_stereotype: str, margin: float = MARGIN) -> str:
    """``positive`` when ``valence(stereotype) - valence(anti_stereotype) > margin``, ``negative`` when it
    is below ``-margin``, else ``neutral``."""
    d = valence(stereotype) - valence(anti_stereotype)
    return "positive" if d > margin else ("negative" if d < -margin else "neutral")


def sentiment_direction(ex: StereoExample, margin: float = MARGIN) -> str:
    """The sentiment direction of an example's stereotype against its anti-stereotype (:data:`DIRECTIONS`)."""
    return direction_of(ex.by_label("stereotype").text, ex.by_label("anti-stereotype").text, margin)


def available() -> bool:
    """Whether the sentiment lexicon (vaderSentiment) is installed."""
    try:
        _analyzer()
    except ConfigError:
        return False
    return True


def group_by_direction(examples: Iterable[StereoExample], targets_of: str = ""
                       ) -> dict[tuple[str, str], list[StereoExample]]:
    """``(group, direction) -> examples``; the groups are each bias type and ``"all"``, or, with
    ``targets_of``, the targets of that bias type."""
    out: dict[tuple[str, str], list[StereoExample]] = {}
    for ex in examples:
        d = sentiment_direction(ex)
        groups = ((ex.target,) if ex.bias_type == targets_of else ()) if targets_of else (ex.bias_type, "all")
        for group in groups:
            out.setdefault((group, d), []).append(ex)
    return out
