"""Deduplication rules over a pairs table, each switchable and counted.

Order matters and is fixed: exact duplicates first (so the per-question cap counts distinct
answers), then answers that merely repeat their question, then the per-question cap.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from chitchat.data.normalize import match_key


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True  # drop repeated (question, answer) pairs
    answer_equals_question: bool = True  # drop pairs whose answer is the question again
    max_per_question: int = 0  # keep at most this many answers per identical question; 0 = all


@dataclass
class DedupReport:
    """Pairs in and out and the number each rule removed."""

    pairs_in: int
    pairs_out: int
    removed: dict[str, int]

    def as_dict(self) -> dict:
        return {"pairs_in": self.pairs_in, "pairs_out": self.pairs_out, "removed": self.removed,
                "removed_total": self.pairs_in - self.pairs_out}


def dedup_pairs(df: pl.DataFrame, cfg: DedupConfig) -> tuple[pl.DataFrame, DedupReport]:
    """Apply the enabled rules in order; rows keep their original order."""
    pairs_in = df.height
    removed: dict[str, int] = {}
    keyed = df.with_columns(
        match_key(pl.col("question")).alias("_qkey"), match_key(pl.col("answer")).alias("_akey")
    )

    if cfg.exact:
        before = keyed.height
        keyed = keyed.unique(subset=["question", "answer"], keep="first", maintain_order=True)
        removed["exact_duplicate"] = before - keyed.height
    if cfg.answer_equals_question:
        before = keyed.height
        keyed = keyed.filter(pl.col("_qkey") != pl.col("_akey"))
        removed["answer_equals_question"] = before - keyed.height
    if cfg.max_per_question > 0:
        before = keyed.height
        rank = pl.int_range(pl.len()).over("_qkey")
        keyed = keyed.filter(rank < cfg.max_per_question)
        removed["over_max_per_question"] = before - keyed.height

    out = keyed.drop("_qkey", "_akey")
    return out, DedupReport(pairs_in, out.height, removed)
