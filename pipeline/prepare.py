"""Stage prepare: read the QA dump, normalize text, filter pairs, write parquet and counts."""

from pathlib import Path

import typer

from chitchat.data.filters import FilterConfig, apply_filters
from chitchat.data.pairs import read_pairs
from chitchat.data.readers import ReadReport
from chitchat.errors import InputError
from chitchat.io import atomic_path, config_from, load_params, section, write_json
from chitchat.stage import stage_errors

app = typer.Typer(add_completion=False)
READER_PARAMS = ("input", "lowercase", "yo_to_e", "missing_category")


@app.command()
def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    out: Path = typer.Option(Path("data/prepared/pairs.parquet"), help="filtered pairs"),
    metrics: Path = typer.Option(Path("metrics/prepare.json"), help="counts per reason"),
) -> None:
    """Unzip and parse the QA jsonl, turn responses into pairs, normalize and filter them."""
    with stage_errors("prepare"):
        p = section(load_params(params), "prepare", params)
        source = p["input"]
        report = ReadReport()
        pairs = read_pairs(source, report, p.get("lowercase", False), p.get("yo_to_e", False),
                           p.get("missing_category", "Без категории"))
        kept, dropped = apply_filters(pairs, config_from(FilterConfig, p, "prepare", ignore=READER_PARAMS))
        if kept.height == 0:
            raise InputError(source, f"no pairs left after filtering ({pairs.height} read)")
        with atomic_path(out) as tmp:
            kept.write_parquet(tmp)
        write_json(metrics, {
            "input": str(source),
            "read": report.as_dict(),
            "pairs_in": pairs.height,
            "pairs_out": kept.height,
            "pairs_dropped": dropped,
            "pairs_dropped_total": pairs.height - kept.height,
            "questions_out": kept["qid"].n_unique(),
            "categories_out": kept["category"].n_unique(),
        })
        typer.echo(f"prepare: {report.records_ok} records -> {pairs.height} pairs -> {kept.height} kept", err=True)


if __name__ == "__main__":
    app()
