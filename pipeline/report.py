"""Stage report: data statistics as metrics/data.json and one CSV per plot for `dvc plots show`."""

from pathlib import Path

import polars as pl
import typer

from chitchat.evaluation.data_report import SPLITS, ReportConfig, data_report, rank_curve_svg
from chitchat.core.errors import InputError
from chitchat.core.io import atomic_path, config_from, load_params, section, write_json, write_text
from chitchat.core.stage import stage_errors
from chitchat.text.tokenizer import Tokenizer

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    split_dir: Path = typer.Option(Path("data/split"), help="folder with train/valid/test.parquet"),
    tokenizer_dir: Path = typer.Option(Path("data/tokenizer"), help="tokenizer folder"),
    metrics: Path = typer.Option(Path("metrics/data.json"), help="counts, lengths, coverage"),
    plots_dir: Path = typer.Option(Path("metrics/report"), help="folder for the plot CSV files"),
    svg: Path = typer.Option(Path("docs/token_frequency.svg"), help="the frequency-rank curve shown in docs/data.md"),
) -> None:
    """Describe the splits: lengths, categories, token frequencies, unknown tokens."""
    with stage_errors("report"):
        cfg = config_from(ReportConfig, section(load_params(params), "report", params), "report")
        frames = {}
        for name in SPLITS:
            path = split_dir / f"{name}.parquet"
            if not path.is_file():
                raise InputError(path, "split file not found (run `dvc repro split`)")
            frames[name] = pl.read_parquet(path)
        tok = Tokenizer.load(tokenizer_dir)
        report = data_report(frames, tok, cfg)
        for name, table in report.plots.items():
            with atomic_path(plots_dir / f"{name}.csv") as tmp:
                table.write_csv(tmp)
        t = report.metrics["tokens"]
        title = f"Token frequency by rank, train split ({tok.kind} BPE, vocab {tok.vocab_size:,})"
        note = ", ".join(f"top {k:,}: {t[f'top{k}_share']:.0%}" for k in cfg.top_tokens) + " of train tokens"
        write_text(svg, rank_curve_svg(report.plots["token_frequency"], title, note))
        write_json(metrics, report.metrics)
        typer.echo(f"report: {report.metrics['pairs']['total']} pairs, {t['train_tokens']} train tokens, "
                   f"valid unk rate {report.metrics['unk_rate']['valid']:.4%}", err=True)


if __name__ == "__main__":
    app()
