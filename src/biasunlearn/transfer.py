"""Debiasing-weight transfer (paper §4.3, Table 3): load an adapter trained on one model into a sibling.

:func:`check_compatibility` compares what the adapter was trained on with the target model before
anything is loaded into it:

* **architecture**: the ``architectures[0]`` / ``model_type`` recorded in the adapter's
  ``provenance.json`` (when present) against the target's config;
* **module names**: every module the adapter's weights attach to must exist in the target;
* **tensor shapes**: each ``lora_A`` must be ``[r, in_features]`` and each ``lora_B``
  ``[out_features, r]`` of the target module;
* **tokenizer**: the vocabulary fingerprint (sha256 of the sorted vocabulary) and size recorded in the
  provenance against the target's tokenizer; a different vocabulary means different token ids, so
  the adapter's effect would land on other tokens even where the shapes happen to agree.

A mismatch raises :class:`IncompatibleAdapter`, whose message lists every difference found. An
adapter folder without ``provenance.json`` (e.g. one trained elsewhere) is checked on module names
and shapes only, and the report says so.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biasunlearn.errors import BiasUnlearnError, ModelError

log = logging.getLogger(__name__)

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


class IncompatibleAdapter(BiasUnlearnError):
    """The adapter cannot be transferred to the target model; the message names every difference."""


@dataclass
class Compatibility:
    ok: bool
    problems: list[str]
    checked: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "checked": self.checked}


def read_adapter(adapter_dir: str | Path) -> tuple[dict[str, tuple[int, ...]], dict[str, Any] | None]:
    """The adapter's ``{tensor name: shape}`` (read from the safetensors header) and its provenance."""
    from safetensors import safe_open

    d = Path(adapter_dir)
    weights = d / "adapter_model.safetensors"
    if not (d / "adapter_config.json").is_file() or not weights.is_file():
        raise ModelError(f"--adapter: {d} is not a peft adapter folder with adapter_config.json and "
                         "adapter_model.safetensors (pickled weights are refused)")
    with safe_open(str(weights), framework="pt") as fh:
        shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    prov_path = d / "provenance.json"
    try:
        prov = json.loads(prov_path.read_text()) if prov_path.is_file() else None
    except json.JSONDecodeError as e:
        raise ModelError(f"--adapter: {prov_path} is not valid JSON ({e})") from e
    return shapes, prov


