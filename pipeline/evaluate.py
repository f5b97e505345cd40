"""Stage evaluate: perplexity, BLEU, chrF, ROUGE and distinct-n on the test split; for a language
model (model.task lm) perplexity on valid and test and sampled continuations."""

from pathlib import Path

import polars as pl
import torch
import typer

from chitchat.answering.checkpoint import load_checkpoint, load_tokenizer
from chitchat.evaluation.evaluate import EvalConfig, continuations_markdown, evaluate_lm, evaluate_model, examples_markdown
from chitchat.core.io import config_from, load_params, section, write_json, write_text
from chitchat.core.stage import stage_errors

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    model_dir: Path = typer.Option(Path("data/model"), help="model folder written by train"),
    test: Path = typer.Option(Path("data/split/test.parquet"), help="pairs to score"),
    valid: Path = typer.Option(Path("data/split/valid.parquet"), help="also scored for a language model (model.task lm)"),
    metrics: Path = typer.Option(Path("metrics/eval.json"), help="scores"),
    examples: Path = typer.Option(Path("metrics/examples.md"), help="table of generated answers"),
) -> None:
    """Score the model; answers are decoded as evaluate.decoding says (greedy, beam or nucleus)."""
    with stage_errors("evaluate"):
        cfg = config_from(EvalConfig, section(load_params(params), "evaluate", params), "evaluate")
        torch.use_deterministic_algorithms(True)
        model, ckpt = load_checkpoint(model_dir, "cpu")
        tok = load_tokenizer(model_dir, ckpt)  # ours, or the pretrained one of model type hf
        pairs = pl.read_parquet(test)
        if ckpt["model_config"].get("task") == "lm":  # a language model: perplexities and continuations
            _evaluate_lm(model, tok, pl.read_parquet(valid), pairs, ckpt, cfg, metrics, examples)
            return
        max_history = int((ckpt.get("prepare") or {}).get("max_history", 0))  # as the model was trained
        result, scored = evaluate_model(model, tok, pairs, ckpt["max_src_len"], ckpt["max_tgt_len"], cfg, "cpu",
                                        max_history)
        result["max_history"] = max_history
        result["model_type"] = ckpt["model_config"]["type"]
        write_json(metrics, result)
        write_text(examples, examples_markdown(scored, cfg.num_examples, cfg.seed))
        typer.echo(f"evaluate ({cfg.decoding.strategy}): ppl_word {result['ppl_word']:.1f}  bleu {result['bleu']:.2f}  "
                   f"chrf {result['chrf']:.2f}  rougeL {result['rougeL']:.3f}", err=True)


def _evaluate_lm(model, tok, valid, test, ckpt: dict, cfg: EvalConfig, metrics: Path, examples: Path) -> None:
    """metrics/eval.json: ppl on test and valid; metrics/examples.md: continuations of test paragraphs."""
    result, rows = evaluate_lm(model, tok, valid, test, int(ckpt["max_tgt_len"]), cfg, "cpu")
    result["model_type"] = ckpt["model_config"]["type"]
    write_json(metrics, result)
    write_text(examples, continuations_markdown(rows))
    typer.echo(f"evaluate lm ({cfg.decoding.strategy}): test ppl_token {result['ppl_token']:.1f}  ppl_word "
               f"{result['ppl_word']:.1f}  valid ppl_word {result['valid']['ppl_word']:.1f}", err=True)


if __name__ == "__main__":
    app()
