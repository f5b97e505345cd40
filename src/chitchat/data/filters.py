"""Length, emptiness, link and category filters over a pairs table, as polars expressions.

Each pair gets the first reason it fails (or null); the reasons are counted, then the failing rows
dropped, so the metrics say exactly why every dropped pair went.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import polars as pl

from chitchat.data.normalize import word_count
from chitchat.data.prose import TEXT_MARKER

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


REGEX_WORDS = 1000  # up to this many words a bounded regex counts them; beyond, count_matches does


def more_words_than(text: pl.Expr, n: int) -> pl.Expr:
    """Whether `text` has more than `n` whitespace-separated words.

    Counting is the dearest filter on millions of pairs: a regex that needs n words and the start
    of one more stops at that point (or at the first character, for n = 0), and scans once.
    """
    if n > REGEX_WORDS:
        return word_count(text) > n
    return text.str.contains(rf"^\s*(?:\S+\s+){{{n}}}\S")


def _word_bounds(rules: list, column: str, text: pl.Expr, lo: int, hi: int) -> None:
    """_bounds on the word count."""
    if lo > 0:
        rules.append((~more_words_than(text, lo - 1), f"{column}_too_short_words"))
    if hi > 0:
        rules.append((more_words_than(text, hi), f"{column}_too_long_words"))


def _rules(cfg: FilterConfig) -> list[tuple[pl.Expr, str]]:
    """(condition, reason) per enabled filter, in the order a row's reason is chosen.

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
    return rules


def _guards(cfg: FilterConfig) -> dict[str, pl.Expr]:
    """reason -> a cheap condition that every row failing the rule meets. The upper word bounds scan
    whole texts, and more than n words take n + 1 non-spaces and n spaces: only texts longer than
    2n characters can fail them, and those are few."""
    return {f"{column}_too_long_words": pl.col(column).str.len_chars() > 2 * hi
            for column, hi in (("question", cfg.max_question_words), ("answer", cfg.max_answer_words)) if hi > 0}


def _drop_code(rules: list[tuple[pl.Expr, str]]) -> pl.Expr:
    """The index of the first rule a row fails, or null: the least index among the failed ones
    (integers, which are much cheaper to combine than a when/then chain of strings)."""
    return pl.min_horizontal(pl.when(cond).then(pl.lit(i, dtype=pl.UInt8)) for i, (cond, _) in enumerate(rules))


def drop_reason(cfg: FilterConfig) -> pl.Expr:
    """A string expression: the first filter a row fails, or null when it passes them all."""
    rules = _rules(cfg)
    names = pl.Series([reason for _, reason in rules], dtype=pl.String)
    return pl.lit(names).gather(_drop_code(rules)).alias("drop_reason")


def apply_filters(df: pl.DataFrame, cfg: FilterConfig) -> tuple[pl.DataFrame, dict[str, int]]:
    """Drop failing pairs; return the kept pairs and the number dropped per reason: drop_reason's
    verdicts (a test checks), with each guarded rule (_guards) evaluated only where its guard holds."""
    rules, guards = _rules(cfg), _guards(cfg)
    never = pl.lit(False)
    cheap = [(never if reason in guards else cond, reason) for cond, reason in rules]
    # lazily: polars then computes each length and word bound once, though several rules read it
    found = df.lazy().select(_drop_code(cheap).alias("code"),
                             pl.any_horizontal(never, *guards.values()).alias("maybe")).collect()
    code, maybe = found["code"], found["maybe"]
    if maybe.any():
        rows = maybe.arg_true()
        guarded = [(cond if reason in guards else never, reason) for cond, reason in rules]
        late = df.lazy().filter(maybe).select(_drop_code(guarded)).collect().to_series()
        code = code.scatter(rows, pl.select(pl.min_horizontal(code.gather(rows), late)).to_series())
    failed = code.drop_nulls()
    dropped: Counter = Counter()
    for i, n in failed.value_counts().iter_rows():
        dropped[rules[i][1]] += n
    return df.filter(code.is_null()), dict(sorted(dropped.items()))
