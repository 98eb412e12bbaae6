"""BiasEdit end to end on the tiny model: train on the train split, save, load into a fresh model the way
``eval`` loads one, and score with the benchmark scorer."""

from __future__ import annotations

import pytest
import torch

from biasunlearn.baselines import biasedit as be
from biasunlearn.benchmarks import score_stereoset
from biasunlearn.data.splits import make_splits
from biasunlearn.models import load_model_and_tokenizer
from biasunlearn.scoring import ScoringConfig, resolve_start_token_id

LABELS = ("stereotype", "anti-stereotype", "unrelated")


def _module_scores(model, tok, examples):
    """Mean token log-probability of every sentence, computed the way BiasEdit trains on it."""
    enc, dropped = be._encode_examples(tok, examples, resolve_start_token_id(tok), 128)
    assert dropped == 0
    out = {}
    for label, field in zip(LABELS, ("stereo", "anti", "unrelated"), strict=True):
        batch = be.make_token_batch([getattr(e, field) for e in enc], tok.pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        _, lp = be.sentence_scores(logits[batch.rows, batch.preds], batch)
        for ex, v in zip(examples, lp.tolist(), strict=True):
            out[ex.by_label(label).id] = v
    return out


def _debias(scores_p, scores_lp, examples):
    s = [ex.by_label("stereotype").id for ex in examples]
    a = [ex.by_label("anti-stereotype").id for ex in examples]
    t = lambda ids, d: torch.tensor([d[i] for i in ids], dtype=torch.float64)  # noqa: E731
    return be.debias_loss(t(s, scores_p), t(s, scores_lp), t(a, scores_p), t(a, scores_lp)).item()


@pytest.mark.slow
def test_train_save_apply_and_score(tiny_model_dir, fixture_data_dir, tmp_path):
    examples = make_splits(fixture_data_dir, control_per_type=1).train
    model, tok, _ = load_model_and_tokenizer(str(tiny_model_dir))
    base_scores = _module_scores(model, tok, examples)
    deltas, info = be.train_biasedit(model, tok, examples, layers=(-1,), editor_rank=8, steps=12, batch_size=8,
                                     lr=1e-3, edit_lr=1e-3, seed=0)
    folder = be.save_deltas(deltas, tmp_path / "biasedit", {"base_model": str(tiny_model_dir),
                                                            "config": info["config"]})
    assert _module_scores(model, tok, examples) == base_scores  # training left the model as it was

    fresh, tok2, _ = load_model_and_tokenizer(str(tiny_model_dir))
    assert be.apply_deltas(fresh, folder) == ["model.layers.1.mlp.down_proj.weight"]
    edited = _module_scores(fresh, tok2, examples)
    assert edited != base_scores

    # the benchmark scorer sees the same sentences (intersentence conditioned on the context) as training did
    cfg = ScoringConfig(score_method="mean_logprob", progress=False)
    with torch.no_grad():  # as evaluation runs it
        scored = score_stereoset(fresh, tok2, examples, cfg)
    assert set(scored) == set(edited)
    for sid, v in scored.items():
        assert v == pytest.approx(edited[sid], abs=1e-4)

    # the final edit lowers BiasEdit's objective on the examples it was computed from
    def p_and_lp(m):
        lp = _module_scores(m, tok, examples)
        enc, _ = be._encode_examples(tok, examples, resolve_start_token_id(tok), 128)
        p = {}
        for label, field in zip(LABELS[:2], ("stereo", "anti"), strict=True):
            batch = be.make_token_batch([getattr(e, field) for e in enc], tok.pad_token_id)
            with torch.no_grad():
                logits = m(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            for ex, v in zip(examples, be.sentence_scores(logits[batch.rows, batch.preds], batch)[0].tolist(),
                             strict=True):
                p[ex.by_label(label).id] = v
        return p, lp

    assert _debias(*p_and_lp(fresh), examples) < _debias(*p_and_lp(model), examples)


def test_biasedit_through_train_and_eval_cli(tiny_model_dir, fixture_data_dir, tmp_path):
    import json

    from biasunlearn.cli.main import main

    out = tmp_path / "be"
    rc = main(["train", "--model", str(tiny_model_dir), "--data-dir", str(fixture_data_dir), "--out", str(out),
               "--method", "biasedit", "--control-per-type", "1", "--max-steps", "2", "--n-forget", "2",
               "--n-retain", "2"])
    assert rc == 0
    prov = json.loads((out / "adapter" / "provenance.json").read_text())
    assert prov["method"] == "biasedit" and (out / "adapter" / "weight_deltas.safetensors").is_file()
    ev = tmp_path / "ev"
    assert main(["eval", "--model", str(tiny_model_dir), "--adapter", str(out / "adapter"), "--benchmarks",
                 "stereoset", "--data-dir", str(fixture_data_dir), "--out", str(ev)]) == 0
    res = json.loads((ev / "results.json").read_text())
    assert res["adapter"]["sha256"] and "stereoset" in res["benchmarks"]
