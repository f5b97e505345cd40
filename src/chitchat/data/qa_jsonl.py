"""The reader of format `qa_jsonl`: the Ответы@Mail.ru dump, one JSON object per line (`.jsonl`,
`.jsonl.gz`, `.jsonl.zip`).

Polars parses the JSON of each chunk of lines (`qa_chunk`); only lines the vectorized parser could
get wrong (a value of the wrong type, a key twice, malformed JSON) go through `json.loads`, which
defines the rules (`_parse`). A record that breaks them is skipped and counted by reason in the
ReadReport. Hostile input (tests/test_hostile.py): of two equal keys the last wins, as in
json.loads; a lone surrogate escape ("\\ud800") becomes NUL, which normalization removes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import polars as pl

from chitchat.core.errors import InputError
from chitchat.data.field_map import FieldMap, parse_record
from chitchat.data.lines import BLANK, WHITESPACE_ONLY, LineChunk, iter_line_chunks, nonblank_lines
from chitchat.data.parallel import ordered_map
from chitchat.data.read_report import ReadReport

QA_DTYPE = pl.Struct({"question": pl.String, "category": pl.String, "responses": pl.List(pl.String)})
# Polars' JSON decoder coerces (5 -> "5", "x" -> ["x"]) and keeps the first of two equal keys; a
# line where that could matter goes to json.loads instead. Over-matching only costs speed.
_STRING = r'"(?:[^"\\]|\\.)*"'
_SUSPECT = "|".join([
    r'"(?:question|category)"\s*:\s*[^"\sn]',  # a value neither a string nor null
    r'"responses"\s*:\s*(?:[^\[\sn]|\[\s*(?:' + _STRING + r'\s*,\s*)*[^"\s\]])',  # not a list of strings
    *(rf'"{key}"\s*:.*"{key}"\s*:' for key in ("question", "responses", "category")),  # a key twice
    r'"[^"]*\\u[0-9a-fA-F]{4}[^"]*"\s*:',  # an escaped key name ("\u0071uestion")
])


@dataclass(frozen=True)
class QARecord:
    """One question with its answers, as read from the dump."""

    line: int
    question: str
    category: str
    responses: list[str]


COURSE_SCHEMA = FieldMap()  # question, responses (strings), category


def _parse(line: int, text: str) -> tuple:
    """(line, question, category, responses, reason, non-string responses) by json.loads: the rules
    (the course schema's field map: field_map.parse_record)."""
    return parse_record(line, text, COURSE_SCHEMA)


_PARSED = {"line": pl.UInt32, "question": pl.String, "category": pl.String, "responses": pl.List(pl.String),
           "reason": pl.String, "bad": pl.Int64}


def _decode(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(decoded, failed): polars parses the lines; a failing batch is halved to isolate the bad lines."""
    try:
        return frame.select("line", rec=pl.col("text").str.json_decode(QA_DTYPE)).unnest("rec"), frame.clear()
    except pl.exceptions.PolarsError:
        if frame.height <= 16:
            return pl.DataFrame(schema={"line": pl.UInt32, **{f.name: f.dtype for f in QA_DTYPE.fields}}), frame
        half = frame.height // 2
        (ok_a, bad_a), (ok_b, bad_b) = _decode(frame.slice(0, half)), _decode(frame.slice(half))
        return pl.concat([ok_a, ok_b]), pl.concat([bad_a, bad_b])


def _classify(decoded: pl.DataFrame) -> pl.DataFrame:
    """The rules of _parse on lines polars decoded exactly (strings or null, lists of strings)."""
    n = pl.col("responses").list.len()
    reason = (pl.when(pl.col("question").is_null()).then(pl.lit("missing_question"))
              .when(pl.col("responses").is_null()).then(pl.lit("missing_responses"))
              .when(n == 0).then(pl.lit("no_responses")))
    blank = pl.col("category").is_null() | pl.col("category").str.contains(WHITESPACE_ONLY)
    return decoded.select(
        "line", "question", pl.when(blank).then(None).otherwise("category").alias("category"), "responses",
        reason.alias("reason"), pl.lit(0, pl.Int64).alias("bad"))


def parse_qa_lines(frame: pl.DataFrame, report: ReadReport) -> pl.DataFrame:
    """Valid records of (line, text) JSON lines as (line, question, category, responses).

    `category` is null where missing or blank. Skipped records and dropped responses are counted.
    """
    text = pl.col("text").str.strip_chars(BLANK)
    suspect = ~text.str.starts_with("{") | ~text.str.ends_with("}") | text.str.contains(_SUSPECT)
    frame = frame.with_columns(text, suspect=suspect)
    decoded, failed = _decode(frame.filter(~pl.col("suspect")))
    slow = pl.concat([frame.filter(pl.col("suspect")), failed]).select("line", "text")
    parsed = pl.concat([_classify(decoded),
                        pl.DataFrame([_parse(*row) for row in slow.iter_rows()], schema=_PARSED, orient="row")])
    parsed = parsed.sort("line")
    report.skip_many(parsed.filter(pl.col("reason").is_not_null()).select("line", "reason"))
    bad = int(parsed["bad"].sum())
    if bad:
        report.responses_skipped["not_a_string"] += bad
    ok = parsed.filter(pl.col("reason").is_null()).drop("reason", "bad")
    report.records_ok += ok.height
    report.category_missing += ok["category"].null_count()
    return ok


def qa_chunk(chunk: LineChunk) -> tuple[pl.DataFrame, ReadReport]:
    """The valid records of one chunk of a QA dump (see parse_qa_lines) and the chunk's own report:
    chunks can be parsed on several threads and their reports merged in order."""
    report = ReadReport()
    return parse_qa_lines(nonblank_lines(chunk, report), report), report


def qa_records(chunk: LineChunk) -> tuple[pl.DataFrame, ReadReport]:
    """qa_chunk's records in the columns every format yields (line, question, category, answers, history)."""
    records, report = qa_chunk(chunk)
    return records.rename({"responses": "answers"}).with_columns(history=pl.lit([], dtype=pl.List(pl.String))), report


def qa_frames(path: str | Path, report: ReadReport, workers: int = 1) -> Iterator[pl.DataFrame]:
    """The valid records of a QA dump, a frame per chunk; skips are counted in `report`."""
    for records, part in ordered_map(qa_chunk, iter_line_chunks(path), workers):
        report.merge(part)
        if records.height:
            yield records
    if report.lines == 0:
        raise InputError(path, "file has no records (only blank lines)")


def read_qa_jsonl(path: str | Path, report: ReadReport) -> Iterator[QARecord]:
    """Yield valid records of a QA dump, counting every skipped one in `report`."""
    for frame in qa_frames(path, report):
        for line, question, category, responses in frame.iter_rows():
            yield QARecord(line, question, category or "", responses)
