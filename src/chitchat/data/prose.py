"""The reader of format `text`: plain prose for a language model (model.task lm), one row per
paragraph (paragraphs separated by blank lines, the lines of one paragraph joined by spaces).

Each row holds the paragraph in `answer` and TEXT_MARKER + " " + the paragraph in `question`.
"""

from __future__ import annotations

from typing import Iterator

import polars as pl

from chitchat.core.errors import InputError
from chitchat.data.lines import blocks
from chitchat.data.read_report import ReadReport
from chitchat.data.records import CHUNK_ROWS, records_frame

# The question of a `text` row: this marker, a space, the paragraph. The question is what dedup and
# split group by, so each distinct paragraph is its own group: exact and near duplicate paragraphs
# go, no cap merges different paragraphs, and an answer never equals its question (the marker is a
# word). Filters read the marker to apply prepare's text limits instead of the chit-chat ones.
TEXT_MARKER = "¶text"


def _paragraphs(path: str, report: ReadReport) -> Iterator[tuple[int, str]]:
    """(first line, its lines joined by spaces) per blank-line separated paragraph."""
    for block in blocks(path, report, count_lines=True):
        yield block[0][0], " ".join(text for _, text in block)


def text_frames(path: str, report: ReadReport) -> Iterator[pl.DataFrame]:
    """(line, TEXT_MARKER + paragraph, null, [paragraph], []) per paragraph of a `text` input.

    Normalizing the question gives the marker, a space and the normalized paragraph, as the marker
    is already normalized text (lower case, no ё) and a space separates it from the paragraph.
    """
    rows: list[tuple] = []
    for line_no, paragraph in _paragraphs(path, report):
        report.records_ok += 1
        rows.append((line_no, f"{TEXT_MARKER} {paragraph}", None, [paragraph], []))
        if len(rows) >= CHUNK_ROWS:
            yield records_frame(rows)
            rows = []
    if report.lines == 0:
        raise InputError(path, "file has no records (only blank lines)")
    yield records_frame(rows)
