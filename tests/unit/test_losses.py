"""The BiasUnlearn loss terms checked against values worked out by hand on tiny tensors.

Logits are built as ``log(p)`` of a probability vector ``p`` that sums to one, so that ``log_softmax``
returns ``log(p)`` exactly and every expected value below is a short expression in ``log 2`` / ``log 3``.
Vocabulary size 3 throughout.
"""

from __future__ import annotations

import math

import pytest
import torch

from biasunlearn.methods import losses
from biasunlearn.methods.objective import METHODS, Method, ObjectiveWeights, objective

LOG2 = math.log(2.0)
LOG3 = math.log(3.0)
ATOL = 1e-6


def _logits(*dists: list[float]) -> torch.Tensor:
    """``[1, T, V]`` logits whose softmax at position t is ``dists[t]`` (normalised if needed)."""
    t = torch.tensor(dists, dtype=torch.float64)
    return (t / t.sum(-1, keepdim=True)).log().float()[None]


def _close(actual: torch.Tensor, expected, atol: float = ATOL) -> None:
    torch.testing.assert_close(actual.double(), torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


# --------------------------------------------------------------------------------------------------
# token_logprobs / sequence_logprob
# --------------------------------------------------------------------------------------------------

# One sequence, T = 3, input_ids = [2, 0, 1].
#   position 0: p = [1/2, 1/4, 1/4] predicts token x_1 = 0  -> log(1/2) = -log 2
#   position 1: p = [1/4, 1/4, 1/2] predicts token x_2 = 1  -> log(1/4) = -2 log 2
#   position 2: predicts nothing (no token 3); a peaked distribution that must never count.
SEQ_LOGITS = _logits([2, 1, 1], [1, 1, 2], [1000, 1, 1])
SEQ_IDS = torch.tensor([[2, 0, 1]])


def test_token_logprobs_by_hand():
    lp = losses.token_logprobs(SEQ_LOGITS, SEQ_IDS)
    assert lp.shape == (1, 2)
    _close(lp, [[-LOG2, -2 * LOG2]])


def test_token_logprobs_shift_uses_previous_position():
    # Swapping the targets must pick the other entries of the same rows:
    # position 0 -> token 1: log(1/4); position 1 -> token 0: log(1/4).
    lp = losses.token_logprobs(SEQ_LOGITS, torch.tensor([[0, 1, 0]]))
    _close(lp, [[-2 * LOG2, -2 * LOG2]])


def test_token_logprobs_batched_rows_are_independent():
    # Row 2 uses p = 1/3 everywhere: every target gets log(1/3).
    logits = torch.cat([SEQ_LOGITS, _logits([1, 1, 1], [1, 1, 1], [1, 1, 1])])
    ids = torch.tensor([[2, 0, 1], [0, 2, 2]])
    _close(losses.token_logprobs(logits, ids), [[-LOG2, -2 * LOG2], [-LOG3, -LOG3]])


def test_token_logprobs_are_computed_in_float32_from_half_logits():
    lp = losses.token_logprobs(SEQ_LOGITS.to(torch.bfloat16), SEQ_IDS)
    assert lp.dtype == torch.float32
    _close(lp, [[-LOG2, -2 * LOG2]], atol=2e-2)


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        ([False, True, True], -3 * LOG2),  # log(1/2) + log(1/4) = log(1/8)
        ([False, False, True], -2 * LOG2),  # only token 2: log(1/4)
        ([False, True, False], -LOG2),  # only token 1: log(1/2)
        ([True, False, False], 0.0),  # position 0 is never a target, even when marked
        ([True, True, True], -3 * LOG2),  # marking position 0 adds nothing
        ([False, False, False], 0.0),
    ],
)
def test_sequence_logprob_region_masking(mask, expected):
    lp = losses.sequence_logprob(SEQ_LOGITS, SEQ_IDS, torch.tensor([mask]))
    assert lp.shape == (1,)
    _close(lp, [expected])


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        ([False, True, True], -3 * LOG2 / 2),  # log(1/8) / 2 tokens
        ([False, False, True], -2 * LOG2),  # log(1/4) / 1 token
        ([True, True, True], -3 * LOG2 / 2),  # position 0 is not counted in the divisor either
        ([False, False, False], 0.0),  # empty region: 0 / max(0, 1), no NaN
    ],
)
def test_sequence_logprob_normalize_divides_by_region_token_count(mask, expected):
    lp = losses.sequence_logprob(SEQ_LOGITS, SEQ_IDS, torch.tensor([mask]), normalize=True)
    assert torch.isfinite(lp).all()
    _close(lp, [expected])


