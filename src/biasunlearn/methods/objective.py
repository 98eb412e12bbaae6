"""The whole BiasUnlearn objective, and the ablations and unlearning baselines built from the same terms.

One training step sees a *chunk*: ``n_forget`` forget sequences (stereotypes, plus the adversarial
share of anti-stereotypes), ``n_retain`` retain sequences (anti-stereotypes) and ``n_kl`` unrelated
sequences. With ``π_θ`` the policy and ``π_ref`` the same model with its adapter disabled:

    L = α1 · L_Forget + α2 · L_Retention + α3 · L_KL                       (paper eq. 4)
    L_Forget    = -(2/β) E[log σ(-β (log π_θ(y|x) - log π_ref(y|x)))]       NPO on D_f ∪ D_a (eq. 1)
    L_Retention = CE of π_θ on D_r (anti-stereotypes)                        (eq. 2)
    L_KL        = E_t KL(π_ref(·|x_<t) || π_θ(·|x_<t)) on unrelated text     (eq. 3)

with α = (0.4, 0.4, 0.2) and β = 0.1 by default.

An optional fourth term, outside the paper and off by default (``--pair-types``, weight ``--w-pair``),
takes ``n_pair`` stereotype / anti-stereotype pairs of the named bias types per step:

    L_Pair = -(2/β) E[log σ(β ((log π_θ(y_w|x) - log π_ref(y_w|x)) - (log π_θ(y_l|x) - log π_ref(y_l|x))))]

with ``y_w`` the anti-stereotype and ``y_l`` the stereotype of one example (DPO's form; see
:func:`~biasunlearn.methods.losses.pairwise_loss`). A fifth, also outside the paper and off by default
(``--invariance-types``, weight ``--w-invariance``), takes ``n_invariance`` train sentences holding a group
word and their counterfactuals ``s̄`` (group words flipped) per step:

    L_Inv = E[((log π_θ(s) - log π_θ(s̄)) - (log π_ref(s) - log π_ref(s̄)))²]

(see :func:`~biasunlearn.methods.losses.swap_invariance_loss`). A :class:`Method` names which terms are on; the
ablations of the paper's Table 5 and the unlearning baselines (gradient ascent, NPO alone, gradient
difference) and the fine-tuning baselines (CDA: cross-entropy on the anti-stereotypes, the counterfactual
sentences; SFT: cross-entropy on stereotypes and anti-stereotypes 1:1) are registered next to
BiasUnlearn in :data:`METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from biasunlearn.methods import losses
from biasunlearn.registry import Registry


@dataclass(frozen=True)
class Method:
    """Which loss terms a training method uses.

    Attributes:
        forget: ``npo``, ``ga`` (gradient ascent) or ``none``.
        retain: use the cross-entropy retention term on anti-stereotypes.
        kl: use the forward-KL term on unrelated sentences.
        adversarial: add the adversarial share of anti-stereotypes to the forget set.
        swapping: swap a bias type's forget and retain sets when its control signal crosses 50.
        retain_set: what the retention term trains on: ``anti`` (anti-stereotypes) or ``both``
            (stereotype and anti-stereotype sentences 1:1, the SFT baseline of paper §4.5).
        engine: ``biasunlearn`` (this module's terms in :class:`~biasunlearn.methods.trainer.BiasUnlearnTrainer`)
            or ``dpo`` (``trl``'s DPOTrainer on stereotype / anti-stereotype pairs, see
            :mod:`biasunlearn.baselines.dpo`), or ``biasedit`` (an editor network's weight deltas, see
            :mod:`biasunlearn.baselines.biasedit`).
    """

    name: str
    forget: str = "npo"
    retain: bool = True
    kl: bool = True
    adversarial: bool = True
    swapping: bool = True
    retain_set: str = "anti"
    engine: str = "biasunlearn"


METHODS: Registry[Method] = Registry("method", "--method")
for _m in (
    Method("biasunlearn"),
    Method("no_retention", retain=False),
    Method("no_kl", kl=False),
    Method("no_adversarial", adversarial=False),
    Method("no_swapping", swapping=False),
    Method("ga", forget="ga", retain=False, kl=False, adversarial=False, swapping=False),
    Method("npo", retain=False, kl=False, adversarial=False, swapping=False),
    Method("graddiff", forget="ga", kl=False, adversarial=False, swapping=False),
    # Fine-tuning baselines (paper Table 1 and §4.5): cross-entropy only. With no forget term, each step
    # trains on n_forget + n_retain sentences, the same number of sentences as a BiasUnlearn step.
    Method("cda", forget="none", kl=False, adversarial=False, swapping=False),
    Method("sft", forget="none", kl=False, adversarial=False, swapping=False, retain_set="both"),
    Method("dpo", forget="none", retain=False, kl=False, adversarial=False, swapping=False, engine="dpo"),
    Method("biasedit", forget="none", retain=False, kl=False, adversarial=False, swapping=False, engine="biasedit"),
):
    METHODS.register(_m.name)(_m)


@dataclass(frozen=True)
class ObjectiveWeights:
    forget: float = 0.4
    retain: float = 0.4
    kl: float = 0.2
    beta: float = 0.1
    normalize_forget: bool = False  # length-normalised per-sequence log-likelihood in the forget term
    normalize_retain: bool = False  # retention CE averaged per sequence instead of per token
    pair: float = 0.0  # weight of the pairwise term (an extension outside the paper; 0 = off)
    invariance: float = 0.0  # weight of the group-swap invariance term (outside the paper; 0 = off)


def objective(
    method: Method,
    w: ObjectiveWeights,
    *,
    forget_logits: torch.Tensor | None,
    forget_ids: torch.Tensor | None,
    forget_mask: torch.Tensor | None,
    forget_ref_logprob: torch.Tensor | None,
    retain_logits: torch.Tensor | None,
    retain_ids: torch.Tensor | None,
    retain_mask: torch.Tensor | None,
    kl_logits: torch.Tensor | None,
    kl_ref_logits: torch.Tensor | None,
    kl_mask: torch.Tensor | None,
    pair_logits: torch.Tensor | None = None,
    pair_ids: torch.Tensor | None = None,
    pair_mask: torch.Tensor | None = None,
    pair_ref_logprob: torch.Tensor | None = None,
    inv_logits: torch.Tensor | None = None,
    inv_ids: torch.Tensor | None = None,
    inv_mask: torch.Tensor | None = None,
    inv_ref_logprob: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The loss terms that ``method`` uses and their weighted sum under ``"loss"``.

    ``pair_*`` hold the pairwise term's ``2n`` rows, the ``n`` rejected sentences first and then their
    ``n`` chosen partners in the same order; the term is on when they are given and ``w.pair > 0``.
    ``inv_*`` likewise hold the invariance term's ``2m`` rows, ``m`` sentences and then their
    counterfactuals (whole-sentence summed log-likelihoods); on when given and ``w.invariance > 0``.
    """
    zero = next(t for t in (forget_logits, retain_logits, kl_logits) if t is not None).new_zeros(())
    terms: dict[str, torch.Tensor] = {}
    total = zero
    if method.forget != "none":
        lp = losses.sequence_logprob(forget_logits, forget_ids, forget_mask, normalize=w.normalize_forget)
        if method.forget == "npo":
            terms["forget"] = losses.npo_loss(lp, forget_ref_logprob, beta=w.beta)
        else:
            terms["forget"] = losses.gradient_ascent_loss(lp)
        total = total + w.forget * terms["forget"]
    if method.retain:
        terms["retain"] = losses.retention_loss(retain_logits, retain_ids, retain_mask,
                                                 per_sequence=w.normalize_retain)
        total = total + w.retain * terms["retain"]
    if method.kl:
        terms["kl"] = losses.forward_kl(kl_logits, kl_ref_logits, kl_mask)
        total = total + w.kl * terms["kl"]
    if w.pair > 0 and pair_logits is not None and len(pair_logits):
        lp = losses.sequence_logprob(pair_logits, pair_ids, pair_mask, normalize=w.normalize_forget)
        n = len(lp) // 2
        terms["pair"] = losses.pairwise_loss(lp[n:], pair_ref_logprob[n:], lp[:n], pair_ref_logprob[:n], beta=w.beta)
        total = total + w.pair * terms["pair"]
    if w.invariance > 0 and inv_logits is not None and len(inv_logits):
        lp = losses.sequence_logprob(inv_logits, inv_ids, inv_mask)
        m = len(lp) // 2
        terms["invariance"] = losses.swap_invariance_loss(lp[:m], inv_ref_logprob[:m], lp[m:], inv_ref_logprob[m:])
        total = total + w.invariance * terms["invariance"]
    terms["loss"] = total
    return terms
