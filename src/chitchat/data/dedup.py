"""Deduplication rules over a pairs table, each switchable and counted.

Order matters and is fixed: exact duplicates first, then near duplicates (so the caps count
distinct pairs), then answers that merely repeat their question, then the per-question cap, then
the per-first-phrase cap. Every step keeps the first row of a group in input order, so the result
depends only on the input and the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from chitchat.core.io import config_from
from chitchat.data.dedup_keys import (NEAR_RULES, NearKeyConfig, ends_hash, fast_near_key, first_phrase, lazy_select,
                                      lower_yo_series)
from chitchat.data.normalize import match_key, spaced_words
from chitchat.data.row_groups import codes, distinct, more_than, over_cap, question_runs


@dataclass(frozen=True)
class DedupConfig:
    """Which dedup rules run, and the caps (0 = no cap)."""

    exact: bool = True  # drop repeated (question, answer) pairs
    near: NearKeyConfig = field(default_factory=NearKeyConfig)  # drop pairs equal by the near key
    answer_equals_question: bool = True  # drop pairs whose answer is the question again
    max_per_question: int = 0  # keep at most this many answers per identical question; 0 = all
    max_per_first_phrase: int = 0  # keep at most this many questions per first phrase; 0 = all
    memory_mb: int = 2500  # the stage's memory: past it the pairs are deduplicated in buckets (same result)

    def __post_init__(self):
        for name in ("max_per_question", "max_per_first_phrase"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"dedup.{name} must be an integer >= 0, got {value!r}")
        if isinstance(self.memory_mb, bool) or not isinstance(self.memory_mb, int) or self.memory_mb < 512:
            raise ValueError(f"dedup.memory_mb must be an integer >= 512 (megabytes), got {self.memory_mb!r}")


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


def _near_dedup(sub: pl.DataFrame, texts: pl.DataFrame, cfg: DedupConfig, removed: dict[str, int]) -> pl.Series:
    """Of the rows `sub` (q_near, a_near, _row into `texts`), those to keep: the first pair of each
    (question key, answer key); count the extra pairs each rule merges on top of the rules before
    it (and identical pairs, when `exact` is off).

    Only pairs whose full key is shared can merge under any prefix of the rules, so the per-rule
    counts are taken on those few pairs alone, with the reference rules one at a time.
    """
    keep, shared = distinct(sub, "q_near", "a_near")
    shared = texts.gather(sub["_row"].filter(shared))
    if not cfg.exact:
        removed["near_identical"] = shared.height - shared.n_unique()
    n_distinct = shared.n_unique()
    for name in cfg.near.enabled():
        shared = shared.select(NEAR_RULES[name](s) for s in shared.iter_columns())
        removed[f"near_{name}"] = n_distinct - shared.n_unique()
        n_distinct -= removed[f"near_{name}"]
    return keep


def _match_implies_near(near: NearKeyConfig) -> bool:
    """Whether equal match keys mean equal near keys (and so equal ends): when the near key
    folds case and ё and drops punctuation and spaces (repeats only merges more)."""
    return near.casefold and near.yo_to_e and near.punctuation and near.whitespace


KEY_COLUMNS = ("qid", "question", "answer")  # all the rules read: the rest of a row rides along
# The column dedup adds: pairs whose questions share the match key (case, ё, punctuation; the key
# split groups by) share it; its value is the row, in dedup's input, of the first such pair.
GROUP = "group"


@dataclass(frozen=True)
class _Questions:
    """Per run of one question record (see question_runs): its question, match key and near key
    (the question itself when no near rule is on)."""

    texts: pl.Series
    match: pl.Series
    near: pl.Series
    phrase: pl.Series | None  # the near key of its first phrase, when max_per_first_phrase is set


def kept_rows(df: pl.DataFrame, cfg: DedupConfig, defer_phrase_cap: bool = False) -> tuple[pl.DataFrame, DedupReport]:
    """Apply the enabled rules in order to the key columns of `df` (the others are not read);
    return the kept rows, ascending (`_row`, and their question GROUP), and the report.

    The per-first-phrase cap needs a `qid` column (one id per question record: a QA question with
    all its answers, or one dialogue turn pair). With `defer_phrase_cap` that cap is left to the
    caller (dedup_buckets applies it across buckets): the kept rows then carry `qid` and `phrase`,
    the first phrase's key.
    """
    if cfg.max_per_first_phrase > 0 and "qid" not in df.columns:
        raise ValueError("dedup.max_per_first_phrase counts questions by qid; the table has no qid")
    texts = df.select("question", "answer")  # by row number; the rules below carry integers
    removed: dict[str, int] = {}
    rows, questions = _question_codes(df, cfg)
    if cfg.exact:
        rows = _drop_exact(rows, texts, removed)
    keyed = None  # the kept rows that have a near key
    if cfg.near.enabled():
        rows, keyed = _drop_near(rows, texts, questions, cfg, removed)
    if cfg.answer_equals_question:
        rows = _drop_answer_equals_question(rows, keyed, texts, questions, cfg, removed)
    deferred = defer_phrase_cap and cfg.max_per_first_phrase > 0
    rows, capped = _drop_over_caps(rows, cfg, removed, phrase_cap=not deferred)
    kept = rows.select("_row", pl.col("q_match").alias(GROUP))
    if deferred:
        kept = kept.with_columns(rows["qid"], questions.phrase.gather(rows["run"]).alias("phrase"))
    return kept, DedupReport(df.height, rows.height, removed, capped)


def _question_codes(df: pl.DataFrame, cfg: DedupConfig) -> tuple[pl.DataFrame, _Questions]:
    """(rows, questions): a row per pair (`_row`, `qid`, its `run`, and integer codes of its
    question's text, match key, near key and first phrase, as far as the rules need them).

    Everything about the question is computed once per question record; the texts stay per run
    (`run` indexes them) for the few rows that need them.
    """
    near = cfg.near
    first, run = question_runs(df)
    questions = df["question"].filter(first)
    # the match key's case and spacing passes, shared with the near key when it has those rules
    spaced = lazy_select(lower_yo_series(questions), spaced_words)
    q_match = lazy_select(spaced, lambda t: match_key(t, spaced=True))
    rows = df.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), *(["qid"] if "qid" in df.columns else []))
    starts = first.arg_true()  # the row of each run's first pair
    rows = rows.with_columns(run.alias("run"), codes(questions).gather(run).alias("q_text"),
                             starts.gather(codes(q_match)).gather(run).alias("q_match"))
    q_near = questions  # near_key with no rule on
    if near.enabled():
        q_near = (fast_near_key(spaced, near, spaced=True) if _match_implies_near(near)
                  else fast_near_key(questions, near))
        rows = rows.with_columns(codes(q_near).gather(run).alias("q_near"))
    phrase = None
    if cfg.max_per_first_phrase > 0:
        phrase = _phrase_keys(questions, q_near, near)
        rows = rows.with_columns(codes(phrase).gather(run).alias("phrase"))
    return rows, _Questions(questions, q_match, q_near, phrase)


def _phrase_keys(questions: pl.Series, q_near: pl.Series, near: NearKeyConfig) -> pl.Series:
    """The near key of each question's first phrase. Most first phrases are the whole question,
    whose key is known: only the others are keyed."""
    # a phrase shorter than its question ends in a sentence end that a space follows
    rows_in = lazy_select(questions, lambda t: t.str.contains(r"[.!?…]\s")).arg_true()
    asked = questions.gather(rows_in)
    phrases = lazy_select(asked, first_phrase)
    shorter = phrases != asked
    return q_near.clone().scatter(rows_in.filter(shorter), fast_near_key(phrases.filter(shorter), near))


def _drop_exact(rows: pl.DataFrame, texts: pl.DataFrame, removed: dict[str, int]) -> pl.DataFrame:
    """The rows whose (question, answer) is the first of its value: repeated pairs go."""
    keep = distinct(rows.select("q_text").with_columns(texts["answer"]), "q_text", "answer")[0]
    removed["exact_duplicate"] = rows.height - int(keep.sum())
    return rows.filter(keep)


def _drop_near(rows: pl.DataFrame, texts: pl.DataFrame, questions: _Questions, cfg: DedupConfig,
               removed: dict[str, int]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows, keyed): the rows without near duplicates, and those of them that have a near key
    (`_row`, `run`, `q_near`, `a_near`).

    Near keys only for answers that could merge or repeat their question: those whose ends another
    answer to the same question key shares, or the question's own ends.
    """
    near = cfg.near
    rows = rows.with_columns(ends_hash(texts["answer"], near).gather(rows["_row"]).alias("a_ends"))
    need = more_than(rows, pl.col("a_ends") ^ pl.col("q_near").hash(), 1)
    if cfg.answer_equals_question and _match_implies_near(near):
        need |= rows["a_ends"] == ends_hash(questions.texts, near).gather(rows["run"])
    sub = rows.filter(need).select("_row", "run", "q_near")
    sub = sub.with_columns(fast_near_key(texts["answer"].gather(sub["_row"]), near).alias("a_near"))
    keep_sub = _near_dedup(sub, texts, cfg, removed)
    rows = rows.filter((~need).scatter(need.arg_true(), keep_sub)).drop("a_ends")
    return rows, sub.filter(keep_sub)


def _drop_answer_equals_question(rows: pl.DataFrame, keyed: pl.DataFrame | None, texts: pl.DataFrame,
                                 questions: _Questions, cfg: DedupConfig, removed: dict[str, int]) -> pl.DataFrame:
    """The rows whose answer's match key is not their question's.

    Equal match keys mean equal near keys: when the near key has the rules for that, only rows
    whose near keys are equal need the match key of their answer (rows without a near key end
    unlike their question).
    """
    if _match_implies_near(cfg.near):
        check = keyed.filter(keyed["a_near"] == questions.near.gather(keyed["run"]))
    else:
        check = rows
    same = lazy_select(texts["answer"].gather(check["_row"]), match_key) == questions.match.gather(check["run"])
    drop = rows["_row"].is_in(check["_row"].filter(same).implode())
    removed["answer_equals_question"] = int(drop.sum())
    return rows.filter(~drop)


def _drop_over_caps(rows: pl.DataFrame, cfg: DedupConfig, removed: dict[str, int],
                    phrase_cap: bool = True) -> tuple[pl.DataFrame, int]:
    """(rows, first phrases capped): the per-question cap, then (unless not `phrase_cap`) the
    per-first-phrase cap."""
    capped = 0
    if cfg.max_per_question > 0:
        over = over_cap(rows, "q_match", pl.int_range(1, pl.len() + 1), cfg.max_per_question)
        removed["over_max_per_question"] = int(over.sum())
        rows = rows.filter(~over)
    if cfg.max_per_first_phrase > 0 and phrase_cap:
        over, capped = phrase_over_cap(rows, cfg.max_per_first_phrase)
        removed["over_max_per_first_phrase"] = int(over.sum())
        rows = rows.filter(~over)
    return rows, capped


def phrase_over_cap(rows: pl.DataFrame, cap: int) -> tuple[pl.Series, int]:
    """(over, phrases capped): the rows past the first `cap` questions (by qid) of their `phrase`,
    and how many phrases had any. Each phrase's rows are all that decide its result."""
    over = over_cap(rows, "phrase", pl.col("qid").rank("dense"), cap)
    return over, rows["phrase"].filter(over).n_unique()


def kept_with_group(table: pl.DataFrame, kept: pl.DataFrame) -> pl.LazyFrame:
    """The rows of `table` that kept_rows kept (`kept`: its result on this table), in order, with
    their question GROUP as the last column: a lazy frame whose filter streams into a sink, so the
    kept rows are never copied whole."""
    group = pl.repeat(None, table.height, dtype=kept[GROUP].dtype, eager=True).scatter(kept["_row"], kept[GROUP])
    return table.drop(GROUP, strict=False).with_columns(group.alias(GROUP)).lazy().filter(pl.col(GROUP).is_not_null())


def dedup_pairs(df: pl.DataFrame, cfg: DedupConfig) -> tuple[pl.DataFrame, DedupReport]:
    """The rows of `df` that kept_rows keeps, in their original order, and the report."""
    kept, report = kept_rows(df, cfg)
    return df.gather(kept["_row"]), report