def test_sequence_logprob_per_row_with_padding():
    # Row 1: the hand sequence, region = tokens 1..2 -> log(1/8).
    # Row 2: p = 1/3 everywhere, region = token 1 only (token 2 is padding) -> log(1/3).
    logits = torch.cat([SEQ_LOGITS, _logits([1, 1, 1], [1, 1, 1], [1, 1, 1])])
    ids = torch.tensor([[2, 0, 1], [0, 2, 1]])
    mask = torch.tensor([[False, True, True], [False, True, False]])
    _close(losses.sequence_logprob(logits, ids, mask), [-3 * LOG2, -LOG3])
    # normalised: log(1/8)/2 and log(1/3)/1
    _close(losses.sequence_logprob(logits, ids, mask, normalize=True), [-1.5 * LOG2, -LOG3])


# --------------------------------------------------------------------------------------------------
# npo_loss
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0, 2.0])
def test_npo_at_reference_is_two_over_beta_log2(beta):
    # ratio = 0 -> log σ(0) = log(1/2) -> loss = -(2/β)·(-log 2) = (2/β)·log 2, whatever the log-probs.
    lp = torch.tensor([-3.0, -10.0, -0.5])
    _close(losses.npo_loss(lp, lp.clone(), beta=beta), 2.0 / beta * LOG2, atol=1e-5)


def test_npo_default_beta_is_0_1():
    lp = torch.tensor([-4.0])
    _close(losses.npo_loss(lp, lp.clone()), 20.0 * LOG2, atol=1e-5)


def test_npo_hand_case_with_ratios():
    # β = 1/2, ratio = policy - ref = [2 log 3, -2 log 3]
    #   -β·ratio = [-log 3, log 3];  σ(-log 3) = 1/(1+3) = 1/4,  σ(log 3) = 3/(3+1) = 3/4
    #   mean log σ = (log(1/4) + log(3/4)) / 2 = log(3/16) / 2
    #   loss = -(2/β)·log(3/16)/2 = -4·log(3/16)/2 = 2·log(16/3)
    ref = torch.tensor([-1.0, -2.0])
    policy = ref + torch.tensor([2 * LOG3, -2 * LOG3])
    _close(losses.npo_loss(policy, ref, beta=0.5), 2 * math.log(16 / 3), atol=1e-5)


def test_npo_decreases_as_policy_likelihood_falls():
    ref = torch.zeros(1)
    values = [losses.npo_loss(torch.tensor([x]), ref, beta=0.1).item() for x in (5.0, 0.0, -5.0, -50.0, -500.0)]
    assert values == sorted(values, reverse=True)
    assert values[-1] < 1e-3  # -(2/β)·log σ(-β x) -> 0 as x -> -inf


def test_npo_gradient_matches_derivation_and_ref_is_detached():
    # d/dx [-(2/β)·log σ(-β x)] = -(2/β)·σ(β x)·(-β) = 2·σ(β x)   (since d/dz log σ(z) = σ(-z)),
    # and the loss is a mean over B = 2 sequences, so d loss / d policy_i = 2·σ(β·ratio_i) / 2.
    # With β·ratio = [log 3, -log 3]: σ = [3/4, 1/4] -> gradient [3/4, 1/4].
    ref = torch.tensor([-1.0, -2.0], requires_grad=True)
    policy = (ref.detach() + torch.tensor([2 * LOG3, -2 * LOG3])).requires_grad_(True)
    losses.npo_loss(policy, ref, beta=0.5).backward()
    _close(policy.grad, [0.75, 0.25])
    assert ref.grad is None  # the reference log-probability is a constant


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_npo_gradient_generic_ratio_matches_closed_form(beta):
    ratio = torch.tensor([-3.0, -0.2, 0.0, 1.5])
    ref = torch.tensor([-7.0, -1.0, -2.0, -3.0])
    policy = (ref + ratio).requires_grad_(True)
    losses.npo_loss(policy, ref, beta=beta).backward()
    _close(policy.grad, 2 * torch.sigmoid(beta * ratio.double()) / len(ratio), atol=1e-6)


