"""Train / validation / test split grouped by question and stratified by category.

All answers to one question (after the match key: case, ё, punctuation) go to the same split, so
validation never scores a question the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl

from chitchat.core.parquet_stream import BATCH_ROWS, appenders, batches
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


def _stratum_of(counts: pl.DataFrame, stratify: bool) -> pl.DataFrame:
    """(category, stratum) from (category, groups) rows: strata numbered 0.. in the sorted order
    of the names, every category of a single group in one rare stratum; all 0 unstratified."""
    if not stratify:
        return counts.select("category", pl.lit(0, pl.UInt32).alias("stratum"))
    name = pl.when(pl.col("len") >= 2).then(pl.col("category")).otherwise(pl.lit(RARE))
    return counts.select("category", (name.rank("dense") - 1).cast(pl.UInt32).alias("stratum"))


_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def group_rank(numbers: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random 64-bit rank per group number: splitmix64 of number + seed, the same on every
    machine and library version (a bijection, so no two groups tie)."""
    z = numbers.astype(np.uint64) + np.uint64((seed + 1) * int(_GOLDEN) % 2**64)  # array arithmetic wraps
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _allocate(total: int, sizes: np.ndarray, room: np.ndarray) -> np.ndarray:
    """`total` spread over strata in proportion to `sizes` (largest remainders, ties to the lower
    stratum), at most `room` each."""
    whole = int(sizes.sum())
    share = np.minimum([total * int(s) // whole for s in sizes], room).astype(np.int64)
    remainder = np.array([total * int(s) % whole for s in sizes], dtype=np.int64)
    order = np.lexsort((np.arange(len(sizes)), -remainder))
    while share.sum() < total:  # one more each, in remainder order, to those with room left
        for i in order[share[order] < room[order]][: total - int(share.sum())]:
            share[i] += 1
    return share


@dataclass(frozen=True)
class Quota:
    """How many groups of each stratum go to valid and to test."""

    valid: np.ndarray
    test: np.ndarray
    stratified: bool

    @property
    def held(self) -> np.ndarray:
        return self.valid + self.test


def quota(groups_per_stratum: np.ndarray, cfg: SplitConfig, source: str) -> Quota:
    """Valid and test sizes (fractions of the groups, at least 1 each), spread over the strata."""
    n = int(groups_per_stratum.sum())
    if n < 3:
        raise InputError(source, f"only {n} distinct questions: too few to split three ways")
    n_valid = max(1, round(n * cfg.valid_fraction))
    n_test = max(1, round(n * cfg.test_fraction))
    if n_valid + n_test >= n:
        raise InputError(source, f"only {n} distinct questions: valid ({n_valid}) and test ({n_test}) leave none to train on")
    valid = _allocate(n_valid, groups_per_stratum, groups_per_stratum)
    test = _allocate(n_test, groups_per_stratum, groups_per_stratum - valid)
    return Quota(valid, test, len(groups_per_stratum) > 1)


def _held(strata: np.ndarray, ranks: np.ndarray, q: Quota) -> tuple[np.ndarray, np.ndarray]:
    """(indexes into strata/ranks of the groups kept as held out, their split: 1 valid, 2 test):
    in each stratum the lowest-ranked q.valid groups go to valid, the next q.test to test."""
    order = np.lexsort((ranks, strata))
    s = strata[order]
    start = np.searchsorted(s, np.arange(len(q.valid)))
    place = np.arange(len(order)) - start[s]
    held = place < q.held[s]
    return order[held], np.where(place[held] < q.valid[s[held]], 1, 2).astype(np.uint8)


def _report(q: Quota, n: int) -> dict:
    valid, test = int(q.valid.sum()), int(q.test.sum())
    return {"stratified": q.stratified, "questions": {"train": n - valid - test, "valid": valid, "test": test}}


def _check(cfg: SplitConfig, source: str) -> None:
    if not 0 < cfg.valid_fraction < 1 or not 0 < cfg.test_fraction < 1:
        raise InputError(source, "split fractions must lie strictly between 0 and 1")
    if cfg.valid_fraction + cfg.test_fraction >= 1:
        raise InputError(source, "valid_fraction + test_fraction must be below 1")


def _strata_and_quota(counts: list[pl.DataFrame], cfg: SplitConfig, source: str) -> tuple[pl.DataFrame, Quota]:
    """(category -> stratum table, the quota) from (category, len) group counts, summed."""
    counts = pl.concat(counts).group_by("category").agg(pl.col("len").sum())
    table = _stratum_of(counts, cfg.stratify)
    sizes = counts.join(table, on="category").group_by("stratum").agg(pl.col("len").sum()).sort("stratum")["len"]
    return table, quota(sizes.to_numpy().astype(np.int64) if len(sizes) else np.zeros(1, np.int64), cfg, source)


def _as_names(categories: pl.Expr) -> pl.Expr:
    return categories.cast(pl.String).fill_null("")  # the stage reads them as Categorical


def split_groups(categories: pl.Series, cfg: SplitConfig, source: str = "pairs") -> tuple[np.ndarray, dict]:
    """(split number per group: 0 train, 1 valid, 2 test; the report's `stratified` and
    `questions`), the groups numbered 0.. in order of first appearance, `categories` theirs."""
    cats = categories.to_frame("category").select(_as_names(pl.col("category")))
    table, q = _strata_and_quota([cats.group_by("category").len()], cfg, source)
    strata = cats.join(table, on="category", how="left", maintain_order="left")["stratum"].to_numpy()
    of_group = np.zeros(len(strata), dtype=np.uint8)
    index, split = _held(strata, group_rank(np.arange(len(strata)), cfg.seed), q)
    of_group[index] = split
    return of_group, _report(q, len(strata))


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


class _FirstSeen:
    """Which group values (uint32) have been seen: one bit each, so the memory is an eighth of a
    byte per possible value, not a set of the groups."""

    def __init__(self, top: int):
        self.bits = np.zeros(top // 8 + 1, dtype=np.uint8)

    def new(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The rows of `frame` that are their group's first (in the file so far), in order."""
        first = frame.filter(frame[GROUP].is_first_distinct())
        values = first[GROUP].to_numpy().astype(np.int64)
        byte, bit = values >> 3, (np.uint8(1) << (values & 7).astype(np.uint8))
        unseen = (self.bits[byte] & bit) == 0
        np.bitwise_or.at(self.bits, byte[unseen], bit[unseen])
        return first.filter(pl.Series(unseen))


def _group_starts(pairs: Path, top: int) -> Iterator[pl.DataFrame]:
    """(GROUP, category) of the first pair of each question group, in order of first appearance,
    a batch at a time."""
    seen = _FirstSeen(top)
    for _, frame in batches(pairs, [GROUP, "category"]):
        yield seen.new(frame).with_columns(_as_names(pl.col("category")))


def _held_groups(pairs: Path, top: int, cfg: SplitConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """(held-out group values, sorted; their split: 1 valid, 2 test; the report's stratified and
    questions), the same as split_groups on all groups, in memory that holds the held-out ones.

    A first pass counts each category's groups; a second ranks each group as split_groups does
    and keeps, per stratum, only the lowest-ranked ones its quota can take."""
    empty = pl.DataFrame(schema={"category": pl.String, "len": pl.UInt32})  # a file without rows
    table, q = _strata_and_quota([empty, *(starts.group_by("category").len() for starts in _group_starts(pairs, top))],
                                 cfg, str(pairs))
    keep = pl.Series(q.held)
    held, numbered, size = [], 0, 0
    for starts in _group_starts(pairs, top):
        ranks = group_rank(np.arange(numbered, numbered + starts.height), cfg.seed)
        numbered += starts.height
        part = starts.join(table, on="category", how="left", maintain_order="left")
        held.append(part.select(GROUP, "stratum", pl.Series("rank", ranks)))
        size += starts.height
        if size > 2 * int(q.held.sum()) + BATCH_ROWS:  # the lowest-ranked of each stratum, kept few
            held = [_lowest(pl.concat(held), keep)]
            size = held[0].height
    held = _lowest(pl.concat(held), keep)  # the quota has made sure of at least 3 groups
    index, split = _held(held["stratum"].to_numpy(), held["rank"].to_numpy(), q)
    values = held[GROUP].to_numpy()[index]
    order = np.argsort(values)
    return values[order], split[order], _report(q, numbered)


def _lowest(part: pl.DataFrame, keep: pl.Series) -> pl.DataFrame:
    """The rows of each stratum with the `keep[stratum]` lowest ranks."""
    return part.sort("stratum", "rank").filter(pl.int_range(pl.len()).over("stratum") < pl.lit(keep).gather(pl.col("stratum")))


def split_file(pairs: Path, out_dir: Path, cfg: SplitConfig) -> dict:
    """Split a table with dedup's GROUP column into out_dir/{train,valid,test}.parquet; the report.

    The same splits as assign_splits, in memory that holds one batch, a bit per group value and
    the held-out groups: two passes over (GROUP, category) choose the held-out groups, and a
    third writes each batch's rows to their split's file."""
    _check(cfg, str(pairs))
    top = _top_group(pairs)
    values, split, report = _held_groups(pairs, top, cfg)
    columns = [c for c in pl.read_parquet_schema(pairs) if c != GROUP]
    names = pl.Series("split", SPLITS, dtype=pl.Enum(SPLITS))
    counts = []
    with appenders({n: out_dir / f"{n}.parquet" for n in SPLITS}, pl.read_parquet(pairs, columns=columns, n_rows=0)) as out:
        for _, frame in batches(pairs, columns + [GROUP]):
            group = frame[GROUP].to_numpy()
            at = np.minimum(np.searchsorted(values, group), len(values) - 1)  # the quota holds out >= 2 groups
            of_row = np.where(values[at] == group, split[at], 0)
            labels = names.gather(of_row)
            counts.append(frame.select(labels, "category").group_by("split", "category").len())
            for name in SPLITS:
                out[name].add(frame.filter(labels == name).drop(GROUP))
    return {**report, **pair_report(pl.concat(counts))}


def _top_group(pairs: Path) -> int:
    """The largest group value (0 for an empty table); a null group is an InputError."""
    stats = pl.scan_parquet(pairs).select(pl.col(GROUP).max().alias("top"), pl.col(GROUP).null_count().alias("nulls")).collect()
    if stats["nulls"][0]:
        raise InputError(pairs, f"{stats['nulls'][0]} rows without a {GROUP}: rerun dedup")
    return int(stats["top"][0] or 0)


def split_pairs(df: pl.DataFrame, cfg: SplitConfig, source: str = "pairs"):
    """Return ({split: frame}, report dict)."""
    labels, report = assign_splits(df, cfg, source)
    return {name: df.filter(labels == name).drop(GROUP, strict=False) for name in SPLITS}, report