def _module_features(module) -> tuple[int, int] | None:
    """``(in_features, out_features)`` of a linear-like module (nn.Linear, GPT-2 Conv1D)."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    w = getattr(module, "weight", None)
    if w is not None and w.dim() == 2 and type(module).__name__ == "Conv1D":  # GPT-2: weight is [in, out]
        return int(w.shape[0]), int(w.shape[1])
    return None


def check_compatibility(adapter_dir: str | Path, model, tokenizer) -> Compatibility:
    """Compare the adapter in ``adapter_dir`` with ``model``/``tokenizer`` (see the module docstring)."""
    from biasunlearn.models import tokenizer_fingerprint

    shapes, prov = read_adapter(adapter_dir)
    problems: list[str] = []
    checked = ["module names", "tensor shapes"]
    cfg = getattr(model, "config", None)
    if prov is not None:
        base = prov.get("base_model", {})
        checked += ["architecture", "tokenizer"]
        archs = getattr(cfg, "architectures", None) or [type(model).__name__]
        if base.get("architecture") and base["architecture"] != archs[0]:
            problems.append(f"architecture: adapter trained on {base['architecture']}, target is {archs[0]}")
        if base.get("model_type") and base["model_type"] != getattr(cfg, "model_type", None):
            problems.append(f"model_type: adapter trained on {base['model_type']!r}, target is "
                            f"{getattr(cfg, 'model_type', None)!r}")
        if base.get("tokenizer_sha256"):
            fp = tokenizer_fingerprint(tokenizer)
            if fp != base["tokenizer_sha256"]:
                problems.append(f"tokenizer: vocabulary differs (adapter's base has {base.get('tokenizer_size')} "
                                f"tokens, sha256 {base['tokenizer_sha256'][:12]}; target has {len(tokenizer)}, "
                                f"sha256 {fp[:12]})")
        elif base.get("tokenizer_size") is not None and base["tokenizer_size"] != len(tokenizer):
            problems.append(f"tokenizer: adapter's base has {base['tokenizer_size']} tokens, target has "
                            f"{len(tokenizer)}")
    modules = dict(model.named_modules())
    missing: list[str] = []
    bad_shapes: list[str] = []
    for key, shape in sorted(shapes.items()):
        m = _LORA_KEY.match(key)
        if not m:
            continue
        name = m.group("module")
        target = modules.get(name) or modules.get(f"base_model.model.{name}")
        if target is None:
            missing.append(name)
            continue
        feats = _module_features(getattr(target, "base_layer", target))
        if feats is None:
            continue
        fin, fout = feats
        if m.group("ab") == "A" and shape[1] != fin:
            bad_shapes.append(f"{key}: adapter {list(shape)}, target in_features {fin}")
        if m.group("ab") == "B" and shape[0] != fout:
            bad_shapes.append(f"{key}: adapter {list(shape)}, target out_features {fout}")
    if missing:
        uniq = sorted(set(missing))
        problems.append(f"module names: {len(uniq)} module(s) of the adapter are not in the target, e.g. "
                        + ", ".join(uniq[:3]))
    if bad_shapes:
        problems.append(f"tensor shapes: {len(bad_shapes)} tensor(s) differ, e.g. " + "; ".join(bad_shapes[:3]))
    if not any(_LORA_KEY.match(k) for k in shapes):
        problems.append("module names: the adapter holds no LoRA weights")
    return Compatibility(ok=not problems, problems=problems, checked=checked)


def ensure_compatible(adapter_dir: str | Path, model, tokenizer, target_name: str) -> Compatibility:
    comp = check_compatibility(adapter_dir, model, tokenizer)
    if not comp.ok:
        raise IncompatibleAdapter(f"cannot transfer {adapter_dir} to {target_name}:\n  - "
                                  + "\n  - ".join(comp.problems))
    if "tokenizer" not in comp.checked:
        log.warning("%s has no provenance.json: checked module names and shapes only", adapter_dir)
    return comp


@dataclass
class TransferConfig:
    """Options of ``biasunlearn transfer``.

    Attributes:
        adapter: folder of the adapter to transfer (trained on another model).
        to_model: the target model: built-in alias, hub id, local checkpoint folder or .gguf file.
        out: output folder: ``model/`` (the adapter, or the merged model with --merge), ``transfer.json``
            (compatibility report) and ``eval/`` (with --eval). Empty: check (and evaluate) only.
        merge: merge the adapter into the target's weights and save the merged model (safetensors).
        eval: evaluate the target with the transferred adapter on the report split.
        benchmarks: benchmarks of --eval (comma-separated).
        limit: --eval on the first N examples per StereoSet task / N pairs (0 = all).
        data_dir: benchmark data folder (default: $BIASUNLEARN_DATA, then the user cache).
        dtype: model weights dtype.
        device: cpu, cuda, cuda:N or auto.
        cache_dir: where built-in and GGUF models are converted.
        trust_remote_code: allow model code from the target checkpoint.
    """

    adapter: str = ""
    to_model: str = ""
    out: str = ""
    merge: bool = False
    eval: bool = False
    benchmarks: str = "stereoset,crows_pairs"
    limit: int = 0
    data_dir: str = ""
    dtype: str = "float32"
    device: str = "cpu"
    cache_dir: str = ""
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        from biasunlearn.errors import ConfigError

        if not self.adapter:
            raise ConfigError("--adapter: the adapter folder to transfer is required")
        if not self.to_model:
            raise ConfigError("--to-model: the target model is required")
        if self.out and Path(self.out, "model").exists():
            raise ConfigError(f"--out: {Path(self.out, 'model')} already exists; choose another --out")


def transfer(cfg: TransferConfig) -> dict[str, Any]:
    """Check, load (and merge, save, evaluate) an adapter on another model; returns the transfer record."""
    from biasunlearn.evaluation import EvalConfig, adapter_info, apply_adapter, evaluate
    from biasunlearn.models import load_model_and_tokenizer, model_info
    from biasunlearn.utils import atomic_directory, atomic_write_json, package_versions

    read_adapter(cfg.adapter)  # a clear error for a bad folder before the (slow) model load
    model, tok, resolved = load_model_and_tokenizer(
        cfg.to_model, dtype=cfg.dtype, device=cfg.device, cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else None,
        trust_remote_code=cfg.trust_remote_code)
    target = model_info(model, tok, resolved)
    comp = ensure_compatible(cfg.adapter, model, tok, resolved.name)
    model = apply_adapter(model, cfg.adapter)
    if cfg.merge:
        model = model.merge_and_unload()
    record: dict[str, Any] = {
        "biasunlearn_version": package_versions(("biasunlearn",))["biasunlearn"],
        "adapter": adapter_info(cfg.adapter),
        "target_model": target,
        "compatibility": comp.as_dict(),
        "merged": cfg.merge,
    }
    prov = read_adapter(cfg.adapter)[1]
    if prov is not None:
        record["source_model"] = prov.get("base_model")
    if cfg.out:
        out = Path(cfg.out)
        with atomic_directory(out / "model") as tmp:
            model.save_pretrained(str(tmp), safe_serialization=True)
            if cfg.merge:
                tok.save_pretrained(str(tmp))
            elif prov is not None:
                atomic_write_json(tmp / "provenance.json", prov)
        record["saved"] = str(out / "model")
    if cfg.eval:
        res = evaluate(EvalConfig(model=cfg.to_model, benchmarks=cfg.benchmarks, limit=cfg.limit,
                                  out=str(Path(cfg.out) / "eval") if cfg.out else "", data_dir=cfg.data_dir,
                                  dtype=cfg.dtype, device=cfg.device, cache_dir=cfg.cache_dir),
                       model=model, tokenizer=tok, resolved=resolved)
        record["eval"] = res["benchmarks"]
    if cfg.out:
        atomic_write_json(Path(cfg.out) / "transfer.json", record)
    return record
