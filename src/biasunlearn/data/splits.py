"""The StereoSet splits used for unlearning and evaluation, built so that no held-out sentence is trained on.

- ``train``: ``stereoset/test.json`` after :func:`paper_filter`, minus ``control`` and minus every example
  sharing a sentence text with ``control`` or ``report``.
- ``control``: held out of the filtered test.json for model selection during training (the paper's "dev"
  split). ``control_by="example"`` (the paper's way): ``control_per_type`` examples per bias type drawn
  (seeded). ``control_by="target"``: whole StereoSet *targets* (``Ethiopia``, ``nurse``, ...) held out per
  bias type, in a seeded order, until they hold at least ``control_per_type`` examples. StereoSet's dev
  and test files share no target, so the report split measures bias on targets never trained on; a
  control split of held-out targets measures the same kind of generalisation, whereas one of random
  examples shares its targets with train and reads the model as less biased than the report split does.
- ``report``: ``stereoset/dev.json``, unfiltered, so predictions can be checked by StereoSet's official
  evaluator; the paper's "test" split.

On the real data, the filtered test.json has gender 1521, profession 4832, race 5921, religion 488
(12762 = the paper's train + dev).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from biasunlearn.data.paths import STEREOSET_DEV, STEREOSET_TEST, data_file
from biasunlearn.data.stereoset import BIAS_TYPES, TASKS, StereoExample, load_stereoset
from biasunlearn.errors import ConfigError, DataError, LeakageError

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "control", "report")
CONTROL_BY = ("example", "target")


def _dropped_by_paper_filter(ex: StereoExample) -> bool:
    if ex.task != "intrasentence":
        return False
    ctx = ex.context
    return ctx.count("BLANK") > 1 or ".BLANK" in ctx or "`BLANK" in ctx


def paper_filter(examples: list[StereoExample]) -> list[StereoExample]:
    """Drop the intrasentence examples BiasUnlearn's loader skips: a context with more than one ``BLANK``,
    with ``.BLANK``, or with a backtick right before ``BLANK``. Intersentence examples are kept."""
    kept = [ex for ex in examples if not _dropped_by_paper_filter(ex)]
    if len(kept) != len(examples):
        logger.debug("paper filter dropped %d of %d examples", len(examples) - len(kept), len(examples))
    return kept


def normalize_text(text: str) -> str:
    """Sentence text as compared for leakage: whitespace runs collapsed, stripped, lower-cased."""
    return " ".join(text.split()).lower()


def _texts(ex: StereoExample) -> Iterable[str]:
    return (normalize_text(s.text) for s in ex.sentences)


@dataclass
class Splits:
    train: list[StereoExample]
    control: list[StereoExample]
    report: list[StereoExample]
    seed: int
    control_per_type: int
    dropped_for_leakage: int
    tasks: tuple[str, ...] = field(default=TASKS)
    control_by: str = "example"
    control_targets: dict[str, list[str]] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        """``split -> bias_type -> number of examples`` (every bias type present, zero when none)."""
        out: dict[str, dict[str, int]] = {}
        for name in SPLIT_NAMES:
            c = dict.fromkeys(BIAS_TYPES, 0)
            for ex in getattr(self, name):
                c[ex.bias_type] += 1
            out[name] = c
        return out


def check_no_leakage(train: Sequence[StereoExample], held_out: dict[str, list[StereoExample]]) -> None:
    """Raise :class:`LeakageError` when a sentence of ``train`` also occurs (normalised) in a held-out split.

    The message lists up to 10 offending sentences with the train example and the held-out split and
    example that share them.
    """
    owner: dict[str, tuple[str, str]] = {}
    for split_name, examples in held_out.items():
        for ex in examples:
            for t in _texts(ex):
                owner.setdefault(t, (split_name, ex.id))
    hits: list[str] = []
    n = 0
    for ex in train:
        for s in ex.sentences:
            hit = owner.get(normalize_text(s.text))
            if hit is not None:
                n += 1
                if len(hits) < 10:
                    hits.append(f"  {s.text!r}: train example {ex.id} and {hit[0]} example {hit[1]}")
    if n:
        raise LeakageError(f"{n} training sentence(s) also occur in held-out splits "
                           f"({', '.join(held_out)}):\n" + "\n".join(hits)
                           + ("\n  ..." if n > len(hits) else ""))


def _control_by_target(candidates: list[StereoExample], n: int, rng: random.Random) -> list[str]:
    """Targets (seeded order) whose examples together reach ``n``; ``[]`` when ``n`` is 0."""
    counts: dict[str, int] = {}
    for ex in candidates:
        counts[ex.target] = counts.get(ex.target, 0) + 1
    order = sorted(counts)
    rng.shuffle(order)
    picked, total = [], 0
    for target in order:
        if total >= n:
            break
        picked.append(target)
        total += counts[target]
    return picked


def make_splits(data_dir: str | os.PathLike[str], control_per_type: int = 50, seed: int = 0,
                tasks: Sequence[str] = TASKS, control_by: str = "example") -> Splits:
    """Build the train/control/report splits from ``data_dir/stereoset`` (see the module docstring).

    Every split keeps file order. The control draw is seeded over each bias type's examples (or targets)
    in sorted order (bias types in :data:`BIAS_TYPES` order), so it depends only on the data and the seed.
    With ``control_by="target"`` every example of a held-out target goes to control, so train shares no
    target with control (nor with report: StereoSet's files share none).
    """
    if control_by not in CONTROL_BY:
        raise ConfigError(f"--control-by: expected one of {', '.join(CONTROL_BY)}, got {control_by!r}")
    if isinstance(tasks, str):
        tasks = (tasks,)
    tasks = tuple(tasks)
    if isinstance(control_per_type, bool) or not isinstance(control_per_type, int) or control_per_type < 0:
        raise ConfigError(f"control_per_type must be a non-negative integer, got {control_per_type!r}")
    root = Path(data_dir)
    pool = paper_filter(load_stereoset(data_file(root, STEREOSET_TEST), tasks))
    report = load_stereoset(data_file(root, STEREOSET_DEV), tasks)

    rng = random.Random(seed)
    chosen: set[str] = set()
    held_targets: dict[str, list[str]] = {}
    for bt in BIAS_TYPES:
        candidates = sorted((ex for ex in pool if ex.bias_type == bt), key=lambda e: e.id)
        if len(candidates) < control_per_type:
            raise DataError(f"{root / STEREOSET_TEST}: only {len(candidates)} {bt} examples after the paper "
                            f"filter, fewer than control_per_type={control_per_type}")
        if control_by == "target":
            targets = _control_by_target(candidates, control_per_type, rng)
            if control_per_type and len(targets) == len({ex.target for ex in candidates}):
                raise DataError(f"{root / STEREOSET_TEST}: holding out {control_per_type} {bt} examples by target "
                                f"takes every {bt} target and leaves none to train on; lower control_per_type")
            held_targets[bt] = targets
            chosen.update(ex.id for ex in candidates if ex.target in set(targets))
        else:
            chosen.update(ex.id for ex in rng.sample(candidates, control_per_type))
    control = [ex for ex in pool if ex.id in chosen]
    rest = [ex for ex in pool if ex.id not in chosen]

    held_texts = {t for ex in (*control, *report) for t in _texts(ex)}
    train = [ex for ex in rest if not any(t in held_texts for t in _texts(ex))]
    dropped = len(rest) - len(train)
    logger.info("StereoSet splits (seed=%d, control_per_type=%d): dropped %d train example(s) sharing a "
                "sentence with control or report", seed, control_per_type, dropped)
    check_no_leakage(train, {"report": report, "control": control})
    if held_targets:
        logger.info("control split: held-out targets %s", {bt: ts for bt, ts in held_targets.items()})
    splits = Splits(train=train, control=control, report=report, seed=seed,
                    control_per_type=control_per_type, dropped_for_leakage=dropped, tasks=tasks,
                    control_by=control_by, control_targets=held_targets)
    logger.debug("split counts: %s", splits.counts())
    return splits


def split_by_name(data_dir: str | os.PathLike[str], name: str, **kw) -> list[StereoExample]:
    """One split by name (``train``, ``control`` or ``report``); ``kw`` goes to :func:`make_splits`."""
    if name not in SPLIT_NAMES:
        raise ConfigError(f"unknown --split {name!r}: expected one of {', '.join(SPLIT_NAMES)}")
    if name == "report":  # dev.json as is: it needs neither test.json nor the control draw
        tasks = kw.get("tasks", TASKS)
        return load_stereoset(data_file(Path(data_dir), STEREOSET_DEV), (tasks,) if isinstance(tasks, str) else tasks)
    return getattr(make_splits(data_dir, **kw), name)
