"""Stage evaluate: perplexity, BLEU, chrF, ROUGE and distinct-n on the test split; for a language
model (model.task lm) perplexity on valid and test and sampled continuations."""

from pathlib import Path

import polars as pl
import torch
import typer

from chitchat.answering.checkpoint import RETRIEVAL_DIR, load_tokenizer, model_from_checkpoint, read_checkpoint
from chitchat.answering.retrieval import RetrievalIndex
from chitchat.evaluation.evaluate import (EvalConfig, continuations_markdown, evaluate_lm, evaluate_model,
                                          evaluate_retrieval, examples_markdown)
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
        ckpt = read_checkpoint(model_dir)
        index_dir = model_dir / ckpt.get("retrieval_dir", RETRIEVAL_DIR)
        max_history = int((ckpt.get("prepare") or {}).get("max_history", 0))  # as the model was trained
        if ckpt["model_config"].get("type") == "retrieval":  # the baseline: no perplexity, only its answers
            result, scored = evaluate_retrieval(RetrievalIndex.load(index_dir), pl.read_parquet(test), max_history)
            _write(result, scored, "retrieval", max_history, cfg, metrics, examples)
            return
        model = model_from_checkpoint(model_dir, ckpt, "cpu")  # the dict read above: model.pt is loaded once
        tok = load_tokenizer(model_dir, ckpt)  # ours, or the pretrained one of model type hf
        pairs = pl.read_parquet(test)
        if ckpt["model_config"].get("task") == "lm":  # a language model: perplexities and continuations
            _evaluate_lm(model, tok, pl.read_parquet(valid), pairs, ckpt, cfg, metrics, examples)
            return
        index = RetrievalIndex.load(index_dir) if index_dir.is_dir() else None  # models trained before it have none
        result, scored = evaluate_model(model, tok, pairs, ckpt["max_src_len"], ckpt["max_tgt_len"], cfg, "cpu",
                                        max_history, index)
        _write(result, scored, ckpt["model_config"]["type"], max_history, cfg, metrics, examples)


def _write(result: dict, scored, model_type: str, max_history: int, cfg: EvalConfig, metrics: Path,
           examples: Path) -> None:
    result["max_history"] = max_history
    result["model_type"] = model_type
    write_json(metrics, result)
    write_text(examples, examples_markdown(scored, cfg.num_examples, cfg.seed))
    how = "retrieval" if model_type == "retrieval" else cfg.decoding.strategy + (
        f", rerank_k {cfg.decoding.rerank_k}" if cfg.decoding.rerank_k else "")
    ppl = f"ppl_word {result['ppl_word']:.1f}  " if "ppl_word" in result else ""
    line = (f"evaluate ({how}): {ppl}bleu {result['bleu']:.2f}  chrf {result['chrf']:.2f}  "
            f"rougeL {result['rougeL']:.3f}  known words {result['known_word_rate']:.3f} "
            f"(references {result['reference_known_word_rate']:.3f})  unique {result['unique_answer_rate']:.3f}")
    if "retrieval" in result:
        line += f"  | retrieval chrf {result['retrieval']['chrf']:.2f}"
    typer.echo(line, err=True)


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
