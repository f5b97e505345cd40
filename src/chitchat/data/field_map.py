"""JSON-lines dumps that are not in the course schema, read through a field map.

`prepare.inputs[].fields` names, by dotted paths, where a record keeps its question, its answers
and its category, so the full-metadata Ответы@Mail.ru dump, Yandex Q or Habr QnA exports read
without a conversion script:

    fields:
      question: title            # the question text
      answers: answers           # a list of strings, or of objects:
      answer_text: text          #   the text of each answer object
      answer_rating: votes       #   its rating (optional)
      answer_best: is_best       #   its best-answer flag (optional)
      category: meta.category    # optional
    answers_keep: all            # all | best | top-K (the K highest rated)

Records are read with json.loads, a chunk per worker thread. What a record lacks is counted by
reason, as in qa_jsonl: malformed_json, not_an_object, missing_question, question_not_string,
missing_responses, responses_not_list, no_responses, no_best_answer; answers that are not text are
counted under responses_skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import polars as pl

from chitchat.data.lines import LineChunk, nonblank_lines
from chitchat.data.read_report import ReadReport
from chitchat.data.records import RECORDS

FIELD_KEYS = ("question", "answers", "answer_text", "answer_rating", "answer_best", "category")
_KEEP = re.compile(r"^(all|best|top-([1-9][0-9]*))$")
_MISSING = object()
_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(value: str) -> str:
    """A lone surrogate escape ("\\ud800") becomes NUL, as polars' decoder makes it (normalize drops it)."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return _SURROGATE.sub("\x00", value)


@dataclass(frozen=True)
class FieldMap:
    """Where a record's parts are (dotted paths, "" = absent) and which answers are kept."""

    question: str = "question"
    answers: str = "responses"
    answer_text: str = ""  # set when answers are objects
    answer_rating: str = ""
    answer_best: str = ""
    category: str = "category"
    keep: str = "all"

    def __post_init__(self):
        if not _KEEP.match(self.keep):
            raise ValueError(f"prepare.inputs: answers_keep must be all, best or top-K (K >= 1), got {self.keep!r}")
        if self.keep == "best" and not self.answer_best:
            raise ValueError("prepare.inputs: answers_keep best needs fields.answer_best (the flag's path)")
        if self.keep.startswith("top-") and not self.answer_rating:
            raise ValueError(f"prepare.inputs: answers_keep {self.keep} needs fields.answer_rating (the rating's path)")
        if (self.answer_rating or self.answer_best) and not self.answer_text:
            raise ValueError("prepare.inputs: a rating or best flag needs fields.answer_text (answers are objects)")
        for name in ("question", "answers"):
            if not getattr(self, name):
                raise ValueError(f"prepare.inputs: fields.{name} must name a path")


def field_map(fields: Any, keep: Any) -> FieldMap | None:
    """The FieldMap of one `prepare.inputs` entry (None when it has neither `fields` nor `answers_keep`)."""
    if fields is None and keep is None:
        return None
    fields = {} if fields is None else fields
    if not isinstance(fields, dict):
        raise ValueError(f"prepare.inputs: fields must be a mapping of part: dotted.path, got {fields!r}")
    unknown = set(fields) - set(FIELD_KEYS)
    if unknown:
        raise ValueError(f"prepare.inputs: unknown fields {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(FIELD_KEYS)})")
    bad = [k for k, v in fields.items() if not isinstance(v, str)]
    if bad:
        raise ValueError(f"prepare.inputs: fields.{bad[0]} must be a dotted path string, got {fields[bad[0]]!r}")
    return FieldMap(**fields, keep=str(keep or "all"))


def lookup(obj: Any, path: str) -> Any:
    """The value at a dotted path (`meta.category`; a number steps into a list), or _MISSING."""
    for part in path.split("."):
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return _MISSING
    return obj


def _rating(answer: Any, path: str) -> float:
    value = lookup(answer, path)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("-inf")


def _answers(raw: list, fm: FieldMap) -> tuple[list[str], int, str | None]:
    """(texts kept, answers that were not text, reason when none is left)."""
    items = [(a, lookup(a, fm.answer_text) if fm.answer_text else a) for a in raw]
    texts = [(a, t) for a, t in items if isinstance(t, str)]
    bad = len(items) - len(texts)
    if not texts:
        return [], bad, "no_responses"
    if fm.keep == "best":
        texts = [(a, t) for a, t in texts if lookup(a, fm.answer_best) in (True, 1)]
        if not texts:
            return [], bad, "no_best_answer"
    elif fm.keep.startswith("top-"):  # highest rated first, ties in dump order; unrated last
        order = sorted(range(len(texts)), key=lambda i: -_rating(texts[i][0], fm.answer_rating))
        texts = [texts[i] for i in sorted(order[: int(fm.keep[4:])])]
    return [_text(t) for _, t in texts], bad, None


def parse_record(line: int, text: str, fm: FieldMap) -> tuple:
    """(line, question, category, answers, reason, answers not text) of one JSON line."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return line, None, None, None, "malformed_json", 0
    if not isinstance(obj, dict):
        return line, None, None, None, "not_an_object", 0
    question, raw = lookup(obj, fm.question), lookup(obj, fm.answers)
    if question is _MISSING or question is None:
        return line, None, None, None, "missing_question", 0
    if not isinstance(question, str):
        return line, None, None, None, "question_not_string", 0
    if raw is _MISSING or raw is None:
        return line, None, None, None, "missing_responses", 0
    if not isinstance(raw, list):
        return line, None, None, None, "responses_not_list", 0
    answers, bad, reason = _answers(raw, fm)
    if reason:
        return line, None, None, None, reason, bad
    category = lookup(obj, fm.category) if fm.category else None
    category = _text(category) if isinstance(category, str) and category.strip() else None
    return line, _text(question), category, answers, None, bad


def mapped_records(chunk: LineChunk, fm: FieldMap) -> tuple[pl.DataFrame, ReadReport]:
    """The records of one chunk of a mapped dump, in RECORDS' columns, and the chunk's own report."""
    report = ReadReport()
    rows = [parse_record(line, text, fm) for line, text in nonblank_lines(chunk, report).iter_rows()]
    for line, *_, reason, bad in rows:
        if reason:
            report.skip(reason, line)
        if bad:
            report.responses_skipped["not_a_string"] += bad
    ok = [(line, q, c, a, []) for line, q, c, a, reason, _ in rows if reason is None]
    report.records_ok += len(ok)
    report.category_missing += sum(1 for row in ok if row[2] is None)
    return pl.DataFrame(ok, schema=RECORDS, orient="row"), report
