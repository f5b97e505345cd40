"""The interface every model type implements, so training, decoding and serving never ask which.

Shapes: `src` (batch, src_len) token ids whose first token is the category token; `tgt_in`
(batch, tgt_len) starts with BOS; logits (batch, tgt_len, vocab).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Id rows as one (len(rows), longest row) long tensor, each row followed by pad_id."""
    out = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


@dataclass
class Encoded:
    """What the encoder hands the decoder."""

    memory: torch.Tensor  # (batch, src_len, hidden)
    mask: torch.Tensor  # (batch, src_len) True at real tokens
    state: Any  # the decoder's initial state (model-specific)


class Seq2Seq(nn.Module):
    """Encoder-decoder: encode once, then decode in full (teacher forcing) or step by step."""

    # batch dimension of every tensor in Encoded.state and in the cache; decoding reorders along it
    cache_batch_dim: int = 0

    def encode(self, src: torch.Tensor) -> Encoded:
        raise NotImplementedError

    def init_cache(self, enc: Encoded) -> Any:
        """The decoding cache before the first step (recurrent state, cached keys...)."""
        raise NotImplementedError

    def decode(self, tgt_in: torch.Tensor, enc: Encoded) -> torch.Tensor:
        """Teacher-forced logits (batch, tgt_len, vocab) for the whole target prefix at once."""
        raise NotImplementedError

    def decode_step(self, tokens: torch.Tensor, enc: Encoded, cache: Any) -> tuple[torch.Tensor, Any]:
        """Logits (batch, vocab) for the next token after `tokens` (batch,), and the new cache."""
        raise NotImplementedError

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.decode(tgt_in, self.encode(src))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
