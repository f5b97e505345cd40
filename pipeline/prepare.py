"""Stage prepare: read every input (QA dump, TSV pairs, dialogues), normalize, filter, write parquet.

Streaming: the inputs are read a chunk at a time, each chunk is filtered at once, and polars sinks
the kept pairs to parquet as they come, so memory holds a few chunks whatever the size of the dump.
"""

import chitchat.core.batch_memory  # noqa: F401  first: it sets polars' allocator up before polars loads

import threading
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import polars as pl
import typer
from polars.io.plugins import register_io_source
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from chitchat.data.filters import FilterConfig, apply_filters
from chitchat.data.parallel import PARSE_WORKERS
from chitchat.data.sources import CONDITION_FIELDS, PAIR_SCHEMA, iter_pair_chunks, parse_inputs
from chitchat.core.errors import InputError
from chitchat.core.io import PARQUET, atomic_path, config_from, load_params, section, write_json
from chitchat.core.stage import run_stage, stage_errors

app = typer.Typer(add_completion=False)
READER_PARAMS = ("inputs", "lowercase", "yo_to_e", "missing_category", "max_history", "condition_field")


class ChunkTally:
    """The metrics of one chunk's kept pairs, taken on the thread that filtered it."""

    def __init__(self, kept: pl.DataFrame, dropped: dict[str, int]) -> None:
        self.kept, self.dropped = kept.height, dropped
        self.questions = kept["qid"].n_unique()  # a question never spans two chunks
        self.per_source = dict(kept.group_by("source").len().iter_rows())
        self.categories = set(kept["category"].unique().to_list())


def filter_chunk(cfg: FilterConfig) -> Callable[[pl.DataFrame], tuple[pl.DataFrame, ChunkTally]]:
    """The `finish` of iter_pair_chunks: filter a chunk's pairs and tally what is kept."""
    def finish(pairs: pl.DataFrame) -> tuple[pl.DataFrame, ChunkTally]:
        kept, dropped = apply_filters(pairs, cfg)
        return kept, ChunkTally(kept, dropped)
    return finish


class Tally:
    """The metrics of the kept pairs, gathered chunk by chunk."""

    def __init__(self) -> None:
        self.pairs_in, self.pairs_out, self.questions = 0, 0, 0
        self.dropped: Counter = Counter()
        self.per_source: Counter = Counter()
        self.categories: set[str] = set()

    def add(self, pairs_read: int, chunk: ChunkTally) -> None:
        self.pairs_in += pairs_read
        self.pairs_out += chunk.kept
        self.questions += chunk.questions
        self.dropped.update(chunk.dropped)
        self.per_source.update(chunk.per_source)
        self.categories.update(chunk.categories)


def sink_interruptibly(source: pl.LazyFrame, path: Path, stop: threading.Event) -> None:
    """`source.sink_parquet(path)` in a thread: Ctrl-C reaches only a main thread that runs Python,
    so this one waits in short joins; on Ctrl-C it sets `stop`, which the source checks per chunk."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            source.sink_parquet(path, **PARQUET)
        except BaseException as exc:  # noqa: BLE001 - raised again in the main thread
            failure.append(exc)

    worker = threading.Thread(target=run, name="chitchat-sink")
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        worker.join()
        raise
    if failure:
        raise failure[0]


@app.command()
def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    out: Path = typer.Option(Path("data/prepared/pairs.parquet"), help="filtered pairs"),
    metrics: Path = typer.Option(Path("metrics/prepare.json"), help="counts per reason"),
) -> None:
    """Read the inputs into (question, answer) pairs with a `source` column, normalize and filter them."""
    with stage_errors("prepare"):
        p = section(load_params(params), "prepare", params)
        if "input" in p:
            raise ValueError("prepare.input is now prepare.inputs, a list (see params.yaml)")
        specs = parse_inputs(p.get("inputs"))
        max_history = int(p.get("max_history", 0))
        if max_history < 0:
            raise ValueError(f"prepare.max_history must be >= 0, got {max_history}")
        condition_field = str(p.get("condition_field", "category"))
        if condition_field not in CONDITION_FIELDS:
            raise ValueError(f"prepare.condition_field must be one of {', '.join(CONDITION_FIELDS)}, "
                             f"got {condition_field!r}")
        cfg = config_from(FilterConfig, p, "prepare", ignore=READER_PARAMS)
        reports: dict = {}
        tally = Tally()
        # transient: gone when done (and silent in logs), so an error stays the only line on stderr
        bar = Progress(SpinnerColumn(), TextColumn("prepare: {task.completed:,} pairs read"), TimeElapsedColumn(),
                       console=Console(stderr=True), transient=True)
        task = bar.add_task("prepare", total=None)
        stop = threading.Event()

        def kept_pairs(*_ignored) -> Iterator[pl.DataFrame]:
            """The polars source: chunks filtered (several at once), tallied on the way to the parquet sink."""
            for kept, pairs_read, chunk in iter_pair_chunks(
                    specs, p.get("lowercase", False), p.get("yo_to_e", False), p.get("missing_category", "Без категории"),
                    max_history, reports, condition_field, finish=filter_chunk(cfg), workers=PARSE_WORKERS):
                if stop.is_set():
                    raise KeyboardInterrupt
                tally.add(pairs_read, chunk)
                bar.update(task, completed=tally.pairs_in)
                yield kept

        with bar, atomic_path(out) as tmp:
            sink_interruptibly(register_io_source(kept_pairs, schema=PAIR_SCHEMA), tmp, stop)
            if tally.pairs_out == 0:  # inside the block: the temporary file goes, nothing is written
                raise InputError(specs[0].path, f"no pairs left after filtering ({tally.pairs_in} read)")
        write_json(metrics, {
            "inputs": [{k: v for k, v in vars(s).items() if v is not None} for s in specs],
            "condition_field": condition_field,
            "read": {name: report.as_dict() for name, report in reports.items()},
            "pairs_in": tally.pairs_in,
            "pairs_out": tally.pairs_out,
            "pairs_out_per_source": dict(sorted(tally.per_source.items())),
            "pairs_dropped": dict(sorted(tally.dropped.items())),
            "pairs_dropped_total": tally.pairs_in - tally.pairs_out,
            "questions_out": tally.questions,
            "categories_out": len(tally.categories),
        })
        records = sum(r.records_ok for r in reports.values())
        typer.echo(f"prepare: {records} records -> {tally.pairs_in} pairs -> {tally.pairs_out} kept", err=True)


if __name__ == "__main__":
    run_stage(app)