def test_npo_gradient_at_reference_equals_gradient_ascent():
    # At ratio 0: 2·σ(0)/B = 1/B, which is exactly the gradient of gradient_ascent_loss = mean(log π).
    # (The npo_loss docstring calls it "half that of gradient ascent"; the formula gives equal.)
    lp = torch.tensor([-3.0, -1.0, -2.0, -5.0])
    p1 = lp.clone().requires_grad_(True)
    losses.npo_loss(p1, lp.clone(), beta=0.1).backward()
    p2 = lp.clone().requires_grad_(True)
    losses.gradient_ascent_loss(p2).backward()
    _close(p1.grad, torch.full((4,), 0.25))
    _close(p1.grad, p2.grad)


# --------------------------------------------------------------------------------------------------
# gradient_ascent_loss
# --------------------------------------------------------------------------------------------------


def test_gradient_ascent_is_mean_log_likelihood():
    lp = torch.tensor([-1.0, -3.0, -8.0], requires_grad=True)
    loss = losses.gradient_ascent_loss(lp)
    _close(loss, -4.0)  # (-1 - 3 - 8) / 3
    loss.backward()
    _close(lp.grad, [1 / 3, 1 / 3, 1 / 3])  # minimising it pushes every log-likelihood down


# --------------------------------------------------------------------------------------------------
# retention_loss
# --------------------------------------------------------------------------------------------------


def test_retention_loss_is_token_mean_cross_entropy_over_masked_tokens():
    # Row 1: the hand sequence, region tokens 1, 2 -> NLLs log 2 and 2 log 2.
    # Row 2: position 0 has p = [1/4, 1/4, 1/2] and predicts token 1 -> NLL 2 log 2 (in the region);
    #        token 2 is padding (mask False); position 1 gives it probability ~0, so counting it would
    #        blow the loss up.
    # Token mean: (log 2 + 2 log 2 + 2 log 2) / 3 = (5/3) log 2.
    # (A mean of per-sequence means would be (1.5 log 2 + 2 log 2) / 2 = 1.75 log 2 instead.)
    logits = torch.cat([SEQ_LOGITS, _logits([1, 1, 2], [1e6, 1, 1], [1, 1, 1])])
    ids = torch.tensor([[2, 0, 1], [0, 1, 2]])
    mask = torch.tensor([[False, True, True], [False, True, False]])
    _close(losses.retention_loss(logits, ids, mask), 5 / 3 * LOG2, atol=1e-5)
    # per_sequence: row means log 2·(1+2)/2 = 1.5 log 2 and 2 log 2 -> mean 1.75 log 2
    _close(losses.retention_loss(logits, ids, mask, per_sequence=True), 1.75 * LOG2, atol=1e-5)
    # a row without region tokens does not count in the per-sequence mean
    empty = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)])
    logits3 = torch.cat([logits, logits[:1]])
    ids3 = torch.cat([ids, ids[:1]])
    _close(losses.retention_loss(logits3, ids3, empty, per_sequence=True), 1.75 * LOG2, atol=1e-5)


def test_retention_loss_ignores_position_zero_and_empty_mask_is_zero():
    only_first = torch.tensor([[True, False, False]])
    _close(losses.retention_loss(SEQ_LOGITS, SEQ_IDS, only_first), 0.0)
    _close(losses.retention_loss(SEQ_LOGITS, SEQ_IDS, torch.tensor([[True, False, True]])), 2 * LOG2)


def test_retention_loss_matches_torch_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 5, generator=g)
    ids = torch.randint(0, 5, (3, 6), generator=g)
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 5), targets.reshape(-1),
                                                 ignore_index=-100)
    _close(losses.retention_loss(logits, ids, mask), expected.item(), atol=1e-5)


# --------------------------------------------------------------------------------------------------
# forward_kl
# --------------------------------------------------------------------------------------------------

