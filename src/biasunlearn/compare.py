"""``biasunlearn compare``: every method on the same model, data and metrics (paper Tables 1-2, Figure 4).

Methods are named as everywhere else: ``base`` (the plain model), the trained methods of
:data:`biasunlearn.methods.objective.METHODS` (``biasunlearn``, ``cda``, ``sft``, ``dpo``, the ablations,
...) and the decoding-time methods of :data:`biasunlearn.baselines.DECODING_BASELINES` (``self_debias``,
``cafie``). A trained method uses the adapter given with ``--adapters NAME=DIR`` or is trained here
(``OUT/train/NAME``) with the shared training options.

Writes to ``--out``:

* ``results.csv``: tidy, one row per model, method, benchmark, task, domain and metric;
* ``tables.md``: StereoSet SS per domain, overall SS, LMS change against ``base`` and ICAT (Table 1
  shape), CrowS-Pairs per bias type (Table 2 shape), and the inference cost;
* ``ss_per_domain.png`` (bar chart), ``ss_vs_step.png`` (control SS per training step of the trained
  methods, Figure 4), ``inference_cost.json`` (scoring time of one fixed set of sentences relative to
  the plain model, every method measured in this run);
* ``eval/NAME/results.json`` for every method.

A comparison is long on a CPU (hours on the built-in model). ``--resume`` continues one that was
stopped: finished trainings (``train/NAME/adapter``) and evaluations made with the same options
(``eval/NAME/results.json``) are reused, an interrupted training resumes from its last checkpoint, and
only the rest is computed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from biasunlearn.data.stereoset import BIAS_TYPES
from biasunlearn.errors import ConfigError
from biasunlearn.train import TrainConfig
from biasunlearn.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class CompareConfig:
    """Options of ``biasunlearn compare``.

    The model (``--model``) and the output folder (``--out``) are the training options' own; the trained
    methods are trained into ``OUT/train/NAME``.

    Attributes:
        methods: comma-separated methods: base, trained methods (biasunlearn, cda, sft, dpo, ...) and
            decoding-time methods (self_debias, cafie).
        adapters: comma-separated NAME=DIR of adapters already trained (those methods are not retrained).
        benchmarks: comma-separated benchmarks.
        limit: evaluate only the first N examples per StereoSet task / N CrowS-Pairs pairs (0 = all).
        cost_sentences: StereoSet sentences scored for the inference-cost measurement (0 = skip).
        train: training options shared by the trained methods (method and out are set per method).
    """

    methods: str = "base,biasunlearn,cda,sft,dpo,self_debias,cafie"
    adapters: str = ""
    benchmarks: str = "stereoset,crows_pairs"
    limit: int = 0
    cost_sentences: int = 300
    train: TrainConfig = field(default_factory=TrainConfig)

    def method_list(self) -> list[str]:
        names = [m.strip() for m in self.methods.split(",") if m.strip()]
        if not names:
            raise ConfigError("--methods: give at least one method")
        for n in names:
            method_kind(n)
        return names

    def adapter_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in (x.strip() for x in self.adapters.split(",") if x.strip()):
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ConfigError(f"--adapters: expected NAME=DIR, got {item!r}")
            if method_kind(name) != "trained":
                raise ConfigError(f"--adapters: {name!r} is not a trained method")
            if not (Path(path, "adapter_config.json").is_file() or Path(path, "weight_deltas.safetensors").is_file()):
                raise ConfigError(f"--adapters: {path} is not an adapter folder (no adapter_config.json or "
                                  "weight_deltas.safetensors)")
            out[name] = path
        return out


def method_kind(name: str) -> str:
    """``base``, ``trained`` or ``decoding``; a clear error for an unknown name."""
    from biasunlearn.baselines import DECODING_BASELINES
    from biasunlearn.methods.objective import METHODS

    if name == "base":
        return "base"
    if name in METHODS.names():
        return "trained"
    if name in DECODING_BASELINES.names():
        return "decoding"
    raise ConfigError(f"--methods: unknown method {name!r}; known: base, {', '.join(METHODS.names())}, "
                      f"{', '.join(DECODING_BASELINES.names())}")


def tidy_rows(model: str, method: str, results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per benchmark, task, domain and metric of an evaluation's ``results``."""
    rows = []
    for bench, res in results["benchmarks"].items():
        metrics = res["metrics"]
        if bench == "stereoset":
            for task, doms in metrics.items():
                for dom, m in doms.items():
                    rows += [{"model": model, "method": method, "benchmark": bench, "task": task, "domain": dom,
                              "metric": k, "value": m[k]} for k in ("SS", "LMS", "ICAT", "Count")]
        else:
            for dom, m in metrics.items():
                rows += [{"model": model, "method": method, "benchmark": bench, "task": "", "domain": dom,
                          "metric": k, "value": v} for k, v in m.items() if isinstance(v, (int, float))]
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["model", "method", "benchmark", "task", "domain", "metric", "value"],
                       lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def stereoset_comparison_table(results: dict[str, dict[str, Any]], baseline: str = "base") -> str:
    """Table 1 shape: SS per domain and overall, LMS and its change against ``baseline``, ICAT."""
    head = "| method | " + " | ".join(f"SS {d}" for d in BIAS_TYPES) + " | SS overall | LMS | ΔLMS | ICAT |"
    rows = [head, "|---|" + "---:|" * (len(BIAS_TYPES) + 4)]
    base = results.get(baseline, {}).get("benchmarks", {}).get("stereoset", {}).get("metrics", {}).get("both")
    for name, res in results.items():
        st = res["benchmarks"].get("stereoset")
        if st is None:
            continue
        m = st["metrics"]["both"]
        dlms = f"{m['overall']['LMS'] - base['overall']['LMS']:+.2f}" if base else "–"
        o = m["overall"]
        rows.append(f"| {name} | " + " | ".join(f"{m[d]['SS']:.2f}" if d in m else "–" for d in BIAS_TYPES)
                    + f" | {o['SS']:.2f} | {o['LMS']:.2f} | {dlms} | {o['ICAT']:.2f} |")
    return "\n".join(rows)


