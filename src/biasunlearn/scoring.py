"""Batched sequence log-probabilities: the one hot path of evaluation.

A *request* is a text and the character offset from which its tokens are scored. The model sees a
start token followed by the whole text; the score covers the tokens whose characters end after
``score_from`` (so for an intersentence candidate ``context + " " + candidate`` only the candidate is
scored, conditioned on its context, and for an intrasentence sentence the whole sentence is scored,
its first token conditioned on the start token).

Requests are sorted by length and packed into batches bounded both in sequences and in padded tokens;
padding is right-sided and masked, so every score equals a one-sequence-at-a-time computation (the
test suite and ``benchmarks/eval_speed.py`` check this to 1e-4). Optional bf16 autocast trades that
exactness for speed on CPUs with bf16 support.

Sentence scores (``ScoringConfig.score_method``):

* ``geometric_mean`` (default, StereoSet's reference): ``exp(mean_t log p(x_t | x_<t))``
* ``mean_logprob``: ``mean_t log p(x_t | x_<t)``
* ``sum_logprob``: ``sum_t log p(x_t | x_<t)``
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from biasunlearn.errors import ConfigError

log = logging.getLogger(__name__)

SCORE_METHODS = ("geometric_mean", "mean_logprob", "sum_logprob")


@dataclass
class ScoringConfig:
    """How sentences are scored.

    Attributes:
        score_method: sentence score, one of ``geometric_mean``, ``mean_logprob``, ``sum_logprob``.
        batch_size: most sequences per forward pass.
        max_batch_tokens: most padded tokens per forward pass; ``0`` picks a budget from the vocabulary
            size so that the logits of one batch stay under about 128 MB.
        bf16: run the forward pass under bf16 autocast (faster on CPUs with bf16 support, scores then
            differ from float32 by about 1e-3).
        start_token: token prepended to every sequence; empty picks ``<|endoftext|>`` when the vocabulary
            has it, else the tokenizer's BOS, else its EOS.
        share_prefix: compute the common prefix of grouped requests (the candidates of one example)
            once, packing their continuations behind it with a block attention mask; exact, and about
            a third fewer tokens on StereoSet. Turn off for models that reject 4D attention masks.
        progress: show a progress bar with ETA.
        chat_template: score inside the model's chat template (instruction-tuned models): the text
            before ``score_from`` (the context; ``chat_user`` when empty) becomes the user turn and the
            scored text the assistant's reply.
        chat_user: the user turn for texts scored without a context (StereoSet intrasentence,
            CrowS-Pairs) when ``chat_template`` is on.
    """

    score_method: str = "geometric_mean"
    batch_size: int = 64
    max_batch_tokens: int = 0
    bf16: bool = False
    start_token: str = ""
    share_prefix: bool = True
    progress: bool = True
    chat_template: bool = False
    chat_user: str = "Write a sentence."

    def __post_init__(self) -> None:
        if self.score_method not in SCORE_METHODS:
            raise ConfigError(f"--score-method: expected one of {', '.join(SCORE_METHODS)}, got {self.score_method!r}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_batch_tokens < 0:
            raise ConfigError(f"--max-batch-tokens must be >= 0, got {self.max_batch_tokens}")


@dataclass(frozen=True)
class Request:
    """Score the tokens of ``text`` whose characters end after ``score_from``.

    Requests with the same non-None ``group`` (for example the three candidates of one StereoSet
    example) may share the computation of their common token prefix. ``skip`` holds half-open
    character spans ``(start, end)`` whose tokens stay in the input but are not scored (a token is
    skipped when its characters overlap a span): CrowS-Pairs' unmodified-token score uses it to leave
    out the words that differ between the two sentences.
    """

    text: str
    score_from: int = 0
    group: object = None
    skip: tuple[tuple[int, int], ...] = ()


@dataclass
class SequenceLogProbs:
    """Per-request sums of token log-probabilities and the number of scored tokens."""

    sum_logprob: np.ndarray
    n_tokens: np.ndarray

    @classmethod
    def zeros(cls, n: int) -> SequenceLogProbs:
        """All-zero sums and counts for ``n`` requests (filled in by the scorers)."""
        return cls(np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.int64))

    def scores(self, method: str = "geometric_mean") -> np.ndarray:
        if method == "sum_logprob":
            return self.sum_logprob.copy()
        # A request with no scored token has no mean: NaN, which never wins a comparison.
        mean = np.where(self.n_tokens > 0, self.sum_logprob / np.maximum(self.n_tokens, 1), np.nan)
        if method == "mean_logprob":
            return mean
        if method == "geometric_mean":
            return np.exp(mean)
        raise ConfigError(f"unknown score method {method!r}; expected one of {', '.join(SCORE_METHODS)}")


def resolve_start_token_id(tokenizer, start_token: str = "") -> int:
    """The id of the token every scored sequence starts with (see :class:`ScoringConfig`)."""
    if start_token:
        tid = tokenizer.convert_tokens_to_ids(start_token)
        if tid is None or (tid == tokenizer.unk_token_id and start_token != tokenizer.unk_token):
            raise ConfigError(f"--start-token: {start_token!r} is not a token of this tokenizer")
        return int(tid)
    vocab = tokenizer.get_vocab()
    if "<|endoftext|>" in vocab:
        return int(vocab["<|endoftext|>"])
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ConfigError("the tokenizer has no <|endoftext|>, BOS or EOS token; pass --start-token")


@dataclass
class _Encoded:
    ids: list[int]
    first_scored: int  # index into ids of the first scored token (>= 1; ids[0] is the start token)
    skip: frozenset[int] = frozenset()  # indices into ids of tokens not scored (Request.skip)

    def scored(self) -> list[int]:
        """Indices into ``ids`` of the scored tokens."""
        return [j for j in range(self.first_scored, len(self.ids)) if j not in self.skip]


def _overlaps(start: int, end: int, spans: tuple[tuple[int, int], ...]) -> bool:
    return any(start < b and end > a for a, b in spans)


def encode_requests(tokenizer, requests: Sequence[Request], start_id: int) -> list[_Encoded]:
    """Tokenize requests (offsets decide which tokens are scored) and prepend the start token."""
    texts = [r.text for r in requests]
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for r, ids, offs in zip(requests, enc["input_ids"], enc["offset_mapping"], strict=True):
            first = next((i for i, (_, end) in enumerate(offs) if end > r.score_from), len(ids))
            skip = frozenset(i + 1 for i, (a, b) in enumerate(offs) if r.skip and _overlaps(a, b, r.skip))
            out.append(_Encoded([start_id, *ids], first + 1, skip))
        return out
    if any(r.skip for r in requests):
        raise ConfigError("scoring with skipped spans (CrowS-Pairs' unmodified-token score) needs a fast "
                          "tokenizer with offset mappings; this model's tokenizer is a slow one")
    # Slow tokenizers have no offsets: encode the unscored prefix and the rest separately.
    out = []
    for r in requests:
        pre = tokenizer.encode(r.text[: r.score_from], add_special_tokens=False) if r.score_from else []
        rest = tokenizer.encode(r.text[r.score_from :], add_special_tokens=False)
        out.append(_Encoded([start_id, *pre, *rest], len(pre) + 1))
    return out


def _token_budget(model, cfg: ScoringConfig) -> int:
    if cfg.max_batch_tokens:
        return cfg.max_batch_tokens
    vocab = int(getattr(model.config, "vocab_size", 50_000) or 50_000)
    # fp32 logits of one batch <= ~128 MB (the scored rows and their log-softmax take as much again).
    return max(64, (128 * 2**20) // (4 * vocab))


@dataclass
class _Unit:
    """One packed row: a shared prefix followed by the continuations of the requests that share it.

    Continuation ``k`` sits at positions ``prefix_len .. prefix_len + len_k - 1`` (position ids restart
    after the prefix) and attends to the prefix and causally to itself, never to other continuations.
    """

    prefix: list[int]
    conts: list[list[int]]
    members: list[int]

    @property
    def length(self) -> int:
        return len(self.prefix) + sum(len(c) for c in self.conts)


def _common_prefix_len(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        tok = seqs[0][i]
        if any(s[i] != tok for s in seqs[1:]):
            return i
    return n


def _make_units(encoded: list[_Encoded], groups: list[object]) -> list[_Unit]:
    by_group: dict[object, list[int]] = {}
    units: list[_Unit] = []
    for i, g in enumerate(groups):
        if g is None:
            units.append(_Unit(encoded[i].ids[:-1], [encoded[i].ids[-1:]], [i]))
        else:
            by_group.setdefault(g, []).append(i)
    for members in by_group.values():
        seqs = [encoded[i].ids for i in members]
        # Every continuation keeps at least one token; the start token is always shared.
        p = max(1, min(_common_prefix_len(seqs), min(len(s) for s in seqs) - 1))
        units.append(_Unit(seqs[0][:p], [s[p:] for s in seqs], members))
    return units


def _batches(lengths: list[int], batch_size: int, token_budget: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory peaks early)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]  # first is the longest of the batch
        if cur and (len(cur) >= batch_size or width * (len(cur) + 1) > token_budget):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def _pack(units: list[_Unit], encoded: list[_Encoded], pad_id: int, dtype: torch.dtype, packed: bool):
    """Tensors for one batch and the (row, predicting position, target, request) of every scored token."""
    width = max(u.length for u in units)
    b = len(units)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    pos = torch.zeros((b, width), dtype=torch.long)
    allowed = torch.zeros((b, width, width), dtype=torch.bool) if packed else None
    attn2d = torch.zeros((b, width), dtype=torch.long)
    rows, preds, targets, owners = [], [], [], []
    for r, u in enumerate(units):
        p = len(u.prefix)
        ids[r, :p] = torch.tensor(u.prefix)
        pos[r, :p] = torch.arange(p)
        attn2d[r, : u.length] = 1
        if allowed is not None:
            allowed[r, :p, :p] = torch.ones(p, p, dtype=torch.bool).tril()
        off = p
        for k, cont in enumerate(u.conts):
            c = len(cont)
            ids[r, off : off + c] = torch.tensor(cont)
            pos[r, off : off + c] = torch.arange(p, p + c)
            if allowed is not None:
                allowed[r, off : off + c, :p] = True
                allowed[r, off : off + c, off : off + c] = torch.ones(c, c, dtype=torch.bool).tril()
            req = u.members[k]
            full = encoded[req].ids
            # Position j of the request's own sequence lives at packed index j (< p) or off + j - p.
            for j in encoded[req].scored():
                rows.append(r)
                preds.append(j - 1 if j - 1 < p else off + j - 1 - p)
                targets.append(full[j])
                owners.append(req)
            off += c
    if allowed is not None:
        idx = torch.arange(width)
        allowed[:, idx, idx] = True  # padding rows attend to themselves (no all-masked row)
        mask = torch.zeros((b, 1, width, width), dtype=dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    else:
        mask = attn2d
    long = torch.long
    return (ids, pos, mask, torch.tensor(rows, dtype=long), torch.tensor(preds, dtype=long),
            torch.tensor(targets, dtype=long), owners)


def chat_requests(tokenizer, requests: Sequence[Request], user: str = "Write a sentence.") -> list[Request]:
    """The requests placed inside the chat template: the unscored context (``user`` when empty) is the
    user turn, the scored text the assistant's reply (its leading whitespace dropped), scored from the
    start of the reply."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("--chat-template: this model's tokenizer has no chat template; score raw text instead")
    prompts: dict[str, str] = {}
    out = []
    for r in requests:
        ctx = r.text[: r.score_from].strip() or user
        if ctx not in prompts:
            prompts[ctx] = tokenizer.apply_chat_template([{"role": "user", "content": ctx}], tokenize=False,
                                                         add_generation_prompt=True)
        prompt = prompts[ctx]
        reply = r.text[r.score_from:]
        shift = len(prompt) - r.score_from - (len(reply) - len(reply.lstrip()))
        skip = tuple((a + shift, b + shift) for a, b in r.skip)
        out.append(Request(prompt + reply.lstrip(), len(prompt), r.group, skip))
    return out


