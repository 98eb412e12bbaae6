"""Shared fixtures: offline mode, a tiny Llama-style model with a byte-level tokenizer, fixture data."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def build_byte_tokenizer():
    """A byte-level tokenizer with no merges: every string tokenizes, one token per byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<pad>": 1}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<pad>"
    )


def build_tiny_llama(seed: int = 0, vocab_size: int = 258, tie: bool = True):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=0, eos_token_id=0, pad_token_id=1, tie_word_embeddings=tie,
    )
    model = LlamaForCausalLM(cfg)
    # Larger random weights than the default init, so that scores differ visibly between sentences.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    return model.eval()


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tests run with one torch thread: the tiny models are dominated by thread start-up, and on a busy
    2-core machine several threads spin against each other (measured up to ~100x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama checkpoint saved as safetensors, loadable like any local model."""
    d = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama().save_pretrained(d, safe_serialization=True)
    build_byte_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_model_and_tokenizer(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return model, tok


@pytest.fixture(scope="session")
def fixture_data_dir() -> Path:
    """Hand-written benchmark records in the original schemas, laid out like ../shared/data."""
    return FIXTURES / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    if not (SHARED_DATA / "stereoset" / "dev.json").exists():
        pytest.skip(f"real benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA
