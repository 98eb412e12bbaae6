"""The control signal: dynamic dataset swapping, early stopping and best-checkpoint selection.

Every ``every`` steps the policy scores the control split (held out of train). Two signals are offered:

* ``ss`` (the paper's rule): SS per bias type; a type whose SS falls below 50 has its forget and retain
  sets swapped (and swapped back once its SS is above 50 again); training stops once every type's SS is
  within ``threshold`` (default 2) of 50. With 50 control examples per type, SS has a binomial sampling
  error of about ±7 points (``100·sqrt(0.25/50)``), so this rule mostly follows noise.
* ``gap``: per type, the mean over control examples of ``mean_logprob(stereotype) −
  mean_logprob(anti-stereotype)`` with its standard error ``se``: a continuous statistic that moves with
  every step. A type is *reversed* when ``gap < −z·se``, *stereotypical* when ``gap > z·se``, and
  *balanced* in between; swapping and stopping use those states.

Optionally (``rest_balanced``) a balanced type *rests*: it is not drawn for forget and retain until it
leaves the tolerance again, so the step budget goes to the types that still need it (the bias types
move at very different speeds under the same updates).

Alongside, the control ICAT (SS and LMS over all control examples) picks the best checkpoint: the
adapter weights of the best reading are kept and restored at the end when ``keep_best`` is on.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from biasunlearn.benchmarks import stereoset_requests
from biasunlearn.data.stereoset import BIAS_TYPES, StereoExample
from biasunlearn.errors import ConfigError
from biasunlearn.methods.data import SwapState
from biasunlearn.metrics.stereoset import evaluate_group
from biasunlearn.scoring import ScoringConfig, sequence_logprobs

log = logging.getLogger(__name__)

SIGNALS = ("ss", "gap")


@dataclass
class ControlConfig:
    signal: str = "gap"
    every: int = 10
    threshold: float = 2.0  # SS points, for signal "ss"
    z: float = 1.0  # tolerance in standard errors, for signal "gap"
    swapping: bool = True
    rest_balanced: bool = False
    early_stop: bool = True
    keep_best: bool = True

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ConfigError(f"--control-signal: expected one of {', '.join(SIGNALS)}, got {self.signal!r}")
        if self.every < 1:
            raise ConfigError(f"--control-every must be >= 1, got {self.every}")


def control_reading(model, tokenizer, examples: list[StereoExample], scoring: ScoringConfig) -> dict[str, Any]:
    """SS, LMS, ICAT and the stereotype-minus-anti log-probability gap (with its s.e.) per bias type."""
    reqs, ids = stereoset_requests(examples)
    lp = sequence_logprobs(model, tokenizer, reqs, scoring, desc="control")
    geo = dict(zip(ids, lp.scores("geometric_mean").tolist(), strict=True))
    mean = dict(zip(ids, lp.scores("mean_logprob").tolist(), strict=True))
    out: dict[str, Any] = {"types": {}}
    for t in BIAS_TYPES:
        exs = [e for e in examples if e.bias_type == t]
        if not exs:
            continue
        m = evaluate_group(exs, geo)
        gaps = np.array([mean[e.by_label("stereotype").id] - mean[e.by_label("anti-stereotype").id] for e in exs])
        se = float(gaps.std(ddof=1) / math.sqrt(len(gaps))) if len(gaps) > 1 else float("inf")
        out["types"][t] = {"SS": m["SS"], "LMS": m["LMS"], "gap": float(gaps.mean()), "gap_se": se, "n": len(exs)}
    overall = evaluate_group(examples, geo)
    out.update({"SS": overall["SS"], "LMS": overall["LMS"], "ICAT": overall["ICAT"]})
    return out


def type_state(reading: dict[str, float], cfg: ControlConfig) -> str:
    """``reversed``, ``balanced`` or ``stereotypical`` for one type's reading."""
    if cfg.signal == "ss":
        if abs(reading["SS"] - 50.0) <= cfg.threshold:
            return "balanced"
        return "reversed" if reading["SS"] < 50.0 else "stereotypical"
    tol = cfg.z * reading["gap_se"]
    if abs(reading["gap"]) <= tol:
        return "balanced"
    return "reversed" if reading["gap"] < 0 else "stereotypical"


