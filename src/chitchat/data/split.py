"""Train / validation / test split grouped by question and stratified by category.

All answers to one question (after the match key: case, ё, punctuation) go to the same split, so
validation never scores a question the model was trained on.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass

import numpy as np
import polars as pl

from chitchat.data.dedup import GROUP
from chitchat.data.normalize import match_key
from chitchat.data.row_groups import question_runs
from chitchat.core.errors import InputError

SPLITS = ("train", "valid", "test")
RARE = "__rare__"


@dataclass(frozen=True)
class SplitConfig:
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 13
    stratify: bool = True


def _strata(categories: pl.Series) -> np.ndarray:
    """Integer strata, numbered in the sorted order of the names (as sklearn numbers string labels),
    with categories of a single group merged into one rare stratum."""
    counts = categories.to_frame("c").group_by("c").len()  # a row per category: the ranks are taken on those
    number = counts.select(pl.when(pl.col("len") >= 2).then(pl.col("c")).otherwise(pl.lit(RARE)).rank("dense"))
    return categories.replace_strict(counts["c"], number.to_series()).to_numpy()


SKLEARN = "sklearn.model_selection"


def warm_sklearn() -> threading.Thread:
    """Import scikit-learn's model selection on a thread: it takes about a second, which the stage
    spends reading the pairs and computing keys in polars (which releases the GIL) meanwhile.
    _split's own import then finds the module loaded, or waits for it."""
    thread = threading.Thread(target=importlib.import_module, args=(SKLEARN,), name="chitchat-import", daemon=True)
    thread.start()
    return thread


def _split(keys: np.ndarray, categories: pl.Series, n_out: int, seed: int, stratify: bool):
    """Split keys into (kept, taken) with `n_out` taken; stratified when the counts allow."""
    train_test_split = importlib.import_module(SKLEARN).train_test_split
    strata = _strata(categories)
    if stratify and len(np.unique(strata)) > 1:  # one stratum would only pretend to stratify
        try:
            kept, taken = train_test_split(keys, test_size=n_out, stratify=strata, random_state=seed)
            return kept, taken, True
        except ValueError:  # too few groups per category for this split size
            pass
    kept, taken = train_test_split(keys, test_size=n_out, random_state=seed)
    return kept, taken, False


def assign_splits(df: pl.DataFrame, cfg: SplitConfig, source: str = "pairs") -> tuple[pl.Series, dict]:
    """The split of every row (a pl.Enum of SPLITS) and the report; reads `category` and dedup's
    `group` column where the table has one, else `question` (and `qid`).

    Question groups are numbered in order of first appearance and split by number. The group of a
    pair is dedup's `group` column, else the match key of its question, computed once per run of
    equal questions (the answers of one record are adjacent): the same grouping either way."""
    if not 0 < cfg.valid_fraction < 1 or not 0 < cfg.test_fraction < 1:
        raise InputError(source, "split fractions must lie strictly between 0 and 1")
    if cfg.valid_fraction + cfg.test_fraction >= 1:
        raise InputError(source, "valid_fraction + test_fraction must be below 1")
    if GROUP in df.columns:  # dedup's groups: a run is a stretch of one group (question not needed)
        first = df[GROUP].ne_missing(df[GROUP].shift(1)).fill_null(True)
        run, key = first.cast(pl.UInt32).cum_sum() - 1, pl.col(GROUP)
    else:  # computed, once per run of one question record
        (first, run), key = question_runs(df), match_key(pl.col("question"))
    runs = df.lazy().filter(first).select(key.alias("key"), "category").collect()  # reads only these columns
    # group number of each run: its key's rank by first appearance
    runs = runs.with_columns(pl.col("key").is_first_distinct().cast(pl.UInt32).cum_sum().alias("g"))
    runs = runs.with_columns(pl.col("g").first().over("key") - 1)
    groups = runs.filter(pl.col("key").is_first_distinct())
    n = groups.height
    if n < 3:
        raise InputError(source, f"only {n} distinct questions: too few to split three ways")
    n_valid = max(1, round(n * cfg.valid_fraction))
    n_test = max(1, round(n * cfg.test_fraction))
    keys = np.arange(n)
    cats = groups["category"].cast(pl.String)  # the stage reads it as Categorical
    train_keys, held, strat_1 = _split(keys, cats, n_valid + n_test, cfg.seed, cfg.stratify)
    valid_keys, test_keys, strat_2 = _split(held, cats.gather(held), n_test, cfg.seed, cfg.stratify)

    of_group = np.zeros(n, dtype=np.uint8)
    of_group[valid_keys], of_group[test_keys] = 1, 2
    of_row = pl.Series(of_group).gather(runs["g"].gather(run))
    labels = pl.Series("split", SPLITS, dtype=pl.Enum(SPLITS)).gather(of_row)
    counts = (df.select(labels, "category").group_by("split", "category").len()
              .sort("split", "category"))
    report = {
        "stratified": strat_1 and strat_2,
        "questions": {"train": len(train_keys), "valid": len(valid_keys), "test": len(test_keys)},
        "pairs": {name: int(counts.filter(pl.col("split") == name)["len"].sum()) for name in SPLITS},
        "categories": {name: dict(counts.filter(pl.col("split") == name).select("category", "len").iter_rows())
                       for name in SPLITS},
    }
    return labels, report


def split_pairs(df: pl.DataFrame, cfg: SplitConfig, source: str = "pairs"):
    """Return ({split: frame}, report dict)."""
    labels, report = assign_splits(df, cfg, source)
    return {name: df.filter(labels == name).drop(GROUP, strict=False) for name in SPLITS}, report
