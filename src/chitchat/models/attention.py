"""Attention of decoder states over encoder memory: dot, general (Luong) and additive (Bahdanau)."""

from __future__ import annotations

import torch
from torch import nn

ATTENTION_KINDS = ("none", "dot", "general", "additive")


class Attention(nn.Module):
    """Score queries against keys, mask padding, return the context and the weights.

    query (batch, tgt_len, dim), memory (batch, src_len, dim), mask (batch, src_len) ->
    context (batch, tgt_len, dim), weights (batch, tgt_len, src_len).
    """

    def __init__(self, kind: str, dim: int):
        super().__init__()
        if kind not in ATTENTION_KINDS[1:]:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS[1:]}, got {kind!r}")
        self.kind = kind
        if kind == "general":
            self.w = nn.Linear(dim, dim, bias=False)
        elif kind == "additive":
            self.w_query = nn.Linear(dim, dim, bias=False)
            self.w_key = nn.Linear(dim, dim)
            self.v = nn.Linear(dim, 1, bias=False)
        self.scale = dim ** -0.5 if kind == "dot" else 1.0  # keeps dot scores from saturating softmax

    def scores(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        if self.kind == "dot":
            return query @ memory.transpose(1, 2) * self.scale
        if self.kind == "general":
            return self.w(query) @ memory.transpose(1, 2)
        q = self.w_query(query).unsqueeze(2)  # (b, t, 1, d)
        k = self.w_key(memory).unsqueeze(1)  # (b, 1, s, d)
        return self.v(torch.tanh(q + k)).squeeze(-1)  # (b, t, s)

    def forward(self, query, memory, mask):
        scores = self.scores(query, memory).masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return weights @ memory, weights
