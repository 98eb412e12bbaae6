"""CrowS-Pairs (Nangia et al. 2020) loader with validation.

The file ``crows_pairs_anonymized.csv`` has an unnamed index column and the columns ``sent_more``,
``sent_less``, ``stereo_antistereo``, ``bias_type``, ``annotations``, ``anon_writer``, ``anon_annotators``.
``sent_more`` is the more stereotyping sentence of the pair. Direction ``stereo``: ``sent_more`` states a
stereotype about a historically disadvantaged group; ``antistereo``: ``sent_less`` violates one.
"""

from __future__ import annotations

import csv
import difflib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from biasunlearn.errors import DataError

logger = logging.getLogger(__name__)

DIRECTIONS = ("stereo", "antistereo")
CROWS_BIAS_TYPES = (
    "race-color", "gender", "socioeconomic", "nationality", "religion", "age",
    "sexual-orientation", "physical-appearance", "disability",
)
REQUIRED_COLUMNS = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")


@dataclass(frozen=True)
class CrowsPair:
    index: int
    sent_more: str
    sent_less: str
    direction: str  # "stereo" | "antistereo"
    bias_type: str


def load_crows_pairs(path: str | os.PathLike[str]) -> list[CrowsPair]:
    """Every pair in file order. ``index`` is the value of the unnamed first column (the row position
    when the file has none). Raises :class:`DataError` naming the file, row and field at fault."""
    p = Path(path)
    pairs: list[CrowsPair] = []
    try:
        with open(p, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            if not header:
                raise DataError(f"{p}: empty file, expected a CSV header with columns "
                                f"{', '.join(REQUIRED_COLUMNS)}")
            for col in REQUIRED_COLUMNS:
                if col not in header:
                    raise DataError(f"{p}: missing column {col!r} (header: {', '.join(map(repr, header))})")
            has_index = header[0] == ""
            seen: dict[int, int] = {}
            for pos, row in enumerate(reader):
                where = f"row {pos} (line {reader.line_num})"
                if None in row:
                    raise DataError(f"{p}: {where}: more fields than the {len(header)} header columns")
                if has_index:
                    raw_idx = row[""]
                    try:
                        index = int(raw_idx)
                    except (TypeError, ValueError):
                        raise DataError(f"{p}: {where}: field 'index' (first column): expected an integer, "
                                        f"got {raw_idx!r}") from None
                else:
                    index = pos
                where = f"row {pos} (index={index}, line {reader.line_num})"
                if index in seen:
                    raise DataError(f"{p}: {where}: field 'index': duplicate of row {seen[index]}")
                seen[index] = pos
                values = {}
                for col in REQUIRED_COLUMNS:
                    v = row.get(col)
                    if v is None:
                        raise DataError(f"{p}: {where}: field {col!r}: missing (row too short)")
                    if not v.strip():
                        raise DataError(f"{p}: {where}: field {col!r}: empty")
                    values[col] = v
                direction = values["stereo_antistereo"].strip()
                if direction not in DIRECTIONS:
                    raise DataError(f"{p}: {where}: field 'stereo_antistereo': expected one of "
                                    f"{', '.join(DIRECTIONS)}, got {direction!r}")
                bias_type = values["bias_type"].strip()
                if bias_type not in CROWS_BIAS_TYPES:
                    raise DataError(f"{p}: {where}: field 'bias_type': expected one of "
                                    f"{', '.join(CROWS_BIAS_TYPES)}, got {bias_type!r}")
                if values["sent_more"] == values["sent_less"]:
                    raise DataError(f"{p}: {where}: fields 'sent_more'/'sent_less': the two sentences are "
                                    "identical")
                pairs.append(CrowsPair(index=index, sent_more=values["sent_more"],
                                       sent_less=values["sent_less"], direction=direction,
                                       bias_type=bias_type))
    except FileNotFoundError:
        raise DataError(f"{p}: CrowS-Pairs file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not valid UTF-8 at byte {e.start}") from None
    except csv.Error as e:
        raise DataError(f"{p}: malformed CSV: {e}") from None
    if not pairs:
        raise DataError(f"{p}: no rows after the header")
    logger.debug("loaded %d CrowS-Pairs rows from %s", len(pairs), p)
    return pairs


Span = tuple[int, int]


def _words(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(), m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", text)]


def modified_spans(a: str, b: str) -> tuple[tuple[Span, ...], tuple[Span, ...]]:
    """The character spans of the words that differ between the two sentences of a pair.

    Nangia et al. (2020) score a pair on its *unmodified* tokens, those the two sentences share,
    conditioned on the modified ones (the group words, e.g. "women" / "men"), so that how frequent
    a group's words are does not decide the comparison. Here the two sentences are split into
    words and punctuation marks and aligned with :class:`difflib.SequenceMatcher` (as the official
    script aligns its tokens); every word or mark outside the matching blocks is modified. Returns the half-open
    ``(start, end)`` spans of the modified words of ``a`` and of ``b``, for :class:`Request.skip`.
    """
    wa, wb = _words(a), _words(b)
    matcher = difflib.SequenceMatcher(None, [w for w, _, _ in wa], [w for w, _, _ in wb], autojunk=False)
    same_a: set[int] = set()
    same_b: set[int] = set()
    for i, j, n in matcher.get_matching_blocks():
        same_a.update(range(i, i + n))
        same_b.update(range(j, j + n))
    spans_a = tuple((s, e) for k, (_, s, e) in enumerate(wa) if k not in same_a)
    spans_b = tuple((s, e) for k, (_, s, e) in enumerate(wb) if k not in same_b)
    return spans_a, spans_b
