"""Turn QA records into a normalized (question, category, answer) pairs table."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from chitchat.data.normalize import normalize_text
from chitchat.data.readers import ReadReport, read_qa_jsonl

PAIR_SCHEMA = {
    "qid": pl.UInt32,
    "line": pl.UInt32,
    "question": pl.String,
    "category": pl.String,
    "answer": pl.String,
}
CHUNK_ROWS = 200_000  # pairs buffered in Python lists before they become a polars frame


def read_pairs(
    path: str | Path,
    report: ReadReport,
    lowercase: bool = False,
    yo_to_e: bool = False,
    missing_category: str = "Без категории",
) -> pl.DataFrame:
    """Read a QA dump into one row per (question, answer), text normalized, `qid` = record index."""
    columns: dict[str, list] = {name: [] for name in PAIR_SCHEMA}
    frames: list[pl.DataFrame] = []

    def flush() -> None:
        frames.append(pl.DataFrame(columns, schema=PAIR_SCHEMA))
        for values in columns.values():
            values.clear()

    for qid, record in enumerate(read_qa_jsonl(path, report)):
        question = normalize_text(record.question, lowercase, yo_to_e)
        category = normalize_text(record.category) or missing_category
        for response in record.responses:
            columns["qid"].append(qid)
            columns["line"].append(record.line)
            columns["question"].append(question)
            columns["category"].append(category)
            columns["answer"].append(normalize_text(response, lowercase, yo_to_e))
        if len(columns["qid"]) >= CHUNK_ROWS:
            flush()
    flush()
    return pl.concat(frames, how="vertical")
