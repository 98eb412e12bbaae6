"""Bias benchmarks: each turns data into scoring requests and scores into metrics.

A benchmark is registered in :data:`BENCHMARKS` under its name; it receives the loaded model and
tokenizer and an :class:`EvalContext`, and returns a :class:`BenchmarkResult`. Scoring is shared
(:mod:`biasunlearn.scoring`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biasunlearn.data import sentiment
from biasunlearn.data.bbq import BBQExample, bbq_categories, load_bbq
from biasunlearn.data.crows_pairs import load_crows_pairs, modified_spans
from biasunlearn.data.paths import (
    BBQ_METADATA,
    CROWS_PAIRS,
    STEREOSET_DEV,
    STEREOSET_TEST,
    data_file,
    dataset_checksums,
)
from biasunlearn.data.splits import split_by_name
from biasunlearn.data.stereoset import StereoExample
from biasunlearn.errors import ConfigError
from biasunlearn.metrics.bbq import bbq_results, choose_answer
from biasunlearn.metrics.crows_pairs import crows_pairs_results
from biasunlearn.metrics.stereoset import predictions_file, ss_by_sentiment, stereoset_results
from biasunlearn.registry import Registry
from biasunlearn.scoring import Request, ScoringConfig, SequenceLogProbs, sequence_logprobs

log = logging.getLogger(__name__)


def _plain_scores(model, tokenizer, requests: list[Request], cfg: ScoringConfig, desc: str) -> SequenceLogProbs:
    return sequence_logprobs(model, tokenizer, requests, cfg, desc=desc)


@dataclass
class EvalContext:
    """What every benchmark gets besides the model: data, options, and the scoring function.

    ``score_fn(model, tokenizer, requests, cfg, desc)`` is plain scoring by default; a decoding-time
    baseline (``eval --method self_debias``) replaces it with its adjusted probabilities.
    """

    data_dir: Path
    scoring: ScoringConfig
    split: str = "report"
    limit: int = 0
    bias_types: tuple[str, ...] = ()
    seed: int = 0
    control_per_type: int = 150
    control_by: str = "target"
    bbq_mode: str = "likelihood"
    score_fn: Callable[..., SequenceLogProbs] = _plain_scores


@dataclass
class BenchmarkResult:
    metrics: dict[str, Any]
    data_files: dict[str, str]  # relpath -> sha256
    n_items: int
    predictions: dict[str, Any] | None = None  # written as <benchmark>_predictions.json
    extra: dict[str, Any] = field(default_factory=dict)


BenchmarkFn = Callable[[Any, Any, EvalContext], BenchmarkResult]
BENCHMARKS: Registry[BenchmarkFn] = Registry("benchmark", "--benchmarks")


def stereoset_requests(examples: list[StereoExample]) -> tuple[list[Request], list[str]]:
    """Requests for every sentence (intersentence candidates conditioned on their context)."""
    reqs, ids = [], []
    for ex in examples:
        for s in ex.sentences:
            if ex.task == "intersentence":
                reqs.append(Request(f"{ex.context} {s.text}", len(ex.context) + 1, group=ex.id))
            else:
                reqs.append(Request(s.text, 0, group=ex.id))
            ids.append(s.id)
    return reqs, ids


def limit_per(items: list, key: Callable[[Any], Any], limit: int) -> list:
    """The first ``limit`` items of each group ``key(item)``, in order (all when ``limit`` is 0)."""
    if not limit:
        return items
    seen: dict[Any, int] = {}
    out = []
    for item in items:
        k = key(item)
        if seen.get(k, 0) < limit:
            seen[k] = seen.get(k, 0) + 1
            out.append(item)
    return out


def limit_per_task(examples: list[StereoExample], limit: int) -> list[StereoExample]:
    """The first ``limit`` examples of each StereoSet task (all when ``limit`` is 0)."""
    return limit_per(examples, lambda e: e.task, limit)


def score_stereoset(model, tokenizer, examples: list[StereoExample], cfg: ScoringConfig,
                    score_fn: Callable[..., SequenceLogProbs] = _plain_scores) -> dict[str, float]:
    """Sentence id -> score for every sentence of ``examples``."""
    reqs, ids = stereoset_requests(examples)
    scores = score_fn(model, tokenizer, reqs, cfg, "StereoSet").scores(cfg.score_method)
    return dict(zip(ids, scores.tolist(), strict=True))


@BENCHMARKS.register("stereoset")
def run_stereoset(model, tokenizer, ctx: EvalContext) -> BenchmarkResult:
    examples = split_by_name(ctx.data_dir, ctx.split, seed=ctx.seed, control_per_type=ctx.control_per_type,
                             control_by=ctx.control_by)
    if ctx.bias_types:
        examples = [e for e in examples if e.bias_type in ctx.bias_types]
        if not examples:
            raise ConfigError(f"--bias-types: the StereoSet {ctx.split} split has no "
                              f"{', '.join(ctx.bias_types)} examples")
    examples = limit_per_task(examples, ctx.limit)
    log.info("StereoSet %s split: %d examples (%d sentences)", ctx.split, len(examples), 3 * len(examples))
    scores = score_stereoset(model, tokenizer, examples, ctx.scoring, ctx.score_fn)
    files = [STEREOSET_DEV] if ctx.split == "report" else [STEREOSET_TEST]
    extra: dict[str, Any] = {"gold_file": files[0]}
    if sentiment.available():
        extra["ss_by_sentiment"] = ss_by_sentiment(examples, scores)
    else:
        log.warning("vaderSentiment is not installed: results.json gets no StereoSet SS by sentiment direction")
    return BenchmarkResult(
        metrics=stereoset_results(examples, scores),
        data_files=dataset_checksums(ctx.data_dir, files),
        n_items=len(examples),
        predictions=predictions_file(examples, scores),
        extra=extra,
    )


def _crows_pairs(ctx: EvalContext, model, tokenizer, unmodified: bool) -> BenchmarkResult:
    pairs = load_crows_pairs(data_file(ctx.data_dir, CROWS_PAIRS))
    if ctx.limit:
        pairs = pairs[: ctx.limit]
    log.info("CrowS-Pairs%s: %d pairs", " (unmodified tokens)" if unmodified else "", len(pairs))
    reqs = []
    for p in pairs:
        skips = modified_spans(p.sent_more, p.sent_less) if unmodified else ((), ())
        reqs += [Request(t, 0, group=("crows", p.index), skip=k) for t, k in zip((p.sent_more, p.sent_less), skips,
                                                                                  strict=True)]
    desc = "CrowS-Pairs (unmodified)" if unmodified else "CrowS-Pairs"
    s = ctx.score_fn(model, tokenizer, reqs, ctx.scoring, desc).scores(ctx.scoring.score_method)
    scores = {p.index: (float(s[2 * i]), float(s[2 * i + 1])) for i, p in enumerate(pairs)}
    return BenchmarkResult(
        metrics=crows_pairs_results(pairs, scores),
        data_files=dataset_checksums(ctx.data_dir, [CROWS_PAIRS]),
        n_items=len(pairs),
        predictions={"pairs": [{"index": i, "sent_more": a, "sent_less": b} for i, (a, b) in scores.items()]},
    )


#: The two CrowS-Pairs benchmarks and how each scores a sentence (for tables and reports).
CROWS_SCORES = {
    "crows_pairs": "whole sentence",
    "crows_pairs_unmodified": "unmodified tokens (Nangia et al.)",
}


@BENCHMARKS.register("crows_pairs")
def run_crows_pairs(model, tokenizer, ctx: EvalContext) -> BenchmarkResult:
    """Each sentence scored whole (every token after the start token)."""
    return _crows_pairs(ctx, model, tokenizer, unmodified=False)


@BENCHMARKS.register("crows_pairs_unmodified")
def run_crows_pairs_unmodified(model, tokenizer, ctx: EvalContext) -> BenchmarkResult:
    """Nangia et al.'s score for a causal LM: only the tokens the two sentences share, each conditioned
    on everything before it (the modified words included); the modified words are not scored, so a
    shift in how likely a group's own words are does not move the metric
    (:func:`biasunlearn.data.crows_pairs.modified_spans`)."""
    return _crows_pairs(ctx, model, tokenizer, unmodified=True)


# ---------------------------------------------------------------------------------------------------------
# BBQ (Parrish et al. 2022): multiple choice by the likelihood of each answer given context and question.
# ---------------------------------------------------------------------------------------------------------


def bbq_prompt(ex: BBQExample) -> str:
    """``"{context} {question} Answer:"``; each answer is scored as the continuation ``" " + answer``."""
    return f"{ex.context} {ex.question} Answer:"


def bbq_requests(examples: list[BBQExample]) -> list[Request]:
    """Three requests per example (one per answer, in order); they share the prompt as a prefix."""
    reqs = []
    for ex in examples:
        prompt = bbq_prompt(ex)
        reqs.extend(Request(f"{prompt} {ans}", len(prompt) + 1, group=(ex.category, ex.example_id))
                    for ans in ex.answers)
    return reqs


@BENCHMARKS.register("bbq")
def run_bbq(model, tokenizer, ctx: EvalContext) -> BenchmarkResult:
    """Every category present under ``bbq/data``; ``ctx.limit`` is per category, ``ctx.split`` is unused.

    ``ctx.bbq_mode="likelihood"``: the chosen answer is the one with the highest score under
    ``ctx.scoring.score_method``; ties go to the lowest index (:func:`biasunlearn.metrics.bbq.choose_answer`).
    ``"generate"``: the answer a chat model writes through its chat template
    (:mod:`biasunlearn.bbq_generate`). Metrics: :func:`bbq_results`.
    """
    categories = bbq_categories(ctx.data_dir)
    examples = limit_per(load_bbq(ctx.data_dir, categories), lambda e: e.category, ctx.limit)
    rows, choices = [], {}
    if ctx.bbq_mode == "generate":
        from biasunlearn.bbq_generate import generate_choices

        log.info("BBQ (generation): %d examples in %d categories", len(examples), len(categories))
        for ex, (choice, reply) in zip(examples, generate_choices(model, tokenizer, examples,
                                                                   progress=ctx.scoring.progress), strict=True):
            choices[ex.category, ex.example_id] = choice
            rows.append({"category": ex.category, "example_id": ex.example_id, "reply": reply, "choice": choice})
        prompt = "chat template: context, question, options A-C; reply parsed for the letter"
    else:
        log.info("BBQ: %d examples in %d categories (%d answers)", len(examples), len(categories),
                 3 * len(examples))
        s = ctx.score_fn(model, tokenizer, bbq_requests(examples), ctx.scoring, "BBQ").scores(
            ctx.scoring.score_method)
        for i, ex in enumerate(examples):
            scores = [float(x) for x in s[3 * i : 3 * i + 3]]
            choices[ex.category, ex.example_id] = choice = choose_answer(scores)
            rows.append({"category": ex.category, "example_id": ex.example_id, "scores": scores, "choice": choice})
        prompt = "{context} {question} Answer: {answer}"
    files = [f"bbq/data/{c}.jsonl" for c in categories] + [BBQ_METADATA]
    return BenchmarkResult(
        metrics=bbq_results(examples, choices),
        data_files=dataset_checksums(ctx.data_dir, files),
        n_items=len(examples),
        predictions={"examples": rows},
        extra={"mode": ctx.bbq_mode, "prompt": prompt},
    )


import biasunlearn.capability  # noqa: E402,F401  (registers the capability benchmarks)
