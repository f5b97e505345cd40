"""Rows grouped by a key, cheaply: integer codes for keys, the first of each distinct (code, text)
by hash, window counts, caps on a rank within a group, and the runs of one question record.
"""

from __future__ import annotations

import polars as pl


def question_runs(df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
    """(first, index): rows that open a run of one question record (same question text and qid),
    and each row's run number. Answers of one record are adjacent, so everything computed from the
    question is computed once per run (a quarter of the rows in the dump) and gathered back."""
    cols = ["question", "qid"] if "qid" in df.columns else ["question"]
    first = df.lazy().select(pl.any_horizontal(pl.col(c).ne_missing(pl.col(c).shift(1)) for c in cols)
                             .fill_null(True).alias("first")).collect().to_series()
    return first, (first.cast(pl.UInt32).cum_sum() - 1)


def value_runs(values: pl.Series) -> tuple[pl.Series, pl.Series]:
    """(first, index) as question_runs gives them, for the runs of equal values of one column."""
    first = values.ne_missing(values.shift(1)).fill_null(True)
    return first, first.cast(pl.UInt32).cum_sum() - 1


def codes(keys: pl.Series) -> pl.Series:
    """An integer per key, equal for equal keys (the position of the key's first occurrence):
    grouping and comparing these is much cheaper, in time and memory, than the strings."""
    return keys.to_frame("k").with_row_index("i").select(pl.col("i").min().over("k")).to_series()


def more_than(df: pl.DataFrame, key: pl.Expr, n: int) -> pl.Series:
    """Rows whose `key` value occurs more than `n` times in `df`. A window count in a lazy frame,
    where polars groups on every core: about three times faster than is_duplicated here."""
    return df.lazy().select(pl.len().over(key) > n).collect().to_series()


def distinct(df: pl.DataFrame, code: str, text: str) -> tuple[pl.Series, pl.Series]:
    """(first, shared) over the pairs (code, text): the first row of each pair value, and the rows
    whose value occurs more than once. The text is grouped by its 64-bit hash; the few rows whose
    hash is shared are compared by the text itself, so a collision never merges different texts."""
    hashed = more_than(df, pl.col(text).hash() ^ pl.col(code).hash(), 1)
    rows = hashed.arg_true()
    pair = pl.struct(code, text)
    sub = df.select(pl.col(code).gather(rows), pl.col(text).gather(rows)).select(
        pair.is_first_distinct().alias("first"), pair.is_duplicated().alias("shared"))
    return (~hashed).scatter(rows, sub["first"]), hashed.scatter(rows, sub["shared"])


def over_cap(rows: pl.DataFrame, group: str, rank: pl.Expr, cap: int) -> pl.Series:
    """Rows whose `rank` within their `group` exceeds `cap`. Only groups of more than `cap` rows
    can have one, and those are few: the ranks are taken on them alone."""
    big = more_than(rows, pl.col(group), cap)
    over = pl.repeat(False, rows.height, dtype=pl.Boolean, eager=True)
    if big.any():
        sub = rows.filter(big)
        over = over.scatter(big.arg_true(), sub.lazy().select(rank.over(group) > cap).collect().to_series())
    return over
