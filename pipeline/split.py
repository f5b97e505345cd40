"""Stage split: train / valid / test grouped by question, stratified by category, seeded."""

import chitchat.core.batch_memory  # noqa: F401  first: it sets polars' allocator up before polars loads

from pathlib import Path

import polars as pl
import typer

from chitchat.data.dedup import GROUP
from chitchat.data.split import SPLITS, SplitConfig, assign_splits, warm_sklearn
from chitchat.core.io import config_from, load_params, section, write_json
from chitchat.core.parquet_stream import appenders, batches
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
        warm_sklearn()
        cfg = config_from(SplitConfig, section(load_params(params), "split", params), "split")
        schema = pl.read_parquet_schema(pairs)
        # dedup's groups and the categories are all the split reads; without groups, the questions
        needed = [GROUP, "category"] if GROUP in schema else [c for c in ("qid", "question", "category") if c in schema]
        labels, report = assign_splits(_read_columns(pairs, needed), cfg, str(pairs))
        columns = [c for c in schema if c != GROUP]
        paths = {name: out_dir / f"{name}.parquet" for name in SPLITS}
        with appenders(paths, pl.read_parquet(pairs, columns=columns, n_rows=0)) as out:
            for start, frame in batches(pairs, columns):  # a batch at a time: memory stays one batch's
                part = labels.slice(start, frame.height)
                for name in SPLITS:
                    out[name].add(frame.filter(part == name))
        write_json(metrics, report)
        typer.echo(f"split: {report['pairs']}", err=True)


def _read_columns(pairs: Path, columns: list[str]) -> pl.DataFrame:
    """`columns` of `pairs`, the category as Categorical: read a batch at a time, so the table's
    category strings are never held at once (a few bytes a row instead of the name's)."""
    parts = [frame.with_columns(pl.col("category").cast(pl.Categorical)) for _, frame in batches(pairs, columns)]
    return pl.concat(parts) if parts else pl.read_parquet(pairs, columns=columns)


if __name__ == "__main__":
    run_stage(app)
