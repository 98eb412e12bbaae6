"""BiasEdit baseline: losses on hand-computed tensors, gradient decomposition, editor, training, deltas I/O."""

from __future__ import annotations

import copy
import json
import math
import re

import pytest
import torch
from torch import nn

from biasunlearn.baselines import biasedit as be
from biasunlearn.benchmarks import stereoset_requests
from biasunlearn.data.splits import make_splits
from biasunlearn.errors import ConfigError, ModelError

E = math.e


@pytest.fixture(scope="module")
def train_examples(fixture_data_dir):
    return make_splits(fixture_data_dir, control_per_type=1).train


@pytest.fixture()
def tiny(tiny_model_and_tokenizer):
    """A private copy of the session's tiny model (tests change weights)."""
    model, tok = tiny_model_and_tokenizer
    return copy.deepcopy(model), tok


# ---------------------------------------------------------------------------------------------- losses


def test_debias_loss_hand_computed():
    # pair 1: P(s)=e^-1, l(s)=-2, P(a)=e^-2, l(a)=-3
    #   P(s)(log P(s) - l(a)) = e^-1 (-1 + 3) = 2/e ;  P(a)(log P(a) - l(s)) = e^-2 (-2 + 2) = 0
    # pair 2: P(s)=P(a)=e^-1, l(s)=l(a)=-1 -> both terms e^-1 (-1 + 1) = 0
    # L_d = (2/e + 0) / 2 = 1/e
    sp = torch.tensor([E**-1, E**-1])
    slp = torch.tensor([-2.0, -1.0])
    ap = torch.tensor([E**-2, E**-1])
    alp = torch.tensor([-3.0, -1.0], requires_grad=True)
    loss = be.debias_loss(sp, slp, ap, alp)
    assert loss.item() == pytest.approx(1 / E, rel=1e-6)
    # symmetric: swapping the roles of stereotype and anti-stereotype gives the same value
    assert be.debias_loss(ap, alp, sp, slp).item() == pytest.approx(1 / E, rel=1e-6)
    # dL/dl(a_1) = -P(s_1)/B = -1/(2e): raising the anti-stereotype's log-probability lowers the loss
    loss.backward()
    assert alp.grad.tolist() == pytest.approx([-1 / (2 * E), -1 / (2 * E)], rel=1e-6)


def test_debias_loss_is_zero_for_equally_likely_sentences_without_jensen_gap():
    # every token with the same probability 0.3: P = 0.3 and l = log 0.3 for both sentences -> 0
    p = torch.tensor([0.3])
    lp = torch.log(p)
    assert be.debias_loss(p, lp, p, lp).item() == pytest.approx(0.0, abs=1e-7)


def test_retention_loss_hand_computed():
    # P_W = [e^-1, e^-2], edited l = [-1, -3]
    # e^-1 (-1 - (-1)) = 0 ;  e^-2 (-2 - (-3)) = e^-2 ;  L_r = e^-2 / 2
    p0 = torch.tensor([E**-1, E**-2], requires_grad=True)
    l1 = torch.tensor([-1.0, -3.0], requires_grad=True)
    loss = be.retention_loss(p0, l1)
    assert loss.item() == pytest.approx(E**-2 / 2, rel=1e-6)
    loss.backward()
    assert p0.grad is None  # the original model's scores are a fixed target
    assert l1.grad.tolist() == pytest.approx([-(E**-1) / 2, -(E**-2) / 2], rel=1e-6)


def test_token_kl_retention_hand_computed():
    # token 1: p0 = (1/2, 1/2), p1 = (1/4, 3/4): 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3)
    # token 2: p0 = p1 -> 0 ;  mean = 1/4 ln(4/3)
    p0 = torch.log(torch.tensor([[0.5, 0.5], [0.2, 0.8]]))
    p1 = torch.log(torch.tensor([[0.25, 0.75], [0.2, 0.8]]))
    assert be.token_kl_retention(p0, p1).item() == pytest.approx(0.25 * math.log(4 / 3), rel=1e-6)


