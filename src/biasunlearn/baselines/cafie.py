"""CAFIE-style counterfactually aware decoding (after Banerjee et al. 2024, "All Should Be Equal in the
Eyes of LMs: Counterfactually Aware Fair Text Generation", AAAI).

Idea of the paper: the next-token distribution should not depend on which social group the context
mentions. For a context that mentions a group, counterfactual contexts are built by swapping its group
words for the counterparts of the other groups ("He is a" -> "She is a"); the model's next-token
distributions under the original and the counterfactual contexts are *equalised* and the result is
used for the next token.

What is implemented here, exactly (a simplified form, not the official code). At each position:

    p_orig   = softmax(logits | original context)
    p_k      = softmax(logits | counterfactual context k),   k = 1..K (distinct, != original)
    p_fair   = (p_orig + p_1 + ... + p_K) / (K + 1)           (the equalising average)
    p_final  = (1 - w) * p_orig + w * p_fair                  (w = ``weight``, 0.5 by default)

With ``K = 0`` (no group word in the context) ``p_final = p_orig``. ``w = 1`` is the plain average of
the original and counterfactual distributions.

Where this may differ from the official implementation: the paper does not stop at the plain average.
As far as we recall, its final distribution also weights the counterfactual correction per token (a
similarity-based weight between the token and the sensitive attribute words, scaled through a
sigmoid, under a strength hyperparameter ``lambda``) and uses its own counterfactual word lists; we
could not check those details against the paper or the official code, so they are **not** implemented
here. The fixed interpolation weight ``w`` stands in for them. The word lists in ``wordlists/`` are the
project's own (gender pairs; race and religion triples after Liang et al. 2020 / Meade et al. 2022).

Word lists (``wordlists/<name>.txt``, or any file with the same format): UTF-8 text, one group of
counterpart words per line, the words separated by ``" | "``, e.g. ``he | she`` or
``christian | muslim | jewish``. Blank lines and lines starting with ``#`` are ignored. Columns mean
the same group on every line of a file (in ``gender.txt`` column 1 is male, column 2 female), so
swapping "column c" turns every group word of a text into its column-``c`` counterpart; a line with
fewer columns leaves its words unchanged for the missing ones. Entries may be several words
(``african american``; any whitespace matches their spaces). Matching is case-insensitive on whole
words (not inside a longer word: ``he`` is not found in ``the`` or ``hello``; ``he's`` and ``(he)``
match), longer entries win over shorter ones, and a word listed on several lines maps by its first
line. The replacement keeps the capitalisation of the replaced word: ``He`` -> ``She``,
``HE`` -> ``SHE``, ``he`` -> ``she``.

Counterfactual contexts: for each word list and each column, the text with that list's group words
swapped to the column (one attribute at a time; a text with gender and religion words gets gender and
religion counterfactuals separately); counterfactuals identical to the original, or to each other,
count once.

Scoring (:class:`CAFIE`): the text is known, so a group word counts as part of a position's context
only once it is complete (it ends where the context ends or before); a partly seen word stays as it
is. The counterfactual context of a position is the text before it with its complete group words
swapped, tokenized on its own (the start token first); in practice this is read off one forward pass
over the swapped text, and a context whose end is not a token boundary of the swapped text gets its
own forward pass (approximate only for a context that ends inside a character spanning several
tokens, which then gets the whole character). Generation (:class:`CAFIELogitsProcessor`) does not
know the next characters: it swaps every whole group word of the decoded text so far, including one
at the very end.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor

from biasunlearn.baselines.self_debias import chunk_by_load, forward_positions, split_start
from biasunlearn.errors import ConfigError
from biasunlearn.scoring import Request, ScoringConfig, SequenceLogProbs, _token_budget, resolve_start_token_id

WORDLIST_DIR = Path(__file__).parent / "wordlists"
DEFAULT_WORDLISTS = ("gender", "race", "religion")
DEFAULT_WEIGHT = 0.5


def match_case(src: str, dst: str) -> str:
    """``dst`` with the capitalisation of ``src``: all caps, first letter capitalised, or as is."""
    letters = [c for c in src if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return dst.upper()
    if src[:1].isupper():
        return dst[:1].upper() + dst[1:]
    return dst


@dataclass(frozen=True)
class Match:
    start: int
    end: int
    line: int
    column: int


class WordList:
    """Groups of counterpart words (see the module docstring for the file format and matching rules)."""

    def __init__(self, name: str, groups: Sequence[Sequence[str]]) -> None:
        self.name = name
        self.groups = tuple(tuple(" ".join(w.lower().split()) for w in g) for g in groups)
        if not self.groups:
            raise ConfigError(f"word list {name!r} has no groups")
        for g in self.groups:
            if len(g) < 2 or any(not w for w in g):
                raise ConfigError(f"word list {name!r}: a group needs two or more non-empty words, got {g}")
        self.n_columns = max(len(g) for g in self.groups)
        self._lookup: dict[str, tuple[int, int]] = {}
        for li, g in enumerate(self.groups):
            for ci, w in enumerate(g):
                self._lookup.setdefault(w, (li, ci))
        alts = sorted(self._lookup, key=lambda w: (-len(w), w))
        body = "|".join(r"\s+".join(re.escape(p) for p in w.split()) for w in alts)
        self._pattern = re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)

    @classmethod
    def from_file(cls, path: str | Path, name: str | None = None) -> WordList:
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ConfigError(f"cannot read word list {path}: {e}") from None
        groups = []
        for ln in lines:
            ln = ln.strip()
            if ln and not ln.startswith("#"):
                groups.append([w.strip() for w in ln.split("|")])
        return cls(name or path.stem, groups)

    def find(self, text: str) -> list[Match]:
        """The whole-word group words of ``text``, in order (non-overlapping)."""
        out = []
        for m in self._pattern.finditer(text):
            line, col = self._lookup[" ".join(m.group(0).lower().split())]
            out.append(Match(m.start(), m.end(), line, col))
        return out

    def counterpart(self, word: str, column: int, line: int | None = None) -> str:
        """``word``'s counterpart in ``column`` with ``word``'s capitalisation (``word`` if it has none)."""
        if line is None:
            key = " ".join(word.lower().split())
            if key not in self._lookup:
                return word
            line = self._lookup[key][0]
        g = self.groups[line]
        return match_case(word, g[column]) if column < len(g) else word

    def swap(self, text: str, column: int, limit: int | None = None) -> tuple[str, int]:
        """``(swapped text, length change)``: the first ``limit`` group words (all if None) set to ``column``."""
        if not 0 <= column < self.n_columns:
            raise ValueError(f"word list {self.name!r} has columns 0..{self.n_columns - 1}, got {column}")
        matches = self.find(text)
        if limit is not None:
            matches = matches[:limit]
        parts, last, shift = [], 0, 0
        for m in matches:
            new = self.counterpart(text[m.start : m.end], column, m.line)
            parts += [text[last : m.start], new]
            shift += len(new) - (m.end - m.start)
            last = m.end
        parts.append(text[last:])
        return "".join(parts), shift


def load_wordlist(spec: str | Path | WordList) -> WordList:
    """A built-in list by name (``gender``, ``race``, ``religion``), a file path, or a :class:`WordList`."""
    if isinstance(spec, WordList):
        return spec
    builtin = WORDLIST_DIR / f"{spec}.txt"
    if isinstance(spec, str) and "/" not in spec and builtin.is_file():
        return WordList.from_file(builtin)
    if Path(spec).is_file():
        return WordList.from_file(spec)
    names = sorted(p.stem for p in WORDLIST_DIR.glob("*.txt"))
    raise ConfigError(f"unknown word list {spec!r}: not a file, nor one of {', '.join(names)}")


def swap_words(text: str, wordlist: WordList, column: int) -> str:
    """``text`` with every group word of ``wordlist`` replaced by its column-``column`` counterpart."""
    return wordlist.swap(text, column)[0]


def counterfactual_texts(text: str, wordlists: Sequence[WordList]) -> list[str]:
    """The distinct counterfactuals of ``text`` (one word list and one column at a time), original excluded."""
    out: list[str] = []
    seen = {text}
    for wl in wordlists:
        if not wl.find(text):
            continue
        for col in range(wl.n_columns):
            cf = swap_words(text, wl, col)
            if cf not in seen:
                seen.add(cf)
                out.append(cf)
    return out


def cafie_logprobs(
    orig_logits: torch.Tensor,
    cf_logits_list: Sequence[torch.Tensor],
    weight: float = DEFAULT_WEIGHT,
    cf_masks: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """``log p_final`` (see the module docstring) from the original and counterfactual logits ``[..., V]``.

    ``cf_masks`` (optional, one bool tensor of shape ``[...]`` per counterfactual) says where each
    counterfactual exists; where none does, the result is ``log_softmax(orig_logits)`` exactly.
    Computed in float32 (float64 stays float64).
    """
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"CAFIE weight must be in [0, 1], got {weight}")
    dtype = torch.float64 if orig_logits.dtype == torch.float64 else torch.float32
    lpo = torch.log_softmax(orig_logits.to(dtype), dim=-1)
    if not cf_logits_list or weight == 0.0:
        return lpo
    if cf_masks is not None and len(cf_masks) != len(cf_logits_list):
        raise ValueError(f"{len(cf_logits_list)} counterfactual logits but {len(cf_masks)} masks")
    members = [lpo]
    for cf in cf_logits_list:
        if cf.shape != orig_logits.shape:
            raise ValueError(f"counterfactual logits have shape {tuple(cf.shape)}, original {tuple(orig_logits.shape)}")
        members.append(torch.log_softmax(cf.to(device=lpo.device, dtype=dtype), dim=-1))
    stacked = torch.stack(members)  # [1 + K, ..., V]
    if cf_masks is None:
        count = torch.full(lpo.shape[:-1], float(len(members)), dtype=dtype, device=lpo.device)
    else:
        present = torch.stack([torch.ones(lpo.shape[:-1], dtype=torch.bool, device=lpo.device)]
                              + [m.to(device=lpo.device, dtype=torch.bool) for m in cf_masks])
        stacked = stacked.masked_fill(~present[..., None], -math.inf)
        count = present.sum(0).to(dtype)
    log_fair = torch.logsumexp(stacked, dim=0) - count.log()[..., None]
    out = log_fair if weight == 1.0 else torch.logaddexp(lpo + math.log(1.0 - weight), log_fair + math.log(weight))
    return torch.where((count == 1)[..., None], lpo, out)


def _resolve_wordlists(wordlists) -> list[WordList]:
    if isinstance(wordlists, (str, Path, WordList)):
        wordlists = [wordlists]
    out = [load_wordlist(w) for w in wordlists]
    if not out:
        raise ConfigError("CAFIE: give at least one word list")
    return out


@dataclass
class _Plan:
    """One request: its plain row, and for every scored token the (row, position) of its counterfactuals."""

    ids: list[int]
    first: int
    cf_refs: list[list[tuple[tuple[int, ...], int]]] = field(default_factory=list)

    @property
    def n_scored(self) -> int:
        return len(self.ids) - self.first


def _boundary_index(offsets: Sequence[tuple[int, int]], char_end: int, nth: int = 1) -> int | None:
    """Index of the ``nth`` token ending exactly at ``char_end`` (the tokens up to it cover the context).

    ``nth`` > 1 when a character spans several tokens (bytes) and the context ends inside it.
    """
    seen = 0
    for i, (_, end) in enumerate(offsets):
        if end == char_end:
            seen += 1
            if seen == nth:
                return i
        elif end > char_end:
            break
    return None


class CAFIE:
    """CAFIE-style scorer and generation helper (see the module docstring for what is implemented).

    Args:
        model: a causal LM.
        tokenizer: its tokenizer; scoring needs a fast tokenizer (character offsets).
        wordlists: built-in names, paths or :class:`WordList` objects.
        weight: ``w`` of ``p_final = (1 - w) p_orig + w p_fair``.
    """

    def __init__(self, model, tokenizer, wordlists=DEFAULT_WORDLISTS, weight: float = DEFAULT_WEIGHT) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.wordlists = _resolve_wordlists(wordlists)
        cafie_logprobs(torch.zeros(1), [], weight)  # validates the weight
        self.weight = float(weight)

    def _plan(self, text: str, score_from: int, ids: list[int], offsets, start_id: int) -> _Plan:
        first = next((i for i, (_, end) in enumerate(offsets) if end > score_from), len(ids)) + 1
        ids = [start_id, *ids]
        plan = _Plan(ids, first)
        scored = range(first, len(ids))
        # Characters of context of the token at index j of ids (ids[0] is the start token).
        ctx_end = {j: offsets[j - 2][1] if j >= 2 else 0 for j in scored}
        # How many tokens of the context end at its last character (> 1 inside a multi-token character).
        nth = {j: sum(1 for i in range(j - 1) if offsets[i][1] == ctx_end[j]) for j in scored}
        refs: dict[int, list[tuple[tuple[int, ...], int]]] = {j: [] for j in scored}
        seen: dict[int, set[str]] = {j: {text[: ctx_end[j]]} for j in scored}
        for wl in self.wordlists:
            matches = wl.find(text)
            for col in range(wl.n_columns):
                for k in range(1, len(matches) + 1):
                    hi = matches[k].end if k < len(matches) else math.inf
                    js = [j for j in scored if matches[k - 1].end <= ctx_end[j] < hi]
                    if not js:
                        continue
                    swapped, shift = wl.swap(text, col, limit=k)
                    enc = None
                    wanted: dict[int, int] = {}  # j -> position in the swapped text's row
                    for j in js:
                        end = ctx_end[j] + shift
                        ctx = swapped[:end]
                        if ctx in seen[j]:
                            continue
                        seen[j].add(ctx)
                        if enc is None:
                            enc = self.tokenizer(swapped, add_special_tokens=False, return_offsets_mapping=True)
                        m = _boundary_index(enc["offset_mapping"], end, nth[j])
                        if m is not None:
                            wanted[j] = m + 1
                        else:  # the context does not end on a token boundary of the swapped text
                            row = (start_id, *self.tokenizer.encode(ctx, add_special_tokens=False))
                            refs[j].append((row, len(row) - 1))
                    if wanted:
                        # The swapped text's row, cut after the last position needed.
                        row = (start_id, *enc["input_ids"][: max(wanted.values())])
                        for j, pos in wanted.items():
                            refs[j].append((row, pos))
        plan.cf_refs = [refs[j] for j in scored]
        return plan

    @torch.inference_mode()
    def sequence_logprobs(
        self, requests: Sequence[Request], cfg: ScoringConfig | None = None, desc: str = "CAFIE scoring"
    ) -> SequenceLogProbs:
        """Per-request sums of ``log p_final`` over the scored tokens.

        Same semantics as :func:`biasunlearn.scoring.sequence_logprobs`; ``cfg.share_prefix`` and
        ``cfg.bf16`` are not used (always float32, one row per sequence).
        """
        cfg = cfg or ScoringConfig()
        n = len(requests)
        out = SequenceLogProbs.zeros(n)
        sums, counts = out.sum_logprob, out.n_tokens
        if n == 0:
            return out
        if not getattr(self.tokenizer, "is_fast", False):
            raise ConfigError("CAFIE scoring needs a fast tokenizer (character offsets)")
        start_id = resolve_start_token_id(self.tokenizer, cfg.start_token)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else start_id
        enc = self.tokenizer([r.text for r in requests], add_special_tokens=False, return_offsets_mapping=True)
        plans = [
            self._plan(r.text, r.score_from, ids, offs, start_id)
            for r, ids, offs in zip(requests, enc["input_ids"], enc["offset_mapping"], strict=True)
        ]
        budget = _token_budget(self.model, cfg)
        # Chunks whose selected logits (scored tokens + their counterfactuals) stay within the budget.
        order = sorted(range(n), key=lambda i: -len(plans[i].ids))
        chunks = chunk_by_load(order, lambda i: plans[i].n_scored + sum(len(r) for r in plans[i].cf_refs), budget)
        sums_t = torch.zeros(n, dtype=torch.float64)
        with tqdm(total=n, desc=desc, unit="seq", disable=not cfg.progress, leave=False) as bar:
            for chunk in chunks:
                self._score_chunk([i for i in chunk if plans[i].n_scored], plans, pad_id, cfg, budget, sums_t, counts)
                bar.update(len(chunk))
        sums[:] = sums_t.numpy()
        return SequenceLogProbs(sums, counts)

    def _score_chunk(self, chunk, plans, pad_id, cfg, budget, sums_t, counts) -> None:
        if not chunk:
            return
        row_index: dict[tuple[int, ...], int] = {}
        wanted: list[dict[int, int]] = []  # per row: position -> index in its selected logits

        def ref(row: tuple[int, ...], pos: int) -> tuple[int, int]:
            r = row_index.setdefault(row, len(row_index))
            if r == len(wanted):
                wanted.append({})
            wanted[r].setdefault(pos, len(wanted[r]))
            return r, pos

        orig_refs, cf_refs, targets, owners = [], [], [], []
        for i in chunk:
            p = plans[i]
            plain = tuple(p.ids)
            for t, j in enumerate(range(p.first, len(p.ids))):
                orig_refs.append(ref(plain, j - 1))
                cf_refs.append([ref(row, pos) for row, pos in p.cf_refs[t]])
                targets.append(p.ids[j])
                owners.append(i)
        rows = list(row_index)
        logits = forward_positions(
            self.model, rows, [list(w) for w in wanted], pad_id, cfg.batch_size, budget
        )
        flat = torch.cat(logits)
        base = np.cumsum([0] + [len(w) for w in wanted])

        def flat_idx(r: int, pos: int) -> int:
            return int(base[r]) + wanted[r][pos]

        orig = flat[torch.tensor([flat_idx(*x) for x in orig_refs], device=flat.device)]
        k_max = max((len(c) for c in cf_refs), default=0)
        cfs, masks = [], []
        for k in range(k_max):
            idx = [flat_idx(*c[k]) if k < len(c) else 0 for c in cf_refs]
            cfs.append(flat[torch.tensor(idx, device=flat.device)])
            masks.append(torch.tensor([k < len(c) for c in cf_refs], device=flat.device))
        logp = cafie_logprobs(orig, cfs, self.weight, masks)
        tgt = torch.tensor(targets, device=logp.device)
        tok_lp = logp.gather(-1, tgt[:, None]).squeeze(-1)
        owner_t = torch.tensor(owners)
        sums_t.index_add_(0, owner_t, tok_lp.double().cpu())
        counts += np.bincount(owner_t.numpy(), minlength=len(counts))

    def logits_processor(self, start_token: str = "") -> CAFIELogitsProcessor:
        """A :class:`CAFIELogitsProcessor` with this scorer's word lists and weight."""
        return CAFIELogitsProcessor(
            self.model,
            self.tokenizer,
            self.wordlists,
            weight=self.weight,
            start_id=resolve_start_token_id(self.tokenizer, start_token),
            pad_token_id=self.tokenizer.pad_token_id,
        )


