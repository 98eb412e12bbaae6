"""scripts/crows_gender_tokens.py: the per-token log-probability change of CrowS-Pairs gender words."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from script_loader import load_script, write_crows_csv


def _csv(tmp_path: Path) -> Path:
    rows = [
        ("She is bad at math.", "He is bad at math.", "stereo", "gender"),  # female / male
        ("He is a nurse.", "She is a nurse.", "antistereo", "gender"),  # male / female
        ("Poor people steal.", "Rich people steal.", "stereo", "socioeconomic"),  # not gender: ignored
        ("The cat is loud.", "The dog is loud.", "stereo", "gender"),  # no gendered words: ignored
    ]
    return write_crows_csv(tmp_path / "crows.csv", rows)


def _adapter(tiny_model_dir: Path, out: Path, zero: bool) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=zero)
    peft_model = get_peft_model(model, cfg)
    if not zero:  # make the adapter's change large enough to see
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_" in n:
                    p.mul_(20.0)
    peft_model.save_pretrained(out)
    return out


def _table(out: str) -> dict[str, float]:
    rows = [line.strip("| ").split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    return {r[0]: float(r[-1]) for r in rows if r[0] not in ("part", "modified token")}


def test_zero_adapter_changes_nothing(tiny_model_dir, tmp_path, capsys):
    mod = load_script("crows_gender_tokens")
    adapter = _adapter(tiny_model_dir, tmp_path / "zero", zero=True)
    assert mod.main(["--model", str(tiny_model_dir), "--adapter", str(adapter), "--data", str(_csv(tmp_path)),
                     "--min-count", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 gender pairs")
    table = _table(out)
    assert table["female - male sentence, modified tokens"] == 0.0
    words = {k: v for k, v in table.items() if k.startswith(("female: ", "male: "))}
    assert words and all(v == 0.0 for v in words.values())  # the byte tokenizer lists single characters


def test_shifts_add_up_to_the_sentence_log_likelihoods(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from biasunlearn.data.crows_pairs import load_crows_pairs

    mod = load_script("crows_gender_tokens")
    adapter = _adapter(tiny_model_dir, tmp_path / "rand", zero=False)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(adapter)).eval()
    pairs = load_crows_pairs(_csv(tmp_path))
    n, shifts, per_word = mod.decompose(model, tok, 0, pairs)
    assert n == 2

    def total(text: str) -> float:  # after - before of the whole sentence's log-likelihood, computed directly
        ids = torch.tensor([[0, *tok(text, add_special_tokens=False)["input_ids"]]])
        out = []
        for on in (False, True):
            with torch.no_grad():
                if on:
                    logits = model(ids).logits
                else:
                    with model.disable_adapter():
                        logits = model(ids).logits
            out.append(torch.log_softmax(logits[0, :-1], -1).gather(1, ids[0, 1:, None]).sum().item())
        return out[1] - out[0]

    expected = (total("She is bad at math.") - total("He is bad at math.")
                + total("She is a nurse.") - total("He is a nurse.")) / 2
    assert shifts["modified"] + shifts["unmodified"] == pytest.approx(expected, abs=1e-4)
    assert abs(shifts["modified"]) > 1e-4  # the adapter does move the gendered words
    # the byte-level tokenizer splits "She" / "He" into characters: every modified token is listed by side
    assert sum(sum(v) for k, v in per_word.items() if k.startswith("female")) / 2 == pytest.approx(
        shifts["female modified"], abs=1e-4)


def test_refuses_a_folder_that_is_not_an_adapter(tmp_path):
    mod = load_script("crows_gender_tokens")
    with pytest.raises(SystemExit, match="--adapter"):
        mod.main(["--model", "x", "--adapter", str(tmp_path), "--data", str(tmp_path / "c.csv")])