def update_swaps(swap: SwapState, states: dict[str, str], cfg: ControlConfig) -> list[str]:
    """Swap reversed types and swap back those that turned stereotypical again; returns changed types.

    With ``cfg.rest_balanced`` a balanced type also *rests* (is not drawn for forget and retain) until
    a later reading finds it outside the tolerance again.
    """
    changed = []
    if cfg.rest_balanced:
        for t, s in states.items():
            swap.resting[t] = s == "balanced"
    if not cfg.swapping:
        return changed
    for t, s in states.items():
        want = swap.is_swapped(t)
        if s == "reversed":
            want = True
        elif s == "stereotypical":
            want = False
        if want != swap.is_swapped(t):
            swap.swapped[t] = want
            changed.append(t)
    return changed


def _lora_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.named_parameters() if v.requires_grad}


class ControlCallback(TrainerCallback):
    """Reads the control signal every ``cfg.every`` steps; swaps, stops and remembers the best weights."""

    def __init__(self, tokenizer, examples: list[StereoExample], cfg: ControlConfig, swap: SwapState,
                 scoring: ScoringConfig | None = None, history: list[dict[str, Any]] | None = None) -> None:
        self.tokenizer = tokenizer
        self.examples = examples
        self.cfg = cfg
        self.swap = swap
        self.scoring = scoring or ScoringConfig(progress=False)
        self.history: list[dict[str, Any]] = history if history is not None else []
        self.best: dict[str, Any] | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None

    def _read(self, model, step: int, trainer_control) -> None:
        t0 = time.time()
        was_training = model.training
        model.eval()
        with torch.no_grad():
            reading = control_reading(model, self.tokenizer, self.examples, self.scoring)
        if was_training:
            model.train()
        states = {t: type_state(r, self.cfg) for t, r in reading["types"].items()}
        changed = update_swaps(self.swap, states, self.cfg)
        rec = {"step": step, **reading, "states": states, "swapped": dict(self.swap.swapped),
               "resting": dict(self.swap.resting), "changed": changed,
               "seconds": round(time.time() - t0, 2)}
        self.history.append(rec)
        log.info("control step %d: ICAT %.2f SS %.2f LMS %.2f | %s%s", step, reading["ICAT"], reading["SS"],
                 reading["LMS"],
                 ", ".join(f"{t} SS {r['SS']:.1f} gap {r['gap']:+.3f}±{r['gap_se']:.3f} {states[t]}"
                           for t, r in reading["types"].items()),
                 f" | swapped: {', '.join(changed)}" if changed else "")
        if self.best is None or reading["ICAT"] > self.best["ICAT"]:
            self.best = {"step": step, "ICAT": reading["ICAT"], "SS": reading["SS"], "LMS": reading["LMS"]}
            if self.cfg.keep_best:
                self.best_weights = _lora_state(model)
        if self.cfg.early_stop and step > 0 and all(s == "balanced" for s in states.values()):
            log.info("control step %d: every bias type is balanced; stopping", step)
            rec["stop"] = True
            trainer_control.should_training_stop = True

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.history or self.history[-1]["step"] != state.global_step:
            self._read(model, state.global_step, control)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.cfg.every == 0:
            self._read(model, state.global_step, control)

    def restore_best(self, model) -> dict[str, Any] | None:
        """Load the best reading's adapter weights back into ``model`` (when kept)."""
        if not (self.cfg.keep_best and self.best_weights):
            return None
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in self.best_weights.items():
                params[k].copy_(v.to(params[k].device))
        log.info("restored the adapter of control step %d (ICAT %.2f)", self.best["step"], self.best["ICAT"])
        return self.best
