"""Deduplication rules over a pairs table, each switchable and counted.

Order matters and is fixed: exact duplicates first, then near duplicates (so the caps count
distinct pairs), then answers that merely repeat their question, then the per-question cap, then
the per-first-phrase cap. Every step keeps the first row of a group in input order, so the result
depends only on the input and the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import polars as pl

from chitchat.io import config_from
from chitchat.data.normalize import match_key

# A sentence end (. ! ? …, a run of them) followed by a space or the end, after at least one
# word character: "3.5 литра" and a leading "..." do not end a first phrase.
_FIRST_PHRASE = r"(?s)^(.*?\w.*?[.!?…]+)(?:\s|$)"
_PUNCT = r"(?:[^\w\s]|_)+"  # punctuation, symbols and emoji (\w keeps letters and digits)


def _collapse_repeats(texts: pl.Series) -> pl.Series:
    """Runs of 3+ identical characters (digits and whitespace excepted) become one character.

    Polars regex has no backreferences, so the runs are found with an alternation over the
    characters present (а{3,}|б{3,}|...) and replaced, longest first, by their first character.
    Each text's result depends on that text only.
    """
    chars = texts.str.split("").explode().drop_nulls().unique().sort()
    chars = chars.filter(~chars.str.contains(r"^[\d\s]$"))
    if chars.is_empty():
        return texts
    runs = texts.str.extract_all("|".join(f"\\x{{{ord(c):X}}}{{3,}}" for c in chars))
    runs = runs.explode().drop_nulls().unique().to_frame("run")
    if runs.is_empty():
        return texts
    runs = runs.sort(pl.col("run").str.len_chars(), "run", descending=[True, False])["run"]
    return texts.str.replace_many(runs.to_list(), runs.str.slice(0, 1).to_list(), leftmost=True)


def _drop_punctuation(texts: pl.Series) -> pl.Series:
    """Punctuation, symbols and emoji go with the spaces around them; inside a text they leave one
    space, so "да,нет" and "да, нет" both read "да нет" and "Привет!!!" reads "Привет"."""
    return (texts.str.replace_all(rf"^\s*{_PUNCT}\s*", "").str.replace_all(rf"\s*{_PUNCT}\s*$", "")
            .str.replace_all(rf"\s*{_PUNCT}\s*", " "))


# name -> transformation of a text column; applied, and counted, in this order. Each works on the
# output of the one before, so every rule can only merge more pairs, never split them again.
NEAR_RULES: dict[str, Callable[[pl.Series], pl.Series]] = {
    "casefold": lambda s: s.str.to_lowercase(),
    "yo_to_e": lambda s: s.str.replace_all("ё", "е", literal=True).str.replace_all("Ё", "Е", literal=True),
    "punctuation": _drop_punctuation,
    "repeats": _collapse_repeats,
    "whitespace": lambda s: s.str.replace_all(r"\s+", ""),
}


@dataclass(frozen=True)
class NearKeyConfig:
    """Which rules build the near-duplicate key (see NEAR_RULES for the order)."""

    casefold: bool = True  # «Привет» = «привет»
    yo_to_e: bool = True  # «ёлка» = «елка»
    punctuation: bool = True  # drop punctuation, symbols, emoji: «Привет!!!» = «Привет»
    repeats: bool = True  # runs of 3+ identical characters (not digits) -> one: «даааа» = «да»
    whitespace: bool = True  # ignore spaces: «не знаю» = «незнаю»

    def enabled(self) -> list[str]:
        return [name for name in NEAR_RULES if getattr(self, name)]


@dataclass(frozen=True)
class DedupConfig:
    """Which dedup rules run, and the caps (0 = no cap)."""

    exact: bool = True  # drop repeated (question, answer) pairs
    near: NearKeyConfig = field(default_factory=NearKeyConfig)  # drop pairs equal by the near key
    answer_equals_question: bool = True  # drop pairs whose answer is the question again
    max_per_question: int = 0  # keep at most this many answers per identical question; 0 = all
    max_per_first_phrase: int = 0  # keep at most this many questions per first phrase; 0 = all

    def __post_init__(self):
        for name in ("max_per_question", "max_per_first_phrase"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"dedup.{name} must be an integer >= 0, got {value!r}")


def dedup_config(params: dict) -> DedupConfig:
    """DedupConfig from the `dedup` section; unknown keys, also under `near`, are a ValueError."""
    near = params.get("near", {})
    if not isinstance(near, dict):
        raise ValueError(f"dedup.near must be a mapping of rule: true/false, got {near!r}")
    for name, value in near.items():
        if name in NEAR_RULES and not isinstance(value, bool):
            raise ValueError(f"dedup.near.{name} must be true or false, got {value!r}")
    near_cfg = config_from(NearKeyConfig, near, "dedup.near")
    rest = {k: v for k, v in params.items() if k != "near"}
    return config_from(DedupConfig, rest, "dedup", near=near_cfg)


def near_key(texts: pl.Series, cfg: NearKeyConfig) -> pl.Series:
    """The near-duplicate key of each text: the enabled rules applied in NEAR_RULES order."""
    for name in cfg.enabled():
        texts = NEAR_RULES[name](texts)
    return texts


def first_phrase(expr: pl.Expr) -> pl.Expr:
    """The text up to its first sentence end (. ! ? …), or the whole text when it has none."""
    return expr.str.extract(_FIRST_PHRASE, 1).fill_null(expr)


@dataclass
class DedupReport:
    """Pairs in and out, the number each rule removed and how many first phrases hit the cap."""

    pairs_in: int
    pairs_out: int
    removed: dict[str, int]
    first_phrases_capped: int = 0

    def as_dict(self) -> dict:
        return {"pairs_in": self.pairs_in, "pairs_out": self.pairs_out, "removed": self.removed,
                "removed_total": self.pairs_in - self.pairs_out,
                "first_phrases_capped": self.first_phrases_capped}


def _near_dedup(df: pl.DataFrame, cfg: DedupConfig, removed: dict[str, int]) -> pl.DataFrame:
    """Keep the first pair of each (question key, answer key); count the extra pairs each rule
    merges on top of the rules before it (and identical pairs, when `exact` is off)."""
    keys = df.select("question", "answer")
    distinct = keys.n_unique()
    if not cfg.exact:
        removed["near_identical"] = df.height - distinct
    for name in cfg.near.enabled():
        keys = keys.select(NEAR_RULES[name](s) for s in keys.iter_columns())
        removed[f"near_{name}"] = distinct - keys.n_unique()
        distinct -= removed[f"near_{name}"]
    return df.filter(keys.select(pl.struct(pl.all()).is_first_distinct()).to_series())


def _cap_first_phrase(df: pl.DataFrame, cfg: DedupConfig) -> tuple[pl.DataFrame, int]:
    """Keep the pairs of the first N questions (lowest qid: first read) per first-phrase key."""
    phrase = near_key(df.select(first_phrase(pl.col("question")))["question"], cfg.near)
    keyed = df.with_columns(phrase.alias("_phrase"))
    over = keyed.select(pl.col("qid").rank("dense").over("_phrase") > cfg.max_per_first_phrase).to_series()
    return df.filter(~over), phrase.filter(over).n_unique()


def dedup_pairs(df: pl.DataFrame, cfg: DedupConfig) -> tuple[pl.DataFrame, DedupReport]:
    """Apply the enabled rules in order; rows keep their original order.

    The per-first-phrase cap needs a `qid` column (one id per question record: a QA question with
    all its answers, or one dialogue turn pair).
    """
    pairs_in = df.height
    removed: dict[str, int] = {}
    capped = 0

    if cfg.exact:
        before = df.height
        df = df.unique(subset=["question", "answer"], keep="first", maintain_order=True)
        removed["exact_duplicate"] = before - df.height
    if cfg.near.enabled():
        df = _near_dedup(df, cfg, removed)
    if cfg.answer_equals_question:
        before = df.height
        df = df.filter(match_key(pl.col("question")) != match_key(pl.col("answer")))
        removed["answer_equals_question"] = before - df.height
    if cfg.max_per_question > 0:
        before = df.height
        df = df.filter(pl.int_range(pl.len()).over(match_key(pl.col("question"))) < cfg.max_per_question)
        removed["over_max_per_question"] = before - df.height
    if cfg.max_per_first_phrase > 0:
        if "qid" not in df.columns:
            raise ValueError("dedup.max_per_first_phrase counts questions by qid; the table has no qid")
        before = df.height
        df, capped = _cap_first_phrase(df, cfg)
        removed["over_max_per_first_phrase"] = before - df.height

    return df, DedupReport(pairs_in, df.height, removed, capped)