# q (reference) = [1/2, 1/4, 1/4], p (policy) = [1/6, 1/3, 1/2]
#   KL(q||p) = 1/2·log(3) + 1/4·log(3/4) + 1/4·log(1/2) = 3/4·log 3 - 3/4·log 2 = 0.75·log 1.5 ≈ 0.3041
#   KL(p||q) = 1/6·log(1/3) + 1/3·log(4/3) + 1/2·log 2   = 7/6·log 2 - 1/2·log 3   ≈ 0.2594
Q = [2, 1, 1]
P = [1, 2, 3]
KL_QP = 0.75 * math.log(1.5)
KL_PQ = 7 / 6 * LOG2 - 0.5 * LOG3


def test_forward_kl_zero_when_policy_equals_reference():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    _close(losses.forward_kl(logits, logits.clone(), mask), 0.0, atol=1e-6)


def test_forward_kl_hand_case_and_direction():
    assert abs(KL_QP - KL_PQ) > 0.04  # the case tells the two directions apart
    policy = _logits(P, P, P)
    ref = _logits(Q, Q, Q)
    mask = torch.tensor([[False, True, True]])
    _close(losses.forward_kl(policy, ref, mask), KL_QP, atol=1e-5)  # KL(ref || policy)
    # swapping the roles gives the other direction
    _close(losses.forward_kl(ref, policy, mask), KL_PQ, atol=1e-5)


def test_forward_kl_masking_by_token():
    # position 0 (predicts token 1): policy == reference -> KL 0
    # position 1 (predicts token 2): hand case -> KL(q||p)
    # position 2: predicts nothing; policy and reference differ wildly there, it must never count.
    policy = _logits(Q, P, [1000, 1, 1])
    ref = _logits(Q, Q, [1, 1, 1000])
    cases = {
        (False, True, False): 0.0,
        (False, False, True): KL_QP,
        (False, True, True): KL_QP / 2,  # mean over the two region tokens
        (True, False, True): KL_QP,  # position 0 is never a target
        (False, False, False): 0.0,
    }
    for mask, expected in cases.items():
        _close(losses.forward_kl(policy, ref, torch.tensor([mask])), expected, atol=1e-5)


def test_forward_kl_token_mean_over_batch():
    # Row 1: one region token with KL(q||p); row 2: three region tokens with KL 0 -> KL(q||p) / 4.
    policy = torch.cat([_logits(Q, P, Q, Q), _logits(Q, Q, Q, Q)])
    ref = torch.cat([_logits(Q, Q, Q, Q), _logits(Q, Q, Q, Q)])
    mask = torch.tensor([[False, False, True, False], [False, True, True, True]])
    _close(losses.forward_kl(policy, ref, mask), KL_QP / 4, atol=1e-5)


def test_forward_kl_reference_is_detached_and_policy_gets_gradient():
    policy = _logits(Q, P, P).requires_grad_(True)
    ref = _logits(Q, Q, Q).requires_grad_(True)
    losses.forward_kl(policy, ref, torch.tensor([[False, True, True]])).backward()
    assert ref.grad is None or torch.count_nonzero(ref.grad) == 0
    # d KL(q || softmax(z)) / dz = softmax(z) - q, divided by the 2 region tokens (positions 0 and 1).
    # Position 0 has p = q -> 0; position 1 -> (p - q) / 2; position 2 predicts nothing -> 0.
    p = torch.tensor(P, dtype=torch.float64) / 6
    q = torch.tensor(Q, dtype=torch.float64) / 4
    zero = torch.zeros(3, dtype=torch.float64)
    expected = torch.stack([zero, (p - q) / 2, zero])
    _close(policy.grad[0], expected, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# total_loss
# --------------------------------------------------------------------------------------------------


def test_total_loss_default_weights():
    f, r, k = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)
    _close(losses.total_loss(f, r, k), 0.4 * 1 + 0.4 * 2 + 0.2 * 3)  # = 1.8


@pytest.mark.parametrize(
    ("weights", "expected"),
    [((1.0, 0.0, 0.0), 1.0), ((0.0, 1.0, 0.0), 2.0), ((0.0, 0.0, 1.0), 3.0), ((0.5, 0.25, 2.0), 7.0)],
)
def test_total_loss_custom_weights(weights, expected):
    # (0.5, 0.25, 2.0): 0.5·1 + 0.25·2 + 2·3 = 7
    _close(losses.total_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), weights), expected)


# --------------------------------------------------------------------------------------------------
# objective()
# --------------------------------------------------------------------------------------------------

