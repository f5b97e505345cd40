"""Train / validation / test split grouped by question and stratified by category.

All answers to one question (after the match key: case, ё, punctuation) go to the same split, so
validation never scores a question the model was trained on.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from chitchat.core.parquet_stream import appenders, batches
from chitchat.data.dedup import GROUP
from chitchat.data.normalize import match_key
from chitchat.data.row_groups import question_runs, value_runs
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


def _check(cfg: SplitConfig, source: str) -> None:
    if not 0 < cfg.valid_fraction < 1 or not 0 < cfg.test_fraction < 1:
        raise InputError(source, "split fractions must lie strictly between 0 and 1")
    if cfg.valid_fraction + cfg.test_fraction >= 1:
        raise InputError(source, "valid_fraction + test_fraction must be below 1")


def split_groups(categories: pl.Series, cfg: SplitConfig, source: str = "pairs") -> tuple[np.ndarray, dict]:
    """(split number per group: 0 train, 1 valid, 2 test; the report's `stratified` and
    `questions`), the groups numbered in order of first appearance with `categories` theirs."""
    n = categories.len()
    if n < 3:
        raise InputError(source, f"only {n} distinct questions: too few to split three ways")
    n_valid = max(1, round(n * cfg.valid_fraction))
    n_test = max(1, round(n * cfg.test_fraction))
    cats = categories.cast(pl.String)  # the stage reads them as Categorical
    train_keys, held, strat_1 = _split(np.arange(n), cats, n_valid + n_test, cfg.seed, cfg.stratify)
    valid_keys, test_keys, strat_2 = _split(held, cats.gather(held), n_test, cfg.seed, cfg.stratify)
    of_group = np.zeros(n, dtype=np.uint8)
    of_group[valid_keys], of_group[test_keys] = 1, 2
    return of_group, {"stratified": strat_1 and strat_2,
                      "questions": {"train": len(train_keys), "valid": len(valid_keys), "test": len(test_keys)}}


def pair_report(counts: pl.DataFrame) -> dict:
    """The report's `pairs` and `categories` from (split, category, len) rows (summed)."""
    counts = counts.group_by("split", "category").agg(pl.col("len").sum())
    return {
        "pairs": {name: int(counts.filter(pl.col("split") == name)["len"].sum()) for name in SPLITS},
        "categories": {name: {str(c): int(n) for c, n in counts.filter(pl.col("split") == name)
                              .select("category", "len").iter_rows()} for name in SPLITS},
    }


def assign_splits(df: pl.DataFrame, cfg: SplitConfig, source: str = "pairs") -> tuple[pl.Series, dict]:
    """The split of every row (a pl.Enum of SPLITS) and the report; reads `category` and dedup's
    `group` column where the table has one, else `question` (and `qid`).

    Question groups are numbered in order of first appearance and split by number. The group of a
    pair is dedup's `group` column, else the match key of its question, computed once per run of
    equal questions (the answers of one record are adjacent): the same grouping either way."""
    _check(cfg, source)
    if GROUP in df.columns:  # dedup's groups: a run is a stretch of one group (question not needed)
        (first, run), key = value_runs(df[GROUP]), pl.col(GROUP)
    else:  # computed, once per run of one question record
        (first, run), key = question_runs(df), match_key(pl.col("question"))
    runs = df.lazy().filter(first).select(key.alias("key"), "category").collect()  # reads only these columns
    # group number of each run: its key's rank by first appearance
    runs = runs.with_columns(pl.col("key").is_first_distinct().cast(pl.UInt32).cum_sum().alias("g"))
    runs = runs.with_columns(pl.col("g").first().over("key") - 1)
    groups = runs.filter(pl.col("key").is_first_distinct())
    of_group, report = split_groups(groups["category"], cfg, source)
    of_row = pl.Series(of_group).gather(runs["g"].gather(run))
    labels = pl.Series("split", SPLITS, dtype=pl.Enum(SPLITS)).gather(of_row)
    return labels, {**report, **pair_report(df.select(labels, "category").group_by("split", "category").len())}


def _group_starts(pairs: Path) -> pl.DataFrame:
    """(GROUP, category) of the first pair of each question group, in order of first appearance,
    read a batch at a time (categories as Categorical)."""
    parts, last = [], None
    for _, frame in batches(pairs, [GROUP, "category"]):
        group = frame[GROUP]
        first = group.ne_missing(group.shift(1, fill_value=last))  # the first row against the batch before's last
        parts.append(frame.filter(first).with_columns(pl.col("category").cast(pl.Categorical)))
        last = group[-1]
    if not parts:
        return pl.DataFrame(schema={GROUP: pl.UInt32, "category": pl.Categorical})
    runs = pl.concat(parts)
    return runs.filter(runs[GROUP].is_first_distinct())


def split_file(pairs: Path, out_dir: Path, cfg: SplitConfig) -> dict:
    """Split a table with dedup's GROUP column into out_dir/{train,valid,test}.parquet; the report.

    The same splits as assign_splits, in memory that holds the groups (not the pairs): a first
    pass finds each group's first category, the split is drawn per group, and a second pass writes
    each batch's rows to their split's file."""
    _check(cfg, str(pairs))
    groups = _group_starts(pairs)
    of_group, report = split_groups(groups["category"], cfg, str(pairs))
    table = np.zeros(int(groups[GROUP].max()) + 1, dtype=np.uint8)  # group value -> split number
    table[groups[GROUP].to_numpy()] = of_group
    del groups
    columns = [c for c in pl.read_parquet_schema(pairs) if c != GROUP]
    names = pl.Series("split", SPLITS, dtype=pl.Enum(SPLITS))
    counts = []
    with appenders({n: out_dir / f"{n}.parquet" for n in SPLITS}, pl.read_parquet(pairs, columns=columns, n_rows=0)) as out:
        for _, frame in batches(pairs, columns + [GROUP]):
            split = names.gather(table[frame[GROUP].to_numpy()])
            counts.append(frame.select(split, "category").group_by("split", "category").len())
            for name in SPLITS:
                out[name].add(frame.filter(split == name).drop(GROUP))
    return {**report, **pair_report(pl.concat(counts))}


def split_pairs(df: pl.DataFrame, cfg: SplitConfig, source: str = "pairs"):
    """Return ({split: frame}, report dict)."""
    labels, report = assign_splits(df, cfg, source)
    return {name: df.filter(labels == name).drop(GROUP, strict=False) for name in SPLITS}, report
