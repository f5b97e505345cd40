"""Encode pairs into id sequences and group them into batches by a token budget.

Length bucketing: examples are shuffled, cut into pools, sorted by length inside each pool and
packed so that batch_size * longest sequence stays under the budget. Padding stays small and the
batch order is still random.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import polars as pl
import torch

from chitchat.tokenizer import Tokenizer

POOL_BATCHES = 50  # batches' worth of examples sorted together: larger pools pad less, shuffle less


@dataclass(frozen=True)
class Example:
    """src = [category] question [eos]; tgt = [bos] answer [eos]."""

    src: list[int]
    tgt: list[int]


def encode_pairs(df: pl.DataFrame, tok: Tokenizer, max_src_len: int, max_tgt_len: int,
                 condition: bool = True) -> list[Example]:
    """Encode a pairs table; questions and answers are cut to fit the length limits.

    Without `condition` every source starts with the same unknown-category token, so the model
    cannot tell categories apart (the baseline for measuring what conditioning adds).
    """
    questions = tok.encode_batch(df["question"].to_list())
    answers = tok.encode_batch(df["answer"].to_list())
    lead = tok.category_id if condition else (lambda _: tok.unknown_category_id)
    return [
        Example(
            [lead(cat)] + q[: max_src_len - 2] + [tok.eos_id],
            [tok.bos_id] + a[: max_tgt_len - 2] + [tok.eos_id],
        )
        for q, a, cat in zip(questions, answers, df["category"].to_list())
    ]


def _cost(ex: Example) -> int:
    return max(len(ex.src), len(ex.tgt))


def token_budget_batches(examples: Sequence[Example], max_tokens: int, seed: int | None = None) -> list[list[int]]:
    """Index batches whose size * longest example <= max_tokens; shuffled when `seed` is given."""
    order = list(range(len(examples)))
    rng = random.Random(seed)
    if seed is not None:
        rng.shuffle(order)
    mean_cost = max(1, sum(_cost(examples[i]) for i in order) // max(1, len(order)))
    pool_size = max(1, POOL_BATCHES * max_tokens // mean_cost)
    batches: list[list[int]] = []
    for start in range(0, len(order), pool_size):
        pool = sorted(order[start : start + pool_size], key=lambda i: (len(examples[i].tgt), len(examples[i].src)))
        batch: list[int] = []
        longest = 0
        for i in pool:
            cost = _cost(examples[i])
            if batch and max(longest, cost) * (len(batch) + 1) > max_tokens:
                batches.append(batch)
                batch, longest = [], 0
            batch.append(i)
            longest = max(longest, cost)
        if batch:
            batches.append(batch)
    if seed is not None:
        rng.shuffle(batches)
    return batches


def collate(examples: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (batch, src_len) and (batch, tgt_len) id tensors."""
    src_len = max(len(e.src) for e in examples)
    tgt_len = max(len(e.tgt) for e in examples)
    src = torch.full((len(examples), src_len), pad_id, dtype=torch.long)
    tgt = torch.full((len(examples), tgt_len), pad_id, dtype=torch.long)
    for row, e in enumerate(examples):
        src[row, : len(e.src)] = torch.tensor(e.src)
        tgt[row, : len(e.tgt)] = torch.tensor(e.tgt)
    return src, tgt
