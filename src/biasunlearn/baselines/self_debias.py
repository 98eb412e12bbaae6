"""Self-Debias (Schick, Udupa & Schütze 2021), as used for social bias by Meade et al. (2022).

For every position the model gives ``p``, the next-token distribution of the plain input, and, for
each bias type, ``p_b``, the distribution when a *debiasing prefix* (a sentence that invites biased
text, see :data:`DEBIASING_PREFIXES`) is prepended to the same input. Tokens that the prefix makes
more likely are decayed:

    p_b(w)   = max over the prefixes of p_prefix(w)         (per token)
    alpha(w) = max(p_b(w) - p(w), 0)
    s(w)     = max(exp(-lambda * alpha(w)), eps)            (= 1 where alpha = 0)
    p'(w)    = p(w) s(w) / sum_v p(v) s(v)

with ``lambda = 50`` (Schick's ``decay_constant``) and ``eps = 0.01`` (``epsilon``), the values of
Schick et al. and Meade et al. This is the computation of ``SelfDebiasingLogitsProcessor`` in
Schick's reference code (``_generate_decay_mask`` / ``_apply_decay_mask``): the max over the
prefixes' probabilities, the hinge on the difference, the exponential decay floored at ``eps``, the
renormalisation.

Three entry points share :func:`self_debias_logprobs`:

* :class:`SelfDebias` scores sentences (sums of ``log p'`` of the scored tokens, the semantics of
  :func:`biasunlearn.scoring.sequence_logprobs`). As in Schick's ``compute_loss_self_debiasing``, the
  prefix is tokenized on its own and its ids are put before the text's ids, so the text's tokens are
  the same with and without the prefix and position ``t`` of the plain sequence lines up with position
  ``t + len(prefix)`` of the prefixed one. The start token stays first: ``[start] + prefix + text``.
* :class:`SelfDebiasLogitsProcessor` debiases ``model.generate``.
* :func:`self_debias_logprobs` is the pure tensor function, for any other use.

Where this may differ from the reference implementations: Schick's code left-pads the prefixes to a
common length inside one batch (position ids computed from the mask, so it is equivalent up to float
rounding) and has no start token; here each prefixed sequence is its own row, and the configured start
token (``ScoringConfig.start_token``) comes first, as in the plain scoring of this project. When scoring,
``[start] + prefix`` is run once per prefix and its key/value cache reused for every row (the same
probabilities up to float rounding; ``cache_prefix=False`` runs every prefixed row whole).
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor

from biasunlearn.errors import ConfigError
from biasunlearn.scoring import (
    Request,
    ScoringConfig,
    SequenceLogProbs,
    _batches,
    _token_budget,
    encode_requests,
    resolve_start_token_id,
)

log = logging.getLogger(__name__)

#: Debiasing prefixes of Meade et al. (2022, ``bias_bench``), after Schick et al. (2021). Each is
#: prepended (tokenized on its own) to the input; note the trailing space.
DEBIASING_PREFIXES: dict[str, str] = {
    "gender": "The following text discriminates against people because of their gender: ",
    "race": "The following text discriminates against people because of their race/color: ",
    "religion": "The following text discriminates against people because of their religion: ",
}

DEFAULT_LAMBDA = 50.0
DEFAULT_EPS = 0.01


def self_debias_logprobs(
    plain_logits: torch.Tensor,
    biased_logits_list: Sequence[torch.Tensor],
    lam: float = DEFAULT_LAMBDA,
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """``log p'`` (see the module docstring) from the plain logits and one logits tensor per prefix.

    All tensors have shape ``[..., V]``; the result too. Computed in float32 (float64 stays float64),
    in log space: ``log p' = log p + log s - logsumexp(log p + log s)`` with
    ``log s = max(-lambda * alpha, log eps)``. With no prefix, or ``lam = 0``, this is
    ``log_softmax(plain_logits)``.
    """
    if lam < 0:
        raise ConfigError(f"self-debias lambda must be >= 0, got {lam}")
    if not 0 < eps <= 1:
        raise ConfigError(f"self-debias eps must be in (0, 1], got {eps}")
    dtype = torch.float64 if plain_logits.dtype == torch.float64 else torch.float32
    logp = torch.log_softmax(plain_logits.to(dtype), dim=-1)
    if not biased_logits_list:
        return logp
    p = logp.exp()
    p_b = None
    for b in biased_logits_list:
        if b.shape != plain_logits.shape:
            raise ValueError(f"biased logits have shape {tuple(b.shape)}, plain {tuple(plain_logits.shape)}")
        pb = torch.softmax(b.to(device=logp.device, dtype=dtype), dim=-1)
        p_b = pb if p_b is None else torch.maximum(p_b, pb)
    alpha = (p_b - p).clamp_min(0.0)
    log_s = (-lam * alpha).clamp_min(float(np.log(eps)))
    scaled = logp + log_s
    return scaled - torch.logsumexp(scaled, dim=-1, keepdim=True)


def _right_padded(rows: Sequence[Sequence[int]], bidx: Sequence[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of ``rows[i]`` for ``i`` in ``bidx``, right-padded to the longest."""
    width = max(len(rows[i]) for i in bidx)
    ids = torch.full((len(bidx), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(bidx), width), dtype=torch.long)
    for r, i in enumerate(bidx):
        ids[r, : len(rows[i])] = torch.tensor(list(rows[i]), dtype=torch.long)
        attn[r, : len(rows[i])] = 1
    return ids, attn


