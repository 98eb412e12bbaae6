"""Resumable scoring: a long evaluation keeps its finished sentence scores and continues after a kill.

Decoding-time baselines (Self-Debias, CAFIE) score a few sentences per second on a small CPU, so one
evaluation of the full report split takes hours. :class:`ResumableScorer` wraps a scoring function
(``score_fn(model, tokenizer, requests, cfg, desc)``) and scores the requests in chunks (whole groups,
so grouped candidates still share their context). After each chunk it writes every score so far to
``<folder>/<desc>-<key>.json`` atomically. The key is the sha256 of a *fingerprint* (model and adapter
checksums, method, scoring options, package version: whatever decides the scores) and of the requests
themselves; a later run with the same fingerprint and requests reads the file and scores only what is
left, while any other file is ignored. :func:`biasunlearn.evaluation.evaluate` uses it whenever it
writes results, in ``<out>/partial/``, and removes that folder once ``results.json`` is written.

Chunking changes how requests are batched, which can move a score by float rounding (the CLI test
compares a resumed evaluation with an uninterrupted one to 1e-5).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from biasunlearn.scoring import Request, ScoringConfig, SequenceLogProbs
from biasunlearn.utils import atomic_write_json

log = logging.getLogger(__name__)

ScoreFn = Callable[[Any, Any, list[Request], ScoringConfig, str], SequenceLogProbs]

#: Requests per chunk: a few minutes of Self-Debias scoring on a 2-core CPU, a few seconds of plain scoring.
DEFAULT_CHUNK = 256


def requests_digest(requests: Sequence[Request]) -> str:
    """sha256 of the requests' texts, scored offsets, groups (as text) and skipped spans, in order."""
    h = hashlib.sha256()
    for r in requests:
        item: list[Any] = [r.text, r.score_from, None if r.group is None else str(r.group)]
        if r.skip:  # only when set, so that digests of requests without skipped spans stay as they were
            item.append([list(s) for s in r.skip])
        h.update(json.dumps(item).encode())
    return h.hexdigest()


def chunk_bounds(requests: Sequence[Request], size: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of about ``size`` requests that never split a run of one group."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    bounds: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(requests) + 1):
        at_end = i == len(requests)
        boundary = at_end or requests[i].group is None or requests[i].group != requests[i - 1].group
        if boundary and (at_end or i - start >= size):
            bounds.append((start, i))
            start = i
    return bounds


class ResumableScorer:
    """A ``score_fn`` that checkpoints its scores in ``folder`` (see the module docstring).

    Args:
        score_fn: the scoring function to wrap.
        folder: where the partial score files go.
        fingerprint: JSON-serialisable description of everything that decides the scores.
        chunk: requests per chunk (default :data:`DEFAULT_CHUNK`).
    """

    def __init__(self, score_fn: ScoreFn, folder: str | Path, fingerprint: Any, chunk: int | None = None) -> None:
        self.score_fn = score_fn
        self.folder = Path(folder)
        self.fingerprint = json.dumps(fingerprint, sort_keys=True, default=str)
        self.chunk = chunk or DEFAULT_CHUNK
        self.reused = 0  # requests taken from partial files so far (their scoring time is not in this run's)

    def path_for(self, requests: Sequence[Request], desc: str) -> Path:
        key = hashlib.sha256((self.fingerprint + requests_digest(requests)).encode()).hexdigest()[:16]
        slug = re.sub(r"[^A-Za-z0-9]+", "_", desc).strip("_").lower() or "scores"
        return self.folder / f"{slug}-{key}.json"

    def _load(self, path: Path, n: int) -> tuple[int, np.ndarray, np.ndarray]:
        empty = (0, np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.int64))
        if not path.is_file():
            return empty
        try:
            state = json.loads(path.read_text())
            done = int(state["done"])
            sums = np.asarray(state["sum_logprob"], dtype=np.float64)
            counts = np.asarray(state["n_tokens"], dtype=np.int64)
            if state["fingerprint"] != self.fingerprint or len(sums) != n or len(counts) != n or not 0 <= done <= n:
                raise ValueError("it belongs to other requests or options")
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring the partial scores in %s (%s); scoring from the start", path, e)
            return empty
        return done, sums, counts

    def __call__(self, model, tokenizer, requests: list[Request], cfg: ScoringConfig, desc: str) -> SequenceLogProbs:
        n = len(requests)
        path = self.path_for(requests, desc)
        done, sums, counts = self._load(path, n)
        if done:
            log.info("%s: resuming from %s (%d of %d requests already scored)", desc, path, done, n)
            self.reused += done
        for start, end in chunk_bounds(requests, self.chunk):
            if end <= done:
                continue
            part = self.score_fn(model, tokenizer, requests[start:end], cfg, f"{desc} {start}-{end}/{n}")
            sums[start:end] = part.sum_logprob
            counts[start:end] = part.n_tokens
            done = end
            atomic_write_json(path, {"fingerprint": self.fingerprint, "done": done, "n_requests": n,
                                     "sum_logprob": sums.tolist(), "n_tokens": counts.tolist()})
        return SequenceLogProbs(sums, counts)
