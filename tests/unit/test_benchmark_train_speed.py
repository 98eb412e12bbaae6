"""benchmarks/train_speed.py: both variants run on the same tokens, the pairwise term's rows included."""

from __future__ import annotations

from script_loader import load_benchmark


def test_pair_rows_are_in_both_variants(tiny_model_dir, shared_data_dir, monkeypatch):
    monkeypatch.setenv("BIASUNLEARN_DATA", str(shared_data_dir))  # the real train split
    worker = load_benchmark("train_speed").worker
    sizes = dict(steps=1, n_forget=1, n_retain=2, n_kl=1)
    base = worker("biasunlearn", str(tiny_model_dir), **sizes)
    pairs = {v: worker(v, str(tiny_model_dir), **sizes, pair_types=("gender",), n_pair=1, w_pair=0.8)
             for v in ("biasunlearn", "plain_lora_ce")}
    assert base["sequences_per_step"] == 4
    assert pairs["biasunlearn"]["sequences_per_step"] == pairs["plain_lora_ce"]["sequences_per_step"] == 6
    # the two variants see the same tokens, and the pair's two sentences add tokens to the step
    assert pairs["biasunlearn"]["tokens_per_step"] == pairs["plain_lora_ce"]["tokens_per_step"]
    assert pairs["biasunlearn"]["tokens_per_step"] > base["tokens_per_step"]
    assert all(r["seconds_per_step"] > 0 and r["steps"] == 1 for r in (base, *pairs.values()))
