"""The control signal: dynamic dataset swapping, early stopping and best-checkpoint selection.

Every ``every`` steps the policy scores the control split (held out of train; by default whole
StereoSet targets, like the report split's unseen targets). Three signals are offered:

* ``ss`` (the paper's rule): SS per bias type; a type whose SS falls below 50 has its forget and retain
  sets swapped (and swapped back once its SS is above 50 again); training stops once every type's SS is
  within ``threshold`` (default 2) of 50. With 50 control examples per type, SS has a binomial sampling
  error of about ±7 points (``100·sqrt(0.25/50)``), so this rule mostly follows noise.
* ``soft_ss`` (the default): per type, ``100 · mean σ(d/τ)`` over the control examples, with ``d`` the
  difference of mean token log-probability between the stereotype and the anti-stereotype sentence and
  ``τ = tau`` (0.1). It is SS with the hard step replaced by a sigmoid: on the SS scale (50 = no
  preference), continuous (it moves with every update instead of in jumps of ``100/n``), and bounded
  per example, so a few sentences with huge log-probability differences cannot dominate it. Its
  standard error ``se`` comes from the per-example values. A type is *reversed* when
  ``soft_ss < 50 − z·se``, *stereotypical* when ``soft_ss > 50 + z·se``, *balanced* in between; training
  stops once every type is balanced **and** the soft SS over all control examples is within
  ``z·se_all`` of 50 (about ±1.8 points with 150 examples per type), on ``patience`` consecutive
  readings (default 1).
* ``gap``: the same states from the mean of ``d`` itself with its standard error. On the built-in
  model's report split the heavy tails of ``d`` make it a weaker test than SS (race: SS 56.7 is 5.9
  standard errors above 50, the mean gap only 3.6), which is why it is no longer the default.

Measured on the built-in model's report-split scores (4229 examples): distance from 50 in standard
errors, SS / mean gap / soft SS (τ = 0.1): gender 5.1 / 4.2 / 5.7, profession 6.8 / 5.6 / 7.1, race
5.9 / 3.6 / 5.9, religion 1.8 / 1.5 / 2.1.

Alongside, the control ICAT (SS and LMS over all control examples) picks the best checkpoint: the
adapter weights of the best reading are kept and restored at the end when ``keep_best`` is on.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from biasunlearn.benchmarks import stereoset_requests
from biasunlearn.data.stereoset import BIAS_TYPES, StereoExample
from biasunlearn.errors import ConfigError
from biasunlearn.methods.data import SwapState, group_key
from biasunlearn.metrics.stereoset import evaluate_group
from biasunlearn.scoring import ScoringConfig, sequence_logprobs

log = logging.getLogger(__name__)

SIGNALS = ("soft_ss", "ss", "gap")
ON_REVERSED = ("swap", "rest")
BEST_WEIGHTS_FILE = "biasunlearn_best.safetensors"  # in each checkpoint: the best reading's adapter weights


@dataclass
class ControlConfig:
    signal: str = "soft_ss"
    every: int = 10
    threshold: float = 2.0  # SS points, for signal "ss"
    z: float = 1.0  # tolerance in standard errors, for signals "soft_ss" and "gap"
    tau: float = 0.1  # temperature of signal "soft_ss" (nats of mean token log-probability)
    grouping: str = "type"  # control / swap groups: "type" or "type_task"
    swapping: bool = True
    on_reversed: str = "swap"  # "swap" (the paper's rule) or "rest" (stop drawing the type while reversed)
    rest_balanced: bool = False
    early_stop: bool = True
    keep_best: bool = True
    patience: int = 1  # consecutive all-balanced readings before stopping

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ConfigError(f"--control-signal: expected one of {', '.join(SIGNALS)}, got {self.signal!r}")
        if self.every < 1:
            raise ConfigError(f"--control-every must be >= 1, got {self.every}")
        if self.tau <= 0:
            raise ConfigError(f"--control-tau must be > 0, got {self.tau}")
        if self.patience < 1:
            raise ConfigError(f"--control-patience must be >= 1, got {self.patience}")
        if self.on_reversed not in ON_REVERSED:
            raise ConfigError(f"--on-reversed: expected one of {', '.join(ON_REVERSED)}, got {self.on_reversed!r}")


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    return float(x.mean()), (float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("inf"))


def soft_ss(gaps: np.ndarray, tau: float) -> tuple[float, float]:
    """``100·mean σ(d/τ)`` over the per-example gaps ``d`` and its standard error."""
    p = 100.0 / (1.0 + np.exp(-np.asarray(gaps, dtype=np.float64) / tau))
    return _mean_se(p)


def control_reading(model, tokenizer, examples: list[StereoExample], scoring: ScoringConfig,
                    tau: float = 0.1, grouping: str = "type") -> dict[str, Any]:
    """Per bias type and over all examples: SS, LMS, the stereotype-minus-anti log-probability gap and the
    soft SS, each continuous statistic with its standard error; ICAT over all examples."""
    reqs, ids = stereoset_requests(examples)
    lp = sequence_logprobs(model, tokenizer, reqs, scoring, desc="control")
    geo = dict(zip(ids, lp.scores("geometric_mean").tolist(), strict=True))
    mean = dict(zip(ids, lp.scores("mean_logprob").tolist(), strict=True))

    def stats(exs: list[StereoExample]) -> dict[str, float]:
        m = evaluate_group(exs, geo)
        gaps = np.array([mean[e.by_label("stereotype").id] - mean[e.by_label("anti-stereotype").id] for e in exs])
        gap, gap_se = _mean_se(gaps)
        soft, soft_se = soft_ss(gaps, tau)
        return {"SS": m["SS"], "LMS": m["LMS"], "ICAT": m["ICAT"], "gap": gap, "gap_se": gap_se, "soft_ss": soft,
                "soft_ss_se": soft_se, "n": len(exs)}

    out: dict[str, Any] = {"types": {}}
    groups: dict[str, list[StereoExample]] = {}
    for e in examples:
        groups.setdefault(group_key(e, grouping), []).append(e)
    for g in sorted(groups, key=lambda k: (BIAS_TYPES.index(k.split("/")[0]) if k.split("/")[0] in BIAS_TYPES
                                           else len(BIAS_TYPES), k)):
        out["types"][g] = stats(groups[g])
    out.update(stats(examples))
    return out


def type_state(reading: dict[str, float], cfg: ControlConfig) -> str:
    """``reversed``, ``balanced`` or ``stereotypical`` for one type's reading."""
    if cfg.signal == "ss":
        dist, tol = reading["SS"] - 50.0, cfg.threshold
    elif cfg.signal == "soft_ss":
        dist, tol = reading["soft_ss"] - 50.0, cfg.z * reading["soft_ss_se"]
    else:
        dist, tol = reading["gap"], cfg.z * reading["gap_se"]
    if abs(dist) <= tol:
        return "balanced"
    return "reversed" if dist < 0 else "stereotypical"


