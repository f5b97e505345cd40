"""Dedup in memory that does not grow with the input: the same kept rows as kept_rows on the whole
table, for any number of buckets.

1. The pairs are scattered into buckets by a hash of their question's letter set (bucket_key):
   every equivalence a rule uses (equal text, equal near key under any subset of the near rules,
   equal match key) keeps that set, so each group of rows a rule compares lies in one bucket, and
   kept_rows run on one bucket at a time keeps exactly the rows it keeps on the whole table.
2. The per-first-phrase cap compares questions across buckets: the kept rows go through a second
   partition, by their first phrase's key, where each phrase's questions are all together.
3. The kept rows are written out in input order, a range of rows at a time.

A bucket holds the key columns of about 1/P of the pairs; every other step holds one batch.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from chitchat.core.parquet_stream import Appender, batches, row_count
from chitchat.data.dedup import GROUP, DedupConfig, DedupReport, kept_rows, phrase_over_cap
from chitchat.data.dedup_keys import lower_yo_series
from chitchat.data.row_groups import value_runs

KEPT_ROW_GROUP = 1 << 16  # row groups of the kept-row files: what the ordered write reads at a time
# Peak RSS of kept_rows per byte of its input's question and answer text (parquet's uncompressed
# size), measured on benchmarks/data_stages.py dumps; the bucket count is chosen from it.
MEMORY_PER_TEXT_BYTE = 6.0
BASE_MB = 350  # the interpreter, polars and the batch buffers


# The letters bucket_key looks for: Russian and Latin ones of middle frequency (those nearly every
# question holds tell questions apart no better than those hardly any holds), one pass each. 32 of
# them spread a million questions over 19 buckets within 10% of even; the rest of a question does
# not choose its bucket.
_KEY_CHARS = "бгзчйхжшюцщэфяыьпудмbcdfgkmpuvwy"
SKEW = 1.2  # the largest bucket against the mean, allowed for when the count is chosen


def bucket_key(questions: pl.Series) -> pl.Series:
    """A 64-bit hash per question of which of _KEY_CHARS it holds after lower_yo.

    Case folding, ё→е, dropping punctuation or spaces, collapsing repeated characters and the
    match key all keep that set, so questions any rule calls equal share it. The set is looked up
    once per run of one question (the answers of a record are adjacent).
    """
    first, run = value_runs(questions)
    lower = lower_yo_series(questions.filter(first)).to_frame("t").lazy()
    mask = lower.select(pl.sum_horizontal(pl.col("t").str.contains(c, literal=True).cast(pl.UInt64)
                                          * pl.lit(1 << i, pl.UInt64) for i, c in enumerate(_KEY_CHARS)))
    return mask.collect().to_series().hash(7).gather(run)


def bucket_count(pairs: Path, memory_mb: int) -> int:
    """How many buckets keep kept_rows of one within `memory_mb`: 1 when the whole table fits."""
    meta = pq.ParquetFile(pairs).metadata
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    text = [i for i, name in enumerate(names) if name in ("question", "answer")]
    size = sum(meta.row_group(g).column(i).total_uncompressed_size for g in range(meta.num_row_groups) for i in text)
    room = max(memory_mb - BASE_MB, 64) * 2**20
    need = int(size * MEMORY_PER_TEXT_BYTE)
    return 1 if need <= room else -(-int(need * SKEW) // int(room))


class _Scatter:
    """Scratch parquet files 0..n-1 in `folder`, appended to by bucket number; a bucket never
    written has no file."""

    def __init__(self, folder: Path, stack: ExitStack):
        self.folder, self.stack, self.writers = folder, stack, {}
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, frame: pl.DataFrame, bucket: pl.Series) -> None:
        for (b,), part in frame.with_columns(bucket.alias("_b")).partition_by("_b", as_dict=True).items():
            if b not in self.writers:
                self.writers[b] = Appender(self.folder / f"{b}.parquet", self.stack, atomic=False,
                                           compression="none", compression_level=None)  # scratch: read once, soon
            self.writers[b].add(part.drop("_b"))

    def files(self) -> list[Path]:
        return [self.folder / f"{b}.parquet" for b in sorted(self.writers)]


def _scatter_pairs(pairs: Path, columns: list[str], folder: Path, n: int) -> list[Path]:
    """The key columns of `pairs` with their row number `_row`, in n buckets by bucket_key; each
    bucket's rows stay in input order."""
    with ExitStack() as stack:
        out = _Scatter(folder, stack)
        for start, frame in batches(pairs, columns):
            frame = frame.with_columns(pl.int_range(start, start + frame.height, dtype=pl.UInt32).alias("_row"))
            out.add(frame, bucket_key(frame["question"]) % n)
    return out.files()


def _add(total: dict[str, int], part: dict[str, int]) -> None:
    for name, n in part.items():
        total[name] = total.get(name, 0) + n