EXPECTED_TERMS = {
    "biasunlearn": {"forget", "retain", "kl"},
    "no_retention": {"forget", "kl"},
    "no_kl": {"forget", "retain"},
    "no_adversarial": {"forget", "retain", "kl"},
    "no_swapping": {"forget", "retain", "kl"},
    "ga": {"forget"},
    "npo": {"forget"},
    "graddiff": {"forget", "retain"},
    "cda": {"retain"},
    "sft": {"retain"},
}
OTHER_ENGINES = {"dpo": "dpo", "biasedit": "biasedit"}  # trained outside this objective
EXPECTED_FORGET = {"ga": "ga", "graddiff": "ga"}  # every other method uses NPO

W = ObjectiveWeights(forget=0.3, retain=0.5, kl=0.7, beta=0.2)


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    v = 11
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    return {
        "forget_logits": torch.randn(2, 5, v, generator=g),
        "forget_ids": torch.randint(0, v, (2, 5), generator=g),
        "forget_mask": mask,
        "forget_ref_logprob": torch.tensor([-9.0, -4.0]),
        "retain_logits": torch.randn(3, 5, v, generator=g),
        "retain_ids": torch.randint(0, v, (3, 5), generator=g),
        "retain_mask": torch.tensor([[0, 1, 1, 0, 0], [0, 1, 1, 1, 1], [0, 0, 0, 1, 0]], dtype=torch.bool),
        "kl_logits": torch.randn(2, 5, v, generator=g),
        "kl_ref_logits": torch.randn(2, 5, v, generator=g),
        "kl_mask": mask,
    }


def test_registered_methods_and_flags():
    assert set(METHODS.names()) == set(EXPECTED_TERMS) | set(OTHER_ENGINES)
    for name, engine in OTHER_ENGINES.items():
        assert METHODS.get(name).engine == engine
    assert METHODS.get("sft").retain_set == "both" and METHODS.get("cda").retain_set == "anti"
    for name in METHODS:
        m = METHODS.get(name)
        assert isinstance(m, Method)
        assert m.name == name
    assert not METHODS.get("no_adversarial").adversarial
    assert not METHODS.get("no_swapping").swapping
    assert METHODS.get("biasunlearn").adversarial and METHODS.get("biasunlearn").swapping
    for name in ("ga", "npo", "graddiff"):
        m = METHODS.get(name)
        assert not m.adversarial and not m.swapping


@pytest.mark.parametrize("name", sorted(EXPECTED_TERMS))
def test_objective_terms_and_weighted_sum(name):
    method = METHODS.get(name)
    x = _inputs()
    out = objective(method, W, **x)
    assert set(out) == EXPECTED_TERMS[name] | {"loss"}

    lp = losses.sequence_logprob(x["forget_logits"], x["forget_ids"], x["forget_mask"])
    if "forget" not in out:
        pass
    elif EXPECTED_FORGET.get(name, "npo") == "npo":
        _close(out["forget"], losses.npo_loss(lp, x["forget_ref_logprob"], beta=0.2).item(), atol=1e-5)
    else:
        _close(out["forget"], lp.mean().item(), atol=1e-5)
    if "retain" in out:
        _close(out["retain"], losses.retention_loss(x["retain_logits"], x["retain_ids"], x["retain_mask"]).item())
    if "kl" in out:
        _close(out["kl"], losses.forward_kl(x["kl_logits"], x["kl_ref_logits"], x["kl_mask"]).item())
        assert out["kl"].item() > 0

    weight = {"forget": W.forget, "retain": W.retain, "kl": W.kl}
    expected = sum(weight[k] * out[k].item() for k in EXPECTED_TERMS[name])
    _close(out["loss"], expected, atol=1e-5)


@pytest.mark.parametrize("name", sorted(EXPECTED_TERMS))
def test_objective_needs_only_the_inputs_of_its_terms(name):
    """Inputs of unused terms may be None (the trainer does not compute them)."""
    x = _inputs()
    used = EXPECTED_TERMS[name]
    for part in ("retain", "kl"):
        if part not in used:
            for k in [k for k in x if k.startswith(part + "_")]:
                x[k] = None
    if EXPECTED_FORGET.get(name, "npo") == "ga":
        x["forget_ref_logprob"] = None  # gradient ascent needs no reference
    out = objective(METHODS.get(name), W, **x)
    assert set(out) == used | {"loss"}
    assert torch.isfinite(out["loss"])


