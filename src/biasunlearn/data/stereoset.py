"""StereoSet (Nadeem et al. 2021) loader with strict schema checks.

File format: ``{"version": ..., "data": {"intersentence": [...], "intrasentence": [...]}}``; each example has
``id``, ``target``, ``bias_type``, ``context`` and three ``sentences``, each with ``sentence``, ``id`` and
``gold_label`` (one stereotype, one anti-stereotype, one unrelated). Errors name the file, the record
(``data.intrasentence[12] (id=...)``) and the field.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biasunlearn.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

BIAS_TYPES = ("gender", "profession", "race", "religion")
LABELS = ("stereotype", "anti-stereotype", "unrelated")
TASKS = ("intrasentence", "intersentence")


def parse_bias_types(spec: str, flag: str = "--bias-types") -> tuple[str, ...]:
    """``"gender,race"`` -> ``("gender", "race")``; empty -> ``()`` (meaning all types).

    Each name must be a StereoSet bias type, given once; the error names ``flag``."""
    names = [p.strip() for p in spec.split(",") if p.strip()]
    for name in names:
        if name not in BIAS_TYPES:
            raise ConfigError(f"{flag}: unknown bias type {name!r}; expected some of {', '.join(BIAS_TYPES)}")
    if len(set(names)) < len(names):
        raise ConfigError(f"{flag}: a bias type is given twice in {spec!r}")
    return tuple(names)


@dataclass(frozen=True)
class StereoSentence:
    id: str
    text: str
    gold_label: str


@dataclass(frozen=True)
class StereoExample:
    id: str
    task: str  # "intrasentence" | "intersentence"
    bias_type: str
    target: str
    context: str
    sentences: tuple[StereoSentence, ...]  # in file order, exactly one per gold label

    def by_label(self, label: str) -> StereoSentence:
        """The sentence whose gold label is ``label`` (one of :data:`LABELS`)."""
        for s in self.sentences:
            if s.gold_label == label:
                return s
        raise ValueError(f"example {self.id} has no sentence labelled {label!r} (labels: {LABELS})")


_lock = threading.Lock()
_RAW_CACHE: dict[tuple[str, int, int], dict[str, Any]] = {}
_TASK_CACHE: dict[tuple[str, int, int, str], tuple[StereoExample, ...]] = {}


def _fail(path: Path, where: str, field: str, problem: str) -> DataError:
    return DataError(f"{path}: {where}: field {field!r}: {problem}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: StereoSet file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 at byte {e.start}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: top level must be a JSON object with key 'data', got {type(obj).__name__}")
    data = obj.get("data")
    if not isinstance(data, dict):
        raise DataError(f"{path}: top-level field 'data' must be an object holding the task lists")
    return obj


def _str_field(path: Path, where: str, rec: dict[str, Any], field: str, label: str | None = None) -> str:
    name = label or field
    if field not in rec:
        raise _fail(path, where, name, "missing")
    value = rec[field]
    if not isinstance(value, str):
        raise _fail(path, where, name, f"expected a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise _fail(path, where, name, "empty string")
    return value


def _parse_example(path: Path, task: str, i: int, rec: Any) -> StereoExample:
    where = f"data.{task}[{i}]"
    if not isinstance(rec, dict):
        raise DataError(f"{path}: {where}: expected an object, got {type(rec).__name__}")
    if isinstance(rec.get("id"), str):
        where += f" (id={rec['id']})"
    ex_id = _str_field(path, where, rec, "id")
    target = _str_field(path, where, rec, "target")
    bias_type = _str_field(path, where, rec, "bias_type")
    if bias_type not in BIAS_TYPES:
        raise _fail(path, where, "bias_type", f"expected one of {', '.join(BIAS_TYPES)}, got {bias_type!r}")
    context = _str_field(path, where, rec, "context")
    raw_sents = rec.get("sentences")
    if not isinstance(raw_sents, list):
        raise _fail(path, where, "sentences", f"expected a list, got {type(raw_sents).__name__}")
    if len(raw_sents) != len(LABELS):
        raise _fail(path, where, "sentences",
                    f"expected exactly {len(LABELS)} sentences, got {len(raw_sents)}")
    sentences: list[StereoSentence] = []
    seen: dict[str, int] = {}
    for j, s in enumerate(raw_sents):
        pre = f"sentences[{j}]"
        if not isinstance(s, dict):
            raise _fail(path, where, pre, f"expected an object, got {type(s).__name__}")
        text = _str_field(path, where, s, "sentence", f"{pre}.sentence")
        sid = _str_field(path, where, s, "id", f"{pre}.id")
        label = s.get("gold_label")
        if label not in LABELS:
            raise _fail(path, where, f"{pre}.gold_label",
                        f"expected one of {', '.join(LABELS)}, got {label!r}")
        if label in seen:
            raise _fail(path, where, f"{pre}.gold_label",
                        f"label {label!r} already used by sentences[{seen[label]}]; "
                        "each label must occur once")
        seen[label] = j
        sentences.append(StereoSentence(id=sid, text=text, gold_label=label))
    return StereoExample(id=ex_id, task=task, bias_type=bias_type, target=target, context=context,
                         sentences=tuple(sentences))


def _load_task(path: Path, key: tuple[str, int, int], task: str) -> tuple[StereoExample, ...]:
    tkey = (*key, task)
    cached = _TASK_CACHE.get(tkey)
    if cached is not None:
        return cached
    raw = _RAW_CACHE.get(key)
    if raw is None:
        raw = _read_json(path)
        _RAW_CACHE.clear()  # keep at most one raw document (test.json is 47 MB)
        _RAW_CACHE[key] = raw
    records = raw["data"].get(task)
    if not isinstance(records, list):
        got = "missing" if records is None else f"a {type(records).__name__}"
        raise DataError(f"{path}: field 'data.{task}': expected a list of examples, got {got}")
    out = tuple(_parse_example(path, task, i, rec) for i, rec in enumerate(records))
    _TASK_CACHE[tkey] = out
    return out


def load_stereoset(path: str | os.PathLike[str],
                   tasks: Sequence[str] = TASKS) -> list[StereoExample]:
    """All examples of the requested tasks, task by task in the order given, each in file order.

    Parsed files are cached in-process per (path, size, mtime), so repeated loads are cheap.
    """
    if isinstance(tasks, str):
        tasks = (tasks,)
    for t in tasks:
        if t not in TASKS:
            raise ConfigError(f"unknown StereoSet task {t!r}: expected one of {', '.join(TASKS)}")
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise DataError(f"{p}: StereoSet file not found") from None
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _lock:
        parts = [_load_task(p, key, t) for t in dict.fromkeys(tasks)]
        if all((*key, t) in _TASK_CACHE for t in TASKS):
            _RAW_CACHE.pop(key, None)  # every task is parsed; the raw document is no longer needed
    examples: list[StereoExample] = []
    first_seen: dict[str, str] = {}
    for part in parts:
        for i, ex in enumerate(part):
            where = f"data.{ex.task}[{i}]"
            if ex.id in first_seen:
                raise DataError(f"{p}: {where} (id={ex.id}): field 'id': duplicate example id, "
                                f"first seen at {first_seen[ex.id]}")
            first_seen[ex.id] = where
            examples.append(ex)
    logger.debug("loaded %d StereoSet examples (%s) from %s", len(examples), ", ".join(tasks), p)
    return examples


def clear_cache() -> None:
    """Forget every parsed file (for tests and long-running processes)."""
    with _lock:
        _RAW_CACHE.clear()
        _TASK_CACHE.clear()
