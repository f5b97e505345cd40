"""Stage split: train / valid / test grouped by question, stratified by category, seeded."""

import chitchat.core.batch_memory  # noqa: F401  first: it sets polars' allocator up before polars loads

from pathlib import Path

import polars as pl
import typer

from chitchat.data.dedup import GROUP
from chitchat.data.split import SPLITS, SplitConfig, assign_splits, split_file
from chitchat.core.io import PARQUET, atomic_path, config_from, load_params, section, write_json
from chitchat.core.parquet_stream import table_schema
from chitchat.core.stage import run_stage, stage_errors

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    pairs: Path = typer.Option(Path("data/dedup/pairs.parquet"), help="deduplicated pairs"),
    out_dir: Path = typer.Option(Path("data/split"), help="folder for train/valid/test.parquet"),
    metrics: Path = typer.Option(Path("metrics/split.json"), help="sizes and categories"),
) -> None:
    """Split so that no question appears in two splits."""
    with stage_errors("split"):
        cfg = config_from(SplitConfig, section(load_params(params), "split", params), "split")
        if GROUP in table_schema(pairs):  # dedup's groups: a batch at a time
            report = split_file(pairs, out_dir, cfg)
        else:  # a table of pairs without groups: the questions' match keys, in memory
            df = pl.read_parquet(pairs)
            labels, report = assign_splits(df, cfg, str(pairs))
            for name in SPLITS:
                with atomic_path(out_dir / f"{name}.parquet") as tmp:
                    df.filter(labels == name).write_parquet(tmp, **PARQUET)
        write_json(metrics, report)
        typer.echo(f"split: {report['pairs']}", err=True)


if __name__ == "__main__":
    run_stage(app)
