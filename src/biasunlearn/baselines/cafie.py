"""CAFIE, Counterfactually Aware Fair InferencE (Banerjee et al. 2024, "All Should Be Equal in the Eyes of
LMs: Counterfactually Aware Fair Text Generation", AAAI 38(16):17673-17681), at decoding/scoring time.

Idea: the next-token distribution for a context that mentions a social group should be aware of what the
model would predict for the other groups. Counterfactual contexts swap the group words for their
counterparts ("He is a" -> "She is a"); tokens the original context favours over a counterfactual are
pushed down, tokens it disfavours are pushed up.

The equations (per scored position, elementwise over the vocabulary ``V`` unless a norm is taken):

    p_0     = softmax(z_0 / T)                         original context, logits z_0
    p_k     = softmax(z_k / T),   k = 1..K             the K distinct counterfactual contexts
    S_k     = p_0 - p_k                                ("scores": what the original adds over cf k)
    W_k     = 1 + gamma * tanh(-lambda * S_k)          gamma = 1, so W_k lies in (0, 2)
    w_k     = exp(||S_k||_2) / sum_j exp(||S_j||_2)    weight of cf k (norm over V)
    p_fair  = sum_k w_k * W_k * p_0
    p_final = alpha * p_fair + (1 - alpha) * p_0

With ``K = 0`` (no group word in the context) ``p_final = p_0``; ``lambda = 0`` or ``alpha = 0`` give
``p_0`` too. ``p_final`` is **not renormalised** (its total lies in ``[1 - alpha, 1 + alpha]``), as in
the reference scoring code, which reads these values off directly as the token probabilities of
StereoSet/CrowS-Pairs sentences; its generation samples with ``torch.multinomial``, which normalises
implicitly, and so does sampling from the scores the logits processor returns (greedy is unaffected).
``normalize=True`` divides by the total instead. Computed in log space
(``log(1 + tanh(-x)) = log 2 + logsigmoid(-2x)``): the same values, without ``W_k`` underflowing to 0
at large ``lambda``.

Source. The paper's text could not be consulted here (only its abstract); the equations are read off
the authors' reference implementation, github.com/banerjeepragyan/CAFIE: ``utils/cafie_model.py``
(``ScoringAlgo``; the same "tanh" path is in ``biasbench/experiments/scoring.py`` and ``utils/scoring_old.py``):
``calculate_scores_1`` (``S_k``), ``calculate_new_pdf`` (``W_k`` for ``scoring_function="tanh"`` with
``gamma = 1``, the weights ``d_k = exp(vector_norm(S_k))``, ``p_fair = sum_k d_k / sum_j d_j * W_k * p_0``),
``generate_probabilities`` (softmax with temperature ``T``) and ``generate_sentences`` (``p_final``, the
alpha mix with ``softmax(logits / T)``). The README and ``generation.py`` describe ``alpha`` as
"new probs = alpha*debiased_probs + (1-alpha)*vanilla_probs" and ``lambda`` as the strength (more
debiasing, lower LM score).

Defaults (the authors' settings): ``lam = 1000``, ``alpha = 0.99``, ``temperature = 1`` for StereoSet
(``cafie_stereoset.py``, ``utils/stereoset_scoring.py``, scoring_function "tanh", threshold 0, ratio 0.5
unused by "tanh"). Their other settings: CrowS-Pairs ``lam = 500`` (``utils/crows_scoring.py``), free-form
generation ``lam = 100`` (``generation.py``, ``--lmd``); alpha 0.99 everywhere. See
:data:`REFERENCE_LAMBDAS`.

What still differs from the reference implementation, and why:

* The weights ``w_k`` use the norm of ``S_k`` at the position being scored. The reference takes the norm
  of the whole ``[1, positions, V]`` tensor: for scoring, all positions of the sentence at once (including
  the ones after the scored token); for generation, all positions so far. A per-position norm keeps each
  token's distribution a function of its own context (scoring stays causal and batchable, and the
  logits processor needs nothing but the current step).
* The reference replaces the second counterfactual's outputs by the first's
  (``outputs_w3_trimmed = outputs_w2_trimmed``), so in effect it uses one counterfactual (``K = 1``,
  ``p_fair = W_1 * p_0``). Here every distinct counterfactual counts (``K = 1`` for gender; up to two per
  race/religion list, more when several lists match), as the weighted sum intends.
* Counterfactual contexts and word lists: the reference splits the text on whitespace, matches words
  case-sensitively against three aligned lists (``data/word_lists/list_{1,2,3}.txt``, mixing nationality,
  religion, gender and profession words) and builds two counterfactual sentences covering every attribute
  at once (one with list 1 <-> list 2 and list 3 -> list 1, one with lists 1 and 2 -> list 3 and
  list 3 -> list 2). Here the project's own lists are used, one attribute
  and one group (column) at a time, with the whole-word, case-insensitive matching described below. For a
  text that mentions one group of one attribute (the usual benchmark sentence) both give the versions for
  the other groups.
* Positions: the reference tokenizes the whole counterfactual sentence and aligns its positions to the
  original's (``find_reqd_indices``); here each position's counterfactual context is built from the text
  (see below), which is the same thing wherever the alignment is exact. The reference scores the first
  token plainly from ``p(. | <|endoftext|>)`` and the rest without a start token in the context; here the
  project's scoring semantics apply (start token, then the text). The first token has no group word
  before it, so it is plain in both.
* Not implemented (no-ops at the defaults above): ``threshold`` (0), ``gamma`` (1), ``words_to_ignore``
  (empty), the self-debiasing prefix (off), and the other scoring functions (``arctan``, ``weight``,
  ``avg``, ``jpdf``). Not reproduced: the extra-context modes (StereoSet uses none, ``context_type='n'``;
  ``utils/crows_scoring.py`` sets ``'ab'``, and ``biasbench/benchmark/crows/crows.py`` passes the sentence
  itself as that context, so each CrowS-Pairs sentence is scored after a copy of itself).

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
``HE`` -> ``SHE``, ``he`` -> ``she``. The lists are the project's own (gender pairs; race and religion
triples after Liang et al. 2020 / Meade et al. 2022).

Counterfactual contexts: for each word list and each column, the text with that list's group words
swapped to the column (one attribute at a time; a text with gender and religion words gets gender and
religion counterfactuals separately); counterfactuals identical to the original, or to each other,
count once (an identical one is not a counterfactual; it would only add a ``W = 1`` term).

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
from biasunlearn.scoring import (
    Request,
    ScoringConfig,
    SequenceLogProbs,
    _overlaps,
    _token_budget,
    resolve_start_token_id,
)

WORDLIST_DIR = Path(__file__).parent / "wordlists"
DEFAULT_WORDLISTS = ("gender", "race", "religion")
DEFAULT_LAMBDA = 1000.0
DEFAULT_ALPHA = 0.99
DEFAULT_TEMPERATURE = 1.0
#: ``lambda`` of the authors' scripts (alpha = 0.99, temperature = 1 in all of them).
REFERENCE_LAMBDAS = {"stereoset": 1000.0, "crows_pairs": 500.0, "generation": 100.0}


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


def check_hparams(lam: float, alpha: float, temperature: float) -> None:
    """Raise :class:`ConfigError` unless ``lam >= 0``, ``0 <= alpha <= 1`` and ``temperature > 0`` (all finite)."""
    if not (math.isfinite(lam) and lam >= 0):
        raise ConfigError(f"CAFIE lambda must be finite and >= 0, got {lam}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"CAFIE alpha must be in [0, 1], got {alpha}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"CAFIE temperature must be finite and > 0, got {temperature}")


def cafie_logprobs(
    orig_logits: torch.Tensor,
    cf_logits_list: Sequence[torch.Tensor],
    *,
    lam: float = DEFAULT_LAMBDA,
    alpha: float = DEFAULT_ALPHA,
    temperature: float = DEFAULT_TEMPERATURE,
    normalize: bool = False,
    cf_masks: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """``log p_final`` (see the module docstring) from the original and counterfactual logits ``[..., V]``.

    ``cf_masks`` (optional, one bool tensor of shape ``[...]`` per counterfactual) says where each
    counterfactual exists; one that is absent takes no part in ``S``, ``W`` or the weights ``w``. Where none
    exists the result is ``log_softmax(orig_logits / temperature)`` exactly. Without ``normalize`` the
    result is the log of the unnormalised ``p_final``, as in the reference. Computed in float32 (float64
    stays float64).
    """
    check_hparams(lam, alpha, temperature)
    dtype = torch.float64 if orig_logits.dtype == torch.float64 else torch.float32
    log_p0 = torch.log_softmax(orig_logits.to(dtype) / temperature, dim=-1)
    if not cf_logits_list:
        return log_p0
    if cf_masks is not None and len(cf_masks) != len(cf_logits_list):
        raise ValueError(f"{len(cf_logits_list)} counterfactual logits but {len(cf_masks)} masks")
    p0 = log_p0.exp()
    norms, log_w_terms = [], []
    for cf in cf_logits_list:
        if cf.shape != orig_logits.shape:
            raise ValueError(f"counterfactual logits have shape {tuple(cf.shape)}, original {tuple(orig_logits.shape)}")
        diff = p0 - torch.softmax(cf.to(device=p0.device, dtype=dtype) / temperature, dim=-1)  # S_k
        norms.append(torch.linalg.vector_norm(diff, dim=-1))
        # log W_k = log(1 + tanh(-lam S_k)) = log 2 + log sigmoid(-2 lam S_k)
        log_w_terms.append(torch.nn.functional.logsigmoid(diff * (-2.0 * lam)) + math.log(2.0))
    if cf_masks is None:
        present = torch.ones((len(norms), *p0.shape[:-1]), dtype=torch.bool, device=p0.device)
    else:
        present = torch.stack([m.to(device=p0.device, dtype=torch.bool).expand(p0.shape[:-1]) for m in cf_masks])
    any_cf = present.any(0)
    scaled = torch.stack(norms).masked_fill(~present, -math.inf)  # log of exp(||S_k||), -inf where absent
    log_z = torch.where(any_cf, torch.logsumexp(scaled, dim=0), torch.zeros_like(scaled[0]))
    log_weights = scaled - log_z  # log w_k
    log_mix = torch.logsumexp(log_weights[..., None] + torch.stack(log_w_terms), dim=0)  # log sum_k w_k W_k
    log_fair = log_p0 + log_mix
    if alpha == 1.0:
        out = log_fair
    elif alpha == 0.0:
        out = log_p0
    else:
        out = torch.logaddexp(log_fair + math.log(alpha), log_p0 + math.log1p(-alpha))
    if normalize:
        out = out - torch.logsumexp(out, dim=-1, keepdim=True)
    return torch.where(any_cf[..., None], out, log_p0)


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
    scored: list[int]  # indices into ids of the scored tokens
    cf_refs: list[list[tuple[tuple[int, ...], int]]] = field(default_factory=list)

    @property
    def n_scored(self) -> int:
        return len(self.scored)


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
    """CAFIE scorer and generation helper (see the module docstring for the equations and the defaults).

    Args:
        model: a causal LM.
        tokenizer: its tokenizer; scoring needs a fast tokenizer (character offsets).
        wordlists: built-in names, paths or :class:`WordList` objects.
        lam: ``lambda``, the strength of ``W_k = 1 + tanh(-lambda S_k)`` (1000: the authors' StereoSet
            setting; 500 for CrowS-Pairs and 100 for generation in their scripts, see :data:`REFERENCE_LAMBDAS`).
        alpha: ``alpha`` of ``p_final = alpha p_fair + (1 - alpha) p_0``.
        temperature: ``T`` of every softmax.
        normalize: renormalise ``p_final`` (the reference does not).
    """

    def __init__(
        self,
        model,
        tokenizer,
        wordlists=DEFAULT_WORDLISTS,
        *,
        lam: float = DEFAULT_LAMBDA,
        alpha: float = DEFAULT_ALPHA,
        temperature: float = DEFAULT_TEMPERATURE,
        normalize: bool = False,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.wordlists = _resolve_wordlists(wordlists)
        check_hparams(lam, alpha, temperature)
        self.lam, self.alpha, self.temperature = float(lam), float(alpha), float(temperature)
        self.normalize = bool(normalize)

    @property
    def hparams(self) -> dict:
        """The keyword arguments of :func:`cafie_logprobs` this scorer uses."""
        return {"lam": self.lam, "alpha": self.alpha, "temperature": self.temperature, "normalize": self.normalize}

    def _plan(self, text: str, score_from: int, ids: list[int], offsets, start_id: int,
              skip: tuple[tuple[int, int], ...] = ()) -> _Plan:
        first = next((i for i, (_, end) in enumerate(offsets) if end > score_from), len(ids)) + 1
        ids = [start_id, *ids]
        # Request.skip: tokens whose characters overlap a skipped span stay in the input, unscored.
        scored = [j for j in range(first, len(ids)) if not _overlaps(*offsets[j - 1], skip)]
        plan = _Plan(ids, scored)
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
            self._plan(r.text, r.score_from, ids, offs, start_id, r.skip)
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
            for t, j in enumerate(p.scored):
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
        logp = cafie_logprobs(orig, cfs, cf_masks=masks, **self.hparams)
        tgt = torch.tensor(targets, device=logp.device)
        tok_lp = logp.gather(-1, tgt[:, None]).squeeze(-1)
        owner_t = torch.tensor(owners)
        sums_t.index_add_(0, owner_t, tok_lp.double().cpu())
        counts += np.bincount(owner_t.numpy(), minlength=len(counts))

    def logits_processor(self, start_token: str = "", lam: float | None = None) -> CAFIELogitsProcessor:
        """A :class:`CAFIELogitsProcessor` with this scorer's word lists and hyperparameters.

        ``lam`` overrides this scorer's ``lambda`` (the authors' generation script uses 100).
        """
        hp = self.hparams
        if lam is not None:
            hp["lam"] = lam
        return CAFIELogitsProcessor(
            self.model,
            self.tokenizer,
            self.wordlists,
            start_id=resolve_start_token_id(self.tokenizer, start_token),
            pad_token_id=self.tokenizer.pad_token_id,
            **hp,
        )


class CAFIELogitsProcessor(LogitsProcessor):
    """CAFIE decoding for ``model.generate``: replaces the scores by ``log p_final`` at every step.

    ``p_0`` is the softmax of the incoming scores (over ``temperature``). Without ``normalize`` the new
    scores are the log of the unnormalised ``p_final``: sampling normalises them (as the reference's
    ``torch.multinomial`` does) and greedy decoding takes their argmax, so generation is the same either
    way. The authors' generation script uses ``lam = 100`` (see :data:`REFERENCE_LAMBDAS`).

    Each row (left padding and a leading ``start_id`` removed, see
    :func:`~biasunlearn.baselines.self_debias.split_start`) is decoded to text; every whole group word,
    including one at the very end, is swapped (:func:`counterfactual_texts`), and each counterfactual text
    is re-encoded (start token first when the row had one) and run through ``model`` for its last position.
    Rows without a group word keep their scores' distribution (``log_softmax(scores / temperature)``).

    Cost: no KV cache for the counterfactuals; every step runs one full forward pass per
    counterfactual of every row over the whole sequence, so long generations cost quadratically more.
    The decode/re-encode round trip may tokenize the unswapped part differently from the original ids.
    """

    def __init__(
        self,
        model,
        tokenizer,
        wordlists=DEFAULT_WORDLISTS,
        *,
        lam: float = DEFAULT_LAMBDA,
        alpha: float = DEFAULT_ALPHA,
        temperature: float = DEFAULT_TEMPERATURE,
        normalize: bool = False,
        start_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.wordlists = _resolve_wordlists(wordlists)
        check_hparams(lam, alpha, temperature)
        self.lam, self.alpha, self.temperature = float(lam), float(alpha), float(temperature)
        self.normalize = bool(normalize)
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
        hp = {"lam": self.lam, "alpha": self.alpha, "temperature": self.temperature, "normalize": self.normalize}
        if not flat_rows:
            return cafie_logprobs(scores, [], **hp).to(scores.dtype)
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
        return cafie_logprobs(scores, cfs, cf_masks=masks, **hp).to(scores.dtype)
