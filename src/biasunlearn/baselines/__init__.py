"""Decoding-time debiasing baselines: they change the next-token distribution, not the weights.

Each baseline is a class built as ``cls(model, tokenizer, ...)`` with

* ``sequence_logprobs(requests, cfg) -> SequenceLogProbs``: sentence log-probabilities under the
  adjusted next-token distribution, with the semantics of :func:`biasunlearn.scoring.sequence_logprobs`
  (the start token, then the text; tokens ending after ``score_from`` are scored), so the bias
  benchmarks can score with it;
* ``logits_processor(start_token="")``: a ``transformers.LogitsProcessor`` for ``model.generate``.

Registered in :data:`DECODING_BASELINES`:

* ``self_debias``: :class:`~biasunlearn.baselines.self_debias.SelfDebias` (Schick et al. 2021, with the
  bias prefixes of Meade et al. 2022);
* ``cafie``: :class:`~biasunlearn.baselines.cafie.CAFIE` (Banerjee et al. 2024: the combination of the
  authors' code, tanh weights per token and norm weights per counterfactual, λ = 1000, α = 0.99), built
  on the counterfactual word lists in ``wordlists/`` (format in :mod:`biasunlearn.baselines.cafie`:
  one group of counterpart words per line, separated by ``" | "``, e.g. ``he | she``).
"""

from __future__ import annotations

from biasunlearn.baselines.cafie import CAFIE, CAFIELogitsProcessor, cafie_logprobs
from biasunlearn.baselines.self_debias import (
    DEBIASING_PREFIXES,
    SelfDebias,
    SelfDebiasLogitsProcessor,
    self_debias_logprobs,
)
from biasunlearn.registry import Registry

DECODING_BASELINES: Registry[type] = Registry("decoding-time method", "--method")
DECODING_BASELINES.register("self_debias")(SelfDebias)
DECODING_BASELINES.register("cafie")(CAFIE)

__all__ = [
    "CAFIE",
    "DEBIASING_PREFIXES",
    "DECODING_BASELINES",
    "CAFIELogitsProcessor",
    "SelfDebias",
    "SelfDebiasLogitsProcessor",
    "cafie_logprobs",
    "self_debias_logprobs",
]
