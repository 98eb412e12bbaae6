"""Adapter transfer: the compatibility check (a pass and distinct refusals) and the transfer command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from biasunlearn.cli.main import main
from biasunlearn.errors import ModelError
from biasunlearn.transfer import IncompatibleAdapter, check_compatibility, ensure_compatible
from conftest import build_byte_tokenizer, build_tiny_llama


def _save_model(d: Path, model, tok) -> Path:
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d


def _make_adapter(tmp: Path, model_dir: Path) -> Path:
    """A LoRA adapter of the tiny model (non-zero B), with the provenance train() writes."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from biasunlearn.models import model_info, resolve_model

    torch.manual_seed(0)  # init_lora_weights=False draws B at random: the same adapter every run
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    info = model_info(base, tok, resolve_model(str(model_dir)))
    pm = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                         init_lora_weights=False))
    d = tmp / "adapter"
    pm.save_pretrained(d, safe_serialization=True)
    (d / "provenance.json").write_text(json.dumps({"method": "biasunlearn", "base_model": info}))
    return d


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model_dir) -> Path:
    return _make_adapter(tmp_path_factory.mktemp("adapter"), tiny_model_dir)


def test_sibling_with_other_weights_passes(adapter_dir):
    sibling = build_tiny_llama(seed=7)  # same architecture and tokenizer, different weights
    comp = check_compatibility(adapter_dir, sibling, build_byte_tokenizer())
    assert comp.ok and comp.problems == []
    assert set(comp.checked) == {"architecture", "tokenizer", "module names", "tensor shapes"}


def test_different_hidden_size_is_refused_by_shapes(adapter_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    wide = LlamaForCausalLM(LlamaConfig(vocab_size=258, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))
    comp = check_compatibility(adapter_dir, wide, build_byte_tokenizer())
    assert not comp.ok
    assert [p.split(":")[0] for p in comp.problems] == ["tensor shapes"]
    assert "in_features 48" in comp.problems[0]


def test_fewer_layers_is_refused_by_module_names(adapter_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    short = LlamaForCausalLM(LlamaConfig(vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    comp = check_compatibility(adapter_dir, short, build_byte_tokenizer())
    assert [p.split(":")[0] for p in comp.problems] == ["module names"]
    assert "layers.1." in comp.problems[0]


def test_other_architecture_is_refused(adapter_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=258, n_embd=32, n_layer=2, n_head=4))
    comp = check_compatibility(adapter_dir, gpt2, build_byte_tokenizer())
    kinds = {p.split(":")[0] for p in comp.problems}
    assert {"architecture", "model_type", "module names"} <= kinds
    assert "LlamaForCausalLM" in " ".join(comp.problems) and "GPT2LMHeadModel" in " ".join(comp.problems)


def test_other_tokenizer_is_refused_even_with_equal_shapes(adapter_dir, tmp_path):
    tok = build_byte_tokenizer()
    tok.add_tokens(["<extra>"])  # one more token: another vocabulary
    comp = check_compatibility(adapter_dir, build_tiny_llama(seed=3), tok)
    assert [p.split(":")[0] for p in comp.problems] == ["tokenizer"]
    with pytest.raises(IncompatibleAdapter, match=r"(?s)cannot transfer .*tokenizer: vocabulary differs"):
        ensure_compatible(adapter_dir, build_tiny_llama(seed=3), tok, "target")


def test_not_an_adapter_folder(tmp_path):
    with pytest.raises(ModelError, match="not a peft adapter folder"):
        check_compatibility(tmp_path, build_tiny_llama(), build_byte_tokenizer())


def test_transfer_command_loads_merges_saves_and_evaluates(adapter_dir, fixture_data_dir, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    sibling_dir = _save_model(tmp_path / "sibling", build_tiny_llama(seed=5), build_byte_tokenizer())
    out = tmp_path / "t"
    rc = main(["transfer", "--adapter", str(adapter_dir), "--to-model", str(sibling_dir), "--out", str(out),
               "--merge", "--eval", "--benchmarks", "stereoset", "--data-dir", str(fixture_data_dir)])
    assert rc == 0
    rec = json.loads((out / "transfer.json").read_text())
    assert rec["compatibility"]["ok"] and rec["merged"] and "stereoset" in rec["eval"]
    assert (out / "eval" / "results.json").is_file()
    # the merged model equals sibling + adapter
    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sibling_dir), str(adapter_dir))
    ids = torch.tensor([[0, 40, 41, 42, 43]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, with_adapter(ids).logits, atol=1e-4)
        assert not torch.allclose(merged(ids).logits, AutoModelForCausalLM.from_pretrained(sibling_dir)(ids).logits)


def test_transfer_command_refuses_and_writes_nothing(adapter_dir, tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    wide = LlamaForCausalLM(LlamaConfig(vocab_size=258, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))
    target = _save_model(tmp_path / "wide", wide, build_byte_tokenizer())
    out = tmp_path / "t"
    rc = main(["transfer", "--adapter", str(adapter_dir), "--to-model", str(target), "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot transfer" in err and "tensor shapes" in err
    assert not out.exists() or not any(out.iterdir())


def test_eval_with_merged_adapter_matches_unmerged(adapter_dir, tiny_model_dir, fixture_data_dir, tmp_path):
    from biasunlearn.evaluation import evaluate
    from biasunlearn.metrics.stereoset import read_predictions

    def scores(name: str, **kw) -> dict[str, float]:
        # per-sentence scores, not the metrics: on 8 fixture examples an adapter need not flip a comparison
        evaluate(model=str(tiny_model_dir), benchmarks="stereoset", data_dir=str(fixture_data_dir),
                 out=str(tmp_path / name), **kw)
        return read_predictions(tmp_path / name / "stereoset_predictions.json")

    plain = scores("plain")
    unmerged, merged = (scores(f"m{m}", adapter=str(adapter_dir), merge_adapter=m) for m in (False, True))
    assert unmerged.keys() == merged.keys() == plain.keys()
    for k in plain:
        assert merged[k] == pytest.approx(unmerged[k], abs=1e-6), k
    # the adapter does something, well beyond the merge tolerance (seeded: about 8e-4 here)
    assert max(abs(unmerged[k] - plain[k]) for k in plain) > 1e-5
