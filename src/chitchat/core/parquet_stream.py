"""Parquet in batches: read a file a slice of rows at a time, append frames to a file that appears
only when it is complete. What lets a data stage hold one batch instead of the whole table.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import polars as pl
import pyarrow.parquet as pq

from chitchat.core.errors import InputError
from chitchat.core.io import PARQUET, atomic_path

# Rows per batch. A batch of the dump's pairs is some 30 MB of text; a quarter of a million rows
# keeps the batch stages near 0.4 GB, where a million took 0.9 GB (benchmarks/data_stages.py).
BATCH_ROWS = 1 << 18


def table_schema(path: Path) -> pl.Schema:
    """The schema of a stage's input table; a missing or unreadable file is an InputError."""
    if not Path(path).is_file():
        raise InputError(path, "not found: run the stage that writes it first (dvc repro)")
    try:
        return pl.read_parquet_schema(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(path, f"not a readable parquet table ({type(exc).__name__})") from None


def row_count(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def batches(path: Path, columns: list[str], rows: int = BATCH_ROWS) -> Iterator[tuple[int, pl.DataFrame]]:
    """(first row, frame) over a parquet file, `rows` rows at a time, in order. Polars reads only
    the row groups of each slice (pyarrow's iter_batches reads far ahead: 0.9 GB on a
    million-question table where this holds 0.3)."""
    for start in range(0, row_count(path), rows):
        yield start, pl.scan_parquet(path).select(columns).slice(start, rows).collect()


class Appender:
    """Frames appended to one parquet file, each a row group or more, with the stages' compression.
    The schema is the first frame's; `close` with no frame written writes `empty`'s schema.

    A frame is encoded and written on a thread of its own while the caller makes the next one
    (pyarrow releases the GIL there): at most one write is in flight, so two batches are alive.
    """

    def __init__(self, path: Path, stack: ExitStack, atomic: bool = True, **options):
        self.path = stack.enter_context(atomic_path(path)) if atomic else path
        self.stack, self.options, self.writer, self.pending = stack, {**PARQUET, **options}, None, None

    def add(self, frame: pl.DataFrame) -> None:
        table = frame.to_arrow()
        if self.writer is None:
            self.writer = self.stack.enter_context(pq.ParquetWriter(self.path, table.schema, **self.options))
            pool = self.stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="chitchat-parquet"))
            self.stack.callback(self.wait)  # runs first on exit: the last write ends before the file closes
            self.submit = lambda t: pool.submit(self.writer.write_table, t)
        self.wait()
        self.pending = self.submit(table)

    def wait(self) -> None:
        """Wait for the write in flight; its error, if any, is raised here."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def close(self, empty: pl.DataFrame) -> None:
        """Finish the file: an empty table of `empty`'s columns when nothing was added."""
        self.wait()
        if self.writer is None:
            empty.clear().write_parquet(self.path)


@contextlib.contextmanager
def appenders(paths: dict[str, Path], empty: pl.DataFrame) -> Iterator[dict[str, Appender]]:
    """An Appender per name; each file appears when the block succeeds, none if it fails."""
    with ExitStack() as stack:
        out = {name: Appender(path, stack) for name, path in paths.items()}
        yield out
        for appender in out.values():
            appender.close(empty)
