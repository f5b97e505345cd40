"""Stage tokenizer: train BPE on the train split only, with special and category tokens."""

from pathlib import Path

import polars as pl
import typer

from chitchat.core.io import atomic_dir, load_params, section, write_json
from chitchat.core.stage import stage_errors
from chitchat.text.tokenizer import Tokenizer, train_tokenizer

app = typer.Typer(add_completion=False)


def coverage(tok: Tokenizer, texts: list[str]) -> dict:
    """Unknown-token rate, tokens per word and exact round-trips on held-out text."""
    ids = tok.encode_batch(texts)
    n_tokens = sum(map(len, ids))
    n_words = sum(len(t.split()) for t in texts)
    unk = sum(row.count(tok.unk_id) for row in ids)
    exact = sum(tok.decode(row) == text for row, text in zip(ids, texts))
    return {
        "unk_rate": unk / max(1, n_tokens),
        "tokens_per_word": n_tokens / max(1, n_words),
        "roundtrip_exact": exact / max(1, len(texts)),
    }


@app.command()
def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    split_dir: Path = typer.Option(Path("data/split"), help="folder with train/valid.parquet"),
    out: Path = typer.Option(Path("data/tokenizer"), help="tokenizer folder"),
    metrics: Path = typer.Option(Path("metrics/tokenizer.json"), help="vocab and coverage"),
) -> None:
    """Train the tokenizer on train questions and answers; measure it on validation."""
    with stage_errors("tokenizer"):
        p = section(load_params(params), "tokenizer", params)
        train = pl.read_parquet(split_dir / "train.parquet")
        valid = pl.read_parquet(split_dir / "valid.parquet")
        texts = train["question"].unique(maintain_order=True).to_list() + train["answer"].to_list()
        tok = train_tokenizer(texts, train["category"].unique().to_list(), p["kind"], p["vocab_size"],
                              p.get("min_frequency", 2))
        with atomic_dir(out) as tmp:
            tok.save(tmp)
        held_out = valid["question"].unique(maintain_order=True).to_list() + valid["answer"].to_list()
        write_json(metrics, {"kind": tok.kind, "vocab_size": tok.vocab_size,
                             "categories": len(tok.categories), "valid": coverage(tok, held_out)})
        typer.echo(f"tokenizer: {tok.kind}, vocab {tok.vocab_size}", err=True)


if __name__ == "__main__":
    app()
