"""Transformer encoder-decoder from our own layers (layers.py): pre-LN blocks, padding and causal
masks, sinusoidal or learned positions, optionally tied input/output embeddings and, with
`model.turn_embeddings`, a learned embedding of each source token's dialogue turn (found from the
<sep> tokens inside `encode`, so decoding and its step interface do not change).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from chitchat.models.base import Encoded, Seq2Seq
from chitchat.models.config import ModelConfig
from chitchat.models.layers import DecoderBlock, EncoderBlock, LearnedPositions, SinusoidalPositions, TurnEmbedding

TURNS = 8  # turn embeddings: the question and 7 turns before it; older turns share the last vector


class TransformerSeq2Seq(Seq2Seq):
    """Shared token embedding; `emb_dim` is d_model, `hidden_dim` the feed-forward width."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.emb_dim
        self.embed = nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.pad_id)
        # std d^-0.5: after the sqrt(d) scale inputs have unit variance, and tied logits start small
        nn.init.normal_(self.embed.weight, std=d ** -0.5)
        with torch.no_grad():
            self.embed.weight[cfg.pad_id].zero_()
        positions = SinusoidalPositions if cfg.positions == "sinusoidal" else LearnedPositions
        self.pos = positions(d, cfg.max_len)
        self.turns = TurnEmbedding(d, TURNS, cfg.sep_id) if cfg.turn_embeddings else None
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderBlock(d, cfg.heads, cfg.hidden_dim, cfg.dropout) for _ in range(cfg.layers))
        self.decoder = nn.ModuleList(DecoderBlock(d, cfg.heads, cfg.hidden_dim, cfg.dropout) for _ in range(cfg.layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.out = nn.Linear(d, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.out.weight = self.embed.weight

    def _embed(self, ids: torch.Tensor, offset: int = 0, extra: torch.Tensor | None = None) -> torch.Tensor:
        if offset + ids.size(1) > self.cfg.max_len:
            raise ValueError(f"sequence longer than model.max_len={self.cfg.max_len}")
        x = self.embed(ids) * math.sqrt(self.cfg.emb_dim) + self.pos(offset, ids.size(1))
        return self.drop(x if extra is None else x + extra)

    def encode(self, src: torch.Tensor) -> Encoded:
        mask = src != self.cfg.pad_id
        attn_mask = mask[:, None, None, :]  # (b, 1, 1, s): every query sees the real keys
        x = self._embed(src, extra=None if self.turns is None else self.turns(src))
        for block in self.encoder:
            x = block(x, attn_mask)
        memory = self.enc_norm(x)
        cross = [block.cross_attn.keys_values(memory) for block in self.decoder]  # computed once
        return Encoded(memory, mask, cross)

    def init_cache(self, enc: Encoded):
        return {"step": 0, "layers": [{} for _ in self.decoder]}

    def _run_decoder(self, x, enc: Encoded, self_mask, caches):
        cross_mask = enc.mask[:, None, None, :]
        for block, kv, cache in zip(self.decoder, enc.state, caches):
            x = block(x, self_mask, kv, cross_mask, cache)
        return self.out(self.dec_norm(x))

    def decode(self, tgt_in: torch.Tensor, enc: Encoded) -> torch.Tensor:
        t = tgt_in.size(1)
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt_in.device).tril()
        return self._run_decoder(self._embed(tgt_in), enc, causal, [None] * len(self.decoder))

    def decode_step(self, tokens: torch.Tensor, enc: Encoded, cache):
        x = self._embed(tokens.unsqueeze(1), cache["step"])
        logits = self._run_decoder(x, enc, None, cache["layers"])  # one query sees all cached keys
        return logits.squeeze(1), {"step": cache["step"] + 1, "layers": cache["layers"]}
