"""The reader of format `pairs_tsv`: the course's `train.txt`, `question<TAB>answer[<TAB>category]`
per line, a chunk of lines at a time in polars."""

from __future__ import annotations

import polars as pl

from chitchat.data.lines import WHITESPACE_ONLY, LineChunk, nonblank_lines
from chitchat.data.read_report import ReadReport


def tsv_chunk(chunk: LineChunk) -> tuple[pl.DataFrame, ReadReport]:
    """(line, question, category, answers, history) per `question<TAB>answer[<TAB>category]` line of
    one chunk, and the chunk's own report (chunks are parsed on several threads)."""
    report = ReadReport()
    lines = nonblank_lines(chunk, report).with_columns(fields=pl.col("text").str.split("\t"))
    n = pl.col("fields").list.len()
    reason = pl.when(n < 2).then(pl.lit("no_tab")).when(n > 3).then(pl.lit("too_many_tabs"))
    lines = lines.with_columns(reason=reason)
    report.skip_many(lines.filter(pl.col("reason").is_not_null()).select("line", "reason"))
    ok = lines.filter(pl.col("reason").is_null()).select(
        "line",
        question=pl.col("fields").list.get(0),
        category=pl.col("fields").list.get(2, null_on_oob=True),
        answers=pl.concat_list(pl.col("fields").list.get(1)),
        history=pl.lit([], dtype=pl.List(pl.String)),
    )
    ok = ok.with_columns(category=pl.when(pl.col("category").str.contains(WHITESPACE_ONLY))
                         .then(None).otherwise("category"))
    report.records_ok += ok.height
    report.category_missing += ok["category"].null_count()
    return ok, report
