"""BiasUnlearn training end to end on a tiny local model with fixture data (seconds)."""

from __future__ import annotations

import json

import pytest
import torch

from biasunlearn.cli.main import main
from biasunlearn.errors import ConfigError
from biasunlearn.train import TrainConfig, train


def _cfg(tiny_model_dir, fixture_data_dir, out, **kw):
    base = dict(model=str(tiny_model_dir), data_dir=str(fixture_data_dir), out=str(out), control_per_type=1,
                max_steps=4, control_every=2, n_forget=2, n_retain=4, n_kl=2, save_steps=2, learning_rate=1e-3,
                early_stop=False, keep_best=False)
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_loadable_adapter_and_changes_only_lora(tiny_model_dir, fixture_data_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    rec = train(_cfg(tiny_model_dir, fixture_data_dir, out))
    adapter = out / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    prov = json.loads((adapter / "provenance.json").read_text())
    assert prov["method"] == "biasunlearn" and prov["steps"] == 4
    assert prov["base_model"]["weights_checksum"] and set(prov["data"]) == {"stereoset/test.json", "stereoset/dev.json"}
    assert len(prov["control_history"]) >= 3  # steps 0, 2, 4
    assert rec["lora"]["target_modules"]
    # The per-step log holds every loss term.
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss_forget" in r]
    assert len(steps) == 4 and all({"loss_retain", "loss_kl"} <= set(r) for r in steps)
    # Plain peft loads it; base weights are untouched, the LoRA weights moved away from their init.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ref = {k: v.clone() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(base, str(adapter))
    for name, p in model.named_parameters():
        if "lora_" not in name:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, ref[key]), name
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero


def test_train_refuses_existing_adapter_and_bad_options(tiny_model_dir, fixture_data_dir, tmp_path):
    out = tmp_path / "r"
    (out / "adapter").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already exists"):
        train(_cfg(tiny_model_dir, fixture_data_dir, out))
    with pytest.raises(ConfigError, match="--method"):
        _cfg(tiny_model_dir, fixture_data_dir, out, method="nope")
    with pytest.raises(ConfigError, match="--loss-region"):
        _cfg(tiny_model_dir, fixture_data_dir, out, loss_region="middle")
    with pytest.raises(ConfigError, match="--protect-words"):
        _cfg(tiny_model_dir, fixture_data_dir, out, protect_words="profession")
    with pytest.raises(ConfigError, match="--protect-scope"):
        _cfg(tiny_model_dir, fixture_data_dir, out, protect_words="gender", protect_scope="some")


def test_resume_continues_from_checkpoint(tiny_model_dir, fixture_data_dir, tmp_path):
    out = tmp_path / "res"
    cfg = _cfg(tiny_model_dir, fixture_data_dir, out, max_steps=2, save_steps=1)
    train(cfg)
    import shutil

    shutil.rmtree(out / "adapter")  # as if killed after the checkpoint, before the adapter was written
    shutil.rmtree(out / "checkpoints" / "checkpoint-2")  # ... and after step 1's checkpoint, with step 2 logged
    rec = train(_cfg(tiny_model_dir, fixture_data_dir, out, max_steps=4, resume=True))
    assert rec["steps"] == 4
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    # each step once: the steps logged after the checkpoint resumed from are trained, and logged, again
    assert [r["step"] for r in log if "loss_forget" in r] == [1, 2, 3, 4]


def test_save_total_limit_keeps_every_checkpoint_or_the_latest(tiny_model_dir, fixture_data_dir, tmp_path):
    """0 keeps a checkpoint per save step (to evaluate the adapter along a run); the default keeps two."""
    for limit, kept in ((0, [1, 2, 3, 4]), (2, [3, 4])):
        out = tmp_path / f"lim{limit}"
        train(_cfg(tiny_model_dir, fixture_data_dir, out, save_steps=1, save_total_limit=limit))
        ckpts = out / "checkpoints"
        assert sorted(int(p.name.split("-")[1]) for p in ckpts.glob("checkpoint-*")) == kept
        assert all((ckpts / f"checkpoint-{s}" / "adapter_model.safetensors").is_file() for s in kept)