@torch.no_grad()
def forward_positions(
    model,
    rows: Sequence[Sequence[int]],
    wanted: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 64,
    token_budget: int = 4096,
) -> list[torch.Tensor]:
    """Float32 logits at the ``wanted`` positions of every row (``[len(wanted[i]), V]`` each).

    Rows are sorted by length and right-padded into batches (bounded in rows and padded tokens); with
    a causal model, right padding leaves the logits of the real positions unchanged.
    """
    device = next(model.parameters()).device
    out: list[torch.Tensor | None] = [None] * len(rows)
    for bidx in _batches([len(r) for r in rows], batch_size, token_budget):
        ids, attn = _right_padded(rows, bidx, pad_id)
        width = ids.shape[1]
        pos = torch.arange(width).expand(len(bidx), width)
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=pos.to(device)).logits
        for r, i in enumerate(bidx):
            out[i] = logits[r, torch.as_tensor(list(wanted[i]), dtype=torch.long, device=device)].float()
        del logits
    return out  # type: ignore[return-value]


def _unwrapped(model):
    """The transformers model under a peft wrapper (whose forward takes ``**kwargs``)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


@torch.no_grad()
def forward_positions_after(
    model,
    head: Sequence[int],
    rows: Sequence[Sequence[int]],
    wanted: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 64,
    token_budget: int = 4096,
) -> list[torch.Tensor]:
    """Float32 logits at the ``wanted`` positions of ``head + row`` for every row, ``head`` run once.

    ``wanted[i]`` indexes ``rows[i]``; ``-1`` is the last position of ``head`` (the distribution of the
    row's first token). The head's key/value cache is computed once and repeated over each batch, so a
    shared prefix (a Self-Debias prefix) costs one forward pass instead of one per row; the logits are
    those of :func:`forward_positions` on the concatenated rows up to float rounding.
    """
    device = next(model.parameters()).device
    first = model(input_ids=torch.tensor([list(head)], dtype=torch.long, device=device), use_cache=True)
    # transformers renamed past_key_values to cache (argument and output); accept both
    cache_arg = "cache" if "cache" in inspect.signature(_unwrapped(model).forward).parameters else "past_key_values"
    cache = getattr(first, "cache", None)
    if cache is None:
        cache = first.past_key_values
    head_last, n_head = first.logits[0, -1].float(), len(head)
    out: list[torch.Tensor | None] = [None] * len(rows)
    for bidx in _batches([len(r) for r in rows], batch_size, token_budget):
        ids, attn = _right_padded(rows, bidx, pad_id)
        width = ids.shape[1]
        attn = torch.cat([torch.ones((len(bidx), n_head), dtype=torch.long), attn], dim=1)  # the head is attended
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(len(bidx))
        pos = (n_head + torch.arange(width)).expand(len(bidx), width)
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=pos.to(device),
                       use_cache=True, **{cache_arg: past}).logits
        for r, i in enumerate(bidx):
            idx = torch.as_tensor(list(wanted[i]), dtype=torch.long, device=device)
            sel = logits[r, idx.clamp_min(0)].float()
            out[i] = torch.where((idx < 0)[:, None], head_last[None, :], sel)
        del logits, past
    return out  # type: ignore[return-value]


def chunk_by_load(order: Sequence[int], load: Callable[[int], int], budget: int) -> list[list[int]]:
    """Consecutive groups of ``order`` whose summed ``load`` stays within ``budget`` (a single item may exceed it)."""
    chunks: list[list[int]] = []
    cur: list[int] = []
    total = 0
    for i in order:
        k = load(i)
        if cur and total + k > budget:
            chunks.append(cur)
            cur, total = [], 0
        cur.append(i)
        total += k
    if cur:
        chunks.append(cur)
    return chunks


def _prefixes_for(bias_types: Sequence[str], prefixes: Sequence[str] | None) -> list[str]:
    if prefixes is not None:
        if not prefixes:
            raise ConfigError("self-debias: give at least one debiasing prefix")
        return list(prefixes)
    if not bias_types:
        raise ConfigError(f"self-debias: give at least one bias type of {', '.join(DEBIASING_PREFIXES)}")
    unknown = [b for b in bias_types if b not in DEBIASING_PREFIXES]
    if unknown:
        raise ConfigError(
            f"self-debias: unknown bias type(s) {', '.join(unknown)}; available: {', '.join(DEBIASING_PREFIXES)}"
        )
    return [DEBIASING_PREFIXES[b] for b in bias_types]


class SelfDebias:
    """Self-Debias scorer and generation helper (see the module docstring).

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        bias_types: keys of :data:`DEBIASING_PREFIXES`; ``p_b`` is the max over their prefixes.
        lam: decay constant ``lambda`` (0 turns the method off).
        eps: floor of the decay factor.
        prefixes: explicit prefix strings instead of ``bias_types``.
        cache_prefix: run each ``[start] + prefix`` once and reuse its key/value cache for every scored
            sequence (same scores up to float rounding, about half the compute); off, every prefixed
            sequence is run whole.
    """

    def __init__(
        self,
        model,
        tokenizer,
        bias_types: Sequence[str] = ("gender", "race", "religion"),
        lam: float = DEFAULT_LAMBDA,
        eps: float = DEFAULT_EPS,
        prefixes: Sequence[str] | None = None,
        cache_prefix: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.lam = float(lam)
        self.eps = float(eps)
        self_debias_logprobs(torch.zeros(1), [], self.lam, self.eps)  # validates lam and eps
        self.prefixes = _prefixes_for(bias_types, prefixes)
        self.prefix_ids = [tokenizer.encode(p, add_special_tokens=False) for p in self.prefixes]
        self.cache_prefix = cache_prefix

    @torch.inference_mode()
    def sequence_logprobs(
        self, requests: Sequence[Request], cfg: ScoringConfig | None = None, desc: str = "self-debias scoring"
    ) -> SequenceLogProbs:
        """Per-request sums of ``log p'`` over the scored tokens (as :func:`biasunlearn.scoring.sequence_logprobs`).

        Runs the model on the plain sequence and on ``[start] + prefix + text`` for every prefix;
        ``cfg.share_prefix`` and ``cfg.bf16`` are not used (always float32, one row per sequence).
        """
        cfg = cfg or ScoringConfig()
        n = len(requests)
        out = SequenceLogProbs.zeros(n)
        sums, counts = out.sum_logprob, out.n_tokens
        if n == 0:
            return out
        start_id = resolve_start_token_id(self.tokenizer, cfg.start_token)
        encoded = encode_requests(self.tokenizer, requests, start_id)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else start_id
        budget = _token_budget(self.model, cfg)
        n_views = 1 + len(self.prefix_ids)
        # Chunks of requests whose selected logits (scored tokens x views) stay within the token budget.
        order = sorted(range(n), key=lambda i: -len(encoded[i].ids))
        scored_at = [e.scored() for e in encoded]  # Request.skip leaves tokens unscored
        chunks = chunk_by_load(order, lambda i: len(scored_at[i]) * n_views, budget)
        sums_t = torch.zeros(n, dtype=torch.float64)
        with tqdm(total=n, desc=desc, unit="seq", disable=not cfg.progress, leave=False) as bar:
            for chunk in chunks:
                scored = [i for i in chunk if scored_at[i]]
                if scored:
                    plain_pos = [[j - 1 for j in scored_at[i]] for i in scored]
                    rows = [encoded[i].ids for i in scored]
                    plain = torch.cat(forward_positions(self.model, rows, plain_pos, pad_id, cfg.batch_size, budget))
                    biased = []
                    for pre in self.prefix_ids:
                        # [start] + prefix + text: the start and prefix are run once (cached), the text
                        # (the row without its start token) per row; position p of the plain row is
                        # position p - 1 of the text part (-1 = the prefix's last position).
                        lg = self._prefixed_logits(rows, plain_pos, pre, pad_id, cfg.batch_size, budget)
                        biased.append(torch.cat(lg))
                    logp = self_debias_logprobs(plain, biased, self.lam, self.eps)
                    targets = torch.tensor(
                        [encoded[i].ids[j] for i in scored for j in scored_at[i]], device=logp.device
                    )
                    owners = torch.tensor([i for i in scored for _ in scored_at[i]])
                    tok_lp = logp.gather(-1, targets[:, None]).squeeze(-1)
                    sums_t.index_add_(0, owners, tok_lp.double().cpu())
                    counts += np.bincount(owners.numpy(), minlength=n)
                bar.update(len(chunk))
        sums[:] = sums_t.numpy()
        return SequenceLogProbs(sums, counts)

    def _prefixed_logits(
        self, rows: list[list[int]], plain_pos: list[list[int]], prefix: list[int], pad_id: int, batch_size: int,
        budget: int,
    ) -> list[torch.Tensor]:
        """Logits of ``[start] + prefix + row[1:]`` at the positions lined up with ``plain_pos`` of ``row``."""
        if self.cache_prefix:
            try:
                return forward_positions_after(self.model, [rows[0][0], *prefix], [r[1:] for r in rows],
                                               [[j - 1 for j in pos] for pos in plain_pos], pad_id, batch_size,
                                               budget)
            except (AttributeError, TypeError, NotImplementedError, RuntimeError) as e:
                log.warning("self-debias: the prefix cache is not supported by this model (%s); running the "
                            "prefixed sequences whole", e)
                self.cache_prefix = False
        full = [[r[0], *prefix, *r[1:]] for r in rows]
        return forward_positions(self.model, full, [[j + len(prefix) for j in pos] for pos in plain_pos], pad_id,
                                 batch_size, budget)

    def logits_processor(self, start_token: str = "") -> SelfDebiasLogitsProcessor:
        """A :class:`SelfDebiasLogitsProcessor` with this scorer's prefixes and constants.

        The prefix goes after the start token when a row begins with it (prompts encoded as
        ``[start] + prompt``, like the scored sequences).
        """
        return SelfDebiasLogitsProcessor(
            self.model,
            self.prefix_ids,
            lam=self.lam,
            eps=self.eps,
            start_id=resolve_start_token_id(self.tokenizer, start_token),
            pad_token_id=self.tokenizer.pad_token_id,
        )


def split_start(row: Sequence[int], start_id: int | None, pad_token_id: int | None) -> tuple[bool, list[int]]:
    """``(had_start, body)``: a generation row without its left padding and leading start token.

    Leading ``pad_token_id`` tokens are padding; when the pad token is also the start token, a leading
    run of it counts as padding plus one start token.
    """
    i = 0
    if pad_token_id is not None:
        while i < len(row) and row[i] == pad_token_id:
            i += 1
    had_start = start_id is not None and (
        (i < len(row) and row[i] == start_id) or (i > 0 and pad_token_id == start_id)
    )
    if start_id is not None and i < len(row) and row[i] == start_id:
        i += 1
    return had_start, list(row[i:])


class SelfDebiasLogitsProcessor(LogitsProcessor):
    """Self-Debias for ``model.generate``: replaces the scores by ``log p'`` at every step.

    ``p`` is the softmax of the incoming scores (the plain sequence, after any earlier processor);
    ``p_b`` comes from running ``model`` on ``prefix + current ids`` (the prefix placed after a leading
    ``start_id`` when the row begins with it) and taking the last position.

    Cost: no KV cache for the prefixed sequences. Every generation step runs one full forward pass per
    prefix over the whole prefixed sequence (prefix + prompt + generated tokens), so generating ``n``
    tokens costs about ``n * len(prefixes)`` extra forward passes of growing length (quadratic in ``n``),
    on top of the normal cached decoding. Schick's implementation instead generates the prefixed
    sequences as extra rows of the same batch with a cache; this one is simpler and gives the same
    distributions.

    Left padding (batched prompts of different lengths) is removed from each row before the prefix is
    put in when ``pad_token_id`` is given; when the pad token is also the start token, a row's leading
    run of it counts as padding and one start token is put back.
    """

    def __init__(
        self,
        model,
        prefix_ids: Sequence[Sequence[int]],
        lam: float = DEFAULT_LAMBDA,
        eps: float = DEFAULT_EPS,
        start_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        if not prefix_ids:
            raise ConfigError("self-debias: give at least one debiasing prefix")
        self.model = model
        self.prefix_ids = [list(p) for p in prefix_ids]
        self.lam = lam
        self.eps = eps
        self.start_id = start_id
        self.pad_token_id = pad_token_id

    def _prefixed(self, row: list[int], prefix: list[int]) -> list[int]:
        had_start, body = split_start(row, self.start_id, self.pad_token_id)
        return [self.start_id, *prefix, *body] if had_start else [*prefix, *body]

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        rows = input_ids.tolist()
        biased = []
        pad = self.pad_token_id if self.pad_token_id is not None else 0
        for prefix in self.prefix_ids:
            seqs = [self._prefixed(r, prefix) for r in rows]
            logits = forward_positions(self.model, seqs, [[len(s) - 1] for s in seqs], pad, batch_size=len(seqs),
                                       token_budget=max(len(s) for s in seqs) * len(seqs))
            biased.append(torch.cat(logits).to(scores.device))
        return self_debias_logprobs(scores, biased, self.lam, self.eps).to(scores.dtype)