def test_sentence_scores_hand_computed():
    # row 0: [start=0, 1, 0], scored from index 1: token 1 read at position 0, token 0 at position 1
    # row 1: [0, 1, 1, 0] scored from index 2 (a context token is not scored), padded row 0 (pad id 9)
    batch = be.make_token_batch([([0, 1, 0], 1), ([0, 1, 1, 0], 2)], pad_id=9)
    assert batch.input_ids.tolist() == [[0, 1, 0, 9], [0, 1, 1, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch.rows.tolist() == [0, 0, 1, 1]
    assert batch.preds.tolist() == [0, 1, 1, 2]
    assert batch.targets.tolist() == [1, 0, 1, 0]
    assert batch.pred_mask().tolist() == [[True, True, False, False], [False, True, True, False]]
    # token logits over a 2-word vocabulary: [0, 0] -> p = 1/2 each; [ln 3, 0] -> p(0) = 3/4
    ln3 = math.log(3)
    token_logits = torch.tensor([[0.0, 0.0], [ln3, 0.0], [ln3, 0.0], [0.0, 0.0]])
    p, lp = be.sentence_scores(token_logits, batch)
    # row 0: p(1) = 1/2, p(0) = 3/4 -> P = 5/8, l = (ln 1/2 + ln 3/4) / 2
    # row 1: p(1) = 1/4, p(0) = 1/2 -> P = 3/8, l = (ln 1/4 + ln 1/2) / 2
    assert p.tolist() == pytest.approx([5 / 8, 3 / 8], rel=1e-6)
    assert lp.tolist() == pytest.approx([math.log(3 / 8) / 2, math.log(1 / 8) / 2], rel=1e-6)


def test_make_token_batch_refuses_a_sequence_without_scored_token():
    with pytest.raises(ConfigError, match="max_length"):
        be.make_token_batch([([0, 1, 2], 3)], pad_id=0)


def test_sentence_request_matches_the_benchmark_requests(train_examples):
    reqs, ids = stereoset_requests(train_examples)
    by_id = dict(zip(ids, reqs, strict=True))
    for ex in train_examples:
        for label in ("stereotype", "anti-stereotype", "unrelated"):
            assert be.sentence_request(ex, label) == by_id[ex.by_label(label).id]
    assert {ex.task for ex in train_examples} == {"intrasentence", "intersentence"}


# ------------------------------------------------------------------------------ gradient decomposition


def test_rank_one_decomposition_equals_autograd_weight_gradient():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    x = torch.randn(2, 4, 5)
    w = torch.randn(2, 4, 3)
    with be.GradientTracer({"lin": lin}) as tracer:
        loss = (torch.tanh(lin(x)) * w).sum()
        loss.backward()
    keys, values_grad = tracer.factors("lin")
    assert keys.shape == (8, 5) and values_grad.shape == (8, 3)
    torch.testing.assert_close(be.weight_grad_from_factors(keys, values_grad), lin.weight.grad)


def test_masked_factors_cover_the_gradient_when_the_loss_reads_only_masked_positions():
    torch.manual_seed(1)
    lin = nn.Linear(4, 2, bias=False)
    x = torch.randn(3, 5, 4)
    mask = torch.rand(3, 5) > 0.5
    with be.GradientTracer({"lin": lin}) as tracer:
        (lin(x)[mask] ** 2).sum().backward()
    keys, values_grad = tracer.factors("lin", mask)
    assert keys.shape[0] == int(mask.sum())
    torch.testing.assert_close(be.weight_grad_from_factors(keys, values_grad), lin.weight.grad)
    # the hooks are gone after the block
    assert not lin._forward_hooks


# ------------------------------------------------------------------------------------- editor and solve


def test_solve_shift_is_the_ridge_least_squares_solution_and_tends_to_mends_sum():
    torch.manual_seed(2)
    k = torch.randn(7, 4, dtype=torch.float64)
    d = torch.randn(7, 3, dtype=torch.float64)
    lam = torch.tensor(0.5, dtype=torch.float64)
    s = be.solve_shift(k, d, lam)
    # min ||K S - D||^2 + e^lam ||S||^2  ==  least squares on [K; sqrt(e^lam) I] S = [D; 0]
    aug_k = torch.cat([k, math.exp(0.25) * torch.eye(4, dtype=torch.float64)])
    aug_d = torch.cat([d, torch.zeros(4, 3, dtype=torch.float64)])
    torch.testing.assert_close(s, torch.linalg.lstsq(aug_k, aug_d).solution)
    # large ridge: S -> e^-lam K^T D, i.e. W + S^T = W + e^-lam sum_t d_t u_t^T (MEND's summed rank-1 update)
    big = torch.tensor(20.0, dtype=torch.float64)
    torch.testing.assert_close(be.solve_shift(k, d, big), math.exp(-20.0) * k.T @ d, rtol=1e-6, atol=0)


def test_meta_gradient_through_the_solve_matches_malmens_closed_form():
    torch.manual_seed(3)
    k = torch.randn(6, 4, dtype=torch.float64)
    d = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 3, dtype=torch.float64)  # dL/dS (the model's weight gradient, transposed)
    s = be.solve_shift(k, d, lam)
    (g * s).sum().backward()
    m_inv_g = torch.linalg.solve(k.T @ k + math.exp(0.3) * torch.eye(4, dtype=torch.float64), g)
    torch.testing.assert_close(d.grad, k @ m_inv_g)  # dL/dD = K (K^T K + e^lam I)^-1 G
    assert lam.grad.item() == pytest.approx(-math.exp(0.3) * float((m_inv_g * s.detach()).sum()), rel=1e-9)


def test_running_normalizer_matches_batch_statistics():
    torch.manual_seed(4)
    x = torch.randn(50, 6) * torch.arange(1, 7) + 3
    norm = be.RunningNormalizer(6)
    norm.update(x[:13])
    norm.update(x[13:])
    torch.testing.assert_close(norm.mean, x.mean(0))
    torch.testing.assert_close(norm.std(), x.std(0))
    z = norm(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(6), atol=1e-5, rtol=0)


def test_editor_starts_as_identity_and_its_shift_has_the_weight_shape():
    torch.manual_seed(5)
    shapes = {"a.weight": (6, 4), "b.weight": (6, 4), "c.weight": (5, 3)}
    editor = be.BiasEditor(shapes, rank=3, n_blocks=2, edit_lr=0.1, seed=0)
    assert sorted(editor.nets) == ["5x3", "6x4"]  # one network per shape, shared by a and b
    assert editor.route["a.weight"] == ("6x4", 0) and editor.route["b.weight"] == ("6x4", 1)
    k, g = torch.randn(10, 6), torch.randn(10, 4)
    editor.update_statistics("a.weight", k, g)
    net, idx = editor.net("a.weight")
    for block in net.blocks:  # MALMEN's init: B = 0, shift = 0, scale = 1
        assert not block.B.any() and not block.shift.weight.any() and (block.scale.weight == 1).all()
    pk, pv = net(k, g, idx)
    z = net.normalizer(torch.cat((k, g), -1))
    torch.testing.assert_close(torch.cat((pk, pv), -1), z)  # identity on the standardised factors
    # d_t = -lr (u_t . u~_t) delta~_t ; S = (K^T K + e^0 I)^-1 K^T D
    d = editor.value_diffs("a.weight", k, g)
    torch.testing.assert_close(d, -0.1 * (k * z[:, :6]).sum(-1, keepdim=True) * z[:, 6:])
    s = editor.shift("a.weight", k, g)
    assert s.shape == (6, 4)  # (in, out): the Linear weight (out, in) becomes W + S^T
    torch.testing.assert_close(s, torch.linalg.solve(k.T @ k + torch.eye(6), k.T @ d))
    # once B leaves zero the editor is no longer the identity
    with torch.no_grad():
        net.blocks[0].B.fill_(0.5)
    assert not torch.allclose(torch.cat(net(k, g, idx), -1), z)


# ------------------------------------------------------------------------------------- model plumbing


def test_edited_linears_resolve_layers_and_refuse_bad_flags(tiny):
    model, _ = tiny
    lins = be.edited_linears(model, (-1,), "down_proj")
    assert list(lins) == ["model.layers.1.mlp.down_proj.weight"]
    assert lins["model.layers.1.mlp.down_proj.weight"] is model.model.layers[1].mlp.down_proj
    assert list(be.edited_linears(model, (1, 0), "up_proj")) == [
        "model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ConfigError, match="layers: index 5 out of range"):
        be.edited_linears(model, (5,))
    with pytest.raises(ConfigError, match=r"layers: .* names a layer twice"):
        be.edited_linears(model, (0, -2))
    with pytest.raises(ConfigError, match="module"):
        be.edited_linears(model, (-1,), "q_proj")


def test_cut_decoder_pass_equals_the_full_model(tiny, train_examples):
    model, tok = tiny
    enc, _ = be._encode_examples(tok, train_examples[:3], 0, 128)
    batch = be.make_token_batch([e.anti for e in enc] + [e.stereo for e in enc], tok.pad_token_id)
    runner = be._Runner(model, first_block=1)
    runner.verify(batch)
    assert runner.head_ok and runner.top_ok
    with torch.no_grad():
        ref = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[batch.rows, batch.preds]
        full, h = runner.full(batch, capture=True)
        top = runner.top(batch, h)
    torch.testing.assert_close(full, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(top, ref, atol=1e-5, rtol=1e-5)
    assert len(model.model.layers) == 2  # the layer list is restored


def test_runner_falls_back_to_full_passes_when_a_shortcut_does_not_fit(tiny, train_examples, caplog):
    model, tok = tiny
    enc, _ = be._encode_examples(tok, train_examples[:2], 0, 128)
    batch = be.make_token_batch([e.stereo for e in enc], tok.pad_token_id)
    runner = be._Runner(model, first_block=1)
    runner.head = None  # e.g. a model without get_output_embeddings()
    with caplog.at_level("WARNING", logger="biasunlearn.baselines.biasedit"):
        runner.verify(batch)
    assert not runner.head_ok and not runner.top_ok
    assert "using full forward passes" in caplog.text
    with torch.no_grad():
        ref = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[batch.rows, batch.preds]
        logits, h = runner.full(batch, capture=True)
        assert h is None
        torch.testing.assert_close(logits, ref)
        torch.testing.assert_close(runner.top(batch, None), ref)


def test_two_phase_meta_gradient_equals_differentiating_through_the_edited_model(tiny, train_examples):
    """MALMEN's decoupled backward (model grad at W + S^T, then <G, S> into the editor) gives the same editor
    gradient as autograd through the edited model's forward pass."""
    model, tok = tiny
    for p in model.parameters():
        p.requires_grad_(False)
    lins = be.edited_linears(model, (-2, -1))
    for lin in lins.values():
        lin.weight.requires_grad_(True)
    shapes = {n: (lin.in_features, lin.out_features) for n, lin in lins.items()}
    enc, _ = be._encode_examples(tok, train_examples[:3], 0, 128)
    editor = be.BiasEditor(shapes, rank=4, n_blocks=2, edit_lr=1e-2, seed=0)
    with torch.no_grad():  # a non-trivial editor
        for net in editor.nets.values():
            for block in net.blocks:
                block.B.normal_(0, 0.01)
    reference_editor = copy.deepcopy(editor)

    session = be._Session(model, lins, 0, editor, tok.pad_token_id, "paper", 4.0)
    frozen = torch.optim.SGD(editor.parameters(), lr=0.0)  # keeps the gradient, changes nothing
    session.step(enc, frozen, max_grad_norm=1e9)
    two_phase = {n: p.grad.clone() for n, p in editor.named_parameters()}

    # direct: loss of the edited model as a function of the editor's parameters
    pairs = session.pair_batch(enc)
    unrel = session.unrelated_batch(enc)
    factors, _, _, _ = session.cache(pairs)
    for n, (k, g) in factors.items():
        reference_editor.update_statistics(n, k, g)
    with torch.no_grad():
        p0 = be.sentence_scores(session.runner.full(unrel)[0], unrel)[0]
    weights = {n: session.originals[n] + reference_editor.shift(n, k, g).T for n, (k, g) in factors.items()}

    def token_logits(batch):
        out = torch.func.functional_call(model, weights, (), {"input_ids": batch.input_ids,
                                                             "attention_mask": batch.attention_mask})
        return out.logits[batch.rows, batch.preds]

    ld, _ = be._Session.debias(token_logits(pairs), pairs)
    lr_ = be.retention_loss(p0, be.sentence_scores(token_logits(unrel), unrel)[1])
    (ld + 4.0 * lr_).backward()
    direct = dict(reference_editor.named_parameters())
    assert any(g.abs().sum() > 0 for g in two_phase.values())
    for n, g in two_phase.items():
        torch.testing.assert_close(g, direct[n].grad, rtol=1e-3, atol=1e-9)


# -------------------------------------------------------------------------------------------- training


def test_training_reduces_the_debiasing_loss_and_leaves_the_model_unchanged(tiny, train_examples):
    model, tok = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    # one fixed batch of 4 examples: every step edits the same training batch
    deltas, info = be.train_biasedit(model, tok, train_examples[:4], layers=(-1,), editor_rank=8, steps=15,
                                     batch_size=4, lr=1e-3, edit_lr=1e-3, seed=0)
    log = info["log"]
    assert len(log) == 15 and all(r["debias_loss_pre"] == pytest.approx(log[0]["debias_loss_pre"]) for r in log)
    first, last = log[0]["debias_loss_edited"], log[-1]["debias_loss_edited"]
    assert last < 0.75 * first  # the trained editor's edit removes more of the loss than the untrained one
    assert last < log[0]["debias_loss_pre"]
    assert info["step_sizes"]["model.layers.1.mlp.down_proj.weight"] > 1e-3  # the step size was learned
    # the model is exactly as it was
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.requires_grad == flags[n] and p.grad is None
    assert not model.training
    assert list(deltas) == ["model.layers.1.mlp.down_proj.weight"]
    assert deltas["model.layers.1.mlp.down_proj.weight"].shape == (32, 64)
    assert info["final"]["examples"] == 4 and info["final"]["tokens"] > 0


def test_final_deltas_lower_the_debiasing_loss_on_the_training_examples(tiny, train_examples):
    model, tok = tiny
    examples = train_examples[:4]
    deltas, _ = be.train_biasedit(model, tok, examples, layers=(-1,), editor_rank=8, steps=15, batch_size=4,
                                  lr=1e-3, edit_lr=1e-3, seed=0)
    enc, _ = be._encode_examples(tok, examples, 0, 128)
    pairs = be.make_token_batch([e.stereo for e in enc] + [e.anti for e in enc], tok.pad_token_id)

    def loss() -> float:
        with torch.no_grad():
            out = model(input_ids=pairs.input_ids, attention_mask=pairs.attention_mask).logits
            return be._Session.debias(out[pairs.rows, pairs.preds], pairs)[0].item()

    before = loss()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight += deltas["model.layers.1.mlp.down_proj.weight"]
    assert loss() < 0.8 * before


def test_only_the_chosen_layers_change(tiny, train_examples, tmp_path):
    model, tok = tiny
    deltas, info = be.train_biasedit(model, tok, train_examples[:4], layers=(0,), module="up_proj", editor_rank=4,
                                     steps=2, batch_size=2, seed=1)
    assert list(deltas) == ["model.layers.0.mlp.up_proj.weight"] == info["config"]["edited_parameters"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    be.save_deltas(deltas, tmp_path / "d", {"model": "tiny"})
    assert be.apply_deltas(model, tmp_path / "d") == ["model.layers.0.mlp.up_proj.weight"]
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed == ["model.layers.0.mlp.up_proj.weight"]


def test_train_biasedit_validates_its_arguments(tiny, train_examples):
    model, tok = tiny
    with pytest.raises(ConfigError, match="steps"):
        be.train_biasedit(model, tok, train_examples, layers=(-1,), steps=0)
    with pytest.raises(ConfigError, match="retention"):
        be.train_biasedit(model, tok, train_examples, layers=(-1,), retention="mse")
    with pytest.raises(ConfigError, match="lr"):
        be.train_biasedit(model, tok, train_examples, layers=(-1,), lr=-1.0)
    with pytest.raises(ConfigError, match="train_examples"):
        be.train_biasedit(model, tok, [], layers=(-1,))
    with pytest.raises(ConfigError, match="layers"):
        be.train_biasedit(model, tok, train_examples)  # (-3, -2, -1) on a 2-layer model


def test_token_kl_retention_option_trains(tiny, train_examples):
    model, tok = tiny
    deltas, info = be.train_biasedit(model, tok, train_examples[:2], layers=(-1,), editor_rank=4, steps=2,
                                     batch_size=2, lr=1e-3, edit_lr=1e-3, retention="token_kl", final_examples=1)
    assert info["config"]["retention"] == "token_kl" and info["final"]["examples"] == 1
    kls = [r["retention_loss_edited"] for r in info["log"]]
    assert min(kls) > -1e-7 and max(kls) > 1e-6  # a true KL: zero without an edit, positive with one
    assert torch.isfinite(next(iter(deltas.values()))).all()


# ------------------------------------------------------------------------------------------ save/apply


def _fake_deltas(model):
    w = model.model.layers[1].mlp.down_proj.weight
    g = torch.Generator().manual_seed(0)
    return {"model.layers.1.mlp.down_proj.weight": torch.randn(w.shape, generator=g) * 0.01}


def test_save_and_apply_round_trip(tiny, tmp_path):
    model, _ = tiny
    deltas = _fake_deltas(model)
    folder = be.save_deltas(deltas, tmp_path / "edit", {"model": "tiny", "seed": 0})
    assert sorted(p.name for p in folder.iterdir()) == ["provenance.json", "weight_deltas.safetensors"]
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["method"] == "biasedit" and prov["model"] == "tiny" and prov["seed"] == 0
    assert prov["deltas"] == {"model.layers.1.mlp.down_proj.weight": {"shape": [32, 64], "dtype": "float32"}}
    w0 = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    be.apply_deltas(model, folder)
    torch.testing.assert_close(model.model.layers[1].mlp.down_proj.weight.detach(),
                               w0 + deltas["model.layers.1.mlp.down_proj.weight"])
    with pytest.raises(ModelError, match="already exists"):
        be.save_deltas(deltas, folder, {})
    be.save_deltas(deltas, folder, {"model": "again"}, overwrite=True)
    assert be.read_provenance(folder)["model"] == "again"


def test_apply_refuses_wrong_shape_unknown_parameter_and_missing_file(tiny, tmp_path):
    from safetensors.torch import save_file

    model, _ = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    good = _fake_deltas(model)

    wrong_shape = tmp_path / "shape"
    be.save_deltas({**good, "model.layers.0.mlp.down_proj.weight": torch.zeros(64, 32)}, wrong_shape, {})
    with pytest.raises(ModelError, match=r"model.layers.0.mlp.down_proj.weight has shape \(64, 32\)"):
        be.apply_deltas(model, wrong_shape)

    unknown = tmp_path / "unknown"
    be.save_deltas({**good, "model.layers.7.mlp.down_proj.weight": torch.zeros(32, 64)}, unknown, {})
    with pytest.raises(ModelError, match=re.escape("unknown parameter 'model.layers.7.mlp.down_proj.weight'")):
        be.apply_deltas(model, unknown)

    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=re.escape("weight_deltas.safetensors: weight deltas file not found")):
        be.apply_deltas(model, tmp_path / "empty")

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "weight_deltas.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        be.apply_deltas(model, garbage)

    other = tmp_path / "other"
    other.mkdir()
    save_file(good, str(other / "weight_deltas.safetensors"))
    (other / "provenance.json").write_text(json.dumps({"method": "dpo"}))
    with pytest.raises(ModelError, match="method is 'dpo'"):
        be.apply_deltas(model, other)

    # every refusal left the model untouched (the good delta was not applied before the bad one was seen)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_save_refuses_empty_and_non_finite_deltas(tmp_path):
    with pytest.raises(ModelError, match="no weight deltas"):
        be.save_deltas({}, tmp_path / "a", {})
    with pytest.raises(ModelError, match="non-finite"):
        be.save_deltas({"w": torch.tensor([1.0, float("nan")])}, tmp_path / "b", {})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
