"""The built-in models, converted from their pip-installed GGUF files into a temporary cache.

Slow (the GGUF is dequantized once: about 45 s for SmolLM2, 1-2 min for Gemma 3); skipped when the
pip package is not installed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from biasunlearn.models import (
    BUILTIN_MODELS,
    load_model_and_tokenizer,
    lora_target_modules,
    model_info,
    resolve_model,
)

pytestmark = pytest.mark.smoke


def _require(alias: str) -> None:
    model = BUILTIN_MODELS[alias]
    for module in (model.module, *model.chunk_modules):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{alias} not installed ({model.pip_command})")


def _check_complete(folder: Path, alias: str) -> dict:
    for name in (".complete", "config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (folder / name).is_file(), name
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    source = json.loads((folder / "biasunlearn_source.json").read_text())
    assert source["alias"] == alias and len(source["gguf_sha256"]) == 64
    assert source["conversion"]["verify_max_abs_logit_diff"] == 0.0
    return source


def test_smollm2_builtin(tmp_path_factory):
    _require("smollm2-135m-instruct")
    cache = tmp_path_factory.mktemp("model-cache")
    resolved = resolve_model("smollm2-135m-instruct", cache_dir=cache)
    assert resolved.kind == "builtin" and resolved.is_chat is True
    source = _check_complete(Path(resolved.path), "smollm2-135m-instruct")
    assert source["gguf_path"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert [p.name for p in cache.iterdir()] == [Path(resolved.path).name]

    model, tok, resolved2 = load_model_and_tokenizer("smollm2-135m-instruct", cache_dir=cache)
    assert resolved2.path == resolved.path
    assert model.config.vocab_size == 49152 and len(tok) == 49152
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == tok.eos_token
    ids = tok("The nurse said that she was tired.", return_tensors="pt").input_ids
    assert ids[0, 0].item() != tok.bos_token_id  # the GGUF tokenizer adds no BOS
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 49152) and torch.isfinite(logits).all()
    # A sensible language model: " Paris" is a likely continuation.
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        top = model(ids).logits[0, -1].topk(5).indices.tolist()
    assert tok(" Paris").input_ids[0] in top
    assert lora_target_modules(model) == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    ]
    info = model_info(model, tok, resolved2)
    assert info["architecture"] == "LlamaForCausalLM" and info["vocab_size"] == 49152
    assert 130e6 < info["n_parameters"] < 140e6 and info["weights_checksum"]


@pytest.mark.slow
def test_gemma3_builtin(tmp_path_factory):
    _require("gemma3-270m")
    cache = tmp_path_factory.mktemp("model-cache")
    model, tok, resolved = load_model_and_tokenizer("gemma3-270m", cache_dir=cache)
    assert resolved.kind == "builtin" and resolved.is_chat is False
    _check_complete(Path(resolved.path), "gemma3-270m")
    assert [p.name for p in cache.iterdir()] == [Path(resolved.path).name]  # assembled GGUF removed
    assert model.config.vocab_size == 262144
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id  # Gemma's tokenizer adds <bos>
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    assert tok(" Paris", add_special_tokens=False).input_ids[0] in logits[0, -1].topk(5).indices.tolist()