def test_objective_default_weights_and_gradients_reach_every_used_input():
    x = _inputs(1)
    for k in ("forget_logits", "retain_logits", "kl_logits", "kl_ref_logits"):
        x[k] = x[k].requires_grad_(True)
    out = objective(METHODS.get("biasunlearn"), ObjectiveWeights(), **x)
    _close(out["loss"], (0.4 * out["forget"] + 0.4 * out["retain"] + 0.2 * out["kl"]).item(), atol=1e-5)
    out["loss"].backward()
    for k in ("forget_logits", "retain_logits", "kl_logits"):
        assert x[k].grad is not None and torch.count_nonzero(x[k].grad) > 0, k
    assert x["kl_ref_logits"].grad is None or torch.count_nonzero(x["kl_ref_logits"].grad) == 0


def test_objective_normalize_forget_uses_length_normalised_logprob():
    x = _inputs(2)
    method = METHODS.get("npo")
    w = ObjectiveWeights(beta=0.1, normalize_forget=True)
    out = objective(method, w, **x)
    lp = losses.sequence_logprob(x["forget_logits"], x["forget_ids"], x["forget_mask"], normalize=True)
    _close(out["forget"], losses.npo_loss(lp, x["forget_ref_logprob"], beta=0.1).item(), atol=1e-5)
    # the two rows have 2 and 3 region tokens, so normalising really changes the term
    plain = objective(method, ObjectiveWeights(beta=0.1), **x)["forget"]
    assert abs(plain.item() - out["forget"].item()) > 1e-3


def test_objective_with_a_method_without_forget_term():
    x = _inputs()
    out = objective(Method("retain_only", forget="none", kl=False), W, **x)
    assert set(out) == {"retain", "loss"}
    _close(out["loss"], W.retain * out["retain"].item(), atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Pairwise term (an extension outside the paper, --pair-types)
# --------------------------------------------------------------------------------------------------


def test_pairwise_loss_hand_case():
    # pair 1: chosen +1 nat over the reference, rejected -1 -> margin 2; pair 2: margin 0
    chosen, chosen_ref = torch.tensor([-1.0, -5.0]), torch.tensor([-2.0, -5.0])
    rejected, rejected_ref = torch.tensor([-3.0, -4.0]), torch.tensor([-2.0, -4.0])
    # beta 1: -2 log sigmoid(2) = 2 log(1 + e^-2) = 0.253856; -2 log sigmoid(0) = 2 log 2 = 1.386294
    _close(losses.pairwise_loss(chosen, chosen_ref, rejected, rejected_ref, beta=1.0), (0.253856 + 1.386294) / 2,
           atol=1e-5)
    # beta 0.1 at margin 0: (2/0.1) log 2 = 13.862944
    _close(losses.pairwise_loss(chosen[1:], chosen_ref[1:], rejected[1:], rejected_ref[1:], beta=0.1), 13.862944,
           atol=1e-4)


def test_pairwise_loss_only_sees_the_margin_and_its_gradient():
    c = torch.tensor([-2.0], requires_grad=True)
    r = torch.tensor([-2.0], requires_grad=True)
    ref = torch.tensor([-2.0], requires_grad=True)
    loss = losses.pairwise_loss(c, ref, r, ref, beta=0.5)
    loss.backward()
    # d/dmargin of -(2/b) log sigmoid(b m) at m = 0 is -2 sigmoid(0) = -1
    _close(c.grad, [-1.0], atol=1e-6)
    _close(r.grad, [1.0], atol=1e-6)
    assert ref.grad is None
    # shifting both sentences by the same amount (e.g. a preference for pleasant words) changes nothing
    base = losses.pairwise_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-3.0]), torch.tensor([-2.5]))
    moved = losses.pairwise_loss(torch.tensor([0.5]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-2.5]))
    _close(moved, base.item(), atol=1e-6)


def _pair_rows(prefix: str, seed: int, mask_row: list[int]) -> dict[str, torch.Tensor]:
    """Four rows (two pairs) of random logits and ids for an optional term's ``{prefix}_*`` inputs."""
    g = torch.Generator().manual_seed(seed)
    return {f"{prefix}_logits": torch.randn(4, 5, 11, generator=g),
            f"{prefix}_ids": torch.randint(0, 11, (4, 5), generator=g),
            f"{prefix}_mask": torch.tensor([mask_row] * 4, dtype=torch.bool),
            f"{prefix}_ref_logprob": torch.tensor([-3.0, -4.0, -2.0, -6.0])}