@pytest.mark.parametrize("method", ["ga", "npo", "graddiff", "no_kl", "no_retention"])
def test_methods_run(method, tiny_model_dir, fixture_data_dir, tmp_path):
    rec = train(_cfg(tiny_model_dir, fixture_data_dir, tmp_path / method, method=method, max_steps=2))
    assert rec["method"] == method and rec["steps"] == 2


def test_cli_run_quick_end_to_end(tiny_model_dir, fixture_data_dir, tmp_path, capsys):
    out = tmp_path / "main"
    code = main(["-q", "run", "--model", str(tiny_model_dir), "--data-dir", str(fixture_data_dir), "--out", str(out),
                 "--preset", "quick", "--control-per-type", "1", "--max-steps", "3", "--control-every", "1",
                 "--learning-rate", "0.001", "--no-progress"])
    assert code == 0
    for f in ("report.md", "ss_per_domain.png", "loss_terms.png", "control.png", "before/results.json",
              "after/results.json", "adapter/adapter_model.safetensors"):
        assert (out / f).is_file(), f
    after = json.loads((out / "after" / "results.json").read_text())
    assert after["adapter"]["path"].endswith("adapter")
    report = (out / "report.md").read_text()
    assert "| overall |" in report
    assert "### SS by sentiment direction" in report and "| all | positive |" in report


def test_keep_best_restores_the_best_control_reading(tiny_model_dir, fixture_data_dir, tmp_path):
    from safetensors.torch import load_file

    rec = train(_cfg(tiny_model_dir, fixture_data_dir, tmp_path / "kb", keep_best=True))
    hist = rec["control_history"]
    best = max(hist, key=lambda h: h["ICAT"])
    assert rec["selected"]["step"] == best["step"]
    weights = load_file(str(tmp_path / "kb" / "adapter" / "adapter_model.safetensors"))
    b_norm = sum(float(v.abs().sum()) for k, v in weights.items() if "lora_B" in k)
    # LoRA B starts at zero: the saved adapter is the initial one exactly when step 0 was the best.
    assert (b_norm == 0.0) == (best["step"] == 0)


@pytest.mark.parametrize(("method", "n_pair", "n_inv"), [("biasunlearn", 0, 0), ("graddiff", 0, 0), ("no_kl", 0, 0),
                                                         ("biasunlearn", 2, 0), ("no_kl", 2, 0), ("biasunlearn", 2, 3),
                                                         ("npo", 0, 3)])
