"""Stage dedup: drop exact duplicates, answers that repeat the question, and cap per question."""

from pathlib import Path

import polars as pl
import typer

from chitchat.data.dedup import DedupConfig, dedup_pairs
from chitchat.io import atomic_path, config_from, load_params, section, write_json
from chitchat.stage import stage_errors

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
        cfg = config_from(DedupConfig, section(load_params(params), "dedup", params), "dedup")
        kept, report = dedup_pairs(pl.read_parquet(pairs), cfg)
        with atomic_path(out) as tmp:
            kept.write_parquet(tmp)
        write_json(metrics, report.as_dict())
        typer.echo(f"dedup: {report.pairs_in} -> {report.pairs_out} pairs", err=True)


if __name__ == "__main__":
    app()
