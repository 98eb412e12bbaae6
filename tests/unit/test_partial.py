"""Resumable scoring (biasunlearn.partial): chunking by groups, checkpoint files, resume and invalidation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from biasunlearn.partial import ResumableScorer, chunk_bounds, requests_digest
from biasunlearn.scoring import Request, ScoringConfig, SequenceLogProbs

REQS = [Request("a"), Request("b", group=1), Request("c", group=1), Request("d", group=1), Request("e"),
        Request("f", group=2), Request("g", group=2)]


def test_chunk_bounds_keep_groups_whole():
    assert chunk_bounds(REQS, 1) == [(0, 1), (1, 4), (4, 5), (5, 7)]
    assert chunk_bounds(REQS, 2) == [(0, 4), (4, 7)]
    assert chunk_bounds(REQS, 100) == [(0, 7)]
    assert chunk_bounds([], 3) == []
    with pytest.raises(ValueError):
        chunk_bounds(REQS, 0)


def test_requests_digest_sees_text_offset_and_group():
    base = requests_digest(REQS)
    assert requests_digest(list(REQS)) == base
    assert requests_digest([Request("a", 1), *REQS[1:]]) != base
    assert requests_digest([Request("a", group=9), *REQS[1:]]) != base
    assert requests_digest([Request("z"), *REQS[1:]]) != base
    assert requests_digest([Request(REQS[0].text, REQS[0].score_from, REQS[0].group, ((0, 1),)), *REQS[1:]]) != base


class Fake:
    """A scoring function: score = -(position of the first letter in the alphabet); interrupted after
    ``fail_after`` calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_after = fail_after

    def __call__(self, _m, _t, reqs, _cfg, _desc) -> SequenceLogProbs:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt
        self.calls.append([r.text for r in reqs])
        return SequenceLogProbs(np.array([-(ord(r.text[0]) - 96.0) for r in reqs]), np.array([1] * len(reqs)))


def test_resume_scores_only_what_is_left_and_gives_the_same_scores(tmp_path):
    cfg = ScoringConfig()
    want = Fake()(None, None, REQS, cfg, "")
    killed = Fake(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        ResumableScorer(killed, tmp_path, {"m": 1}, chunk=1)(None, None, REQS, cfg, "StereoSet")
    (path,) = tmp_path.glob("stereoset-*.json")
    assert json.loads(path.read_text())["done"] == 4  # two chunks: [a] and [b, c, d]
    again = Fake()
    got = ResumableScorer(again, tmp_path, {"m": 1}, chunk=1)(None, None, REQS, cfg, "StereoSet")
    assert again.calls == [["e"], ["f", "g"]]
    np.testing.assert_array_equal(got.sum_logprob, want.sum_logprob)
    np.testing.assert_array_equal(got.n_tokens, want.n_tokens)


def test_other_fingerprint_requests_or_a_broken_file_start_over(tmp_path, caplog):
    cfg = ScoringConfig()
    ResumableScorer(Fake(), tmp_path, {"m": 1}, chunk=2)(None, None, REQS, cfg, "x")
    other = Fake()
    ResumableScorer(other, tmp_path, {"m": 2}, chunk=2)(None, None, REQS, cfg, "x")
    assert len(other.calls) == 2  # another fingerprint: another file, everything scored
    fewer = Fake()
    ResumableScorer(fewer, tmp_path, {"m": 1}, chunk=2)(None, None, REQS[:5], cfg, "x")
    assert len(fewer.calls) == 2
    scorer = ResumableScorer(Fake(), tmp_path, {"m": 1}, chunk=2)
    path = scorer.path_for(REQS, "x")
    path.write_text("{not json")
    fresh = Fake()
    scorer.score_fn = fresh
    got = scorer(None, None, REQS, cfg, "x")
    assert len(fresh.calls) == 2 and "ignoring the partial scores" in caplog.text
    assert got.sum_logprob.tolist() == [-1, -2, -3, -4, -5, -6, -7]
    # a file whose fingerprint was edited is not trusted either
    state = json.loads(path.read_text())
    state["fingerprint"] = "{}"
    path.write_text(json.dumps(state))
    refused = Fake()
    scorer.score_fn = refused
    scorer(None, None, REQS, cfg, "x")
    assert len(refused.calls) == 2
