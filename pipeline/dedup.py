"""Stage dedup: drop exact and near duplicates, answers that repeat the question; cap per question
and per first phrase. The kept pairs get a `group` column: pairs whose questions share the match key
share it, and split assigns whole groups."""

import chitchat.core.batch_memory  # noqa: F401  first: it sets polars' allocator up before polars loads

from pathlib import Path

import polars as pl
import typer

from chitchat.data.dedup import GROUP, KEY_COLUMNS, dedup_config, kept_rows, kept_with_group
from chitchat.core.io import PARQUET, atomic_path, load_params, section, write_json
from chitchat.core.stage import run_stage, stage_errors

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    pairs: Path = typer.Option(Path("data/prepared/pairs.parquet"), help="prepared pairs"),
    out: Path = typer.Option(Path("data/dedup/pairs.parquet"), help="deduplicated pairs"),
    metrics: Path = typer.Option(Path("metrics/dedup.json"), help="counts per rule"),
) -> None:
    """Apply the dedup rules in order and count what each removed."""
    with stage_errors("dedup"):
        cfg = dedup_config(section(load_params(params), "dedup", params))
        # the rules read three columns; the others are read after, into the same table
        schema = pl.read_parquet_schema(pairs)
        table = pl.read_parquet(pairs, columns=[c for c in KEY_COLUMNS if c in schema])
        kept, report = kept_rows(table, cfg)
        rest = [c for c in schema if c not in KEY_COLUMNS and c != GROUP]
        if rest:
            table = pl.concat([table, pl.read_parquet(pairs, columns=rest)], how="horizontal")
        table = table.select(c for c in schema if c != GROUP)  # the input's column order
        with atomic_path(out) as tmp:  # the kept rows with their question group, which split reads
            kept_with_group(table, kept).sink_parquet(tmp, **PARQUET)
        write_json(metrics, report.as_dict())
        counts = ", ".join(f"{rule} {n}" for rule, n in report.removed.items() if n)
        typer.echo(f"dedup: {report.pairs_in} -> {report.pairs_out} pairs ({counts or 'nothing removed'})", err=True)


if __name__ == "__main__":
    run_stage(app)