def test_packed_step_equals_padded_step(method, n_pair, n_inv, tiny_model_and_tokenizer, fixture_data_dir):
    """Packing the chunk into block-diagonal rows computes the same loss terms and gradients as padding."""
    from peft import LoraConfig, get_peft_model

    from biasunlearn.data.splits import make_splits
    from biasunlearn.methods.data import ChunkStream, build_pools, collate_chunk, invariance_pairs
    from biasunlearn.methods.objective import METHODS, ObjectiveWeights
    from biasunlearn.methods.trainer import chunk_loss
    from conftest import build_tiny_llama

    _, tok = tiny_model_and_tokenizer
    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(build_tiny_llama(), lora)
    splits = make_splits(fixture_data_dir, control_per_type=1)
    inv = invariance_pairs(splits.train, "gender")
    assert inv
    chunk = next(iter(ChunkStream(build_pools(splits.train), tok, 0, n_forget=3, n_retain=5, n_kl=3, seed=1,
                                  pair_types=("gender", "race"), n_pair=n_pair, invariance=inv, n_invariance=n_inv)))
    m = METHODS.get(method)
    results = []
    for pack in (False, True):
        model.zero_grad()
        terms = chunk_loss(model, collate_chunk([chunk], tok.pad_token_id, pack=pack), m,
                           ObjectiveWeights(pair=0.4, invariance=0.4))
        terms["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append(({k: float(v) for k, v in terms.items()}, grads))
    (t0, g0), (t1, g1) = results
    assert t0.keys() == t1.keys() and ("pair" in t0) == (n_pair > 0) and ("invariance" in t0) == (n_inv > 0)
    for k in t0:
        assert t1[k] == pytest.approx(t0[k], rel=1e-4, abs=1e-5), k
    assert g0.keys() == g1.keys() and g0
    for n in g0:
        # float32 sums in a different order: the absolute tolerance follows the gradient's scale
        assert torch.allclose(g0[n], g1[n], rtol=1e-3, atol=1e-5 * max(1.0, float(g0[n].abs().max()))), n


@pytest.mark.parametrize("method", ["cda", "sft"])
def test_fine_tuning_baselines_train_through_the_cli(method, tiny_model_dir, fixture_data_dir, tmp_path):
    out = tmp_path / method
    rc = main(["train", "--model", str(tiny_model_dir), "--data-dir", str(fixture_data_dir), "--out", str(out),
               "--method", method, "--control-per-type", "1", "--max-steps", "2", "--control-every", "1",
               "--n-forget", "1", "--n-retain", "3", "--n-kl", "2", "--save-steps", "2", "--no-early-stop"])
    assert rc == 0
    prov = json.loads((out / "adapter" / "provenance.json").read_text())
    assert prov["method"] == method and prov["steps"] == 2
    assert [h["step"] for h in prov["control_history"]] == [0, 1, 2]  # SS-versus-step readings
    steps = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    terms = [r for r in steps if "loss_retain" in r]
    assert len(terms) == 2 and not any("loss_forget" in r or "loss_kl" in r for r in terms)


def test_dpo_baseline_trains_through_trl(tiny_model_dir, fixture_data_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "dpo"
    rec = train(_cfg(tiny_model_dir, fixture_data_dir, out, method="dpo", max_steps=2, control_every=1,
                     n_forget=2, n_retain=2))
    assert rec["method"] == "dpo" and rec["steps"] == 2
    assert [h["step"] for h in rec["control_history"]] == [0, 1, 2]
    assert sorted(p.name for p in (out / "adapter").iterdir() if p.is_dir()) == []  # no copy of trl's "ref"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out / "adapter"))
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in log)


def test_new_training_options_are_validated_with_the_flag_named(tiny_model_dir, fixture_data_dir, tmp_path):
    out = tmp_path / "v"
    cases = [(dict(type_sampling="uniform"), "--type-sampling"), (dict(control_groups="task"), "--control-groups"),
             (dict(control_by="person"), "--control-by"), (dict(control_tau=0.0), "--control-tau"),
             (dict(control_signal="median"), "--control-signal"), (dict(on_reversed="flip"), "--on-reversed"),
             (dict(control_patience=0), "--control-patience"),
             (dict(counterfactual_retain="profession"), "--counterfactual-retain"),
             (dict(balance_words="profession"), "--balance-words"),
             (dict(method="dpo", balance_words="gender"), "--balance-words"),
             (dict(draw_balance="profession"), "--draw-balance"),
             (dict(positive_share_types="gender=1.5"), "--positive-share-types"),
             (dict(type_boost="gender=0"), "--type-boost"), (dict(save_steps=0), "--save-steps"),
             (dict(save_total_limit=-1), "--save-total-limit"), (dict(pair_types="gender,caste"), "--pair-types"),
             (dict(pair_types="gender", n_pair=-1), "--n-pair"), (dict(w_pair=-0.1), "--w-pair")]
    for kw, flag in cases:
        with pytest.raises(ConfigError, match=flag):
            _cfg(tiny_model_dir, fixture_data_dir, out, **kw)
    assert not out.exists()  # nothing written by a refused configuration


def test_eval_refuses_an_unknown_bbq_mode():
    from biasunlearn.evaluation import EvalConfig

    with pytest.raises(ConfigError, match="--bbq-mode"):
        EvalConfig(bbq_mode="guess")


def test_resume_keeps_the_best_reading_and_the_seconds_from_before_the_kill(tiny_model_dir, fixture_data_dir,
                                                                           tmp_path, monkeypatch):
    import shutil

    from safetensors.torch import load_file

    import biasunlearn.methods.control as control

    icats = iter([90.0, 80.0, 70.0, 60.0, 50.0])  # readings get worse: the best is step 0's (the initial LoRA)

    def fake_reading(*a, **k):
        r = {"SS": 55.0, "LMS": 90.0, "ICAT": next(icats), "gap": 0.1, "gap_se": 0.01, "soft_ss": 55.0,
             "soft_ss_se": 1.0, "n": 10}
        return {**r, "types": {"gender": dict(r)}}

    monkeypatch.setattr(control, "control_reading", fake_reading)
    out = tmp_path / "kb"
    train(_cfg(tiny_model_dir, fixture_data_dir, out, max_steps=2, keep_best=True))
    ckpt = out / "checkpoints" / "checkpoint-2"
    saved = json.loads((ckpt / "biasunlearn_state.json").read_text())
    assert saved["best"]["step"] == 0 and saved["train_seconds"] > 0
    assert (ckpt / "biasunlearn_best.safetensors").is_file()
    shutil.rmtree(out / "adapter")  # as if killed after the checkpoint
    rec = train(_cfg(tiny_model_dir, fixture_data_dir, out, max_steps=4, keep_best=True, resume=True))
    assert [h["step"] for h in rec["control_history"]] == [0, 2, 4]
    assert rec["selected"]["step"] == 0 and rec["selected"]["ICAT"] == 90.0
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert sum(float(v.abs().sum()) for k, v in weights.items() if "lora_B" in k) == 0.0  # step 0's weights
    assert rec["train_seconds"] >= saved["train_seconds"]


def test_resume_without_a_checkpoint_is_refused_and_writes_nothing(tiny_model_dir, fixture_data_dir, tmp_path):
    out = tmp_path / "none"
    with pytest.raises(ConfigError, match="--resume: no checkpoint found"):
        train(_cfg(tiny_model_dir, fixture_data_dir, out, resume=True))
    (out / "checkpoints").mkdir(parents=True)  # an empty checkpoint folder too
    with pytest.raises(ConfigError, match="--resume: no checkpoint found"):
        train(_cfg(tiny_model_dir, fixture_data_dir, out, resume=True))
    assert [p.name for p in out.iterdir()] == ["checkpoints"] and not any((out / "checkpoints").iterdir())


def test_counterfactual_retention_trains_and_is_recorded(tiny_model_dir, fixture_data_dir, tmp_path, caplog):
    out = tmp_path / "cf"
    with caplog.at_level("INFO", logger="biasunlearn.methods.data"):
        rec = train(_cfg(tiny_model_dir, fixture_data_dir, out, max_steps=2, counterfactual_retain="gender"))
    assert rec["config"]["counterfactual_retain"] == "gender"
    prov = json.loads((out / "adapter" / "provenance.json").read_text())
    assert prov["config"]["counterfactual_retain"] == "gender" and prov["steps"] == 2
    line = next(r.getMessage() for r in caplog.records if "counterfactual retention" in r.getMessage())
    n, total = (int(x) for x in line.split("gender ", 2)[-1].split(" stereotypes")[0].split(" of "))
    assert 0 < n <= total  # the fixture's gender examples carry gendered words


def test_pairwise_term_trains_logs_and_is_recorded(tiny_model_dir, fixture_data_dir, tmp_path):
    out = tmp_path / "pair"
    rc = main(["train", "--model", str(tiny_model_dir), "--data-dir", str(fixture_data_dir), "--out", str(out),
               "--control-per-type", "1", "--max-steps", "2", "--control-every", "2", "--n-forget", "2",
               "--n-retain", "4", "--n-kl", "2", "--save-steps", "2", "--no-early-stop", "--pair-types", "gender",
               "--n-pair", "2", "--w-pair", "0.5"])
    assert rc == 0
    prov = json.loads((out / "adapter" / "provenance.json").read_text())
    assert (prov["config"]["pair_types"], prov["config"]["n_pair"], prov["config"]["w_pair"]) == ("gender", 2, 0.5)
    terms = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    terms = [r for r in terms if "loss_forget" in r]
    assert len(terms) == 2 and all(r["loss_pair"] > 0 for r in terms)
    # the logged total is the weighted sum of the four terms
    for r in terms:
        total = 0.4 * r["loss_forget"] + 0.4 * r["loss_retain"] + 0.2 * r["loss_kl"] + 0.5 * r["loss_pair"]
        assert r["loss"] == pytest.approx(total, rel=1e-4, abs=1e-5)


def test_invariance_term_trains_through_the_cli_and_is_logged(tiny_model_dir, fixture_data_dir, tmp_path):
    out = tmp_path / "inv"
    rc = main(["train", "--model", str(tiny_model_dir), "--data-dir", str(fixture_data_dir), "--out", str(out),
               "--invariance-types", "gender", "--n-invariance", "2", "--w-invariance", "0.5",
               "--control-per-type", "1", "--max-steps", "2", "--control-every", "2", "--n-forget", "1",
               "--n-retain", "2", "--n-kl", "1", "--save-steps", "2", "--no-early-stop"])
    assert rc == 0
    steps = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    terms = [r for r in steps if "loss_forget" in r]
    assert len(terms) == 2 and all("loss_invariance" in r for r in terms)
    # step 1 runs at the reference (LoRA B starts at zero): no drift yet
    assert terms[0]["loss_invariance"] == pytest.approx(0.0, abs=1e-6)
    prov = json.loads((out / "adapter" / "provenance.json").read_text())
    assert prov["config"]["invariance_types"] == "gender" and prov["config"]["w_invariance"] == 0.5


def test_balance_words_adds_flipped_copies_of_the_other_types_to_the_pools(tiny_model_dir, fixture_data_dir,
                                                                          tmp_path, monkeypatch):
    import biasunlearn.train as train_mod
    from biasunlearn.methods.data import CF_ID_SUFFIX

    seen = []
    real = train_mod.build_pools

    def spy(examples, *a, **k):
        seen.append(list(examples))
        return real(examples, *a, **k)

    monkeypatch.setattr(train_mod, "build_pools", spy)
    train(_cfg(tiny_model_dir, fixture_data_dir, tmp_path / "plain", max_steps=1))
    train(_cfg(tiny_model_dir, fixture_data_dir, tmp_path / "bal", max_steps=1, balance_words="gender"))
    plain, balanced = seen
    assert balanced[:len(plain)] == plain
    extra = balanced[len(plain):]
    assert extra and all(e.bias_type != "gender" and f"{CF_ID_SUFFIX}1" in e.id for e in extra)
    originals = {e.id: e for e in plain}
    for e in extra:  # each copy differs from its original only in flipped words: same target, same labels
        orig = originals[e.id.split(CF_ID_SUFFIX)[0]]
        assert e.target == orig.target and [s.gold_label for s in e.sentences] == [s.gold_label for s in orig.sentences]
        assert [s.text for s in e.sentences] != [s.text for s in orig.sentences]
    prov = json.loads((tmp_path / "bal" / "adapter" / "provenance.json").read_text())
    assert prov["config"]["balance_words"] == "gender"


def test_draw_balance_reaches_the_chunk_stream_and_the_provenance(tiny_model_dir, fixture_data_dir, tmp_path,
                                                                  monkeypatch, caplog):
    import biasunlearn.train as train_mod

    seen = []
    real = train_mod.ChunkStream

    def spy(*a, **k):
        seen.append(k.get("draw_balance"))
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "ChunkStream", spy)
    with caplog.at_level("INFO", logger="biasunlearn.methods.data"):
        train(_cfg(tiny_model_dir, fixture_data_dir, tmp_path / "bal", max_steps=1, draw_balance="gender"))
    train(_cfg(tiny_model_dir, fixture_data_dir, tmp_path / "plain", max_steps=1))
    assert seen[0] is not None and seen[0].name == "gender" and seen[1] is None
    assert any("draws balanced by gender groups" in r.getMessage() for r in caplog.records)
    prov = json.loads((tmp_path / "bal" / "adapter" / "provenance.json").read_text())
    assert prov["config"]["draw_balance"] == "gender"
