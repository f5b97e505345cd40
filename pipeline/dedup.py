"""Stage dedup: drop exact and near duplicates, answers that repeat the question; cap per question
and per first phrase. The kept pairs get a `group` column: pairs whose questions share the match key
share it, and split assigns whole groups."""

import chitchat.core.batch_memory  # noqa: F401  first: it sets polars' allocator up before polars loads

from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from chitchat.data.dedup import GROUP, KEY_COLUMNS, DedupConfig, DedupReport, dedup_config, kept_rows, kept_with_group
from chitchat.data.dedup_buckets import bucket_count, dedup_file
from chitchat.core.parquet_stream import row_count, table_schema
from chitchat.core.io import PARQUET, atomic_path, load_params, section, write_json
from chitchat.core.stage import run_stage, stage_errors

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    pairs: Path = typer.Option(Path("data/prepared/pairs.parquet"), help="prepared pairs"),
    out: Path = typer.Option(Path("data/dedup/pairs.parquet"), help="deduplicated pairs"),
    metrics: Path = typer.Option(Path("metrics/dedup.json"), help="counts per rule"),
    # Annotated, so that a direct call main(params=..., ...) gets the plain default
    buckets: Annotated[int, typer.Option(min=0, help="buckets to deduplicate in (0: as few as dedup.memory_mb "
                                         "allows); the result is the same for any number")] = 0,
) -> None:
    """Apply the dedup rules in order and count what each removed."""
    with stage_errors("dedup"):
        cfg = dedup_config(section(load_params(params), "dedup", params))
        schema = table_schema(pairs)
        keys = [c for c in KEY_COLUMNS if c in schema]
        columns = [c for c in schema if c != GROUP]  # the input's column order
        n = buckets or bucket_count(pairs, cfg.memory_mb)
        if n > 1 and row_count(pairs):
            report = dedup_file(pairs, out, cfg, n, keys, columns)
        else:
            report = _dedup_in_memory(pairs, out, cfg, keys, columns)
        write_json(metrics, report.as_dict())
        counts = ", ".join(f"{rule} {n}" for rule, n in report.removed.items() if n)
        typer.echo(f"dedup: {report.pairs_in} -> {report.pairs_out} pairs ({counts or 'nothing removed'})", err=True)


def _dedup_in_memory(pairs: Path, out: Path, cfg: DedupConfig, keys: list[str], columns: list[str]) -> DedupReport:
    """The whole table at once: the rules read the key columns; the others are read after, into
    the same table, and the kept rows stream into `out` with their question group (split reads it)."""
    table = pl.read_parquet(pairs, columns=keys)
    kept, report = kept_rows(table, cfg)
    rest = [c for c in columns if c not in keys]
    if rest:
        table = pl.concat([table, pl.read_parquet(pairs, columns=rest)], how="horizontal")
    with atomic_path(out) as tmp:
        kept_with_group(table.select(columns), kept).sink_parquet(tmp, **PARQUET)
    return report


if __name__ == "__main__":
    run_stage(app)
