"""Stage evaluate: perplexity, BLEU, chrF, ROUGE and distinct-n on the test split."""

from pathlib import Path

import polars as pl
import torch
import typer

from chitchat.checkpoint import load_checkpoint
from chitchat.evaluation import EvalConfig, evaluate_model, examples_markdown
from chitchat.io import config_from, load_params, section, write_json, write_text
from chitchat.stage import stage_errors
from chitchat.tokenizer import Tokenizer

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    model_dir: Path = typer.Option(Path("data/model"), help="model folder written by train"),
    test: Path = typer.Option(Path("data/split/test.parquet"), help="pairs to score"),
    metrics: Path = typer.Option(Path("metrics/eval.json"), help="scores"),
    examples: Path = typer.Option(Path("metrics/examples.md"), help="table of generated answers"),
) -> None:
    """Score the model; answers are decoded as evaluate.decoding says (greedy, beam or nucleus)."""
    with stage_errors("evaluate"):
        cfg = config_from(EvalConfig, section(load_params(params), "evaluate", params), "evaluate")
        torch.use_deterministic_algorithms(True)
        model, ckpt = load_checkpoint(model_dir, "cpu")
        tok = Tokenizer.load(model_dir / ckpt["tokenizer_dir"])
        pairs = pl.read_parquet(test)
        result, scored = evaluate_model(model, tok, pairs, ckpt["max_src_len"], ckpt["max_tgt_len"], cfg, "cpu")
        result["model_type"] = ckpt["model_config"]["type"]
        write_json(metrics, result)
        write_text(examples, examples_markdown(scored, cfg.num_examples, cfg.seed))
        typer.echo(f"evaluate ({cfg.decoding.strategy}): ppl_word {result['ppl_word']:.1f}  bleu {result['bleu']:.2f}  "
                   f"chrf {result['chrf']:.2f}  rougeL {result['rougeL']:.3f}", err=True)


if __name__ == "__main__":
    app()