def crows_comparison_table(results: dict[str, dict[str, Any]]) -> str:
    """Table 2 shape: CrowS-Pairs SS (% preferring the stereotype) per bias type and method."""
    have = {n: r["benchmarks"]["crows_pairs"]["metrics"] for n, r in results.items()
            if "crows_pairs" in r["benchmarks"]}
    if not have:
        return ""
    types = list(next(iter(have.values())))
    rows = ["| method | " + " | ".join(types) + " |", "|---|" + "---:|" * len(types)]
    for name, m in have.items():
        rows.append(f"| {name} | " + " | ".join(f"{m[t]['SS']:.2f}" if t in m else "–" for t in types) + " |")
    return "\n".join(rows)


def plot_comparison(results: dict[str, dict[str, Any]], path: Path) -> None:
    from biasunlearn.report.run_report import _plt

    plt = _plt()
    names = [n for n, r in results.items() if "stereoset" in r["benchmarks"]]
    doms = [*BIAS_TYPES, "overall"]
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(doms) + 0.3 * len(names)), 3.8))
    for i, n in enumerate(names):
        m = results[n]["benchmarks"]["stereoset"]["metrics"]["both"]
        ax.bar([j - 0.4 + width * (i + 0.5) for j in range(len(doms))], [m[d]["SS"] if d in m else 0 for d in doms],
               width=width, label=n)
    ax.axhline(50, color="k", lw=1, ls="--")
    ax.set_xticks(range(len(doms)), doms)
    ax.set_ylabel("StereoSet SS (%)")
    ax.set_ylim(30, 75)
    ax.set_title("SS per domain and method (report split; 50 ideal)")
    ax.legend(fontsize=7, ncol=min(4, len(names)))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ss_vs_step(histories: dict[str, list[dict[str, Any]]], path: Path) -> None:
    from biasunlearn.report.run_report import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, hist in histories.items():
        ax.plot([h["step"] for h in hist], [h["SS"] for h in hist], marker=".", label=name)
    ax.axhline(50, color="k", lw=1, ls="--")
    ax.set_xlabel("training step")
    ax.set_ylabel("control SS (%)")
    ax.set_title("SS over training (control split)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def measure_inference_cost(model_spec: str, methods: dict[str, tuple[str, str]], n_sentences: int, cfg: TrainConfig,
                           repeats: int = 2) -> dict[str, Any]:
    """Seconds to score the same ``n_sentences`` report-split StereoSet sentences under each method, and the
    ratio to the plain model, all in this one run. ``methods`` maps a name to ``(kind, adapter_dir)``."""
    from biasunlearn.baselines import DECODING_BASELINES
    from biasunlearn.benchmarks import stereoset_requests
    from biasunlearn.data.paths import resolve_data_dir
    from biasunlearn.data.splits import split_by_name
    from biasunlearn.evaluation import apply_adapter
    from biasunlearn.models import load_model_and_tokenizer
    from biasunlearn.scoring import ScoringConfig, sequence_logprobs

    examples = split_by_name(resolve_data_dir(cfg.data_dir or None), "report")
    reqs = stereoset_requests(examples)[0][:n_sentences]
    scoring = ScoringConfig(progress=False)
    model, tok, _ = load_model_and_tokenizer(model_spec, dtype=cfg.dtype, device=cfg.device,
                                             cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else None,
                                             trust_remote_code=cfg.trust_remote_code)

    def timed(fn) -> float:
        fn()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        return best

    seconds: dict[str, float] = {"base": timed(lambda: sequence_logprobs(model, tok, reqs, scoring))}
    for name, (kind, adapter) in methods.items():
        if kind == "decoding":
            b = DECODING_BASELINES.get(name)(model, tok)
            seconds[name] = timed(lambda b=b: b.sequence_logprobs(reqs, scoring))
        elif kind == "trained" and adapter and Path(adapter, "adapter_config.json").is_file():
            pm = apply_adapter(model, adapter)
            seconds[name] = timed(lambda pm=pm: sequence_logprobs(pm, tok, reqs, scoring))
            model = pm.unload()  # back to the plain model for the next method
    return {"n_sentences": len(reqs), "repeats": repeats, "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "relative_to_base": {k: round(v / seconds["base"], 3) for k, v in seconds.items()},
            "note": "adapters scored unmerged (as loaded by PeftModel); merged, a LoRA adapter costs nothing extra"}


