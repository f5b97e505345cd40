"""Recurrent encoder-decoder (GRU or LSTM) with attention over the encoder states.

Stacked single-layer RNNs rather than one multi-layer module, so residual connections and layer
norm can sit between layers. The decoder runs its RNN over the whole target at once in training
(Luong-style attention after the RNN, no input feeding), and one step at a time when decoding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from chitchat.models.attention import Attention
from chitchat.models.base import Encoded, Seq2Seq
from chitchat.models.config import ModelConfig

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


def _merge_directions(state: torch.Tensor) -> torch.Tensor:
    """(2, batch, h/2) forward and backward final states -> (1, batch, h)."""
    return torch.cat([state[0], state[1]], dim=-1).unsqueeze(0)


class RNNStack(nn.Module):
    """Single-layer RNNs stacked with optional residual connections and layer norm."""

    def __init__(self, cell: str, input_dim: int, hidden: int, layers: int, dropout: float,
                 bidirectional: bool, residual: bool, layer_norm: bool):
        super().__init__()
        self.cell, self.bidirectional, self.residual = cell, bidirectional, residual
        per_dir = hidden // 2 if bidirectional else hidden
        self.rnns = nn.ModuleList(
            CELLS[cell](input_dim if i == 0 else hidden, per_dir, batch_first=True, bidirectional=bidirectional)
            for i in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) if layer_norm else nn.Identity() for _ in range(layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, states: list | None = None):
        """x (batch, len, in) -> outputs (batch, len, hidden), final states per layer."""
        finals = []
        for i, (rnn, norm) in enumerate(zip(self.rnns, self.norms)):
            inp = x
            if lengths is not None:
                packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
                out, final = rnn(packed)
                out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
            else:
                out, final = rnn(x, None if states is None else states[i])
            if self.bidirectional:
                final = tuple(map(_merge_directions, final)) if self.cell == "lstm" else _merge_directions(final)
            out = self.dropout(out)
            if self.residual and i > 0:
                out = out + inp
            x = norm(out)
            finals.append(final)
        return x, finals


class RNNSeq2Seq(Seq2Seq):
    """Embedding -> RNN encoder; embedding -> RNN decoder -> attention -> output projection."""

    cache_batch_dim = 1  # states are (1, batch, hidden) per layer, as nn.GRU/nn.LSTM return them

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_dim
        self.embed = nn.Embedding(cfg.vocab_size, cfg.emb_dim, padding_idx=cfg.pad_id)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = RNNStack(cfg.type, cfg.emb_dim, h, cfg.layers, cfg.dropout, cfg.bidirectional,
                                cfg.residual, cfg.layer_norm)
        self.decoder = RNNStack(cfg.type, cfg.emb_dim, h, cfg.layers, cfg.dropout, False,
                                cfg.residual, cfg.layer_norm)
        self.attention = Attention(cfg.attention, h) if cfg.attention != "none" else None
        self.combine = nn.Linear(2 * h, h) if self.attention is not None else None
        self.out = nn.Linear(h, cfg.vocab_size)

    def encode(self, src: torch.Tensor) -> Encoded:
        mask = src != self.cfg.pad_id
        lengths = mask.sum(1).clamp(min=1)
        memory, finals = self.encoder(self.drop(self.embed(src)), lengths)
        return Encoded(memory, mask, finals)

    def init_cache(self, enc: Encoded):
        return enc.state

    def _project(self, hidden: torch.Tensor, enc: Encoded) -> torch.Tensor:
        if self.attention is not None:
            context, _ = self.attention(hidden, enc.memory, enc.mask)
            hidden = torch.tanh(self.combine(torch.cat([hidden, context], dim=-1)))
        return self.out(self.drop(hidden))

    def decode(self, tgt_in: torch.Tensor, enc: Encoded) -> torch.Tensor:
        hidden, _ = self.decoder(self.drop(self.embed(tgt_in)), states=enc.state)
        return self._project(hidden, enc)

    def decode_step(self, tokens: torch.Tensor, enc: Encoded, cache):
        hidden, cache = self.decoder(self.drop(self.embed(tokens.unsqueeze(1))), states=cache)
        return self._project(hidden, enc).squeeze(1), cache
