"""The BiasUnlearn loss terms, as pure functions of logits and log-probabilities.

Notation: ``x`` a sequence, ``y`` the tokens of its loss region (the sentence's own tokens), ``π_θ``
the policy (base model + LoRA adapter), ``π_ref`` the reference (the same model, adapter disabled).
All per-token quantities are masked so that only the loss region counts.

Paper: "Unlearning Social Bias in Language Models" (BiasUnlearn), §3, equations (1)-(4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``log π(x_t | x_<t)`` for t = 1..T-1, shape ``[B, T-1]`` (position t-1 predicts token t).

    Computed as a fused cross-entropy (no materialised log-softmax, a cheaper backward).
    """
    b, t = input_ids.shape
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(), reduction="none")
    return -nll.view(b, t - 1)


def sequence_logprob(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor, normalize: bool = False
) -> torch.Tensor:
    """Per-sequence log-likelihood of the loss region, shape ``[B]``.

    ``log π(y|x) = Σ_{t ∈ region} log π(x_t | x_<t)``; with ``normalize`` the sum is divided by the
    number of region tokens (a length-normalised log-likelihood). ``loss_mask`` is ``[B, T]`` and marks
    the tokens (not the predicting positions) of the region; position 0 is never a target.
    """
    mask = loss_mask[:, 1:].to(torch.float32)
    total = (token_logprobs(logits, input_ids) * mask).sum(-1)
    if normalize:
        total = total / mask.sum(-1).clamp_min(1.0)
    return total


def npo_loss(policy_logprob: torch.Tensor, ref_logprob: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Negative Preference Optimization forget loss (Zhang et al. 2024; paper eq. 1).

    ``L_Forget = -(2/β) · E_{(x,y) ∈ D_f ∪ D_a} [ log σ( -β · (log π_θ(y|x) - log π_ref(y|x)) ) ]``

    Inputs are per-sequence log-likelihoods ``[B]`` (see :func:`sequence_logprob`); ``ref_logprob`` is
    treated as a constant. At ``π_θ = π_ref`` the loss is ``(2/β)·log 2`` and its gradient equals that
    of gradient ascent on ``log π_θ`` (``2·σ(β·ratio)`` per sequence); it vanishes as
    ``π_θ(y|x) → 0``, which is what keeps NPO from diverging the way plain gradient ascent does.
    """
    ratio = policy_logprob - ref_logprob.detach()
    return -(2.0 / beta) * F.logsigmoid(-beta * ratio).mean()


def pairwise_loss(chosen_logprob: torch.Tensor, chosen_ref_logprob: torch.Tensor, rejected_logprob: torch.Tensor,
                  rejected_ref_logprob: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Pairwise preference term, an extension outside the paper (DPO's form, Rafailov et al. 2023).

    ``L_Pair = -(2/β) · E_{(x, y_w, y_l)} [ log σ( β · ((log π_θ(y_w|x) - log π_ref(y_w|x))
    - (log π_θ(y_l|x) - log π_ref(y_l|x))) ) ]``

    over pairs of one StereoSet example, ``y_w`` its anti-stereotype and ``y_l`` its stereotype (the other
    way round for a swapped bias type). Unlike the forget and retention terms it only rewards moving the
    two sentences *apart*, so it cannot be met by a change that raises or lowers both, such as a preference
    for pleasant words. The ``2/β`` scale matches :func:`npo_loss`: at ``π_θ = π_ref`` the loss is
    ``(2/β)·log 2`` and its gradient with respect to the margin is -1. Reference log-likelihoods are
    treated as constants.
    """
    margin = (chosen_logprob - chosen_ref_logprob.detach()) - (rejected_logprob - rejected_ref_logprob.detach())
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()


def swap_invariance_loss(orig_logprob: torch.Tensor, orig_ref_logprob: torch.Tensor, flip_logprob: torch.Tensor,
                         flip_ref_logprob: torch.Tensor) -> torch.Tensor:
    """Group-swap invariance term, an extension outside the paper.

    ``L_Inv = E_{(s, s̄)} [ ((log π_θ(s) - log π_θ(s̄)) - (log π_ref(s) - log π_ref(s̄)))² ]``

    over train-split sentences ``s`` that hold a group word and their counterfactuals ``s̄`` (the group
    words flipped: mother <-> father), with summed log-likelihoods of the whole sentence. It keeps the
    model's preference between the two versions of a sentence where the reference had it, so that the
    other terms cannot shift the model toward one group's words in general (the shift CrowS-Pairs, whose
    pairs differ in the group word, reads as bias). Zero at ``π_θ = π_ref``; reference log-likelihoods
    are treated as constants.
    """
    drift = (orig_logprob - flip_logprob) - (orig_ref_logprob.detach() - flip_ref_logprob.detach())
    return drift.pow(2).mean()


def gradient_ascent_loss(policy_logprob: torch.Tensor) -> torch.Tensor:
    """Plain gradient ascent on the forget set: ``L_GA = E[log π_θ(y|x)]`` (minimising it unlearns)."""
    return policy_logprob.mean()


def retention_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor,
                   per_sequence: bool = False) -> torch.Tensor:
    """Cross-entropy on the retain (anti-stereotype) set (paper eq. 2).

    ``L_Retention = (1/|D_r|) Σ_{(x,y) ∈ D_r} CE(π_θ(·|x), y)``. By default averaged over the region
    tokens of the batch, so a long sentence weighs more than a one-word blank; with ``per_sequence``
    each sequence's token-mean CE is averaged over sequences (every retained sentence weighs the same,
    matching the length-normalised forget term).
    """
    mask = loss_mask[:, 1:].to(torch.float32)
    nll = -token_logprobs(logits, input_ids)
    if per_sequence:
        has = mask.sum(-1) > 0
        per_seq = (nll * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
        return per_seq[has].mean() if bool(has.any()) else per_seq.sum() * 0.0
    return (nll * mask).sum() / mask.sum().clamp_min(1.0)


def forward_kl(policy_logits: torch.Tensor, ref_logits: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Forward KL to the reference on unrelated sentences, per token, mean over region tokens (eq. 3).

    ``L_KL = E_t [ KL(π_ref(·|x_<t) || π_θ(·|x_<t)) ] = E_t Σ_v π_ref(v) (log π_ref(v) - log π_θ(v))``

    Forward (mass-covering) KL: the policy must keep probability wherever the reference has it. The
    paper writes the arguments in the other order in eq. (3) while calling it forward KL; we follow
    the named direction (reference first). ``loss_mask`` is ``[B, T]`` over tokens; the distribution at
    position t-1 (which predicts token t) counts when token t is in the region.
    """
    mask = loss_mask[:, 1:].to(torch.float32)
    logp = torch.log_softmax(policy_logits[:, :-1].float(), dim=-1)
    logq = torch.log_softmax(ref_logits[:, :-1].float().detach(), dim=-1)
    kl = (logq.exp() * (logq - logp)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp_min(1.0)


def total_loss(
    forget: torch.Tensor, retain: torch.Tensor, kl: torch.Tensor, weights: tuple[float, float, float] = (0.4, 0.4, 0.2)
) -> torch.Tensor:
    """``L = α1·L_Forget + α2·L_Retention + α3·L_KL`` (paper eq. 4; defaults 0.4 / 0.4 / 0.2)."""
    a1, a2, a3 = weights
    return a1 * forget + a2 * retain + a3 * kl
