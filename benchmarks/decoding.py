"""Decoding speed: batched against one question at a time, incremental against full recomputation.

For greedy, beam search and nucleus sampling, answers per second are measured three ways on the
same questions: batched (`--batch` questions per call) with the incremental cache, one question per
call, and batched with a naive decoder that recomputes the whole prefix with `model.decode` at
every step (`FullRecompute` below: the same search, only the cache differs, so the answers must
match). Without `--model`, untrained models of modest size decode random sources of realistic
lengths; they rarely end early, so every answer runs to --max-new-tokens (the worst case).

    python benchmarks/decoding.py                          # transformer and gru, random weights
    python benchmarks/decoding.py --model data/model      # the trained model
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
import typer

from chitchat.answering.checkpoint import load_checkpoint
from chitchat.answering.decoding import DecodingConfig, generate, map_tensors
from chitchat.models import ModelConfig, build_model
from chitchat.models.base import Encoded, Seq2Seq

app = typer.Typer(add_completion=False)
PAD, BOS, EOS, FIRST_WORD = 0, 2, 3, 5  # the tokenizer's special ids; words start after them


class FullRecompute(Seq2Seq):
    """`model` behind a cache that is only the prefix: every step decodes it all again.

    Batch dimensions are moved to 0, so decoding can reorder this cache whatever the model.
    """

    def __init__(self, model: Seq2Seq):
        super().__init__()
        self.model, self.dim = model, model.cache_batch_dim

    def encode(self, src: torch.Tensor) -> Encoded:
        enc = self.model.encode(src)
        return Encoded(enc.memory, enc.mask, map_tensors(lambda t: t.movedim(self.dim, 0), enc.state))

    def init_cache(self, enc: Encoded) -> torch.Tensor:
        return enc.mask.new_zeros(enc.mask.size(0), 0, dtype=torch.long)  # (batch, 0) prefix

    def decode_step(self, tokens: torch.Tensor, enc: Encoded, cache: torch.Tensor):
        prefix = torch.cat([cache, tokens.unsqueeze(1)], dim=1)
        inner = Encoded(enc.memory, enc.mask, map_tensors(lambda t: t.movedim(0, self.dim), enc.state))
        return self.model.decode(prefix, inner)[:, -1], prefix


def random_sources(n: int, vocab: int, seed: int) -> torch.Tensor:
    """(n, longest) ids: lengths 6..24 like category + question + EOS, padded with PAD."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(6, 25, (n,), generator=g)
    src = torch.randint(FIRST_WORD, vocab, (n, int(lengths.max())), generator=g)
    src[torch.arange(src.size(1)) >= lengths.unsqueeze(1)] = PAD
    src[torch.arange(n), lengths - 1] = EOS
    return src


def answers_per_second(model: Seq2Seq, src: torch.Tensor, cfg: DecodingConfig, batch: int, banned,
                       repeats: int) -> tuple[float, list]:
    """Best of `repeats` passes over every source in chunks of `batch` (each cut to its longest source)."""
    best = float("inf")
    for _ in range(repeats):
        out, start = [], time.perf_counter()
        for i in range(0, src.size(0), batch):
            chunk = src[i:i + batch]
            chunk = chunk[:, : int((chunk != PAD).sum(1).max())]
            out += [[h.ids for h in hyps] for hyps in generate(model, chunk, cfg, BOS, EOS, banned)]
        best = min(best, time.perf_counter() - start)
    return len(out) / best, out


@app.command()
def main(
    model_dir: Optional[Path] = typer.Option(None, "--model", help="trained model folder (default: random weights)"),
    types: str = typer.Option("transformer,gru", help="comma-separated model types without --model"),
    questions: int = typer.Option(64, help="questions decoded in every mode"),
    batch: int = typer.Option(64, help="questions per call in batched modes"),
    alone_questions: int = typer.Option(16, help="first questions decoded one at a time (a rate needs few)"),
    max_new_tokens: int = 24, beam_size: int = 5, top_p: float = 0.9,
    vocab: int = 2000, dim: int = 128, hidden: int = 256, layers: int = 2, threads: int = 2,
    repeats: int = typer.Option(2, help="timed passes per mode; the fastest counts (shared machines are noisy)"),
) -> None:
    torch.set_num_threads(threads)
    if model_dir is not None:
        model, _ = load_checkpoint(model_dir)
        models = {f"{model.cfg.type} ({model_dir})": model}
    else:
        models = {}
        for kind in types.split(","):
            torch.manual_seed(0)
            models[kind] = build_model(ModelConfig(type=kind, vocab_size=vocab, emb_dim=dim, hidden_dim=hidden,
                                                   layers=layers, dropout=0.0, max_len=128)).eval()
    strategies = {
        "greedy": DecodingConfig(max_new_tokens=max_new_tokens),
        f"beam {beam_size}": DecodingConfig(strategy="beam", max_new_tokens=max_new_tokens, beam_size=beam_size),
        f"nucleus p={top_p}": DecodingConfig(strategy="nucleus", max_new_tokens=max_new_tokens, top_p=top_p, seed=1),
    }
    rows = []
    for name, model in models.items():
        src = random_sources(questions, model.cfg.vocab_size, seed=0)
        banned = [PAD, 1, BOS, 4]  # pad, unk, bos, sep: as the service bans them
        for label, cfg in strategies.items():
            for m in (model, FullRecompute(model)):  # warm-up: first calls pay for allocation
                answers_per_second(m, src[:4], cfg, 2, banned, 1)
            batched, answers = answers_per_second(model, src, cfg, batch, banned, repeats)
            alone, _ = answers_per_second(model, src[:alone_questions], cfg, 1, banned, repeats)
            full, full_answers = answers_per_second(FullRecompute(model), src, cfg, batch, banned, repeats)
            rows.append((name, label, batched, alone, full, answers == full_answers))
            print(f"{name} {label}: done", flush=True)

    print(f"\n{questions} questions ({alone_questions} of them one at a time), batch {batch}, "
          f"max_new_tokens {max_new_tokens}, {threads} threads, "
          f"best of {repeats}, "
          f"{'trained' if model_dir else f'random weights, vocab {vocab}, dim {dim}, hidden {hidden}, layers {layers}'}\n")
    print("| model | strategy | batched answers/s | one at a time answers/s | full recompute (batched) answers/s "
          "| batched / one at a time | incremental / full | same answers as full |")
    print("|---|---|---|---|---|---|---|---|")
    for name, label, batched, alone, full, same in rows:
        print(f"| {name} | {label} | {batched:,.1f} | {alone:,.1f} | {full:,.1f} | x{batched / alone:.1f} "
              f"| x{batched / full:.1f} | {'yes' if same else 'no'} |")


if __name__ == "__main__":
    app()
