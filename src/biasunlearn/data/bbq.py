"""BBQ (Parrish et al. 2022) loader with validation and the ``target_loc`` metadata join.

Files: ``<data_dir>/bbq/data/<Category>.jsonl`` (one example per line) and
``<data_dir>/bbq/analysis_scripts/additional_metadata.csv``. The bias score needs ``target_loc`` (which
answer is the stereotyped target), which only the metadata file holds. Upstream, 64 Gender_identity
example ids appear twice in the metadata (the rows differ only in Known_stereotyped_groups); rows are
deduplicated on (category, example_id) before the join, and duplicates that disagree on target_loc are
an error.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biasunlearn.errors import DataError

logger = logging.getLogger(__name__)

BBQ_CATEGORIES = (
    "Age", "Disability_status", "Gender_identity", "Nationality", "Physical_appearance", "Race_ethnicity",
    "Race_x_SES", "Race_x_gender", "Religion", "SES", "Sexual_orientation",
)
POLARITIES = ("neg", "nonneg")
CONDITIONS = ("ambig", "disambig")
ANSWER_KEYS = ("ans0", "ans1", "ans2")
METADATA_COLUMNS = ("category", "example_id", "target_loc")
_NA = ("NA", "")


@dataclass(frozen=True)
class BBQExample:
    example_id: int
    category: str
    question_index: str
    question_polarity: str  # "neg" | "nonneg"
    context_condition: str  # "ambig" | "disambig"
    context: str
    question: str
    answers: tuple[str, str, str]
    answer_info: dict[str, tuple[str, str]]  # "ans0".."ans2" -> (answer text, group)
    label: int
    stereotyped_groups: tuple[str, ...]
    target_loc: int | None  # index of the answer naming the stereotyped group; None when unknown


def _bbq_root(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "bbq"


def bbq_categories(data_dir: str | os.PathLike[str]) -> list[str]:
    """Names of the categories present (``bbq/data/*.jsonl`` stems), sorted."""
    folder = _bbq_root(data_dir) / "data"
    if not folder.is_dir():
        raise DataError(f"BBQ folder {folder} not found; pass --data-dir or set BIASUNLEARN_DATA to a folder "
                        "holding bbq/data/<Category>.jsonl, or run `biasunlearn data download` when online")
    cats = sorted(p.stem for p in folder.glob("*.jsonl") if p.is_file())
    if not cats:
        raise DataError(f"BBQ folder {folder} holds no <Category>.jsonl files")
    return cats


def _bad(path: Path, line: int, ex_id: Any, field: str, problem: str) -> DataError:
    rec = f"line {line}" + (f" (example_id={ex_id})" if ex_id is not None else "")
    return DataError(f"{path}: {rec}: field {field!r}: {problem}")


def _parse_line(path: Path, line_no: int, rec: Any, category: str) -> dict[str, Any]:
    if not isinstance(rec, dict):
        raise DataError(f"{path}: line {line_no}: expected a JSON object, got {type(rec).__name__}")
    ex_id = rec.get("example_id")
    shown_id = ex_id if isinstance(ex_id, int) and not isinstance(ex_id, bool) else None

    def bad(field: str, problem: str) -> DataError:
        return _bad(path, line_no, shown_id, field, problem)

    def get_str(field: str, allowed: Sequence[str] | None = None, nonempty: bool = True) -> str:
        if field not in rec:
            raise bad(field, "missing")
        v = rec[field]
        if not isinstance(v, str):
            raise bad(field, f"expected a string, got {type(v).__name__} {v!r}")
        if allowed is not None and v not in allowed:
            raise bad(field, f"expected one of {', '.join(allowed)}, got {v!r}")
        if nonempty and not v.strip():
            raise bad(field, "empty string")
        return v

    if shown_id is None:
        raise bad("example_id", "missing" if ex_id is None else f"expected an integer, got {ex_id!r}")
    if ex_id < 0:
        raise bad("example_id", f"expected a non-negative integer, got {ex_id}")
    cat = get_str("category")
    if cat != category:
        raise bad("category", f"expected {category!r} (the file name), got {cat!r}")
    qidx = get_str("question_index")
    polarity = get_str("question_polarity", POLARITIES)
    condition = get_str("context_condition", CONDITIONS)
    context = get_str("context")
    question = get_str("question")
    answers = tuple(get_str(k) for k in ANSWER_KEYS)
    label = rec.get("label")
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label <= 2:
        raise bad("label", f"expected 0, 1 or 2, got {label!r}")
    info = rec.get("answer_info")
    if not isinstance(info, dict):
        raise bad("answer_info", f"expected an object with keys {', '.join(ANSWER_KEYS)}, got {info!r}")
    answer_info: dict[str, tuple[str, str]] = {}
    for k in ANSWER_KEYS:
        pair = info.get(k)
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise bad(f"answer_info.{k}", f"expected [answer text, group] (two strings), got {pair!r}")
        answer_info[k] = (pair[0], pair[1])
    extra = set(info) - set(ANSWER_KEYS)
    if extra:
        raise bad("answer_info", f"unexpected keys {sorted(extra)}")
    meta = rec.get("additional_metadata")
    if not isinstance(meta, dict):
        raise bad("additional_metadata", f"expected an object, got {type(meta).__name__}")
    groups = meta.get("stereotyped_groups")
    if not (isinstance(groups, list) and all(isinstance(g, str) for g in groups)):
        raise bad("additional_metadata.stereotyped_groups", f"expected a list of strings, got {groups!r}")
    return dict(
        example_id=ex_id, category=cat, question_index=qidx, question_polarity=polarity,
        context_condition=condition, context=context, question=question, answers=answers,
        answer_info=answer_info, label=label, stereotyped_groups=tuple(groups),
    )


def _load_file(path: Path, category: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    first_line: dict[int, int] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {line_no}: invalid JSON at column {e.colno}: "
                                    f"{e.msg}") from None
                row = _parse_line(path, line_no, rec, category)
                eid = row["example_id"]
                if eid in first_line:
                    raise _bad(path, line_no, eid, "example_id",
                               f"duplicate example_id (first at line {first_line[eid]})")
                first_line[eid] = line_no
                row["_line"] = line_no
                rows.append(row)
    except FileNotFoundError:
        raise DataError(f"{path}: BBQ file not found; categories present: "
                        f"{', '.join(p.stem for p in sorted(path.parent.glob('*.jsonl')))}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 at byte {e.start}") from None
    if not rows:
        raise DataError(f"{path}: no examples")
    return rows


_meta_lock = threading.Lock()
_META_CACHE: dict[tuple[str, int, int], tuple[dict[tuple[str, int], int | None], dict[str, int]]] = {}


def load_bbq_metadata(path: str | os.PathLike[str]) -> dict[tuple[str, int], int | None]:
    """``(category, example_id) -> target_loc`` from ``additional_metadata.csv``.

    Duplicate (category, example_id) rows are collapsed (their count is logged per category); duplicates
    that disagree on target_loc raise :class:`DataError`. ``NA`` or empty target_loc becomes None.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise DataError(f"{p}: BBQ metadata file not found (needed for target_loc); pass metadata=False to "
                        "load BBQ without it, or add bbq/analysis_scripts/additional_metadata.csv") from None
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _meta_lock:
        cached = _META_CACHE.get(key)
    if cached is None:
        cached = _read_metadata(p)
        with _meta_lock:
            _META_CACHE[key] = cached
    out, dropped = cached
    for cat, n in sorted(dropped.items()):
        logger.info("BBQ metadata: dropped %d duplicate (category, example_id) rows in %s", n, cat)
    return dict(out)


def _read_metadata(p: Path) -> tuple[dict[tuple[str, int], int | None], dict[str, int]]:
    out: dict[tuple[str, int], int | None] = {}
    first_line: dict[tuple[str, int], int] = {}
    dropped: Counter[str] = Counter()
    try:
        with open(p, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            for col in METADATA_COLUMNS:
                if col not in header:
                    raise DataError(f"{p}: missing column {col!r} (header: {', '.join(map(repr, header))})")
            for pos, row in enumerate(reader, start=1):
                where = f"{p}: row {pos} (line {reader.line_num})"
                cat = (row["category"] or "").strip()
                if not cat:
                    raise DataError(f"{where}: field 'category': empty")
                raw_id = row["example_id"]
                try:
                    eid = int(raw_id)
                except (TypeError, ValueError):
                    raise DataError(f"{where}: field 'example_id': expected an integer, "
                                    f"got {raw_id!r}") from None
                raw_loc = (row["target_loc"] or "").strip()
                loc: int | None
                if raw_loc in _NA:
                    loc = None
                else:
                    try:
                        loc = int(raw_loc)
                    except ValueError:
                        loc = -1
                    if loc not in (0, 1, 2):
                        raise DataError(f"{where} (category={cat}, example_id={eid}): field 'target_loc': "
                                        f"expected 0, 1, 2 or NA, got {raw_loc!r}")
                k = (cat, eid)
                if k in out:
                    if out[k] != loc:
                        raise DataError(
                            f"{where} (category={cat}, example_id={eid}): field 'target_loc': duplicate row "
                            f"disagrees with line {first_line[k]} ({loc!r} vs {out[k]!r})")
                    dropped[cat] += 1
                    continue
                out[k] = loc
                first_line[k] = reader.line_num
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not valid UTF-8 at byte {e.start}") from None
    except csv.Error as e:
        raise DataError(f"{p}: malformed CSV: {e}") from None
    return out, dict(dropped)


def load_bbq(data_dir: str | os.PathLike[str], categories: Sequence[str] | None = None,
             metadata: bool = True) -> list[BBQExample]:
    """BBQ examples of ``categories`` (all present when None), category by category in file order.

    ``data_dir`` is the root data folder. With ``metadata`` the ``target_loc`` of every example is joined
    from the metadata file (an example without a metadata row is an error); without it, target_loc is None.
    """
    root = _bbq_root(data_dir)
    if isinstance(categories, str):
        categories = [categories]
    cats = list(categories) if categories is not None else bbq_categories(data_dir)
    meta_path = root / "analysis_scripts" / "additional_metadata.csv"
    meta = load_bbq_metadata(meta_path) if metadata else {}
    examples: list[BBQExample] = []
    for cat in cats:
        path = root / "data" / f"{cat}.jsonl"
        rows = _load_file(path, cat)
        for row in rows:
            line = row.pop("_line")
            k = (cat, row["example_id"])
            if metadata:
                if k not in meta:
                    raise _bad(path, line, row["example_id"], "example_id",
                               f"no row for (category={cat}, example_id={row['example_id']}) in {meta_path}")
                target_loc = meta[k]
            else:
                target_loc = None
            examples.append(BBQExample(**row, target_loc=target_loc))
        logger.debug("loaded %d BBQ examples from %s", len(rows), path)
    return examples
