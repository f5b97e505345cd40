"""The split rule (hash-ranked groups, stratified quotas) and its streaming form: split_file gives
the splits assign_splits gives on the whole table, in memory that holds the held-out groups."""

import random

import numpy as np
import polars as pl
import pytest

import chitchat.data.split as split_mod
from chitchat.core.errors import InputError
from chitchat.core.parquet_stream import batches
from chitchat.data.dedup import GROUP
from chitchat.data.split import SPLITS, SplitConfig, _allocate, assign_splits, group_rank, split_file, split_groups


def _splitmix64(x: int) -> int:  # the published reference, in Python integers
    m = 2**64 - 1
    z = (x + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


@pytest.mark.parametrize("seed", [0, 13, -1, 2**40 + 7])
def test_group_rank_is_splitmix64_of_number_plus_seed(seed):
    numbers = np.array([0, 1, 2, 12345, 2**32 - 1], dtype=np.uint32)
    golden = 0x9E3779B97F4A7C15
    want = [_splitmix64((int(n) + seed * golden) % 2**64) for n in numbers]
    assert group_rank(numbers, seed).tolist() == want


def test_allocate_spreads_by_largest_remainder_within_room():
    rng = random.Random(3)
    for _ in range(300):
        sizes = np.array([rng.randint(1, 50) for _ in range(rng.randint(1, 8))], dtype=np.int64)
        room = np.array([rng.randint(0, int(s)) for s in sizes], dtype=np.int64)
        total = rng.randint(0, int(room.sum()))
        got = _allocate(total, sizes, room)
        assert got.sum() == total and (got <= room).all() and (got >= 0).all()
        quota = total * sizes / sizes.sum()
        assert (got >= np.minimum(np.floor(quota), room)).all()
        if (room >= np.ceil(quota)).all():  # no stratum full: each within one of its share
            assert (got <= np.ceil(quota)).all()
    assert _allocate(3, np.array([10, 10, 10]), np.array([10, 10, 10])).tolist() == [1, 1, 1]
    assert _allocate(2, np.array([10, 10, 10]), np.array([10, 10, 10])).tolist() == [1, 1, 0]  # ties: lower stratum


def test_each_stratum_holds_out_its_lowest_ranked_groups():
    rng = random.Random(1)
    cats = pl.Series([rng.choice("абвгд") for _ in range(997)] + ["один"])
    cfg = SplitConfig(0.1, 0.05, seed=4)
    of_group, report = split_groups(cats, cfg)
    ranks = group_rank(np.arange(len(cats)), cfg.seed)
    for name in set(cats):
        mine = np.flatnonzero((cats == name).to_numpy()) if name != "один" else None
        if mine is None:
            continue
        by_rank = mine[np.argsort(ranks[mine])]
        got = of_group[by_rank]
        n_valid, n_test = int((got == 1).sum()), int((got == 2).sum())
        assert (got[:n_valid] == 1).all() and (got[n_valid:n_valid + n_test] == 2).all() and (got[n_valid + n_test:] == 0).all()
        assert abs(n_valid - 0.1 * len(mine)) <= 1 and abs(n_test - 0.05 * len(mine)) <= 1
    assert report["questions"] == {"valid": 100, "test": 50, "train": 848} and report["stratified"]


def _grouped(seed: int, n: int = 3000) -> pl.DataFrame:
    """Pairs with a GROUP column as dedup writes it (a group's value is a row of its first pair, a
    question's answers adjacent, groups coming back later), categories with singletons."""
    rng = random.Random(seed)
    rows, groups = [], []
    while len(rows) < n:
        g = rng.choice(groups) if groups and rng.random() < 0.3 else len(rows)
        if g == len(rows):
            groups.append(g)
        cat = rng.choice(["Юмор", "Спорт", "Авто", "Еда", f"редкая {g}"]) if rng.random() < 0.9 else "Юмор"
        for _ in range(rng.randint(1, 4)):
            rows.append((g, cat, f"ответ {len(rows)}"))
    return pl.DataFrame(rows, schema={GROUP: pl.UInt32, "category": pl.String, "answer": pl.String}, orient="row")


@pytest.mark.parametrize("seed, valid, test, stratify", [
    (0, 0.1, 0.1, True), (1, 0.01, 0.02, True), (2, 0.03, 0.02, False), (3, 0.05, 0.05, True), (4, 0.3, 0.2, True),
])
def test_split_file_equals_assign_splits_in_small_batches(tmp_path, monkeypatch, seed, valid, test, stratify):
    df = _grouped(seed)
    cfg = SplitConfig(valid, test, seed=seed, stratify=stratify)
    labels, want = assign_splits(df, cfg)
    path = tmp_path / "pairs.parquet"
    df.write_parquet(path, row_group_size=100)
    sizes = []
    real_lowest = split_mod._lowest
    monkeypatch.setattr(split_mod, "batches", lambda p, c: batches(p, c, rows=97))
    monkeypatch.setattr(split_mod, "BATCH_ROWS", 97)
    monkeypatch.setattr(split_mod, "_lowest", lambda part, keep: sizes.append(part.height) or real_lowest(part, keep))
    got = split_file(path, tmp_path / "split", cfg)
    assert got == want
    for name in SPLITS:
        part = pl.read_parquet(tmp_path / "split" / f"{name}.parquet")
        assert part.equals(df.filter(labels == name).drop(GROUP))
    held = sum(want["questions"][n] for n in ("valid", "test"))
    assert max(sizes) <= 2 * held + 2 * 97  # the held-out candidates stay few
    if sum(want["questions"].values()) > 2 * held + 2 * 97:
        assert len(sizes) > 1  # and were cut down on the way


def test_split_file_refuses_rows_without_a_group(tmp_path):
    df = _grouped(0, 50).with_columns(pl.when(pl.int_range(pl.len()) == 7).then(None).otherwise(pl.col(GROUP)).alias(GROUP))
    df.write_parquet(tmp_path / "pairs.parquet")
    with pytest.raises(InputError, match="without a group"):
        split_file(tmp_path / "pairs.parquet", tmp_path / "split", SplitConfig())


def test_too_few_questions_to_leave_any_for_train():
    with pytest.raises(InputError, match="leave none to train"):
        split_groups(pl.Series(["a", "a", "b"]), SplitConfig(0.5, 0.4))
