"""CrowS-Pairs metric pinned against hand-computed percentages."""

from __future__ import annotations

import pytest

from biasunlearn.data.crows_pairs import CrowsPair
from biasunlearn.metrics.crows_pairs import crows_pairs_results, prefers_stereotype


def pair(index, direction, bias_type="gender"):
    return CrowsPair(index=index, sent_more=f"more {index}", sent_less=f"less {index}",
                     direction=direction, bias_type=bias_type)


@pytest.mark.parametrize(
    ("direction", "more", "less", "expected"),
    [
        ("stereo", 0.6, 0.4, True),  # stereotypical sentence is sent_more, and it wins
        ("stereo", 0.4, 0.6, False),
        ("antistereo", 0.4, 0.6, True),  # stereotypical sentence is sent_less, and it wins
        ("antistereo", 0.6, 0.4, False),
        ("stereo", 0.5, 0.5, False),  # ties never prefer the stereotype
        ("antistereo", 0.5, 0.5, False),
    ],
)
def test_prefers_stereotype(direction, more, less, expected):
    assert prefers_stereotype(pair(0, direction), more, less) is expected


def _data():
    # Indices are not contiguous and not in file order: scores are looked up by pair.index.
    pairs = [
        pair(10, "stereo", "gender"),  # more > less -> stereotypical
        pair(3, "stereo", "gender"),  # less > more -> not
        pair(7, "antistereo", "gender"),  # less > more -> stereotypical (sent_less is the stereotype)
        pair(42, "antistereo", "gender"),  # more > less -> not
        pair(5, "stereo", "gender"),  # tie -> neutral
        pair(6, "antistereo", "gender"),  # tie -> neutral
        pair(100, "stereo", "race-color"),  # more > less -> stereotypical
        pair(101, "antistereo", "race-color"),  # less > more -> stereotypical
        pair(0, "antistereo", "race-color"),  # less > more -> stereotypical
        pair(8, "antistereo", "religion"),  # more > less -> not
    ]
    scores = {
        10: (-1.0, -2.0),
        3: (-3.0, -1.5),
        7: (-4.0, -2.5),
        42: (-0.5, -0.75),
        5: (-2.0, -2.0),
        6: (-1.25, -1.25),
        100: (0.3, 0.2),
        101: (0.1, 0.9),
        0: (0.05, 0.5),
        8: (0.9, 0.1),
    }
    return pairs, scores


def test_crows_pairs_results_hand_computed():
    pairs, scores = _data()
    res = crows_pairs_results(pairs, scores)
    # Bias types sorted alphabetically, "overall" last.
    assert list(res) == ["gender", "race-color", "religion", "overall"]
    # gender: 6 pairs, stereotypical: idx 10 and 7 -> 2; ties: idx 5 and 6 -> SS = 100 * 2/6 = 33.33
    assert res["gender"]["Count"] == 6
    assert res["gender"]["SS"] == pytest.approx(100 * 2 / 6)
    assert res["gender"]["neutral"] == 2
    # race-color: 3 pairs, all stereotypical -> 100
    assert res["race-color"] == {"Count": 3, "SS": pytest.approx(100.0), "neutral": 0}
    # religion: 1 antistereo pair preferring sent_more -> 0
    assert res["religion"] == {"Count": 1, "SS": pytest.approx(0.0), "neutral": 0}
    # overall: 10 pairs, 2 + 3 + 0 = 5 stereotypical -> 50; ties 2
    assert res["overall"] == {"Count": 10, "SS": pytest.approx(50.0), "neutral": 2}


def test_direction_matters():
    # If the direction were ignored (always "sent_more wins"), gender would be 100 * 2/6 as well but
    # race-color would be 100 * 1/3 and religion 100: check the antistereo-only groups.
    pairs, scores = _data()
    naive = sum(scores[p.index][0] > scores[p.index][1] for p in pairs if p.bias_type == "race-color")
    assert naive == 1
    res = crows_pairs_results(pairs, scores)
    assert res["race-color"]["SS"] == pytest.approx(100.0)
    # Flipping every direction flips every non-tied decision.
    flipped = [CrowsPair(p.index, p.sent_more, p.sent_less,
                         "antistereo" if p.direction == "stereo" else "stereo", p.bias_type) for p in pairs]
    res_f = crows_pairs_results(flipped, scores)
    # gender: 6 pairs, 2 ties, 2 stereotypical before -> 6 - 2 - 2 = 2 now; race-color 0; religion 1
    assert res_f["gender"]["SS"] == pytest.approx(100 * 2 / 6)
    assert res_f["race-color"]["SS"] == pytest.approx(0.0)
    assert res_f["religion"]["SS"] == pytest.approx(100.0)
    # overall: 2 + 0 + 1 = 3 of 10
    assert res_f["overall"]["SS"] == pytest.approx(30.0)
    assert res_f["overall"]["neutral"] == 2


def test_all_ties_are_neutral_not_stereotypical():
    pairs = [pair(i, d) for i, d in enumerate(["stereo", "antistereo", "stereo", "antistereo"])]
    scores = {i: (-1.0, -1.0) for i in range(4)}
    res = crows_pairs_results(pairs, scores)
    assert res["gender"] == {"Count": 4, "SS": 0.0, "neutral": 4}
    assert res["overall"] == {"Count": 4, "SS": 0.0, "neutral": 4}


def test_ties_count_in_total():
    # 1 stereotypical, 1 tie, 2 anti: SS = 100 * 1/4 = 25 (not 100 * 1/3 = 33.3 as if ties were dropped)
    pairs = [pair(0, "stereo"), pair(1, "stereo"), pair(2, "stereo"), pair(3, "antistereo")]
    scores = {0: (0.9, 0.1), 1: (0.5, 0.5), 2: (0.1, 0.9), 3: (0.9, 0.1)}
    res = crows_pairs_results(pairs, scores)
    assert res["overall"] == {"Count": 4, "SS": pytest.approx(25.0), "neutral": 1}


def test_single_bias_type_overall_equals_group():
    pairs = [pair(i, "stereo", "age") for i in range(3)]
    scores = {0: (0.9, 0.1), 1: (0.9, 0.1), 2: (0.1, 0.9)}
    res = crows_pairs_results(pairs, scores)
    assert list(res) == ["age", "overall"]
    assert res["age"] == res["overall"] == {"Count": 3, "SS": pytest.approx(200 / 3), "neutral": 0}


def test_missing_score_raises():
    with pytest.raises(KeyError):
        crows_pairs_results([pair(1, "stereo")], {0: (0.1, 0.2)})
