"""Training throughput and quality per model type, side by side with x-transformers.

Every model trains on the same batches of the pipeline's train split (run `dvc repro tokenizer`
first) for the same wall-clock budget, with the same loss, optimizer and schedule; then the
best validation loss (NLL per target token, checked every 50 steps) is reported. x-transformers' XTransformer is built at the
same width, depth, heads and feed-forward size, with learned absolute positions like ours here.

    pip install -e ".[bench]"
    python benchmarks/train_throughput.py --seconds 60
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import torch
import typer
from torch import nn

from chitchat.models import ModelConfig, build_model
from chitchat.text.tokenizer import Tokenizer
from chitchat.training.batching import encode_pairs
from chitchat.training.loop import TrainConfig, seed_everything, train

app = typer.Typer(add_completion=False)


class XTransformerAdapter(nn.Module):
    """x-transformers' encoder-decoder behind our forward(src, tgt_in) -> logits."""

    def __init__(self, vocab: int, dim: int, layers: int, heads: int, ff: int, max_len: int):
        super().__init__()
        from x_transformers import XTransformer

        self.net = XTransformer(
            dim=dim, tie_token_emb=True, pad_value=0,
            enc_num_tokens=vocab, enc_depth=layers, enc_heads=heads, enc_max_seq_len=max_len, enc_ff_mult=ff / dim,
            dec_num_tokens=vocab, dec_depth=layers, dec_heads=heads, dec_max_seq_len=max_len, dec_ff_mult=ff / dim,
        )

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        mask = src != 0
        memory = self.net.encoder(src, mask=mask, return_embeddings=True)
        return self.net.decoder.net(tgt_in, context=memory, context_mask=mask)


def build(kind: str, vocab: int, dim: int, layers: int, heads: int, ff: int, max_len: int) -> nn.Module:
    if kind == "xtransformers":
        return XTransformerAdapter(vocab, dim, layers, heads, ff, max_len)
    cfg = ModelConfig(type=kind, vocab_size=vocab, emb_dim=dim, hidden_dim=ff, layers=layers, heads=heads,
                      dropout=0.0, positions="learned", tie_embeddings=False, max_len=max_len)
    return build_model(cfg)


@app.command()
def main(
    seconds: float = typer.Option(60, help="wall-clock training budget per model"),
    types: str = typer.Option("gru,lstm,cnn,transformer,xtransformers", help="comma-separated"),
    dim: int = 128, layers: int = 2, heads: int = 4, ff: int = 256, lr: float = 3e-3,
    max_tokens: int = 1024, threads: int = 2,
    split_dir: Path = Path("data/split"), tokenizer_dir: Path = Path("data/tokenizer"),
) -> None:
    torch.set_num_threads(threads)
    tok = Tokenizer.load(tokenizer_dir)
    train_ex, valid_ex = (encode_pairs(pl.read_parquet(split_dir / f"{n}.parquet"), tok, 48, 48) for n in ("train", "valid"))
    # Validation every 50 steps for every model alike; the best value is reported, since without
    # dropout all of them overfit the small sample long before the budget ends.
    cfg = TrainConfig(epochs=10**6, max_tokens=max_tokens, lr=lr, warmup_steps=20, schedule="constant",
                      eval_every=50, patience=0, max_minutes=seconds / 60)
    rows = []
    for kind in types.split(","):
        seed_everything(0)
        model = build(kind, tok.vocab_size, dim, layers, heads, ff, 64)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        result = train(model, train_ex, valid_ex, cfg, tok.pad_id, torch.device("cpu"))
        rows.append((kind, params, result.steps, result.train_tokens / result.seconds, result.best_valid_loss))
        print(f"{kind}: done", flush=True)

    print(f"\n{len(train_ex)} train pairs, budget {seconds:.0f} s per model, dim {dim}, layers {layers}, "
          f"heads {heads}, ff {ff}, lr {lr}, {threads} threads\n")
    print("| model | parameters | steps | target tokens/s (validation time included) | best valid NLL/token |")
    print("|---|---|---|---|---|")
    for kind, params, steps, speed, loss in rows:
        print(f"| {kind} | {params:,} | {steps} | {speed:,.0f} | {loss:.3f} |")
    by = {r[0]: r for r in rows}
    if "transformer" in by and "xtransformers" in by:
        ours, theirs = by["transformer"], by["xtransformers"]
        print(f"\nours / x-transformers: tokens/s x{ours[3] / theirs[3]:.2f} (goal >= 1), "
              f"valid loss x{ours[4] / theirs[4]:.3f} (goal <= 1)")


if __name__ == "__main__":
    app()
