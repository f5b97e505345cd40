"""The records frame every format's reader yields: (line, question, category, answers, history).

Readers that assemble records in Python (dialogues, prose) buffer CHUNK_ROWS rows before each frame.
"""

from __future__ import annotations

import polars as pl

CHUNK_ROWS = 200_000  # dialogue pairs buffered in Python lists before they become a polars frame
RECORDS = {"line": pl.UInt32, "question": pl.String, "category": pl.String, "answers": pl.List(pl.String),
           "history": pl.List(pl.String)}  # what each format's reader yields; category null = none


def records_frame(rows: list[tuple]) -> pl.DataFrame:
    """Rows of (line, question, category, answers, history) as a RECORDS frame."""
    return pl.DataFrame(rows, schema=RECORDS, orient="row")
