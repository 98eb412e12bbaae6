"""Evaluate a model (optionally with a LoRA adapter) on bias benchmarks and write the results.

``results.json`` holds every number plus what is needed to reproduce it: model and adapter (with
weight checksums), data files with sha256, split, limit, seed, scoring options and package versions.
Each benchmark's per-item scores go to ``<benchmark>_predictions.json``; for StereoSet that file is
in the official predictions format, so StereoSet's own evaluator, given the same gold file
(``dev.json`` for the report split), reproduces the numbers. All files are written atomically. While it
runs, the finished sentence scores are kept in ``<out>/partial/`` (see :mod:`biasunlearn.partial`), so an
evaluation killed midway continues where it stopped when run again with the same options; the folder is
removed once ``results.json`` is written.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from biasunlearn.benchmarks import BENCHMARKS, EvalContext
from biasunlearn.data.paths import resolve_data_dir
from biasunlearn.data.splits import SPLIT_NAMES
from biasunlearn.data.stereoset import parse_bias_types
from biasunlearn.errors import ConfigError, ModelError
from biasunlearn.models import DEFAULT_MODEL, load_model_and_tokenizer, model_info
from biasunlearn.partial import ResumableScorer
from biasunlearn.scoring import ScoringConfig
from biasunlearn.utils import atomic_write_json, package_versions, sha256_file

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Options of ``biasunlearn eval``.

    Attributes:
        model: built-in alias, hub id, local checkpoint folder or .gguf file.
        adapter: folder of a peft (LoRA) adapter to apply to the model; empty for none.
        merge_adapter: merge the adapter's LoRA weights into the model before scoring (faster; the same
            scores up to float rounding).
        method: decoding-time debiasing applied while scoring (self_debias, cafie); empty for none.
            Trained methods are evaluated through their adapter (--adapter).
        benchmarks: comma-separated benchmark names (stereoset, crows_pairs, crows_pairs_unmodified: CrowS-Pairs
            scored on the tokens the two sentences share, bbq: --limit per category, no --split).
        split: StereoSet split to evaluate: report (dev.json), control or train.
        limit: evaluate only the first N examples per StereoSet task / N CrowS-Pairs pairs (0 = all).
        bias_types: comma-separated StereoSet bias types to evaluate (gender, profession, race, religion;
            empty = all). Only StereoSet is filtered.
        out: output folder for results.json and the predictions files (empty: write nothing); while the
            evaluation runs, its finished scores are kept in out/partial/ and a rerun continues from them.
        data_dir: benchmark data folder (default: $BIASUNLEARN_DATA, then the user cache).
        seed: seed of the control/train split.
        control_per_type: control examples per bias type held out of train.
        control_by: hold the control split out by ``target`` (whole StereoSet targets) or ``example``.
        bbq_mode: BBQ answers by ``likelihood`` of each option or by ``generate`` (chat template, reply parsed).
        dtype: model weights dtype (float32, bfloat16, float16, auto).
        device: cpu, cuda, cuda:N or auto.
        cache_dir: where built-in and GGUF models are converted (default: $BIASUNLEARN_CACHE/models).
        trust_remote_code: allow model code from the checkpoint (off unless you trust it).
        scoring: sentence scoring options.
    """

    model: str = DEFAULT_MODEL
    adapter: str = ""
    merge_adapter: bool = True
    method: str = ""
    benchmarks: str = "stereoset,crows_pairs,crows_pairs_unmodified"
    split: str = "report"
    limit: int = 0
    bias_types: str = ""
    out: str = ""
    data_dir: str = ""
    seed: int = 0
    control_per_type: int = 150
    control_by: str = "target"
    bbq_mode: str = "likelihood"
    dtype: str = "float32"
    device: str = "cpu"
    cache_dir: str = ""
    trust_remote_code: bool = False
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def __post_init__(self) -> None:
        if self.split not in SPLIT_NAMES:
            raise ConfigError(f"--split: expected one of {', '.join(SPLIT_NAMES)}, got {self.split!r}")
        if self.limit < 0:
            raise ConfigError(f"--limit must be >= 0, got {self.limit}")
        parse_bias_types(self.bias_types)
        BENCHMARKS.parse_list(self.benchmarks)
        if self.bbq_mode not in ("likelihood", "generate"):
            raise ConfigError(f"--bbq-mode: expected likelihood or generate, got {self.bbq_mode!r}")
        if self.method:
            from biasunlearn.baselines import DECODING_BASELINES

            DECODING_BASELINES.get(self.method)


def apply_adapter(model, adapter_dir: str | Path):
    """Load a peft adapter from a folder (safetensors weights only) onto ``model``."""
    from peft import PeftModel

    d = Path(adapter_dir)
    if (d / "weight_deltas.safetensors").is_file():  # BiasEdit: weight deltas added to the model
        from biasunlearn.baselines.biasedit import apply_deltas

        apply_deltas(model, d)
        return model
    if not (d / "adapter_config.json").is_file():
        raise ModelError(f"--adapter: {d} is not a peft adapter folder (no adapter_config.json)")
    if not (d / "adapter_model.safetensors").is_file():
        raise ModelError(
            f"--adapter: {d} has no adapter_model.safetensors; pickled adapter weights are refused for "
            "security (convert them to safetensors with a trusted copy of peft first)"
        )
    try:
        peft_model = PeftModel.from_pretrained(model, str(d), is_trainable=False)
    except Exception as e:  # shape or module mismatch
        raise ModelError(f"--adapter: could not apply {d} to this model: {e}") from e
    return peft_model.eval()