#: the evaluation options that must match for ``--resume`` to reuse an earlier ``eval/NAME/results.json``
_RESUME_KEYS = ("model", "adapter", "method", "benchmarks", "split", "limit", "dtype", "merge_adapter")


def finished_evaluation(folder: Path, ecfg: Any) -> dict[str, Any] | None:
    """The results of an earlier evaluation in ``folder`` made with the same options as ``ecfg`` (model,
    adapter, method, benchmarks, split, limit, dtype, merge, scoring, and the adapter's weight checksum, so
    an adapter folder rewritten in place is evaluated again), or None: a comparison resumed with
    ``--resume`` recomputes only what is missing or was made differently."""
    p = folder / "results.json"
    if not p.is_file():
        return None
    try:
        res = json.loads(p.read_text())
    except json.JSONDecodeError:
        log.warning("compare: %s is not valid JSON; evaluating again", p)
        return None
    old = res.get("config", {})
    new = asdict(ecfg)
    same = all(old.get(k) == new.get(k) for k in _RESUME_KEYS) and old.get("scoring") == new.get("scoring")
    if not same:
        log.info("compare: %s was made with other options; evaluating again", p)
        return None
    if ecfg.adapter:
        from biasunlearn.evaluation import adapter_info

        try:
            now = adapter_info(ecfg.adapter)["sha256"]
        except OSError:
            now = None
        if (res.get("adapter") or {}).get("sha256") != now:
            log.info("compare: the adapter in %s changed since %s was made; evaluating again", ecfg.adapter, p)
            return None
    return res