@torch.inference_mode()
def sequence_logprobs(
    model,
    tokenizer,
    requests: Sequence[Request],
    cfg: ScoringConfig | None = None,
    desc: str = "scoring",
) -> SequenceLogProbs:
    """Sum of log-probabilities of the scored tokens of every request, batched.

    Requests with the same ``group`` share their common token prefix: it is computed once, and the
    continuations are packed after it in one row with a block attention mask (exact, fewer tokens).
    """
    cfg = cfg or ScoringConfig()
    if cfg.chat_template:
        requests = chat_requests(tokenizer, requests, cfg.chat_user)
    n = len(requests)
    out = SequenceLogProbs.zeros(n)
    sums, counts = out.sum_logprob, out.n_tokens
    if n == 0:
        return out
    start_id = resolve_start_token_id(tokenizer, cfg.start_token)
    encoded = encode_requests(tokenizer, requests, start_id)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start_id
    device = next(model.parameters()).device
    mask_dtype = next(model.parameters()).dtype
    if cfg.share_prefix:
        units = _make_units(encoded, [r.group for r in requests])
    else:
        units = [_Unit(e.ids[:-1], [e.ids[-1:]], [i]) for i, e in enumerate(encoded)]
    batches = _batches([u.length for u in units], cfg.batch_size, _token_budget(model, cfg))
    packed = cfg.share_prefix and any(len(u.conts) > 1 for u in units)
    sums_t = torch.zeros(n, dtype=torch.float64)
    with tqdm(total=n, desc=desc, unit="seq", disable=not cfg.progress, leave=False) as bar:
        for bidx in batches:
            batch_units = [units[i] for i in bidx]
            ids, pos, mask, rows, preds, targets, owners = _pack(
                batch_units, encoded, pad_id, mask_dtype, packed
            )
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = model(
                    input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device)
                ).logits
            sel = logits[rows.to(device), preds.to(device)].float()
            tgt = targets.to(device)
            tok_lp = sel.gather(-1, tgt[:, None]).squeeze(-1) - torch.logsumexp(sel, dim=-1)
            owner_t = torch.tensor(owners, dtype=torch.long)
            sums_t.index_add_(0, owner_t, tok_lp.double().cpu())
            del logits, sel, tok_lp  # free before the next forward pass allocates its own
            counts += np.bincount(owners, minlength=n)
            bar.update(sum(len(u.members) for u in batch_units))
    sums[:] = sums_t.numpy()
    empty = int((counts == 0).sum())
    if empty:
        log.warning("%d of %d requests had no scored token (empty text after score_from)", empty, n)
    return SequenceLogProbs(sums, counts)


@torch.inference_mode()
def sequence_logprobs_one_by_one(model, tokenizer, requests: Sequence[Request], start_token: str = "") -> (
    SequenceLogProbs
):
    """Reference: each request alone, no padding, the way the reference implementations score."""
    start_id = resolve_start_token_id(tokenizer, start_token)
    encoded = encode_requests(tokenizer, requests, start_id)
    device = next(model.parameters()).device
    sums = np.zeros(len(requests))
    counts = np.zeros(len(requests), dtype=np.int64)
    for i, e in enumerate(encoded):
        ids = torch.tensor([e.ids], device=device)
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        scored = e.scored()
        sums[i] = sum(float(logp[t - 1, e.ids[t]]) for t in scored)
        counts[i] = len(scored)
    return SequenceLogProbs(sums, counts)


def geometric_mean_from_logprob(sum_logprob: float, n_tokens: int) -> float:
    """``exp(sum / n)``, the geometric mean of the token probabilities."""
    return math.exp(sum_logprob / max(n_tokens, 1))
