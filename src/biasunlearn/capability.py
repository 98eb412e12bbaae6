"""Capability evaluation: perplexity on held-out text and zero-shot classification (Table 4 of the paper).

Debiasing should not cost the model its general ability. Two kinds of check are registered in
:data:`biasunlearn.benchmarks.BENCHMARKS`:

* ``perplexity``: token-level perplexity of held-out English prose (:func:`perplexity`).
* ``sst2``, ``cola``, ``mrpc``, ``rte``, ``flute``, ``amazon_polarity``: zero-shot classification by the
  likelihood of a label word after a prompt (:func:`classify`), scored by accuracy and macro-F1
  (:func:`macro_f1`).

None of these data sets ships with the project. Put the files, in their standard public formats,
under the data folder (``--data-dir`` / ``$BIASUNLEARN_DATA``)::

    <data_dir>/
      text/heldout.txt                    UTF-8, one paragraph per line (blank lines skipped);
                                          scripts/prepare_text.py writes it from Debian's
                                          postgresql-doc-15 package
      capability/SST-2/dev.tsv            GLUE SST-2 dev: header "sentence<TAB>label", label 0/1
                                          (0 negative, 1 positive)
      capability/CoLA/dev.tsv             GLUE CoLA dev (in-domain): no header, 4 columns
                                          "source<TAB>label<TAB>author_mark<TAB>sentence", label 0/1
                                          (0 unacceptable, 1 acceptable)
      capability/MRPC/dev.tsv             GLUE MRPC dev: header
                                          "Quality<TAB>#1 ID<TAB>#2 ID<TAB>#1 String<TAB>#2 String",
                                          Quality 0/1 (1 paraphrase)
      capability/RTE/dev.tsv              GLUE RTE dev: header "index<TAB>sentence1<TAB>sentence2<TAB>label",
                                          label entailment / not_entailment
      capability/flute/test.jsonl         FLUTE (Chakrabarty et al. 2022): one JSON object per line with
        (or capability/flute/test.json)   "premise", "hypothesis" and "label" (Entailment / Contradiction,
                                          any case); other keys ("id", "type", "explanation", ...) are kept
                                          as metadata. test.json may be a JSON list of the same objects.
      capability/amazon_polarity/test.csv Amazon polarity (Zhang et al. 2015): CSV, no header, three quoted
                                          fields "label","title","content", label 1 negative / 2 positive;
                                          a literal backslash-n in the text is read as a newline

The GLUE files are the ``dev.tsv`` files of the standard GLUE download (the GLUE test files carry no
labels). TSV files are read as plain tab-separated lines without quoting, as GLUE writes them; a UTF-8
byte-order mark is ignored. The public FLUTE release (Hugging Face ``ColumbiaNLP/FLUTE``) publishes only
``train.jsonl`` with the keys ``id``, ``premise``, ``hypothesis``, ``label``, ``explanation``, ``type``
(the shared-task test labels were never released); copy the file you evaluate on to
``capability/flute/test.jsonl``.

Zero-shot classification: each example is formatted with the task's prompt template and every label
word (verbalizer) is scored as the continuation of the prompt, ``Request(prompt + word,
score_from=len(prompt))``, so only the label word's tokens count. The predicted class is the label word
with the highest *summed* log-probability (whatever ``--score-method`` says; ties go to the first
class). ``--limit N`` keeps the first N examples of the file (the first N paragraphs for perplexity).
Prompts and label words are in :data:`TASKS`; ``--method`` decoding baselines apply, since scoring goes
through ``EvalContext.score_fn``.

Metrics (percentages, as the paper's tables): ``accuracy``, ``macro_f1`` (the unweighted mean of the
per-class F1 over the classes present in the gold labels or the predictions, like scikit-learn's
``f1_score(average="macro")``), ``f1_per_class``, and the gold and predicted class counts (a model that
always answers the same word shows up there).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biasunlearn.benchmarks import BENCHMARKS, BenchmarkResult, EvalContext
from biasunlearn.data.paths import dataset_checksums
from biasunlearn.errors import ConfigError, DataError
from biasunlearn.scoring import Request, ScoringConfig, SequenceLogProbs, sequence_logprobs

log = logging.getLogger(__name__)

HELDOUT_TEXT = "text/heldout.txt"
SST2_DEV = "capability/SST-2/dev.tsv"
COLA_DEV = "capability/CoLA/dev.tsv"
MRPC_DEV = "capability/MRPC/dev.tsv"
RTE_DEV = "capability/RTE/dev.tsv"
FLUTE_TEST = ("capability/flute/test.jsonl", "capability/flute/test.json")
AMAZON_TEST = "capability/amazon_polarity/test.csv"

_DOCS = "see the module documentation of biasunlearn.capability for the expected layout and formats"

ScoreFn = Callable[..., SequenceLogProbs]


def _plain_scores(model, tokenizer, requests: list[Request], cfg: ScoringConfig, desc: str) -> SequenceLogProbs:
    return sequence_logprobs(model, tokenizer, requests, cfg, desc=desc)


# ---------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassificationExample:
    """One labelled example.

    Attributes:
        index: position among the file's examples (0-based).
        line: line of the file it starts on (1-based; for a JSON list, the record number).
        fields: the texts the task's prompt template names (``sentence``, ``sentence1``/``sentence2``, ...).
        label: class index into the task's ``label_names``.
        meta: other values of the record (ids, FLUTE ``type``, ...), kept for the predictions file.
    """

    index: int
    line: int
    fields: dict[str, str]
    label: int
    meta: dict[str, Any] = field(default_factory=dict)


def _read_lines(path: Path, what: str) -> list[str]:
    """Lines of a UTF-8 file (BOM dropped, ``\\r\\n`` accepted), or DataError naming the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what} file not found: {path}; {_DOCS}") from None
    except IsADirectoryError:
        raise DataError(f"{what} file {path} is a folder, expected a file; {_DOCS}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 (byte {e.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _label(path: Path, where: str, fld: str, value: str, allowed: dict[str, int]) -> int:
    key = value.strip()
    if key not in allowed:
        raise DataError(f"{path}: {where}: field {fld!r}: expected one of {', '.join(map(repr, allowed))}, "
                        f"got {value!r}")
    return allowed[key]


def _text(path: Path, where: str, fld: str, value: Any, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise DataError(f"{path}: {where}: field {fld!r}: expected a string, got {type(value).__name__}")
    v = value.strip()
    if not v and not allow_empty:
        raise DataError(f"{path}: {where}: field {fld!r}: empty")
    return v


def _read_tsv(path: Path, what: str, header: tuple[str, ...] | None, n_cols: int,
              limit: int = 0) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of each data row of a GLUE-style TSV (no quoting); blank lines skipped.

    ``header``: the exact column names of the first line, or None when the file has no header.
    """
    lines = _read_lines(path, what)
    start = 0
    if header is not None:
        if not lines:
            raise DataError(f"{path}: empty file, expected the header {'<TAB>'.join(header)!r}")
        got = tuple(c.strip() for c in lines[0].split("\t"))
        if got != header:
            raise DataError(f"{path}: line 1: expected the header {'<TAB>'.join(header)!r} ({what} standard "
                            f"format), got {'<TAB>'.join(got)!r}")
        start = 1
    rows: list[tuple[int, list[str]]] = []
    for i in range(start, len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != n_cols:
            names = f" ({', '.join(header)})" if header else ""
            raise DataError(f"{path}: line {i + 1}: expected {n_cols} tab-separated fields{names}, got {len(cols)}")
        rows.append((i + 1, cols))
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise DataError(f"{path}: no data rows" + (" after the header" if header else ""))
    return rows


_BINARY = {"0": 0, "1": 1}


def load_sst2(path: str | os.PathLike[str], limit: int = 0) -> list[ClassificationExample]:
    """GLUE SST-2 ``dev.tsv``: header ``sentence<TAB>label``; label 0 (negative) / 1 (positive)."""
    p = Path(path)
    out = []
    for n, (line, (sentence, label)) in enumerate(_read_tsv(p, "SST-2", ("sentence", "label"), 2, limit)):
        where = f"line {line}"
        out.append(ClassificationExample(n, line, {"sentence": _text(p, where, "sentence", sentence)},
                                         _label(p, where, "label", label, _BINARY)))
    return out


def load_cola(path: str | os.PathLike[str], limit: int = 0) -> list[ClassificationExample]:
    """GLUE CoLA ``dev.tsv``: no header; ``source<TAB>label<TAB>author_mark<TAB>sentence``; label 0/1."""
    p = Path(path)
    out = []
    for n, (line, (source, label, mark, sentence)) in enumerate(_read_tsv(p, "CoLA", None, 4, limit)):
        where = f"line {line}"
        out.append(ClassificationExample(n, line, {"sentence": _text(p, where, "sentence (column 4)", sentence)},
                                         _label(p, where, "label (column 2)", label, _BINARY),
                                         {"source": source.strip(), "author_mark": mark.strip()}))
    return out


MRPC_HEADER = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")


def load_mrpc(path: str | os.PathLike[str], limit: int = 0) -> list[ClassificationExample]:
    """GLUE MRPC ``dev.tsv``: header ``Quality #1 ID #2 ID #1 String #2 String``; Quality 1 = paraphrase."""
    p = Path(path)
    out = []
    for n, (line, (quality, id1, id2, s1, s2)) in enumerate(_read_tsv(p, "MRPC", MRPC_HEADER, 5, limit)):
        where = f"line {line} (#1 ID={id1.strip()})"
        out.append(ClassificationExample(
            n, line, {"sentence1": _text(p, where, "#1 String", s1), "sentence2": _text(p, where, "#2 String", s2)},
            _label(p, where, "Quality", quality, _BINARY), {"id1": id1.strip(), "id2": id2.strip()}))
    return out


RTE_LABELS = ("entailment", "not_entailment")


def load_rte(path: str | os.PathLike[str], limit: int = 0) -> list[ClassificationExample]:
    """GLUE RTE ``dev.tsv``: header ``index sentence1 sentence2 label``; label entailment / not_entailment."""
    p = Path(path)
    out = []
    allowed = {name: i for i, name in enumerate(RTE_LABELS)}
    header = ("index", "sentence1", "sentence2", "label")
    for n, (line, (idx, s1, s2, label)) in enumerate(_read_tsv(p, "RTE", header, 4, limit)):
        where = f"line {line} (index={idx.strip()})"
        out.append(ClassificationExample(
            n, line, {"sentence1": _text(p, where, "sentence1", s1), "sentence2": _text(p, where, "sentence2", s2)},
            _label(p, where, "label", label, allowed), {"index": idx.strip()}))
    return out


FLUTE_LABELS = ("Entailment", "Contradiction")


def _flute_records(p: Path) -> list[tuple[int, str, Any]]:
    """``(line, where, record)`` for a JSON-lines file, or for a ``.json`` file holding a JSON list (then
    ``line`` is the 1-based record number)."""
    lines = _read_lines(p, "FLUTE")
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    if p.suffix == ".json" and first.startswith("["):
        try:
            data = json.loads("\n".join(lines))
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: line {e.lineno}: invalid JSON: {e.msg}") from None
        if not isinstance(data, list):
            raise DataError(f"{p}: expected a JSON list of records, got {type(data).__name__}")
        return [(i + 1, f"record {i}", rec) for i, rec in enumerate(data)]
    out = []
    for i, ln in enumerate(lines):
        if not ln.strip():
            continue
        try:
            out.append((i + 1, f"line {i + 1}", json.loads(ln)))
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: line {i + 1}: invalid JSON: {e.msg} (column {e.colno})") from None
    return out


def load_flute(path: str | os.PathLike[str], limit: int = 0) -> list[ClassificationExample]:
    """FLUTE as JSON lines (or a ``.json`` list): ``premise``, ``hypothesis``, ``label`` in
    Entailment / Contradiction (case-insensitive); any other keys become metadata."""
    p = Path(path)
    allowed = {name.lower(): i for i, name in enumerate(FLUTE_LABELS)}
    out: list[ClassificationExample] = []
    for line, where, rec in _flute_records(p):
        if not isinstance(rec, dict):
            raise DataError(f"{p}: {where}: expected a JSON object, got {type(rec).__name__}")
        if "id" in rec:
            where = f"{where} (id={rec['id']!r})"
        for key in ("premise", "hypothesis", "label"):
            if key not in rec:
                raise DataError(f"{p}: {where}: field {key!r}: missing (keys: {', '.join(sorted(rec))})")
        label = rec["label"]
        if not isinstance(label, str) or label.strip().lower() not in allowed:
            raise DataError(f"{p}: {where}: field 'label': expected one of {', '.join(FLUTE_LABELS)}, got {label!r}")
        meta = {k: v for k, v in rec.items() if k not in ("premise", "hypothesis", "label")}
        out.append(ClassificationExample(
            len(out), line,
            {"premise": _text(p, where, "premise", rec["premise"]),
             "hypothesis": _text(p, where, "hypothesis", rec["hypothesis"])},
            allowed[label.strip().lower()], meta))
        if limit and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{p}: no records")
    return out


def load_amazon_polarity(path: str | os.PathLike[str], limit: int = 0) -> list[ClassificationExample]:
    """Amazon polarity ``test.csv``: no header, ``"label","title","content"``; label 1 negative / 2 positive.

    Either the title or the content may be empty, not both. A literal ``\\n`` in the text becomes a newline.
    """
    p = Path(path)
    out: list[ClassificationExample] = []
    allowed = {"1": 0, "2": 1}
    try:
        with open(p, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            start = 1
            for row in reader:
                line, start = start, reader.line_num + 1
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                where = f"line {line}"
                if len(row) != 3:
                    raise DataError(f"{p}: {where}: expected 3 comma-separated fields (label, title, content), "
                                    f"got {len(row)}")
                label = _label(p, where, "label (column 1)", row[0], allowed)
                title = _text(p, where, "title (column 2)", row[1].replace("\\n", "\n"), allow_empty=True)
                content = _text(p, where, "content (column 3)", row[2].replace("\\n", "\n"), allow_empty=True)
                if not title and not content:
                    raise DataError(f"{p}: {where}: fields 'title' and 'content' are both empty")
                out.append(ClassificationExample(len(out), line, {"title": title, "content": content}, label))
                if limit and len(out) >= limit:
                    break
    except FileNotFoundError:
        raise DataError(f"Amazon polarity file not found: {p}; {_DOCS}") from None
    except UnicodeDecodeError:
        raise DataError(f"{p}: not valid UTF-8 (after line {reader.line_num})") from None
    except csv.Error as e:
        raise DataError(f"{p}: line {reader.line_num}: malformed CSV: {e}") from None
    if not out:
        raise DataError(f"{p}: no data rows")
    return out


# ---------------------------------------------------------------------------------------------------------
# Tasks: files, prompt templates and label words
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A classification task: where its file is, how to read it, how to ask the model.

    ``verbalizers[i]`` is the continuation scored for class ``label_names[i]``.
    """

    name: str
    title: str
    relpaths: tuple[str, ...]  # candidates under the data folder; the first that exists is read
    loader: Callable[..., list[ClassificationExample]]
    label_names: tuple[str, ...]
    verbalizers: tuple[str, ...]
    template: str

    def prompt(self, ex: ClassificationExample) -> str:
        return self.template.format(**ex.fields)


_PAIR_NLI = "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis? Answer:"

TASKS: dict[str, Task] = {t.name: t for t in (
    Task("sst2", "SST-2", (SST2_DEV,), load_sst2, ("negative", "positive"), (" negative", " positive"),
         "Review: {sentence}\nSentiment:"),
    Task("cola", "CoLA", (COLA_DEV,), load_cola, ("unacceptable", "acceptable"), (" no", " yes"),
         "Sentence: {sentence}\nIs this sentence grammatically acceptable? Answer:"),
    Task("mrpc", "MRPC", (MRPC_DEV,), load_mrpc, ("not_paraphrase", "paraphrase"), (" no", " yes"),
         "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nDo both sentences mean the same thing? Answer:"),
    Task("rte", "RTE", (RTE_DEV,), load_rte, RTE_LABELS, (" yes", " no"),
         _PAIR_NLI.replace("{premise}", "{sentence1}").replace("{hypothesis}", "{sentence2}")),
    Task("flute", "FLUTE", FLUTE_TEST, load_flute, FLUTE_LABELS, (" yes", " no"), _PAIR_NLI),
    Task("amazon_polarity", "Amazon polarity", (AMAZON_TEST,), load_amazon_polarity, ("negative", "positive"),
         (" negative", " positive"), "Title: {title}\nReview: {content}\nSentiment:"),
)}


def task_file(data_dir: str | os.PathLike[str], task: Task) -> tuple[str, Path]:
    """``(relpath, path)`` of the task's file, or DataError naming the expected path(s)."""
    for rel in task.relpaths:
        path = Path(data_dir) / rel
        if path.is_file():
            return rel, path
    expected = " or ".join(str(Path(data_dir) / r) for r in task.relpaths)
    raise DataError(f"{task.title} data not found: expected {expected}. The file is not distributed with "
                    f"biasunlearn; place the standard public file there ({_DOCS})")


def load_task(data_dir: str | os.PathLike[str], task: Task | str, limit: int = 0) -> list[ClassificationExample]:
    t = TASKS[task] if isinstance(task, str) else task
    return t.loader(task_file(data_dir, t)[1], limit=limit)


# ---------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------


def f1_per_class(gold: Sequence[int], pred: Sequence[int], labels: Sequence[int]) -> dict[int, float]:
    """F1 of each class ``c`` in ``labels``: ``2 TP / (2 TP + FP + FN)``, a fraction in [0, 1].

    TP: predicted ``c`` and gold ``c``; FP: predicted ``c``, gold other; FN: gold ``c``, predicted other.
    A class that is never predicted has TP = 0 and so F1 = 0 (when it occurs in the gold labels); a
    class absent from both gets 0 (scikit-learn's ``zero_division=0``).
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold and pred differ in length: {len(gold)} != {len(pred)}")
    out = {}
    for c in labels:
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == c and p == c)
        fp = sum(1 for g, p in zip(gold, pred, strict=True) if g != c and p == c)
        fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == c and p != c)
        denom = 2 * tp + fp + fn
        out[c] = 2 * tp / denom if denom else 0.0
    return out


def macro_f1(gold: Sequence[int], pred: Sequence[int], labels: Sequence[int] | None = None) -> float:
    """Unweighted mean of the per-class F1 (:func:`f1_per_class`), a fraction in [0, 1].

    ``labels`` defaults to the classes that occur in ``gold`` or ``pred`` (sorted), as scikit-learn's
    ``f1_score(gold, pred, average="macro")``. Raises ValueError on empty input.
    """
    if not gold:
        raise ValueError("macro_f1 of no examples")
    classes = sorted(set(gold) | set(pred)) if labels is None else list(labels)
    f1 = f1_per_class(gold, pred, classes)
    return sum(f1.values()) / len(classes)


def classification_metrics(gold: Sequence[int], pred: Sequence[int], label_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class F1 in percent, with gold/predicted counts per class name."""
    n = len(gold)
    present = sorted(set(gold) | set(pred))
    f1 = f1_per_class(gold, pred, present)
    gold_counts, pred_counts = Counter(gold), Counter(pred)
    return {
        "n": n,
        "accuracy": 100.0 * sum(g == p for g, p in zip(gold, pred, strict=True)) / n,
        "macro_f1": 100.0 * macro_f1(gold, pred),
        "f1_per_class": {label_names[c]: 100.0 * f1[c] for c in present},
        "gold_counts": {name: gold_counts.get(i, 0) for i, name in enumerate(label_names)},
        "pred_counts": {name: pred_counts.get(i, 0) for i, name in enumerate(label_names)},
    }


# ---------------------------------------------------------------------------------------------------------
# Zero-shot (and few-shot) classification
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Classification:
    """Per-example predicted class and the summed log-probability of every label word."""

    pred: list[int]
    scores: np.ndarray  # (n_examples, n_classes)


def classification_requests(task: Task, examples: Sequence[ClassificationExample],
                            demos: Sequence[ClassificationExample] = ()) -> list[Request]:
    """One request per (example, label word), example-major; only the label word's tokens are scored.

    ``demos`` (few-shot): solved examples put before each prompt as ``prompt + gold word + "\\n\\n"``.
    """
    prefix = "".join(task.prompt(d) + task.verbalizers[d.label] + "\n\n" for d in demos)
    reqs = []
    for ex in examples:
        prompt = prefix + task.prompt(ex)
        reqs.extend(Request(prompt + word, len(prompt), group=(task.name, ex.index)) for word in task.verbalizers)
    return reqs


def classify(model, tokenizer, task: Task | str, examples: Sequence[ClassificationExample],
             cfg: ScoringConfig | None = None, score_fn: ScoreFn | None = None,
             demos: Sequence[ClassificationExample] = ()) -> Classification:
    """The label word with the highest summed log-probability after the prompt (ties: the first class)."""
    t = TASKS[task] if isinstance(task, str) else task
    cfg = cfg or ScoringConfig()
    k = len(t.verbalizers)
    reqs = classification_requests(t, examples, demos)
    s = (score_fn or _plain_scores)(model, tokenizer, reqs, cfg, t.title).scores("sum_logprob")
    scores = np.asarray(s, dtype=np.float64).reshape(len(examples), k)
    return Classification(pred=[int(i) for i in np.argmax(scores, axis=1)], scores=scores)


def run_classification(task_name: str, model, tokenizer, ctx: EvalContext) -> BenchmarkResult:
    """A classification benchmark: load (first ``ctx.limit``), classify zero-shot, score."""
    task = TASKS[task_name]
    rel, path = task_file(ctx.data_dir, task)
    examples = task.loader(path, limit=ctx.limit)
    log.info("%s: %d examples from %s", task.title, len(examples), path)
    res = classify(model, tokenizer, task, examples, ctx.scoring, ctx.score_fn)
    gold = [ex.label for ex in examples]
    metrics = classification_metrics(gold, res.pred, task.label_names)
    log.info("%s: accuracy %.2f, macro-F1 %.2f", task.title, metrics["accuracy"], metrics["macro_f1"])
    rows = [{"index": ex.index, "line": ex.line, "gold": task.label_names[ex.label],
             "pred": task.label_names[p], "scores": [float(x) for x in sc], **({"meta": ex.meta} if ex.meta else {})}
            for ex, p, sc in zip(examples, res.pred, res.scores, strict=True)]
    return BenchmarkResult(
        metrics=metrics,
        data_files=dataset_checksums(ctx.data_dir, [rel]),
        n_items=len(examples),
        predictions={"examples": rows},
        extra={"mode": "zero-shot", "prompt": task.template, "label_words": dict(zip(task.label_names,
                                                                                 task.verbalizers, strict=True)),
               "score": "sum_logprob of the label word"},
    )


def _register(name: str) -> None:
    BENCHMARKS.register(name)(lambda model, tokenizer, ctx: run_classification(name, model, tokenizer, ctx))


for _name in TASKS:
    _register(_name)


# ---------------------------------------------------------------------------------------------------------
# Perplexity
# ---------------------------------------------------------------------------------------------------------


def load_texts(path: str | os.PathLike[str], limit: int = 0) -> list[str]:
    """The non-blank lines of a UTF-8 text file (one paragraph per line), trailing whitespace stripped."""
    p = Path(path)
    texts = [ln.rstrip() for ln in _read_lines(p, "held-out text") if ln.strip()]
    if not texts:
        raise DataError(f"{p}: no text (every line is blank)")
    return texts[:limit] if limit else texts


@dataclass
class PerplexityResult:
    """``perplexity = exp(nll / n_tokens)``, ``nll`` the total negative log-likelihood in nats."""

    perplexity: float
    nll: float
    n_tokens: int
    n_texts: int
    n_chunks: int
    n_bytes: int
    per_text_nll: list[float]
    per_text_tokens: list[int]

    @property
    def nll_per_token(self) -> float:
        return self.nll / self.n_tokens

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.n_bytes

    def metrics(self) -> dict[str, Any]:
        return {"perplexity": self.perplexity, "nll_per_token": self.nll_per_token,
                "bits_per_byte": self.bits_per_byte, "n_tokens": self.n_tokens, "n_texts": self.n_texts,
                "n_chunks": self.n_chunks}


def default_max_length(model, cap: int = 1024) -> int:
    """Tokens per scored sequence, start token included: the model's context, at most ``cap``."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(cap, int(n)) if n else cap


def text_chunks(tokenizer, text: str, max_tokens: int, overlap: int = 0) -> tuple[list[Request], int]:
    """Requests that together score every token of ``text`` once, and the tokenizer's token count.

    A text of more than ``max_tokens`` tokens is cut at token boundaries into windows of at most
    ``max_tokens`` tokens; each window after the first starts with the ``overlap`` tokens before it as
    unscored context. Windows are re-tokenized from their character span, which can change a token at
    a cut; the scored count (``SequenceLogProbs.n_tokens``) is the one perplexity uses.
    """
    if overlap < 0 or overlap >= max_tokens:
        raise ConfigError(f"perplexity: overlap must be in [0, max_tokens - 1 = {max_tokens - 1}], got {overlap}")
    if not getattr(tokenizer, "is_fast", False):
        n = len(tokenizer.encode(text, add_special_tokens=False))
        if n > max_tokens:
            raise ConfigError(f"perplexity: a text of {n} tokens exceeds max_length and this (slow) tokenizer has "
                              "no offsets to cut it; load a fast tokenizer or raise max_length")
        return [Request(text, 0)], n
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offs = enc["offset_mapping"]
    n = len(enc["input_ids"])
    if n <= max_tokens:
        return [Request(text, 0)], n

    def clean(i: int) -> bool:  # a cut before token i does not split a character between tokens
        return i <= 0 or i >= n or offs[i][0] >= offs[i - 1][1]

    reqs = []
    start = 0
    while start < n:
        ctx_start = max(0, start - overlap) if start else 0
        while ctx_start > 0 and not clean(ctx_start):
            ctx_start -= 1
        end = max(start + 1, min(n, ctx_start + max_tokens))
        while end < n and end > start + 1 and not clean(end):
            end -= 1
        base = offs[ctx_start][0]
        reqs.append(Request(text[base : offs[end - 1][1]], offs[start][0] - base))
        start = end
    return reqs, n


def perplexity(model, tokenizer, texts: Sequence[str], cfg: ScoringConfig | None = None, max_length: int = 0,
               overlap: int = 0, score_fn: ScoreFn | None = None, desc: str = "perplexity") -> PerplexityResult:
    """Token-level perplexity of ``texts``: ``exp(total NLL / total scored tokens)``.

    Every text is scored on its own, after the start token (:func:`biasunlearn.scoring.resolve_start_token_id`):
    each of its tokens counts, the first conditioned on the start token only. Texts longer than
    ``max_length - 1`` tokens (``max_length`` counts the start token; 0 = :func:`default_max_length`) are
    split by :func:`text_chunks`. Scoring is :func:`biasunlearn.scoring.sequence_logprobs` (batched, exact).
    """
    if not texts:
        raise ConfigError("perplexity: no texts")
    cfg = cfg or ScoringConfig()
    max_length = max_length or default_max_length(model)
    if max_length < 2:
        raise ConfigError(f"perplexity: max_length must be >= 2 (start token + 1), got {max_length}")
    reqs: list[Request] = []
    owner: list[int] = []
    n_tok_tokenizer = 0
    for i, t in enumerate(texts):
        chunk_reqs, n = text_chunks(tokenizer, t, max_length - 1, overlap)
        reqs.extend(chunk_reqs)
        owner.extend([i] * len(chunk_reqs))
        n_tok_tokenizer += n
    s = (score_fn or _plain_scores)(model, tokenizer, reqs, cfg, desc)
    per_nll = np.zeros(len(texts))
    per_tok = np.zeros(len(texts), dtype=np.int64)
    np.add.at(per_nll, owner, -s.sum_logprob)
    np.add.at(per_tok, owner, s.n_tokens)
    total_nll, total_tok = float(per_nll.sum()), int(per_tok.sum())
    if total_tok == 0:
        raise ConfigError("perplexity: the texts have no tokens")
    if total_tok != n_tok_tokenizer:
        log.debug("perplexity: %d tokens scored, %d by tokenizing whole texts (re-tokenized cuts differ)",
                  total_tok, n_tok_tokenizer)
    return PerplexityResult(
        perplexity=math.exp(total_nll / total_tok), nll=total_nll, n_tokens=total_tok, n_texts=len(texts),
        n_chunks=len(reqs), n_bytes=sum(len(t.encode("utf-8")) for t in texts),
        per_text_nll=per_nll.tolist(), per_text_tokens=per_tok.tolist(),
    )


@BENCHMARKS.register("perplexity")
def run_perplexity(model, tokenizer, ctx: EvalContext) -> BenchmarkResult:
    """Perplexity of ``<data_dir>/text/heldout.txt`` (first ``ctx.limit`` paragraphs)."""
    path = Path(ctx.data_dir) / HELDOUT_TEXT
    if not path.is_file():
        raise DataError(f"held-out text not found: expected {path} (UTF-8, one paragraph per line); "
                        f"`python scripts/prepare_text.py --out DATA_DIR` writes it ({_DOCS})")
    texts = load_texts(path, ctx.limit)
    max_length = default_max_length(model)
    log.info("perplexity: %d paragraphs from %s (windows of %d tokens)", len(texts), path, max_length)
    res = perplexity(model, tokenizer, texts, ctx.scoring, max_length=max_length, score_fn=ctx.score_fn)
    log.info("perplexity: %.3f over %d tokens", res.perplexity, res.n_tokens)
    return BenchmarkResult(
        metrics=res.metrics(),
        data_files=dataset_checksums(ctx.data_dir, [HELDOUT_TEXT]),
        n_items=res.n_texts,
        predictions={"texts": [{"index": i, "nll": nll, "n_tokens": n}
                               for i, (nll, n) in enumerate(zip(res.per_text_nll, res.per_text_tokens,
                                                                strict=True))]},
        extra={"max_length": max_length, "overlap": 0},
    )
