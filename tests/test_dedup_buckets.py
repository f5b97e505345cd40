"""Dedup in buckets (bounded memory) keeps exactly the rows, groups and counts of dedup on the whole
table, for any number of buckets; the split reads what it writes."""

import json
import random
import subprocess
import sys
from contextlib import ExitStack

import polars as pl
import pytest
import yaml

from chitchat.core.parquet_stream import appenders, batches
from chitchat.data.dedup import GROUP, DedupConfig, kept_rows, kept_with_group
from chitchat.data.dedup_buckets import bucket_count, bucket_key, dedup_file
from chitchat.data.dedup_keys import NEAR_RULES, NearKeyConfig
from chitchat.data.normalize import match_key
from conftest import REPO
from test_dedup_rules import fuzz_table, fuzz_texts

HOSTILE = ["ΟΔΟΣ ΣΟΣ", "Σ Σ", "ꟓꟕ да", "İstanbul", "K\u212a", "Straße", "ǅ", "ﬁ", "да аа", "дааа", "Ё-моё!!!",
           "не_знаю", "١٢٣", "x\u0301y", "ПРИВЕТ, МИР", "   ", ""]


@pytest.mark.parametrize("mask", range(32))
def test_every_rule_and_the_match_key_keep_the_bucket(mask):
    """bucket_key(text) == bucket_key(rules(text)) for every subset of the near rules and for the
    match key: texts any rule calls equal land in one bucket."""
    texts = pl.concat([fuzz_texts(3000, seed=mask), pl.Series(HOSTILE, dtype=pl.String)])
    keyed = texts
    for i, name in enumerate(NEAR_RULES):
        if mask >> i & 1:
            keyed = NEAR_RULES[name](keyed)
    assert (bucket_key(texts) == bucket_key(keyed)).all()
    matched = texts.to_frame("t").select(match_key(pl.col("t"))).to_series()
    assert (bucket_key(texts) == bucket_key(matched)).all()


