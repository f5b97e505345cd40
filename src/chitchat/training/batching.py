"""Encode pairs into id sequences and group them into batches by a token budget.

Length bucketing: examples are shuffled, cut into pools, sorted by length inside each pool and
packed so that batch_size * longest sequence stays under the budget. Padding stays small and the
batch order is still random.
"""

from __future__ import annotations

import random
from typing import Sequence

import polars as pl
import torch

from chitchat.models.base import right_pad
from chitchat.text.prompt import Example, encode_sources
from chitchat.text.tokenizer import Tokenizer

POOL_BATCHES = 50  # batches' worth of examples sorted together: larger pools pad less, shuffle less


def encode_pairs(df: pl.DataFrame, tok: Tokenizer, max_src_len: int, max_tgt_len: int,
                 condition: bool = True, max_history: int | None = None) -> list[Example]:
    """Encode a pairs table; sources are built by chitchat.text.prompt, answers cut to max_tgt_len.

    Without `condition` every source starts with the same unknown-category token, so the model
    cannot tell categories apart (the baseline for measuring what conditioning adds). The `history`
    column, where there is one, gives the earlier turns; `max_history` keeps the most recent ones
    (None: all the column holds; 0: none, a plain question -> answer model).
    """
    if "history" in df.columns and max_history is not None:
        df = df.with_columns(pl.col("history").list.tail(max(0, max_history)))
    if getattr(tok, "kind", None) == "hf":  # a pretrained LM reads a text prompt: chitchat.text.hf_tokenizer
        return tok.encode_examples(df, max_src_len, max_tgt_len, condition)
    histories = df["history"].to_list() if "history" in df.columns else None
    sources = encode_sources(tok, df["question"].to_list(), df["category"].to_list(), histories, max_src_len,
                             condition=condition)
    answers = tok.encode_batch(df["answer"].to_list())
    return [Example(s.ids, [tok.bos_id] + a[: max_tgt_len - 2] + [tok.eos_id]) for s, a in zip(sources, answers)]


def encode_text_windows(texts: Sequence[str], tok: Tokenizer, window: int) -> list[Example]:
    """Language-model examples (model.task lm): each text as [bos] text [eos], cut into windows of
    at most `window` tokens that overlap by one, so every token but BOS is a target exactly once
    and long paragraphs are kept whole; src is empty (no prompt)."""
    if window < 2:
        raise ValueError(f"train.max_tgt_len must be >= 2 for model.task lm (the window), got {window}")
    examples = []
    for ids in tok.encode_batch(list(texts)):
        seq = [tok.bos_id] + ids + [tok.eos_id]
        examples += [Example([], seq[start : start + window]) for start in range(0, len(seq) - 1, window - 1)]
    return examples


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
    return right_pad([e.src for e in examples], pad_id), right_pad([e.tgt for e in examples], pad_id)
