"""Training data for BiasUnlearn: per-bias-type forget / retain / KL pools, loss regions, chunks.

From the train split, for each bias type:

* forget = stereotype sentences, plus the *adversarial subset*: a fixed, seeded fraction of that type's
  anti-stereotype sentences (paper §3, "Adversarial Forget Set");
* retain = anti-stereotype sentences;
* KL = unrelated sentences.

The KL term's region (``kl_region``) is by default the same loss region as the other terms. With
``kl_region="text"`` it is every token of the unrelated sentence's text: the whole intrasentence sentence
(context words around the blank included) and, for intersentence examples, the context as well as the
candidate. The contexts name the bias groups (``My mother ...``, ``The Ethiopian ...``), so this anchors
the probabilities of group words, and of what follows them, to the reference; the loss region alone
leaves them free. Measured on the built-in model (sweep exp59 to exp63): alone it does not remove the
drift toward female words that CrowS-Pairs gender reads; together with ``protect_words="gender"``,
scope ``all``, it does, but StereoSet SS then falls less.

When a type is *swapped* (its bias has reversed on the control split) its forget and retain roles are
exchanged: forget = anti-stereotypes plus the adversarial fraction of stereotypes, retain = stereotypes.

Only a sentence's own tokens count in the losses (its *loss region*): for intersentence examples the
candidate after its context; for intrasentence examples the tokens from the filled-in blank on
(``region="from_blank"``), only the filled-in words (``"blank_only"``: the suffix after the blank is
the same in all three sentences), or the whole sentence (``"sentence"``). Regions are character spans;
a token is in the region when its character span overlaps it, so a region that starts inside a token
(e.g. a blank filled right after a quote) still includes that token.

*Protected words* (``protect_words``, off by default): the words of a bias type's word list (the CAFIE
lists: ``gender`` = he/she, man/woman, ...) are cut out of the loss regions of the *other* bias types'
sentences (``protect_scope="all"``: of every type's sentences, the list's own type included), so that
debiasing cannot move the gendered words' probabilities directly. The
profession stereotypes of StereoSet carry more male words than their anti-stereotypes; this option tests
whether that drives the general shift toward female words that CrowS-Pairs gender reads as a stereotype
(``scripts/crows_gender_words.py``). Measured on the built-in model: scope ``other`` does not remove it
(sweep exp10), scope ``all`` weakens it (exp11).

*Counterfactual retention* (``counterfactual``, off by default): for the listed bias types (those with a
word list: gender, race, religion), each forget sentence's counterfactual (its group words, in the context
and the sentence, flipped to their counterparts: ``The schoolboy was rowdy`` -> ``The schoolgirl was
rowdy``) joins the type's retain pool. The forget term lowers the attribute after one group and the
retention term keeps it after the other, so what is unlearned is the association of the attribute with
the group, not the attribute itself (or its sentiment).

*Group-balanced data* (``balance_words``, off by default): for the listed bias types (gender, race,
religion), every train example of the *other* bias types that contains one of the list's group words
joins the train data a second time with those words flipped (``The engineer came in. He was good at
math.`` -> ``... She was good at math.``), as stereotype, anti-stereotype and unrelated sentence alike.
StereoSet's profession stereotypes carry more male words than their anti-stereotypes, so forgetting the
one and retaining the other also teaches that what follows a female word is likelier; with each sentence
present under both groups that lesson cancels. The listed type's own examples are never flipped (their
group word is the association being unlearned). Flipping keeps the example's target word (a profession,
nationality or religion term is not in the gender list), but short sentences such as ``She speaks perfect
English.`` also occur in the control or report split, so a copy that shares a sentence with them is dropped.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Generic, TypeVar

import torch

from biasunlearn.data.sentiment import DIRECTIONS, sentiment_direction
from biasunlearn.data.splits import normalize_text
from biasunlearn.data.stereoset import BIAS_TYPES, StereoExample
from biasunlearn.errors import ConfigError
from biasunlearn.packing import Packed, pack_sequences

if TYPE_CHECKING:
    from biasunlearn.baselines.cafie import WordList

T = TypeVar("T")

log = logging.getLogger(__name__)

REGIONS = ("from_blank", "blank_only", "sentence")
#: regions of the KL term's unrelated sentences: ``loss`` = the loss region above; ``text`` = every token of
#: the text (an intersentence example's context included)
KL_REGIONS = ("loss", "text")
GROUPINGS = ("type", "type_task")


def group_key(ex: StereoExample, grouping: str = "type") -> str:
    """The control / swap group of an example: its bias type (``type``), or bias type and task
    (``type_task``: ``gender/intrasentence``), so that the two tasks are balanced and swapped separately."""
    if grouping not in GROUPINGS:
        raise ConfigError(f"--control-groups: expected one of {', '.join(GROUPINGS)}, got {grouping!r}")
    return ex.bias_type if grouping == "type" else f"{ex.bias_type}/{ex.task}"


@dataclass(frozen=True)
class TrainItem:
    """A sentence to train on: ``text`` with its loss region ``[loss_from, loss_to)`` in characters."""

    text: str
    loss_from: int
    loss_to: int
    bias_type: str
    label: str
    example_id: str
    task: str
    #: character spans inside the region left out of the loss (protected words)
    exclude: tuple[tuple[int, int], ...] = ()
    #: sentiment direction of the item's example (:mod:`biasunlearn.data.sentiment`); empty when not computed
    sentiment: str = ""


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def loss_region(ex: StereoExample, label: str, region: str = "from_blank") -> TrainItem:
    """The :class:`TrainItem` of the sentence of ``ex`` labelled ``label``."""
    if region not in REGIONS:
        raise ConfigError(f"--loss-region: expected one of {', '.join(REGIONS)}, got {region!r}")
    s = ex.by_label(label).text
    if ex.task == "intersentence":
        text = f"{ex.context} {s}"
        return TrainItem(text, len(ex.context) + 1, len(text), ex.bias_type, label, ex.id, ex.task)
    if region == "sentence":
        return TrainItem(s, 0, len(s), ex.bias_type, label, ex.id, ex.task)
    ctx = ex.context
    i = ctx.find("BLANK")
    if i < 0:
        start, end = 0, len(s)
    else:
        prefix, suffix = ctx[:i], ctx[i + len("BLANK"):]
        # The sentence repeats the context around the blank; tolerate case or spacing differences by
        # falling back to the longest common prefix.
        start = i if s.startswith(prefix) else _common_prefix(s.lower(), prefix.lower())
        end = len(s)
        # StereoSet sentences often change the case of context words (``Turkey`` -> ``turkey``).
        if region == "blank_only" and suffix and s.lower().endswith(suffix.lower()) and len(s) - len(suffix) > start:
            end = len(s) - len(suffix)
    return TrainItem(s, start, end, ex.bias_type, label, ex.id, ex.task)


@dataclass
class Pools:
    """Per-bias-type sentence pools of the train split (``cf_stereo`` / ``cf_anti``: the counterfactuals
    of the stereotypes / anti-stereotypes of the types with counterfactual retention)."""

    stereo: dict[str, list[TrainItem]]
    anti: dict[str, list[TrainItem]]
    unrelated: list[TrainItem]
    cf_stereo: dict[str, list[TrainItem]] = field(default_factory=dict)
    cf_anti: dict[str, list[TrainItem]] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        return {t: {"stereotype": len(self.stereo.get(t, [])), "anti-stereotype": len(self.anti.get(t, []))}
                for t in self.stereo}


def protect(item: TrainItem, wordlist) -> TrainItem | None:
    """``item`` with the words of ``wordlist`` inside its region excluded from the loss (added to any spans
    already excluded), or None when nothing but excluded words (and spaces or punctuation) is left of the
    region."""
    new = [(m.start, m.end) for m in wordlist.find(item.text) if m.end > item.loss_from and m.start < item.loss_to]
    if not new:
        return item
    spans = tuple(sorted({*item.exclude, *new}))
    kept = list(item.text[item.loss_from:item.loss_to])
    for a, b in spans:
        for k in range(max(a, item.loss_from), min(b, item.loss_to)):
            kept[k - item.loss_from] = " "
    if not any(c.isalnum() for c in kept):
        return None
    return replace(item, exclude=spans)


PROTECT_SCOPES = ("other", "all")


def type_wordlists(types: str, flag: str) -> dict[str, object]:
    """``{bias type: word list}`` of a comma-separated list of bias types with a word list; an error names
    ``flag``."""
    from biasunlearn.baselines.cafie import load_wordlist

    out = {}
    for name in (w.strip() for w in types.split(",") if w.strip()):
        if name not in BIAS_TYPES or name == "profession":
            raise ConfigError(f"{flag}: expected bias types with a word list (gender, race, religion), got {name!r}")
        out[name] = load_wordlist(name)
    return out


def protected_wordlists(protect_words: str, protect_scope: str = "other") -> dict[str, object]:
    """``{bias type: word list}`` of ``--protect-words``, after checking it and ``--protect-scope``."""
    if protect_scope not in PROTECT_SCOPES:
        raise ConfigError(f"--protect-scope: expected one of {', '.join(PROTECT_SCOPES)}, got {protect_scope!r}")
    return type_wordlists(protect_words, "--protect-words")


def _protected(item: TrainItem | None, bias_type: str, lists: dict[str, object], scope: str) -> TrainItem | None:
    """``item`` (of a ``bias_type`` sentence) after :func:`protect` with each list that applies to it under
    ``scope``; None when nothing is left to learn from."""
    for own, wl in lists.items():
        if item is not None and (bias_type != own or scope == "all"):
            item = protect(item, wl)
    return item


def counterfactual_wordlists(types: str) -> dict[str, object]:
    """``{bias type: word list}`` of ``--counterfactual-retain`` (comma-separated bias types), checked."""
    return type_wordlists(types, "--counterfactual-retain")


def flip_words(text: str, wordlist, shift: int = 1) -> str:
    """``text`` with each group word of ``wordlist`` replaced by its counterpart ``shift`` columns on
    (cyclically; with two columns every word is flipped: he <-> she, mother <-> father), case kept."""
    parts, last = [], 0
    for m in wordlist.find(text):
        parts += [text[last:m.start], wordlist.counterpart(text[m.start:m.end], (m.column + shift)
                                                           % wordlist.n_columns, m.line)]
        last = m.end
    parts.append(text[last:])
    return "".join(parts)


CF_ID_SUFFIX = "~cf"  # a counterfactual's id: the original's id, this suffix and its column shift


def counterfactual_examples(ex: StereoExample, wordlist) -> list[StereoExample]:
    """The counterfactuals of ``ex``: its context and sentences with the group words flipped, one per
    column shift of ``wordlist`` (one for a two-column list); none when ``ex`` has no group word."""
    if not wordlist.find(" ".join([ex.context, *(s.text for s in ex.sentences)])):
        return []
    out = []
    for k in range(1, wordlist.n_columns):
        sents = tuple(replace(s, text=flip_words(s.text, wordlist, k)) for s in ex.sentences)
        out.append(replace(ex, id=f"{ex.id}{CF_ID_SUFFIX}{k}", context=flip_words(ex.context, wordlist, k),
                           sentences=sents))
    return out


def held_texts(held_out: Sequence[StereoExample]) -> set[str]:
    """The sentences of ``held_out`` (the control and report splits), normalised as in
    :func:`~biasunlearn.data.splits.check_no_leakage`, for :func:`repeats_held`."""
    return {normalize_text(s.text) for ex in held_out for s in ex.sentences}


def repeats_held(ex: StereoExample, held: set[str]) -> bool:
    """Whether a sentence of ``ex`` (a flipped copy) repeats one of ``held`` (:func:`held_texts`)."""
    return any(normalize_text(s.text) in held for s in ex.sentences)


def balance_wordlists(types: str) -> dict[str, object]:
    """``{bias type: word list}`` of ``--balance-words`` (comma-separated bias types), checked."""
    return type_wordlists(types, "--balance-words")


def group_balanced(examples: Sequence[StereoExample], types: str,
                   held_out: Sequence[StereoExample] = ()) -> list[StereoExample]:
    """``examples`` followed by the counterfactuals (:func:`counterfactual_examples`) of every example of a
    bias type other than the listed ones that has a group word of a listed type's word list (see the
    module docstring, *Group-balanced data*). A counterfactual that shares a sentence (normalised as in
    :func:`~biasunlearn.data.splits.check_no_leakage`) with ``held_out`` (the control and report splits) is
    dropped: short sentences such as ``She speaks perfect English.`` occur in both. An empty ``types``
    returns ``examples`` unchanged."""
    lists = balance_wordlists(types)
    if not lists:
        return list(examples)
    held = held_texts(held_out)
    extra: list[StereoExample] = []
    counts: dict[str, int] = {}
    n_held = 0
    for wordlist in lists.values():
        for ex in examples:
            if ex.bias_type in lists:
                continue
            for cex in counterfactual_examples(ex, wordlist):
                if repeats_held(cex, held):
                    n_held += 1
                    continue
                extra.append(cex)
                counts[cex.bias_type] = counts.get(cex.bias_type, 0) + 1
    log.info("group-balanced data (%s): %s; %d counterfactual(s) dropped for sharing a sentence with the "
             "control or report split", ",".join(lists),
             ", ".join(f"{k} +{v}" for k, v in counts.items()) or "no group words found", n_held)
    return [*examples, *extra]


def invariance_wordlists(types: str) -> dict[str, object]:
    """``{bias type: word list}`` of ``--invariance-types`` (comma-separated bias types), checked."""
    return type_wordlists(types, "--invariance-types")


INVARIANCE_SCOPES = ("all", "other")


def invariance_pairs(examples: Sequence[StereoExample], types: str,
                     tasks: Sequence[str] = ("intrasentence", "intersentence"),
                     scope: str = "all", held_out: Sequence[StereoExample] = ()
                     ) -> list[tuple[TrainItem, TrainItem]]:
    """``(sentence, counterfactual)`` pairs for the group-swap invariance term
    (:func:`~biasunlearn.methods.losses.swap_invariance_loss`): every stereotype, anti-stereotype and
    unrelated sentence of ``examples`` (all bias types) whose text changes when the group words of a
    listed type's word list are flipped (:func:`counterfactual_examples`), each with its flipped version.
    The region is the whole sentence (intrasentence) or the candidate after its context (intersentence,
    the context flipped too), so the group word itself counts.

    ``scope="other"`` leaves out the stereotypes and anti-stereotypes of the listed type itself (a gender
    stereotype's preference over its counterfactual is the association the other terms unlearn); its
    unrelated sentences and every sentence of the other types stay.

    A pair whose flipped sentence repeats a sentence of ``held_out`` (the control and report splits,
    normalised as in :func:`~biasunlearn.data.splits.check_no_leakage`) is dropped, as in
    :func:`group_balanced`: the term trains the model's log-probability of the flipped sentence too."""
    if scope not in INVARIANCE_SCOPES:
        raise ConfigError(f"--invariance-scope: expected one of {', '.join(INVARIANCE_SCOPES)}, got {scope!r}")
    lists = invariance_wordlists(types)
    held = held_texts(held_out) if lists else set()
    out: list[tuple[TrainItem, TrainItem]] = []
    n_held = 0
    for ex in examples:
        if ex.task not in tasks:
            continue
        for name, wordlist in lists.items():
            own = scope == "other" and ex.bias_type == name
            for cex in counterfactual_examples(ex, wordlist):
                for label in ("unrelated",) if own else ("stereotype", "anti-stereotype", "unrelated"):
                    a, b = loss_region(ex, label, "sentence"), loss_region(cex, label, "sentence")
                    if a.text == b.text:
                        continue
                    if normalize_text(cex.by_label(label).text) in held:
                        n_held += 1
                        continue
                    out.append((a, b))
    if lists:
        log.info("group-swap invariance (%s, scope %s): %d sentence / counterfactual pairs; %d dropped for "
                 "sharing a sentence with the control or report split", ",".join(lists), scope, len(out), n_held)
    return out


def text_item(ex: StereoExample, label: str) -> TrainItem:
    """The :class:`TrainItem` of the sentence of ``ex`` labelled ``label`` with every token of its text in
    the region (an intersentence example's context included)."""
    return replace(loss_region(ex, label, "sentence"), loss_from=0)


def build_pools(examples: Sequence[StereoExample], region: str = "from_blank",
                tasks: Sequence[str] = ("intrasentence", "intersentence"), grouping: str = "type",
                protect_words: str = "", protect_scope: str = "other", sentiment: bool = False,
                counterfactual: str = "", kl_region: str = "loss",
                held_out: Sequence[StereoExample] = ()) -> Pools:
    """Per-group pools (groups: :func:`group_key`), in bias-type order.

    ``protect_words``: comma-separated bias types (gender, race, religion) whose word lists are cut out
    of the loss regions of the stereotype and anti-stereotype sentences of the other bias types
    (``protect_scope="other"``) or of every type, the list's own included (``"all"``; see the module
    docstring); an example left with nothing to learn from in either sentence is dropped.

    ``sentiment``: label each item with its example's sentiment direction (for ``positive_share`` in
    :class:`ChunkStream`).

    ``counterfactual``: comma-separated bias types whose stereotypes and anti-stereotypes get their
    counterfactuals (:func:`counterfactual_examples`, same loss region) in ``cf_stereo`` / ``cf_anti``,
    which :class:`ChunkStream` adds to the retain pool (see the module docstring). A counterfactual that
    shares a sentence (normalised as in :func:`~biasunlearn.data.splits.check_no_leakage`) with
    ``held_out`` (the control and report splits) is dropped, as in :func:`group_balanced`.

    ``kl_region``: ``loss`` (the unrelated sentences' loss region) or ``text`` (their whole text, see
    the module docstring)."""
    if kl_region not in KL_REGIONS:
        raise ConfigError(f"--kl-region: expected one of {', '.join(KL_REGIONS)}, got {kl_region!r}")
    lists = protected_wordlists(protect_words, protect_scope)
    cf_lists = counterfactual_wordlists(counterfactual)
    held = held_texts(held_out) if cf_lists else set()
    n_cf_held = 0
    stereo: dict[str, list[TrainItem]] = {}
    anti: dict[str, list[TrainItem]] = {}
    cf: dict[str, dict[str, list[TrainItem]]] = {"stereotype": {}, "anti-stereotype": {}}
    unrelated: list[TrainItem] = []
    n_protected = n_dropped = 0
    for ex in examples:
        if ex.task not in tasks:
            continue
        key = group_key(ex, grouping)
        pair: list[TrainItem | None] = [loss_region(ex, label, region) for label in ("stereotype", "anti-stereotype")]
        if sentiment:
            direction = sentiment_direction(ex)
            pair = [replace(it, sentiment=direction) if it is not None else None for it in pair]
        pair = [_protected(it, ex.bias_type, lists, protect_scope) for it in pair]
        if None in pair:
            n_dropped += 1
        else:
            n_protected += any(it.exclude for it in pair)  # type: ignore[union-attr]
            stereo.setdefault(key, []).append(pair[0])  # type: ignore[arg-type]
            anti.setdefault(key, []).append(pair[1])  # type: ignore[arg-type]
            for cex in counterfactual_examples(ex, cf_lists[ex.bias_type]) if ex.bias_type in cf_lists else ():
                if repeats_held(cex, held):
                    n_cf_held += 1
                    continue
                for label, orig in zip(("stereotype", "anti-stereotype"), pair, strict=True):
                    item = _protected(replace(loss_region(cex, label, region), sentiment=orig.sentiment),  # type: ignore[union-attr]
                                      ex.bias_type, lists, protect_scope)
                    if item is not None:
                        cf[label].setdefault(key, []).append(item)
        unrelated.append(loss_region(ex, "unrelated", region) if kl_region == "loss" else text_item(ex, "unrelated"))
    if lists:
        log.info("protected words (%s): cut out of %d example(s); %d example(s) with nothing else to learn "
                 "from dropped", ",".join(lists), n_protected, n_dropped)
    if not stereo:
        raise ConfigError("the train split has no examples for the selected --tasks")
    if sentiment:
        log.info("sentiment directions of the stereotypes (positive/negative/neutral): %s", ", ".join(
            f"{k} {'/'.join(str(sum(i.sentiment == d for i in v)) for d in DIRECTIONS)}"
            for k, v in stereo.items()))
    if cf_lists:
        # stereotypes with a counterfactual (a list of n columns gives each n - 1 of them)
        counts = ", ".join(f"{k} {len({it.example_id.rsplit(CF_ID_SUFFIX, 1)[0] for it in v})} of "
                           f"{len(stereo[k])} stereotypes" for k, v in cf["stereotype"].items())
        log.info("counterfactual retention (%s): %s; %d counterfactual(s) dropped for sharing a sentence with "
                 "the control or report split", ",".join(cf_lists), counts or "no group words found", n_cf_held)
    order = sorted(stereo, key=lambda k: (BIAS_TYPES.index(k.split("/")[0]) if k.split("/")[0] in BIAS_TYPES
                                          else len(BIAS_TYPES), k))
    return Pools({t: stereo[t] for t in order}, {t: anti[t] for t in order}, unrelated,
                 {t: cf["stereotype"][t] for t in order if t in cf["stereotype"]},
                 {t: cf["anti-stereotype"][t] for t in order if t in cf["anti-stereotype"]})


@dataclass
class SwapState:
    """Which bias types currently have their forget and retain roles swapped, and which are resting
    (balanced on the control split, so not drawn for forget and retain while ``rest_balanced`` is on)."""

    swapped: dict[str, bool] = field(default_factory=dict)
    resting: dict[str, bool] = field(default_factory=dict)
    #: the latest control reading's distance of each type from 50 (SS points), for ``adaptive`` sampling
    distance: dict[str, float] = field(default_factory=dict)

    def is_swapped(self, bias_type: str) -> bool:
        return self.swapped.get(bias_type, False)

    def is_resting(self, bias_type: str) -> bool:
        return self.resting.get(bias_type, False)


TYPE_SAMPLING = ("size", "balanced", "adaptive")
ADAPTIVE_FLOOR = 1.0  # SS points added to every type's distance, so that balanced types are still drawn


def type_weights(sizes: dict[str, int], sampling: str, state: SwapState,
                 boost: dict[str, float] | None = None) -> dict[str, float]:
    """Probability weight of each bias type when drawing forget / retain items.

    ``size``: proportional to the type's pool (the paper draws uniformly from the union of all types);
    ``balanced``: equal for every type; ``adaptive``: proportional to ``|SS_t − 50| + 1``, the type's
    distance from 50 on the latest control reading (``state.distance``; equal before the first reading),
    so the types furthest from balance get the most updates and those near 50 few. ``boost`` multiplies
    the weight of the bias types it names (``{"gender": 3.0}``; a key ``gender/intrasentence`` follows
    ``gender``). Resting types get weight 0, unless every type rests (then all are drawn as if none rested).
    """
    if sampling not in TYPE_SAMPLING:
        raise ConfigError(f"--type-sampling: expected one of {', '.join(TYPE_SAMPLING)}, got {sampling!r}")
    if sampling == "adaptive":
        base = {t: (abs(state.distance.get(t, 0.0)) + ADAPTIVE_FLOOR if n else 0.0) for t, n in sizes.items()}
    else:
        base = {t: float(n if sampling == "size" else (1 if n else 0)) for t, n in sizes.items()}
    if boost:
        base = {t: w * boost.get(t.split("/")[0], 1.0) for t, w in base.items()}
    active = {t: w for t, w in base.items() if not state.is_resting(t)}
    if not any(active.values()):
        return base
    return {t: (active.get(t, 0.0)) for t in base}


def sentiment_weights(items: Sequence[TrainItem], positive_share: float = 0.5) -> dict[str, float]:
    """Probability of drawing each sentiment direction from ``items`` (see ``positive_share`` of
    :class:`ChunkStream`).

    ``neutral`` keeps its share of the pool (``n_neutral / n``); the rest goes to ``positive`` with
    probability ``positive_share`` and to ``negative`` otherwise (all of it to the one present when the
    other is empty), whatever the pool's own ratio of the two. Directions without items are left out."""
    counts = {d: sum(it.sentiment == d for it in items) for d in DIRECTIONS}
    total = sum(counts.values())
    if total == 0:
        raise ConfigError("--positive-share: a pool has no items with a sentiment direction")
    out = {"neutral": counts["neutral"] / total} if counts["neutral"] else {}
    rest = 1 - counts["neutral"] / total
    share = {"positive": positive_share, "negative": 1 - positive_share}
    signed = [d for d in ("positive", "negative") if counts[d]]
    for d in signed:
        out[d] = rest * (share[d] if len(signed) == 2 else 1.0)
    return out


def draw_balance_wordlist(types: str) -> WordList | None:
    """The word list of ``--draw-balance`` (one bias type with a word list), or None when it is empty."""
    lists = type_wordlists(types, "--draw-balance")
    if len(lists) > 1:
        raise ConfigError(f"--draw-balance: expected one bias type, got {', '.join(lists)}")
    return next(iter(lists.values()), None)


def group_tag(text: str, wordlist: WordList) -> str:
    """The column (``"0"``, ``"1"``, ...: the group) of ``wordlist`` that every group word of ``text``
    belongs to; ``""`` when ``text`` has no group word or words of several groups."""
    cols = {m.column for m in wordlist.find(text)}
    return str(cols.pop()) if len(cols) == 1 else ""


def group_weights(tags: Sequence[str]) -> dict[str, float]:
    """Probability of drawing each group tag (:func:`group_tag`) from a pool with these ``tags``: the items
    of no single group (tag ``""``) keep their share of the pool, the rest is split equally between the
    groups present, whatever their own counts (see ``draw_balance`` of :class:`ChunkStream`)."""
    if not tags:
        return {}
    counts: dict[str, int] = {}
    for t in tags:
        counts[t] = counts.get(t, 0) + 1
    out = {"": counts[""] / len(tags)} if counts.get("") else {}
    groups = sorted(g for g in counts if g)
    for g in groups:
        out[g] = (1 - out.get("", 0.0)) / len(groups)
    return out


def _parse_type_values(spec: str, flag: str, what: str, valid: Callable[[float], bool], rule: str
                       ) -> dict[str, float]:
    """``"gender=A,race=B"`` -> ``{"gender": A, "race": B}``; empty -> ``{}``. Each name must be a
    StereoSet bias type, given once, and each value pass ``valid``; errors name ``flag``."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in BIAS_TYPES:
            raise ConfigError(f"{flag}: expected TYPE={what.upper()} with TYPE one of {', '.join(BIAS_TYPES)}, "
                              f"got {part!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{flag}: {name}'s {what} must be a number {rule}, got {value!r}") from None
        if not valid(number):
            raise ConfigError(f"{flag}: {name}'s {what} must be {rule}, got {number}")
        if name in out:
            raise ConfigError(f"{flag}: {name} is given twice")
        out[name] = number
    return out


def _is_share(x: float) -> bool:
    return 0.0 <= x <= 1.0


def _is_boost(x: float) -> bool:
    return 0.0 < x < math.inf


SHARE_RULE, BOOST_RULE = "in [0, 1] (0 = off)", "finite and > 0"


def _checked_type_values(values: dict[str, float] | None, flag: str, valid: Callable[[float], bool],
                         rule: str) -> dict[str, float]:
    """A copy of a bias type -> value mapping given directly (not parsed from a flag), checked."""
    out = dict(values or {})
    for t, v in out.items():
        if t not in BIAS_TYPES or not valid(v):
            raise ConfigError(f"{flag}: expected bias types ({', '.join(BIAS_TYPES)}) with values {rule}, "
                              f"got {t}={v}")
    return out


def parse_type_shares(spec: str, flag: str = "--positive-share-types") -> dict[str, float]:
    """``"gender=0.75,race=0.5"`` -> ``{"gender": 0.75, "race": 0.5}``; empty -> ``{}``.

    Each name must be a StereoSet bias type and each share lie in [0, 1]; the error names ``flag``."""
    return _parse_type_values(spec, flag, "share", _is_share, SHARE_RULE)


def parse_type_boost(spec: str, flag: str = "--type-boost") -> dict[str, float]:
    """``"gender=3"`` -> ``{"gender": 3.0}``; empty -> ``{}``.

    Each name must be a StereoSet bias type and each factor be finite and > 0; the error names ``flag``."""
    return _parse_type_values(spec, flag, "factor", _is_boost, BOOST_RULE)


class _Cycler(Generic[T]):
    """Endless shuffled passes over a list (reshuffled each pass)."""

    def __init__(self, items: Sequence[T], rng: random.Random) -> None:
        self.items = list(items)
        self.rng = rng
        self.order: list[int] = []

    def next(self) -> T:
        if not self.order:
            self.order = list(range(len(self.items)))
            self.rng.shuffle(self.order)
        return self.items[self.order.pop()]


@dataclass
class Encoded:
    input_ids: list[int]
    loss_mask: list[bool]


def encode_item(tokenizer, item: TrainItem, start_id: int, max_length: int = 128) -> Encoded:
    """Tokens (after the start token) and the mask of those in the item's loss region."""
    enc = tokenizer(item.text, add_special_tokens=False, return_offsets_mapping=True)
    ids = [start_id, *enc["input_ids"]][:max_length]
    mask = [False] + [e > item.loss_from and s < item.loss_to and not any(e > a and s < b for a, b in item.exclude)
                      for s, e in enc["offset_mapping"]]
    return Encoded(ids, mask[: len(ids)])


class ChunkStream(torch.utils.data.IterableDataset):
    """Endless chunks of ``n_forget`` forget, ``n_retain`` retain and ``n_kl`` unrelated sequences.

    Forget and retain items are drawn by bias type with :func:`type_weights` (``type_sampling="size"``:
    uniformly from the union of the types' current pools, as the paper does; ``"balanced"``: each type
    equally often), each type's pools cycled in shuffled passes; the roles of a type (and whether it
    rests) follow ``swap_state``, which the control callback updates during training.

    ``positive_share`` (pools built with ``sentiment=True``; 0 = off): within a type, the draws that are
    not of neutral examples go to examples whose stereotype is the more positive sentence with probability
    ``positive_share`` and to those whose stereotype is the more negative one otherwise
    (:func:`sentiment_weights`; 0.5 balances the two, 1 draws only the positive ones), so that the forget
    and retain terms cannot lower SS just by teaching the model to prefer pleasant sentences.
    ``positive_share_types`` overrides that share for the bias types it names (``{"gender": 0.75}``;
    a pool key ``gender/intrasentence`` follows ``gender``); the others keep ``positive_share``.

    ``type_boost`` multiplies the draw weight of the bias types it names (``{"gender": 3.0}``: gender
    three times as often as ``type_sampling`` alone would draw it; see :func:`type_weights`).

    ``pair_types`` / ``n_pair`` (an extension outside the paper, off by default): each chunk also holds
    ``n_pair`` pairs of one example's stereotype and anti-stereotype from the bias types named (drawn
    uniformly from their examples, resting types left out), under ``pair_rejected`` and ``pair_chosen``:
    the stereotype is rejected and the anti-stereotype chosen, the other way round once the type is swapped.

    ``invariance`` / ``n_invariance`` (an extension outside the paper, off by default): each chunk also
    holds ``n_invariance`` sentence / counterfactual pairs (:func:`invariance_pairs`, cycled), under
    ``inv_orig`` and ``inv_flip``.

    ``draw_balance`` (a word list, e.g. gender's; None = off, an extension outside the paper): within
    each bias type's forget and retain pools (after the sentiment direction, when ``positive_share`` is
    on) and its pairs, the items whose text (an intersentence candidate's context included) names only
    one of the list's groups are drawn equally often per group, and those naming none or several keep
    their share (:func:`group_tag`, :func:`group_weights`). StereoSet's gender sentences name women more
    often than men (59 : 41 among seed 4's train stereotypes that name one group), so without it the forget
    and retention terms act on what follows a female word more than on what follows a male one.
    """

    def __init__(self, pools: Pools, tokenizer, start_id: int, *, n_forget: int = 4, n_retain: int = 28,
                 n_kl: int = 8, adversarial_fraction: float = 0.25, seed: int = 0,
                 swap_state: SwapState | None = None, max_length: int = 128, type_sampling: str = "size",
                 retain_set: str = "anti", positive_share: float = 0.0,
                 positive_share_types: dict[str, float] | None = None,
                 type_boost: dict[str, float] | None = None, pair_types: Sequence[str] = (),
                 n_pair: int = 0, invariance: Sequence[tuple[TrainItem, TrainItem]] = (),
                 n_invariance: int = 0, draw_balance: WordList | None = None) -> None:
        super().__init__()
        if not 0.0 <= adversarial_fraction <= 1.0:
            raise ConfigError(f"--adversarial-fraction must be in [0, 1], got {adversarial_fraction}")
        self.pools, self.tokenizer, self.start_id = pools, tokenizer, start_id
        self.n_forget, self.n_retain, self.n_kl = n_forget, n_retain, n_kl
        self.adversarial_fraction = adversarial_fraction
        self.seed = seed
        self.swap_state = swap_state or SwapState()
        self.max_length = max_length
        type_weights({}, type_sampling, SwapState())  # validates the option
        self.type_sampling = type_sampling
        if retain_set not in ("anti", "both"):
            raise ConfigError(f"retain_set: expected anti or both, got {retain_set!r}")
        self.retain_set = retain_set
        if not 0.0 <= positive_share <= 1.0:
            raise ConfigError(f"--positive-share must be in [0, 1] (0 = off), got {positive_share}")
        self.positive_share = positive_share
        self.positive_share_types = _checked_type_values(positive_share_types, "--positive-share-types", _is_share,
                                                         SHARE_RULE)
        self.type_boost = _checked_type_values(type_boost, "--type-boost", _is_boost, BOOST_RULE)
        shared = [t for t in pools.stereo if self.share_for(t)]
        if any(not it.sentiment for t in shared for items in (pools.stereo[t], pools.anti[t]) for it in items):
            raise ConfigError("--positive-share: the pools carry no sentiment directions "
                              "(build them with build_pools(..., sentiment=True))")
        if n_pair < 0:
            raise ConfigError(f"--n-pair must be >= 0, got {n_pair}")
        unknown = sorted(set(pair_types) - {t.split("/")[0] for t in pools.stereo})
        if unknown:
            raise ConfigError(f"--pair-types: no train examples of {', '.join(unknown)}; "
                              f"expected some of {', '.join(sorted({t.split('/')[0] for t in pools.stereo}))}")
        self.n_pair = n_pair if pair_types else 0
        if n_invariance < 0:
            raise ConfigError(f"--n-invariance must be >= 0, got {n_invariance}")
        self.invariance = list(invariance)
        self.n_invariance = n_invariance if self.invariance else 0
        self.draw_balance = draw_balance
        self._tags: dict[str, str] = {}
        if draw_balance is not None:
            log.info("draws balanced by %s groups (sentences of group %s / none or several), forget | retain: %s",
                     draw_balance.name, ", ".join(str(c) for c in range(draw_balance.n_columns)), "; ".join(
                         f"{t} " + " | ".join("/".join(str(n) for n in self.group_counts(items))
                                              for items in (pools.stereo[t], pools.anti[t]))
                         for t in pools.stereo))
        #: per pool key, (stereotype, anti-stereotype) of each example that has both
        self.pairs: dict[str, list[tuple[TrainItem, TrainItem]]] = {}
        for t in pools.stereo:
            if t.split("/")[0] in pair_types:
                anti = {it.example_id: it for it in pools.anti[t]}
                self.pairs[t] = [(it, anti[it.example_id]) for it in pools.stereo[t] if it.example_id in anti]
        rng = random.Random(seed)
        # Fixed adversarial subsets: a seeded fraction of each type's anti-stereotypes (and of its
        # stereotypes, used when the type is swapped).
        self.adv_anti = {t: rng.sample(v, round(adversarial_fraction * len(v))) for t, v in pools.anti.items()}
        self.adv_stereo = {t: rng.sample(v, round(adversarial_fraction * len(v))) for t, v in pools.stereo.items()}

    def tag(self, item: TrainItem) -> str:
        """The item's group tag under ``draw_balance`` (:func:`group_tag`, cached by text)."""
        if item.text not in self._tags:
            self._tags[item.text] = group_tag(item.text, self.draw_balance)
        return self._tags[item.text]

    def of_group(self, items: Sequence[T], group: str, key: Callable[[T], TrainItem] = lambda it: it) -> list[T]:
        """The ``items`` whose (``key``'s) group tag is ``group``; all of them when ``draw_balance`` is off."""
        if self.draw_balance is None:
            return list(items)
        return [it for it in items if self.tag(key(it)) == group]

    def group_counts(self, items: Sequence[TrainItem]) -> list[int]:
        """How many of ``items`` name only group 0, only group 1, ... and none or several (last)."""
        tags = [self.tag(it) for it in items]
        return [tags.count(str(c)) for c in range(self.draw_balance.n_columns)] + [tags.count("")]

    def share_for(self, t: str) -> float:
        """The positive share of pool key ``t`` (0 = draw in proportion to the pool)."""
        return self.positive_share_types.get(t.split("/")[0], self.positive_share)

    def forget_pool(self, t: str) -> list[TrainItem]:
        if self.swap_state.is_swapped(t):
            return self.pools.anti[t] + self.adv_stereo[t]
        return self.pools.stereo[t] + self.adv_anti[t]

    def retain_pool(self, t: str) -> list[TrainItem]:
        """The type's retain sentences, plus the counterfactuals of its forget sentences (when built)."""
        if self.retain_set == "both":  # SFT: stereotypes and anti-stereotypes 1:1
            return self.pools.stereo[t] + self.pools.anti[t]
        if self.swap_state.is_swapped(t):
            return self.pools.stereo[t] + self.pools.cf_anti.get(t, [])
        return self.pools.anti[t] + self.pools.cf_stereo.get(t, [])

    def __iter__(self) -> Iterator[dict[str, list[Encoded]]]:
        info = torch.utils.data.get_worker_info()
        rng = random.Random(self.seed * 1000 + (info.id if info else 0) + 1)
        types = list(self.pools.stereo)
        cyclers: dict[tuple, _Cycler] = {}
        directions: dict[tuple[str, str, bool], tuple[list[str], list[float]]] = {}
        groups: dict[tuple, tuple[list[str], list[float]]] = {}
        kl = _Cycler(self.pools.unrelated, rng)

        def next_of(key: tuple, items: Sequence[T], item_of: Callable[[T], TrainItem] = lambda it: it) -> T:
            """The next of ``items`` from the cycler of ``key`` and the drawn group: with ``draw_balance``
            a group tag (of ``item_of(it)``) is drawn first, by weights that ``key`` caches; without it the
            group is ``""`` and there is no random draw."""
            group = ""
            if self.draw_balance is not None:
                if key not in groups:
                    w = group_weights([self.tag(item_of(it)) for it in items])
                    groups[key] = (list(w), list(w.values()))
                names, probs = groups[key]
                group = rng.choices(names, weights=probs)[0]
            if (*key, group) not in cyclers:
                cyclers[(*key, group)] = _Cycler(self.of_group(items, group, key=item_of), rng)
            return cyclers[(*key, group)].next()
        invariance = _Cycler(self.invariance, rng) if self.n_invariance else None

        def draw(role: str, n: int) -> list[Encoded]:
            pools = {t: (self.forget_pool(t) if role == "forget" else self.retain_pool(t)) for t in types}
            weights = type_weights({t: len(pools[t]) for t in types}, self.type_sampling, self.swap_state,
                                   self.type_boost)
            out = []
            for t in rng.choices(types, weights=[weights[t] for t in types], k=n) if n else []:
                base = (role, t, self.swap_state.is_swapped(t))
                direction = ""
                if self.share_for(t):
                    if base not in directions:
                        w = sentiment_weights(pools[t], self.share_for(t))
                        directions[base] = (list(w), list(w.values()))
                    names, probs = directions[base]
                    direction = rng.choices(names, weights=probs)[0]
                items = [it for it in pools[t] if it.sentiment == direction] if direction else pools[t]
                out.append(encode_item(self.tokenizer, next_of((*base, direction), items), self.start_id,
                                       self.max_length))
            return out

        def draw_pairs() -> tuple[list[Encoded], list[Encoded]]:
            live = [t for t in self.pairs if not self.swap_state.is_resting(t) and self.pairs[t]]
            rejected, chosen = [], []
            for t in rng.choices(live, weights=[len(self.pairs[t]) for t in live], k=self.n_pair) if live else []:
                stereo, anti = next_of(("pair", t), self.pairs[t], item_of=lambda p: p[0])  # the stereotype's group
                lose, win = (anti, stereo) if self.swap_state.is_swapped(t) else (stereo, anti)
                rejected.append(encode_item(self.tokenizer, lose, self.start_id, self.max_length))
                chosen.append(encode_item(self.tokenizer, win, self.start_id, self.max_length))
            return rejected, chosen

        while True:
            chunk = {
                "forget": draw("forget", self.n_forget),
                "retain": draw("retain", self.n_retain),
                "kl": [encode_item(self.tokenizer, kl.next(), self.start_id, self.max_length)
                       for _ in range(self.n_kl)],
            }
            if self.n_pair:
                chunk["pair_rejected"], chunk["pair_chosen"] = draw_pairs()
            if invariance is not None:
                drawn = [invariance.next() for _ in range(self.n_invariance)]
                chunk["inv_orig"], chunk["inv_flip"] = (
                    [encode_item(self.tokenizer, it, self.start_id, self.max_length) for it in part]
                    for part in zip(*drawn, strict=True))
            yield chunk


def collate_chunk(chunks: list[dict[str, list[Encoded]]], pad_id: int, pack: bool = True
                  ) -> dict[str, torch.Tensor | list[int] | Packed]:
    """One batch holding every sequence of the chunk(s), in the order forget, retain, KL, pair (rejected
    sentences, then their chosen partners), invariance (sentences, then their counterfactuals).

    ``input_ids``/``attention_mask``/``loss_mask`` are the right-padded ``[B, T]`` layout the losses use;
    ``sizes`` gives the number of sequences of the forget, retain and KL parts, the number of pairs and the
    number of invariance pairs. With ``pack`` the batch also carries ``packed`` (all sequences) and
    ``packed_ref`` (forget, KL, pair and invariance sequences, for the reference pass):
    the sequences packed into rows with block-diagonal attention, which is how the model is run
    (the same computation, without the padding).
    """
    parts: dict[str, list[Encoded]] = {"forget": [], "retain": [], "kl": [], "pair_rejected": [], "pair_chosen": [],
                                       "inv_orig": [], "inv_flip": []}
    for ch in chunks:
        for k in parts:
            parts[k].extend(ch.get(k, []))
    pairs = parts["pair_rejected"] + parts["pair_chosen"] + parts["inv_orig"] + parts["inv_flip"]
    seqs = parts["forget"] + parts["retain"] + parts["kl"] + pairs
    width = max(len(s.input_ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    lmask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        n = len(s.input_ids)
        ids[i, :n] = torch.tensor(s.input_ids)
        attn[i, :n] = 1
        lmask[i, :n] = torch.tensor(s.loss_mask)
    out: dict[str, torch.Tensor | list[int] | Packed] = {
        "input_ids": ids, "attention_mask": attn, "loss_mask": lmask,
        "sizes": [len(parts["forget"]), len(parts["retain"]), len(parts["kl"]), len(parts["pair_rejected"]),
                  len(parts["inv_orig"])],
    }
    if pack:
        out["packed"] = pack_sequences([s.input_ids for s in seqs], pad_id)
        ref = parts["forget"] + parts["kl"] + pairs
        if ref:
            out["packed_ref"] = pack_sequences([s.input_ids for s in ref], pad_id)
    return out
