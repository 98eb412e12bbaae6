"""DPO preference pairs: prompt / chosen / rejected of both StereoSet tasks."""

from __future__ import annotations

from biasunlearn.baselines.dpo import preference_pair, preference_pairs
from biasunlearn.data.stereoset import StereoExample, StereoSentence


def _ex(task, context, s, a, u, ex_id="e1"):
    sents = tuple(StereoSentence(f"{ex_id}-{lab}", text, lab) for lab, text in
                  (("stereotype", s), ("anti-stereotype", a), ("unrelated", u)))
    return StereoExample(id=ex_id, task=task, bias_type="gender", target="mother", context=context, sentences=sents)


def test_intersentence_pair():
    ex = _ex("intersentence", "My mother is home.", "She cooks.", "She codes.", "Cats fly.")
    assert preference_pair(ex) == {"prompt": "My mother is home.", "chosen": " She codes.", "rejected": " She cooks."}


def test_intrasentence_pair_moves_the_space_into_the_completion():
    ex = _ex("intrasentence", "The mother is BLANK at home.", "The mother is caring at home.",
             "The mother is cold at home.", "The mother is pencil at home.")
    assert preference_pair(ex) == {"prompt": "The mother is", "chosen": " cold at home.",
                                   "rejected": " caring at home."}


def test_pairs_skip_examples_that_differ_before_the_blank():
    bad = _ex("intrasentence", "The mother is BLANK.", "The mother is caring.", "A mother is cold.", "x", "e2")
    good = _ex("intersentence", "Hi.", "S.", "A.", "U.", "e3")
    assert preference_pair(bad) is None
    assert preference_pairs([bad, good], ("intrasentence", "intersentence")) == [preference_pair(good)]
    assert preference_pairs([bad, good], ("intrasentence",)) == []
