"""Stage dedup: drop exact and near duplicates, answers that repeat the question; cap per question
and per first phrase. The kept pairs get a `group` column: pairs whose questions share the match key
share it, and split assigns whole groups."""

import chitchat.batch_memory  # noqa: F401  first: it sets polars' allocator up before polars loads

from pathlib import Path

import polars as pl
import typer

from chitchat.data.dedup import GROUP, KEY_COLUMNS, dedup_config, kept_rows
from chitchat.io import PARQUET, atomic_path, load_params, section, write_json
from chitchat.stage import run_stage, stage_errors

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
        # the rules read three columns; the rest streams from the input to the output file
        columns = [c for c in KEY_COLUMNS if c in pl.read_parquet_schema(pairs)]
        kept, report = kept_rows(pl.read_parquet(pairs, columns=columns), cfg)
        with atomic_path(out) as tmp:  # the kept rows with their question group, which split reads
            (pl.scan_parquet(pairs).drop(GROUP, strict=False).with_row_index("_row")
             .join(kept.lazy(), on="_row", how="inner", maintain_order="left")
             .drop("_row").sink_parquet(tmp, **PARQUET))
        write_json(metrics, report.as_dict())
        counts = ", ".join(f"{rule} {n}" for rule, n in report.removed.items() if n)
        typer.echo(f"dedup: {report.pairs_in} -> {report.pairs_out} pairs ({counts or 'nothing removed'})", err=True)


if __name__ == "__main__":
    run_stage(app)
