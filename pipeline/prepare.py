"""Stage prepare: read every input (QA dump, TSV pairs, dialogues), normalize, filter, write parquet."""

from pathlib import Path

import typer

from chitchat.data.filters import FilterConfig, apply_filters
from chitchat.data.sources import parse_inputs, read_inputs
from chitchat.errors import InputError
from chitchat.io import atomic_path, config_from, load_params, section, write_json
from chitchat.stage import stage_errors

app = typer.Typer(add_completion=False)
READER_PARAMS = ("inputs", "lowercase", "yo_to_e", "missing_category", "max_history")


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
        pairs, reports = read_inputs(specs, p.get("lowercase", False), p.get("yo_to_e", False),
                                     p.get("missing_category", "Без категории"), max_history)
        kept, dropped = apply_filters(pairs, config_from(FilterConfig, p, "prepare", ignore=READER_PARAMS))
        if kept.height == 0:
            raise InputError(specs[0].path, f"no pairs left after filtering ({pairs.height} read)")
        with atomic_path(out) as tmp:
            kept.write_parquet(tmp)
        per_source = dict(kept.group_by("source").len().sort("source").iter_rows())
        write_json(metrics, {
            "inputs": [vars(s) for s in specs],
            "read": {name: report.as_dict() for name, report in reports.items()},
            "pairs_in": pairs.height,
            "pairs_out": kept.height,
            "pairs_out_per_source": per_source,
            "pairs_dropped": dropped,
            "pairs_dropped_total": pairs.height - kept.height,
            "questions_out": kept["qid"].n_unique(),
            "categories_out": kept["category"].n_unique(),
        })
        records = sum(r.records_ok for r in reports.values())
        typer.echo(f"prepare: {records} records -> {pairs.height} pairs -> {kept.height} kept", err=True)


if __name__ == "__main__":
    app()