def test_objective_adds_the_weighted_pairwise_term_only_when_on():
    x = _inputs(3)
    pair = _pair_rows("pair", 5, [0, 1, 1, 0, 0])
    w = ObjectiveWeights(forget=0.3, retain=0.5, kl=0.7, beta=0.2, normalize_forget=True, pair=0.6)
    out = objective(METHODS.get("biasunlearn"), w, **x, **pair)
    lp = losses.sequence_logprob(pair["pair_logits"], pair["pair_ids"], pair["pair_mask"], normalize=True)
    ref = pair["pair_ref_logprob"]
    # rows 0-1 rejected, rows 2-3 their chosen partners
    _close(out["pair"], losses.pairwise_loss(lp[2:], ref[2:], lp[:2], ref[:2], beta=0.2).item(), atol=1e-5)
    _close(out["loss"], (0.3 * out["forget"] + 0.5 * out["retain"] + 0.7 * out["kl"] + 0.6 * out["pair"]).item(),
           atol=1e-5)
    assert "pair" not in objective(METHODS.get("biasunlearn"), W, **x, **pair)  # weight 0: off
    assert "pair" not in objective(METHODS.get("biasunlearn"), w, **x)  # no pairs: off


# --------------------------------------------------------------------------------------------------
# Group-swap invariance term (an extension outside the paper, --invariance-types)
# --------------------------------------------------------------------------------------------------


def test_swap_invariance_loss_hand_case_and_gradient():
    orig = torch.tensor([-3.0, -5.0], requires_grad=True)
    flip = torch.tensor([-4.0, -5.0], requires_grad=True)
    orig_ref, flip_ref = torch.tensor([-3.0, -5.0]), torch.tensor([-3.5, -6.0])
    # drift 1: (-3 + 4) - (-3 + 3.5) = 0.5; drift 2: (-5 + 5) - (-5 + 6) = -1; mean(0.25, 1) = 0.625
    loss = losses.swap_invariance_loss(orig, orig_ref, flip, flip_ref)
    _close(loss, 0.625, atol=1e-6)
    loss.backward()
    # d/d orig_i = 2 drift_i / n; d/d flip_i = -2 drift_i / n
    _close(orig.grad, [0.5, -1.0], atol=1e-6)
    _close(flip.grad, [-0.5, 1.0], atol=1e-6)
    # zero at the reference, and blind to a shift of both versions by the same amount
    _close(losses.swap_invariance_loss(orig_ref, orig_ref, flip_ref, flip_ref), 0.0, atol=1e-7)
    _close(losses.swap_invariance_loss(orig_ref + 2.0, orig_ref, flip_ref + 2.0, flip_ref), 0.0, atol=1e-6)


def test_objective_adds_the_weighted_invariance_term_only_when_on():
    x = _inputs(3)
    inv = _pair_rows("inv", 7, [0, 1, 1, 1, 0])
    w = ObjectiveWeights(forget=0.3, retain=0.5, kl=0.7, beta=0.2, normalize_forget=True, invariance=0.9)
    out = objective(METHODS.get("biasunlearn"), w, **x, **inv)
    # summed (not length-normalised) log-likelihoods; rows 0-1 the sentences, rows 2-3 their counterfactuals
    lp = losses.sequence_logprob(inv["inv_logits"], inv["inv_ids"], inv["inv_mask"])
    ref = inv["inv_ref_logprob"]
    expected = (((lp[:2] - lp[2:]) - (ref[:2] - ref[2:])) ** 2).mean()
    _close(out["invariance"], expected.item(), atol=1e-5)
    _close(out["loss"], (0.3 * out["forget"] + 0.5 * out["retain"] + 0.7 * out["kl"]
                         + 0.9 * out["invariance"]).item(), atol=1e-5)
    assert "invariance" not in objective(METHODS.get("biasunlearn"), W, **x, **inv)  # weight 0: off
    assert "invariance" not in objective(METHODS.get("biasunlearn"), w, **x)  # no rows: off