def compare(cfg: CompareConfig) -> dict[str, Any]:
    from biasunlearn.evaluation import EvalConfig, evaluate
    from biasunlearn.train import train

    names = cfg.method_list()
    given = cfg.adapter_map()
    t = cfg.train
    out = Path(t.out)
    if (out / "results.csv").exists() and not t.resume:
        raise ConfigError(f"--out: {out} already holds a comparison (results.csv); choose another --out "
                          "or pass --resume to reuse its finished parts")
    results: dict[str, dict[str, Any]] = {}
    histories: dict[str, list[dict[str, Any]]] = {}
    adapters: dict[str, str] = {}
    for name in names:
        kind = method_kind(name)
        adapter, method = "", ""
        if kind == "trained":
            adapter = given.get(name, "")
            if not adapter:
                run_dir = out / "train" / name
                if t.resume and (run_dir / "adapter" / "provenance.json").is_file():
                    log.info("compare: reusing the finished training of %s in %s", name, run_dir)
                else:
                    resume = t.resume and any((run_dir / "checkpoints").glob("checkpoint-*"))
                    train(TrainConfig(**{**asdict(t), "scoring": t.scoring, "method": name, "out": str(run_dir),
                                         "resume": resume}))
                adapter = str(run_dir / "adapter")
            adapters[name] = adapter
            prov = Path(adapter, "provenance.json")
            hist = json.loads(prov.read_text()).get("control_history", []) if prov.is_file() else []
            if hist:  # BiasEdit's editor training has no control readings
                histories[name] = hist
        elif kind == "decoding":
            method = name
        ecfg = EvalConfig(model=t.model, adapter=adapter, method=method, benchmarks=cfg.benchmarks, limit=cfg.limit,
                          out=str(out / "eval" / name), data_dir=t.data_dir, dtype=t.dtype, device=t.device,
                          cache_dir=t.cache_dir, trust_remote_code=t.trust_remote_code)
        done = finished_evaluation(Path(ecfg.out), ecfg) if t.resume else None
        if done is not None:
            log.info("compare: reusing the finished evaluation of %s in %s", name, ecfg.out)
            results[name] = done
        else:
            log.info("compare: evaluating %s", name)
            results[name] = evaluate(ecfg)
    rows = [r for n, res in results.items() for r in tidy_rows(t.model, n, res)]
    cost = measure_inference_cost(t.model, {n: (method_kind(n), adapters.get(n, "")) for n in names if n != "base"},
                                  cfg.cost_sentences, t) if cfg.cost_sentences else {}
    atomic_write_text(out / "results.csv", to_csv(rows))
    atomic_write_json(out / "inference_cost.json", cost)
    plot_comparison(results, out / "ss_per_domain.png")
    if histories:
        plot_ss_vs_step(histories, out / "ss_vs_step.png")
    lines = [f"# Method comparison: {t.model}", "",
             "## StereoSet, report split (dev.json), both tasks", "", stereoset_comparison_table(results), ""]
    crows = crows_comparison_table(results)
    if crows:
        lines += ["## CrowS-Pairs (% preferring the stereotype; 50 ideal)", "", crows, ""]
    if cost:
        lines += ["## Inference cost (scoring time relative to the plain model, one run)", "",
                  "| method | seconds | × base |", "|---|---:|---:|"]
        lines += [f"| {k} | {v:.2f} | {cost['relative_to_base'][k]:.2f} |" for k, v in cost["seconds"].items()]
        lines += ["", f"{cost['n_sentences']} sentences, best of {cost['repeats']}; {cost['note']}.", ""]
    lines += ["![SS per domain](ss_per_domain.png)", ""]
    if histories:
        lines += ["![SS over training](ss_vs_step.png)", ""]
    atomic_write_text(out / "tables.md", "\n".join(lines))
    return {"results": results, "rows": rows, "inference_cost": cost, "histories": histories}