def adapter_info(adapter_dir: str | Path) -> dict[str, Any]:
    d = Path(adapter_dir)
    weights = d / "weight_deltas.safetensors"
    return {"path": str(d), "sha256": sha256_file(weights if weights.is_file() else d / "adapter_model.safetensors")}


def evaluate(
    config: EvalConfig | None = None,
    *,
    model=None,
    tokenizer=None,
    resolved=None,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate on the configured benchmarks; returns the results dict (also written to ``out``).

    Either pass ``config`` (or keyword overrides of :class:`EvalConfig` fields, ``model`` being a model
    spec string), and the model named there is loaded; or pass an already loaded ``model`` and its
    ``tokenizer``.
    """
    if isinstance(model, (str, Path)):  # a model spec, not a loaded model
        overrides["model"], model = str(model), None
    cfg = config or EvalConfig(**overrides)
    if config is not None and overrides:
        cfg = EvalConfig(**{**asdict(config), **overrides, "scoring": config.scoring})
    names = BENCHMARKS.parse_list(cfg.benchmarks)
    data_dir = resolve_data_dir(cfg.data_dir or None)
    t0 = time.time()
    if model is None:
        model, tokenizer, resolved = load_model_and_tokenizer(
            cfg.model, dtype=cfg.dtype, device=cfg.device, cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else None,
            trust_remote_code=cfg.trust_remote_code,
        )
        if cfg.adapter:
            model = apply_adapter(model, cfg.adapter)
            if cfg.merge_adapter and hasattr(model, "merge_and_unload"):
                model = model.merge_and_unload().eval()
    elif tokenizer is None:
        raise ConfigError("evaluate(model=...) needs the matching tokenizer=")
    load_s = time.time() - t0
    ctx = EvalContext(data_dir=data_dir, scoring=cfg.scoring, split=cfg.split, limit=cfg.limit, seed=cfg.seed,
                      bias_types=parse_bias_types(cfg.bias_types), control_per_type=cfg.control_per_type,
                      control_by=cfg.control_by, bbq_mode=cfg.bbq_mode)
    if cfg.method:
        from biasunlearn.baselines import DECODING_BASELINES

        baseline = DECODING_BASELINES.get(cfg.method)(model, tokenizer)
        ctx.score_fn = lambda _m, _t, reqs, scfg, desc: baseline.sequence_logprobs(reqs, scfg, desc=desc)
    results: dict[str, Any] = {
        "biasunlearn_version": package_versions(("biasunlearn",))["biasunlearn"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model_info(model, tokenizer, resolved) if resolved is not None else {"name": str(cfg.model)},
        "adapter": adapter_info(cfg.adapter) if cfg.adapter else None,
        "config": asdict(cfg),
        "data": {},
        "packages": package_versions(),
        "benchmarks": {},
        "timing_s": {"load": round(load_s, 2)},
    }
    if cfg.out and resolved is not None:
        # Long scorings keep their finished chunks in out/partial and continue after a kill. Only for a
        # model loaded here: its weights' checksum is known (an in-memory model's weights are not).
        opts = {k: v for k, v in results["config"].items() if k not in ("benchmarks", "limit", "bias_types", "out")}
        fingerprint = {"version": results["biasunlearn_version"], "model": results["model"],
                       "adapter": results["adapter"], "options": opts}
        ctx.score_fn = ResumableScorer(ctx.score_fn, Path(cfg.out) / "partial", fingerprint)
    predictions: dict[str, Any] = {}
    for name in names:
        t = time.time()
        reused = getattr(ctx.score_fn, "reused", 0)
        res = BENCHMARKS.get(name)(model, tokenizer, ctx)
        if getattr(ctx.score_fn, "reused", 0) > reused:
            # timing_s then covers only what this process scored
            results.setdefault("resumed_requests", {})[name] = ctx.score_fn.reused - reused
        results["benchmarks"][name] = {"n_items": res.n_items, **res.extra, "metrics": res.metrics}
        results["data"].update(res.data_files)
        results["timing_s"][name] = round(time.time() - t, 2)
        if res.predictions is not None:
            predictions[name] = res.predictions
        log.info("%s done in %.1f s", name, time.time() - t)
    if cfg.out:
        out = Path(cfg.out)
        for name, pred in predictions.items():
            atomic_write_json(out / f"{name}_predictions.json", pred)
        atomic_write_json(out / "results.json", results)  # last: its presence means the run finished
        shutil.rmtree(out / "partial", ignore_errors=True)
        log.info("wrote %s", out / "results.json")
    return results
