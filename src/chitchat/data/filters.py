"""Length, emptiness, link and category filters over a pairs table, as polars expressions.

Each pair gets the first reason it fails (or null); the reasons are counted, then the failing rows
dropped, so the metrics say exactly why every dropped pair went.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from chitchat.data.normalize import word_count
from chitchat.data.sources import TEXT_MARKER

# An answer made of links only carries nothing a model can learn to say.
LINK_ONLY = r"^(?:(?:https?://|www\.)\S+[\s,;.]*)+$"


@dataclass(frozen=True)
class FilterConfig:
    """Bounds are inclusive; a max of 0 means no upper bound."""

    min_question_chars: int = 1
    max_question_chars: int = 0
    min_question_words: int = 1
    max_question_words: int = 0
    min_answer_chars: int = 1
    max_answer_chars: int = 0
    min_answer_words: int = 1
    max_answer_words: int = 0
    drop_link_only: bool = True
    min_text_chars: int = 1  # `text` inputs (rows with TEXT_MARKER): shortest paragraph, instead of the bounds above
    max_text_chars: int = 0  # `text` inputs: longest paragraph (0 = none; training cuts long ones into windows)
    categories: list[str] = field(default_factory=list)


def _bounds(rules: list, column: str, measure: pl.Expr, lo: int, hi: int, unit: str) -> None:
    rules.append((measure < lo, f"{column}_too_short_{unit}"))
    if hi > 0:
        rules.append((measure > hi, f"{column}_too_long_{unit}"))


def _word_bounds(rules: list, column: str, text: pl.Expr, lo: int, hi: int) -> None:
    """_bounds on the word count, counting words only where the answer could depend on it.

    Counting is the dearest filter on millions of pairs. Fewer than 1 word means no non-space
    character; more than `hi` words take at least 2 * hi + 1 characters, so shorter rows count as "".
    """
    few = ~text.str.contains(r"\S") if lo == 1 else word_count(text) < lo
    rules.append((few, f"{column}_too_short_words"))
    if hi > 0:
        long_enough = pl.when(text.str.len_chars() > 2 * hi).then(text).otherwise(pl.lit(""))
        rules.append((word_count(long_enough) > hi, f"{column}_too_long_words"))


def drop_reason(cfg: FilterConfig) -> pl.Expr:
    """A string expression: the first filter a row fails, or null when it passes them all.

    Paragraphs of `text` inputs (question = TEXT_MARKER + paragraph) skip the question and answer
    bounds, which are for chit-chat, and get the text bounds instead.
    """
    q, a = pl.col("question"), pl.col("answer")
    text = q.str.starts_with(TEXT_MARKER + " ")
    rules: list[tuple[pl.Expr, str]] = [
        (q.str.len_chars() == 0, "empty_question"),
        (a.str.len_chars() == 0, "empty_answer"),
    ]
    if cfg.drop_link_only:
        rules.append((a.str.contains(LINK_ONLY), "link_only_answer"))
    chat: list[tuple[pl.Expr, str]] = []
    _bounds(chat, "question", q.str.len_chars(), cfg.min_question_chars, cfg.max_question_chars, "chars")
    _word_bounds(chat, "question", q, cfg.min_question_words, cfg.max_question_words)
    _bounds(chat, "answer", a.str.len_chars(), cfg.min_answer_chars, cfg.max_answer_chars, "chars")
    _word_bounds(chat, "answer", a, cfg.min_answer_words, cfg.max_answer_words)
    prose: list[tuple[pl.Expr, str]] = []
    _bounds(prose, "text", a.str.len_chars(), cfg.min_text_chars, cfg.max_text_chars, "chars")
    rules += [(~text & cond, reason) for cond, reason in chat] + [(text & cond, reason) for cond, reason in prose]
    if cfg.categories:
        rules.append((~pl.col("category").is_in(cfg.categories), "category_not_allowed"))
    expr = pl.when(rules[0][0]).then(pl.lit(rules[0][1]))
    for cond, reason in rules[1:]:
        expr = expr.when(cond).then(pl.lit(reason))
    return expr.otherwise(pl.lit(None, dtype=pl.String)).alias("drop_reason")


def apply_filters(df: pl.DataFrame, cfg: FilterConfig) -> tuple[pl.DataFrame, dict[str, int]]:
    """Drop failing pairs; return the kept pairs and the number dropped per reason."""
    tagged = df.with_columns(drop_reason(cfg))
    counts = (
        tagged.filter(pl.col("drop_reason").is_not_null())
        .group_by("drop_reason")
        .len()
        .sort("drop_reason")
    )
    dropped = dict(zip(counts["drop_reason"].to_list(), counts["len"].to_list()))
    kept = tagged.filter(pl.col("drop_reason").is_null()).drop("drop_reason")
    return kept, dropped