class CAFIELogitsProcessor(LogitsProcessor):
    """CAFIE-style decoding for ``model.generate``: replaces the scores by ``log p_final`` at every step.

    ``p_orig`` is the softmax of the incoming scores. Each row (left padding and a leading ``start_id``
    removed, see :func:`~biasunlearn.baselines.self_debias.split_start`) is decoded to text; every whole
    group word, including one at the very end, is swapped (:func:`counterfactual_texts`), and each
    counterfactual text is re-encoded (start token first when the row had one) and run through
    ``model`` for its last position. Rows without a group word keep their scores' distribution.

    Cost: no KV cache for the counterfactuals; every step runs one full forward pass per
    counterfactual of every row over the whole sequence, so long generations cost quadratically more.
    The decode/re-encode round trip may tokenize the unswapped part differently from the original ids.
    """

    def __init__(
        self,
        model,
        tokenizer,
        wordlists=DEFAULT_WORDLISTS,
        weight: float = DEFAULT_WEIGHT,
        start_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.wordlists = _resolve_wordlists(wordlists)
        cafie_logprobs(torch.zeros(1), [], weight)
        self.weight = float(weight)
        self.start_id = start_id
        self.pad_token_id = pad_token_id

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        per_row: list[list[list[int]]] = []
        for row in input_ids.tolist():
            had_start, body = split_start(row, self.start_id, self.pad_token_id)
            text = self.tokenizer.decode(body, clean_up_tokenization_spaces=False)
            head = [self.start_id] if had_start else []
            per_row.append(
                [head + self.tokenizer.encode(cf, add_special_tokens=False)
                 for cf in counterfactual_texts(text, self.wordlists)]
            )
        flat_rows = [r for rows in per_row for r in rows if r]
        if not flat_rows:
            return scores
        pad = self.pad_token_id if self.pad_token_id is not None else 0
        logits = forward_positions(self.model, flat_rows, [[len(r) - 1] for r in flat_rows], pad,
                                   batch_size=len(flat_rows), token_budget=max(map(len, flat_rows)) * len(flat_rows))
        it = iter(logits)
        k_max = max(len(rows) for rows in per_row)
        vocab = scores.shape[-1]
        cfs = [torch.zeros_like(scores, dtype=torch.float32) for _ in range(k_max)]
        masks = [torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device) for _ in range(k_max)]
        for b, rows in enumerate(per_row):
            k = 0
            for r in rows:
                if not r:
                    continue
                cfs[k][b] = next(it)[0, :vocab].to(scores.device)
                masks[k][b] = True
                k += 1
        return cafie_logprobs(scores, cfs, self.weight, masks).to(scores.dtype)