def should_stop(reading: dict[str, Any], states: dict[str, str], cfg: ControlConfig) -> bool:
    """Every type balanced and, for ``soft_ss``, the soft SS over all control examples within ``z·se``."""
    if not states or not all(s == "balanced" for s in states.values()):
        return False
    if cfg.signal == "soft_ss" and "soft_ss" in reading:
        return abs(reading["soft_ss"] - 50.0) <= cfg.z * reading["soft_ss_se"]
    return True


def update_swaps(swap: SwapState, states: dict[str, str], cfg: ControlConfig) -> list[str]:
    """Swap reversed types and swap back those that turned stereotypical again; returns changed types.

    With ``cfg.rest_balanced`` a balanced type also *rests* (is not drawn for forget and retain) until
    a later reading finds it outside the tolerance again. With ``cfg.on_reversed == "rest"`` a reversed
    type rests instead of being swapped: nothing pushes it back towards its stereotype, whose sentences
    may carry another type's anti-stereotype (a profession anti-stereotype is often a gender one).
    """
    changed: list[str] = []
    rest_reversed = cfg.swapping and cfg.on_reversed == "rest"
    if cfg.rest_balanced or rest_reversed:
        for t, s in states.items():
            swap.resting[t] = (cfg.rest_balanced and s == "balanced") or (rest_reversed and s == "reversed")
    if not cfg.swapping or rest_reversed:
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
            reading = control_reading(model, self.tokenizer, self.examples, self.scoring, self.cfg.tau,
                                      self.cfg.grouping)
        if was_training:
            model.train()
        states = {t: type_state(r, self.cfg) for t, r in reading["types"].items()}
        changed = update_swaps(self.swap, states, self.cfg)
        key = "SS" if self.cfg.signal == "ss" else "soft_ss"
        self.swap.distance = {t: r[key] - 50.0 for t, r in reading["types"].items()}
        rec = {"step": step, **reading, "states": states, "swapped": dict(self.swap.swapped),
               "resting": dict(self.swap.resting), "changed": changed,
               "seconds": round(time.time() - t0, 2)}
        self.history.append(rec)
        resting = [t for t, r in self.swap.resting.items() if r]
        swapped = [t for t, s in self.swap.swapped.items() if s]
        log.info("control step %d: ICAT %.2f SS %.2f soft %.2f±%.2f LMS %.2f | %s%s%s%s", step, reading["ICAT"],
                 reading["SS"], reading["soft_ss"], reading["soft_ss_se"], reading["LMS"],
                 ", ".join(f"{t} SS {r['SS']:.1f} soft {r['soft_ss']:.1f}±{r['soft_ss_se']:.1f} {states[t]}"
                           for t, r in reading["types"].items()),
                 f" | swapped: {', '.join(swapped)}" if swapped else "",
                 f" | changed now: {', '.join(changed)}" if changed else "",
                 f" | resting: {', '.join(resting)}" if resting else "")
        if self.best is None or reading["ICAT"] > self.best["ICAT"]:
            self.best = {"step": step, "ICAT": reading["ICAT"], "SS": reading["SS"], "LMS": reading["LMS"]}
            if self.cfg.keep_best:
                self.best_weights = _lora_state(model)
        rec["all_balanced"] = step > 0 and should_stop(reading, states, self.cfg)
        run = 0
        for r in reversed(self.history):
            if not r.get("all_balanced"):
                break
            run += 1
        if self.cfg.early_stop and run >= self.cfg.patience:
            log.info("control step %d: every bias type is balanced (%d reading(s) in a row); stopping", step, run)
            rec["stop"] = True
            trainer_control.should_training_stop = True

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.history or self.history[-1]["step"] != state.global_step:
            self._read(model, state.global_step, control)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.cfg.every == 0:
            self._read(model, state.global_step, control)

    def save_best(self, folder: Path) -> dict[str, Any] | None:
        """Write the best reading's adapter weights into a checkpoint ``folder``; returns the best reading."""
        from safetensors.torch import save_file

        if self.best_weights is not None:
            save_file({k: v.contiguous() for k, v in self.best_weights.items()}, str(Path(folder) / BEST_WEIGHTS_FILE))
        return self.best

    def load_best(self, folder: Path, best: dict[str, Any] | None) -> None:
        """On ``--resume``: take back the best reading (and its weights, when kept) saved in ``folder``."""
        from safetensors.torch import load_file

        if not best:
            return
        weights = Path(folder) / BEST_WEIGHTS_FILE
        if self.cfg.keep_best and not weights.is_file():
            log.warning("%s has no %s: the best reading before the resume (step %s) cannot be restored; the best "
                        "is chosen among the readings from here on", folder, BEST_WEIGHTS_FILE, best.get("step"))
            return
        self.best = dict(best)
        if self.cfg.keep_best:
            self.best_weights = load_file(str(weights))

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