def test_bucket_key_spreads_questions():
    import random

    rng = random.Random(1)
    words = ["".join(rng.choice("абвгдежзийклмнопрстуфхцчшщьыэюя") for _ in range(rng.randint(2, 8))) for _ in range(500)]
    texts = pl.Series([" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) + "?" for _ in range(4000)])
    keys = bucket_key(texts)
    assert keys.n_unique() > 3900
    counts = (keys % 8).value_counts()["count"]
    assert counts.len() == 8 and counts.max() < 2 * counts.min()


def _pairs_file(tmp_path, seed):
    df = fuzz_table(n=2500, seed=seed)
    df = df.with_columns(pl.lit("Юмор").alias("category"), pl.int_range(pl.len(), dtype=pl.UInt32).alias("line"))
    path = tmp_path / "pairs.parquet"
    df.write_parquet(path, row_group_size=300)
    return path, df


@pytest.mark.parametrize("seed, near_mask, exact, aeq, per_q, per_phrase", [
    (0, 31, True, True, 2, 3), (1, 31, False, True, 0, 2), (2, 0, True, True, 1, 0), (3, 15, True, False, 3, 1),
    (4, 27, False, False, 0, 0), (5, 23, True, True, 0, 4),
])
@pytest.mark.parametrize("buckets", [2, 7])
def test_buckets_keep_exactly_what_the_whole_table_keeps(tmp_path, seed, near_mask, exact, aeq, per_q, per_phrase, buckets):
    cfg = DedupConfig(exact=exact, answer_equals_question=aeq, max_per_question=per_q, max_per_first_phrase=per_phrase,
                      near=NearKeyConfig(**{r: bool(near_mask >> i & 1) for i, r in enumerate(NEAR_RULES)}))
    path, df = _pairs_file(tmp_path, seed)
    kept, want = kept_rows(df.select("qid", "question", "answer"), cfg)
    expected = kept_with_group(df, kept).collect()
    out = tmp_path / "out.parquet"
    (tmp_path / ".out.parquet.buckets.killed" / "pairs").mkdir(parents=True)  # what kill -9 leaves
    report = dedup_file(path, out, cfg, buckets, ["qid", "question", "answer"], df.columns)
    got = pl.read_parquet(out)
    assert got.equals(expected) and got.schema == expected.schema
    assert report.as_dict() == want.as_dict()
    assert list(report.removed) == list(want.removed)  # the rules' order, as metrics show it
    assert report.pairs_out < report.pairs_in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet", "pairs.parquet"]  # scratch removed


def test_bucket_count_follows_the_text_size_and_the_budget(tmp_path):
    path, _ = _pairs_file(tmp_path, 0)
    assert bucket_count(path, 2500) == 1
    big = pl.DataFrame({"question": [f"вопрос {i} " * 20 for i in range(100_000)],
                        "answer": [f"ответ {i} " * 20 for i in range(100_000)]})
    big.write_parquet(tmp_path / "big.parquet")
    small, large = bucket_count(tmp_path / "big.parquet", 512), bucket_count(tmp_path / "big.parquet", 4096)
    assert small > large >= 1 and small >= 2


@pytest.mark.parametrize("value", [100, "big", True, 1.5])
def test_memory_param_is_checked(value):
    with pytest.raises(ValueError, match="dedup.memory_mb"):
        DedupConfig(memory_mb=value)


def _run(stage, *args):
    return subprocess.run([sys.executable, str(REPO / "pipeline" / f"{stage}.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO)


def test_the_stage_gives_one_output_for_any_bucket_count_and_split_reads_it(tmp_path):
    path, _ = _pairs_file(tmp_path, 3)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["split"].update(valid_fraction=0.1, test_fraction=0.1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    outs = {}
    for n in (1, 5):
        proc = _run("dedup", "--params", tmp_path / "params.yaml", "--pairs", path, "--out", tmp_path / f"d{n}.parquet",
                    "--metrics", tmp_path / f"d{n}.json", "--buckets", n)
        assert proc.returncode == 0, proc.stderr
        outs[n] = pl.read_parquet(tmp_path / f"d{n}.parquet")
    assert outs[1].equals(outs[5]) and outs[1].height > 100
    assert json.loads((tmp_path / "d1.json").read_text()) == json.loads((tmp_path / "d5.json").read_text())
    proc = _run("split", "--params", tmp_path / "params.yaml", "--pairs", tmp_path / "d5.parquet",
                "--out-dir", tmp_path / "split", "--metrics", tmp_path / "split.json")
    assert proc.returncode == 0, proc.stderr
    parts = {n: pl.read_parquet(tmp_path / "split" / f"{n}.parquet") for n in ("train", "valid", "test")}
    assert sum(p.height for p in parts.values()) == outs[1].height
    assert all(GROUP not in p.columns for p in parts.values())
    groups = {n: set(outs[1].join(p.select("line"), on="line")[GROUP]) for n, p in parts.items()}
    assert not (groups["train"] & groups["valid"]) and not (groups["train"] & groups["test"])
    report = json.loads((tmp_path / "split.json").read_text())
    assert report["pairs"] == {n: p.height for n, p in parts.items()}


def test_batches_cover_the_file_in_order_and_appenders_write_whole_files(tmp_path):
    df = pl.DataFrame({"a": range(1000), "b": [str(i) for i in range(1000)]})
    df.write_parquet(tmp_path / "t.parquet", row_group_size=64)
    got = list(batches(tmp_path / "t.parquet", ["a", "b"], rows=300))
    assert [s for s, _ in got] == [0, 300, 600, 900] and pl.concat(f for _, f in got).equals(df)
    with appenders({"even": tmp_path / "even.parquet", "none": tmp_path / "none.parquet"}, df) as out:
        for _, frame in got:
            out["even"].add(frame.filter(pl.col("a") % 2 == 0))
    assert pl.read_parquet(tmp_path / "even.parquet").equals(df.filter(pl.col("a") % 2 == 0))
    empty = pl.read_parquet(tmp_path / "none.parquet")
    assert empty.height == 0 and empty.schema == df.schema
    with pytest.raises(RuntimeError):
        with appenders({"x": tmp_path / "x.parquet"}, df) as out:
            out["x"].add(df)
            raise RuntimeError("interrupted")
    assert not (tmp_path / "x.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["even.parquet", "none.parquet", "t.parquet"]


@pytest.mark.parametrize("stage, flag", [("dedup", "--out"), ("split", "--out-dir")])
@pytest.mark.parametrize("content", [None, b"PAR1 not really parquet"])
def test_a_missing_or_corrupt_input_table_is_one_line(tmp_path, stage, flag, content):
    pairs = tmp_path / "pairs.parquet"
    if content is not None:
        pairs.write_bytes(content)
    proc = _run(stage, "--pairs", pairs, flag, tmp_path / "out", "--metrics", tmp_path / "m.json")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{stage}: error: {pairs}"), proc.stderr
    assert ("not found" if content is None else "not a readable parquet table") in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.json").exists()


def test_the_ordered_write_reads_each_kept_file_forward_once(tmp_path, monkeypatch):
    """A cursor hands out a kept file's rows below each batch end, in order, and reads every row
    group once however many batches ask (the write used to scan every file for every batch)."""
    import pyarrow.parquet as pq

    from chitchat.data import dedup_buckets

    monkeypatch.setattr(dedup_buckets, "KEPT_ROW_GROUP", 10)
    rows = pl.DataFrame({"_row": sorted(random.Random(2).sample(range(1000), 137)), GROUP: range(137)},
                        schema={"_row": pl.UInt32, GROUP: pl.UInt32})
    path = dedup_buckets._write_kept(rows, tmp_path / "kept.parquet")
    reads = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, i, *a, **k: reads.append(i) or real(self, i, *a, **k))
    with ExitStack() as stack:
        cursor = dedup_buckets._KeptCursor(path, stack)
        parts = [(end, cursor.take(end)) for end in range(7, 1008, 7)]
    assert pl.concat([p for _, p in parts]).equals(rows)
    assert all(p["_row"].is_between(end - 7, end, closed="left").all() for end, p in parts)
    assert reads == list(range(14))  # 137 rows in row groups of 10, each read once, in order