def _write_kept(kept: pl.DataFrame, path: Path) -> Path:
    """Kept (_row, group), ascending by row, in small row groups: the ordered write reads a range."""
    kept.select("_row", GROUP).write_parquet(path, row_group_size=KEPT_ROW_GROUP)
    return path


def _dedup_buckets(files: list[Path], cfg: DedupConfig, folder: Path, n: int,
                   removed: dict[str, int]) -> list[Path]:
    """kept_rows on each bucket, its rows and groups turned into the whole table's; the kept rows
    are written by first-phrase bucket when that cap is on (with qid and phrase), else one file
    per bucket (kept_rows keeps them ascending, and a bucket's rows are in input order)."""
    folder.mkdir(parents=True, exist_ok=True)
    kept_files = []
    with ExitStack() as stack:
        out = _Scatter(folder, stack)
        for i, path in enumerate(files):
            bucket = pl.read_parquet(path)
            kept, report = kept_rows(bucket.drop("_row"), cfg, defer_phrase_cap=True)
            _add(removed, report.removed)
            rows = bucket["_row"]
            del bucket
            kept = kept.with_columns(rows.gather(kept["_row"]).alias("_row"), rows.gather(kept[GROUP]).alias(GROUP))
            if cfg.max_per_first_phrase > 0:
                out.add(kept, kept["phrase"].hash(11) % n)
            else:
                kept_files.append(_write_kept(kept, folder / f"kept{i}.parquet"))
    return out.files() if cfg.max_per_first_phrase > 0 else kept_files


def _phrase_cap(files: list[Path], cfg: DedupConfig, folder: Path, removed: dict[str, int]) -> tuple[list[Path], int]:
    """The first-phrase cap on each phrase bucket; the kept (_row, group), sorted, one file each."""
    folder.mkdir(parents=True, exist_ok=True)
    over_total, capped, out = 0, 0, []
    for i, path in enumerate(files):
        rows = pl.read_parquet(path)
        over, n_capped = phrase_over_cap(rows, cfg.max_per_first_phrase)
        over_total, capped = over_total + int(over.sum()), capped + n_capped
        out.append(_write_kept(rows.filter(~over).sort("_row"), folder / f"{i}.parquet"))
    removed["over_max_per_first_phrase"] = over_total
    return out, capped


class _KeptCursor:
    """A kept-row file (ascending _row) read forward a row group at a time: `take(end)` hands out
    its rows with _row below `end`. The ordered write keeps one cursor per file, so every file is
    read once in all, whatever the number of batches."""

    def __init__(self, path: Path, stack: ExitStack):
        self.file = stack.enter_context(pq.ParquetFile(path))
        self.buffer, self.next_group = pl.from_arrow(self.file.schema_arrow.empty_table()), 0

    def take(self, end: int) -> pl.DataFrame:
        while (self.buffer.is_empty() or self.buffer["_row"][-1] < end) and self.next_group < self.file.num_row_groups:
            self.buffer = pl.concat([self.buffer, pl.from_arrow(self.file.read_row_group(self.next_group))])
            self.next_group += 1
        n = self.buffer["_row"].search_sorted(end)
        taken, self.buffer = self.buffer.head(n), self.buffer.slice(n)
        return taken


def _write_in_order(pairs: Path, kept: list[Path], out: Path, columns: list[str]) -> None:
    """The kept rows of `pairs` (its `columns`, then GROUP), in input order, a batch at a time."""
    with ExitStack() as stack:
        cursors = [_KeptCursor(k, stack) for k in kept]
        writer = Appender(out, stack)
        for start, frame in batches(pairs, columns):
            picked = pl.concat([c.take(start + frame.height) for c in cursors]).sort("_row")
            writer.add(frame.gather(picked["_row"] - start).with_columns(picked[GROUP]))
        writer.close(pl.read_parquet(pairs, columns=columns, n_rows=0).with_columns(pl.lit(None, pl.UInt32).alias(GROUP)))


def dedup_file(pairs: Path, out: Path, cfg: DedupConfig, buckets: int, key_columns: list[str],
               columns: list[str]) -> DedupReport:
    """Dedup `pairs` into `out` through `buckets` buckets (scratch files beside `out`, removed at
    the end, and at the start when a killed run left them); `key_columns` are what the rules
    read, `columns` what `out` keeps, then GROUP."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.buckets.*"):  # a killed run's scratch (DVC runs one at a time)
        shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.buckets.", dir=out.parent))
    try:
        rows_in = row_count(pairs)
        files = _scatter_pairs(pairs, key_columns, scratch / "pairs", buckets)
        removed: dict[str, int] = {}
        kept = _dedup_buckets(files, cfg, scratch / "kept", buckets, removed)
        capped = 0
        if cfg.max_per_first_phrase > 0:
            kept, capped = _phrase_cap(kept, cfg, scratch / "capped", removed)
        _write_in_order(pairs, kept, out, columns)
        rows_out = sum(row_count(k) for k in kept)
        return DedupReport(rows_in, rows_out, removed, capped)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
