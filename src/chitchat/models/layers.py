"""Building blocks of the transformer: positions, turn embeddings, multi-head attention with a
key/value cache, feed-forward, pre-LN encoder and decoder blocks. Shapes: (batch, len, d_model) throughout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SinusoidalPositions(nn.Module):
    """Fixed sin/cos position signal added to embeddings (Vaswani et al.)."""

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_len, d_model)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
        self.register_buffer("table", table, persistent=False)

    def forward(self, offset: int, length: int) -> torch.Tensor:
        return self.table[offset : offset + length]


class LearnedPositions(nn.Module):
    """One trained vector per position."""

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        self.table = nn.Embedding(max_len, d_model)

    def forward(self, offset: int, length: int) -> torch.Tensor:
        return self.table.weight[offset : offset + length]


class TurnEmbedding(nn.Module):
    """One trained vector per dialogue turn of the source, counted back from the question.

    Turn ids come from the separators, so callers pass only token ids: the question (after the last
    `sep_id`) is turn 0, the turn before it and its closing separator turn 1, and so on; the lead
    (category) token shares the oldest turn's id; turns past `turns - 1` share the last vector.
    """

    def __init__(self, d_model: int, turns: int, sep_id: int):
        super().__init__()
        self.sep_id, self.turns = sep_id, turns
        self.table = nn.Embedding(turns, d_model)

    def turn_ids(self, src: torch.Tensor) -> torch.Tensor:
        """(batch, src_len) ids -> (batch, src_len) turn index: separators at or after each position."""
        seps = (src == self.sep_id).long()
        return seps.flip(1).cumsum(1).flip(1).clamp(max=self.turns - 1)

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        return self.table(self.turn_ids(src))  # (batch, src_len, d_model)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over `heads` heads; `F.scaled_dot_product_attention` is the kernel.

    query (b, t, d), key/value (b, s, d), mask broadcastable to (b, heads, t, s), True = attend.
    """

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        if d_model % heads:
            raise ValueError("model.emb_dim must be divisible by model.heads")
        self.heads, self.d_head, self.dropout = heads, d_model // heads, dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(b, len, d) -> (b, heads, len, d_head)."""
        return x.view(x.size(0), x.size(1), self.heads, self.d_head).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def attend(self, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> torch.Tensor:
        q = self.split(self.q(query))
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.out(y.transpose(1, 2).reshape(query.size(0), query.size(1), -1))

    def forward(self, query, memory, mask):
        return self.attend(query, *self.keys_values(memory), mask)


class FeedForward(nn.Module):
    """Position-wise two-layer MLP with GELU."""

    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))

    def forward(self, x):
        return self.net(x)


class EncoderBlock(nn.Module):
    """Pre-LN: x + SelfAttn(LN(x)), then x + FF(LN(x))."""

    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, heads, dropout)
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask):
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, mask))
        return x + self.drop(self.ff(self.norm2(x)))


class DecoderBlock(nn.Module):
    """Pre-LN: causal self-attention (with a key/value cache), cross-attention, feed-forward."""

    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(3))
        self.self_attn = MultiHeadAttention(d_model, heads, dropout)
        self.cross_attn = MultiHeadAttention(d_model, heads, dropout)
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, self_mask, cross_kv, cross_mask, cache: dict | None = None):
        """`cache` holds this block's past keys and values; it is extended in place."""
        h = self.norms[0](x)
        k, v = self.self_attn.keys_values(h)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        x = x + self.drop(self.self_attn.attend(h, k, v, self_mask))
        x = x + self.drop(self.cross_attn.attend(self.norms[1](x), *cross_kv, cross_mask))
        return x + self.drop(self.ff(self.norms[2](x)))
