"""Convolutional encoder-decoder in the ConvS2S style (Gehring et al., fairseq's fconv).

Gated linear units, residuals scaled by sqrt(0.5), left-padded (causal) decoder convolutions, and
attention in every decoder layer whose values are encoder output + input embedding. Incremental
decoding keeps the last kernel_size - 1 inputs of every decoder layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from chitchat.models.base import Encoded, Seq2Seq
from chitchat.models.config import ModelConfig
from chitchat.models.layers import LearnedPositions

SQRT_HALF = math.sqrt(0.5)


class ConvEncoder(nn.Module):
    """Embedding + positions -> conv/GLU layers (same padding) -> (output z, z + embedding)."""

    def __init__(self, cfg: ModelConfig, embed: nn.Embedding):
        super().__init__()
        e, h, k = cfg.emb_dim, cfg.hidden_dim, cfg.kernel_size
        self.embed, self.pos = embed, LearnedPositions(e, cfg.max_len)
        self.inp, self.outp = nn.Linear(e, h), nn.Linear(h, e)
        self.convs = nn.ModuleList(nn.Conv1d(h, 2 * h, k, padding=k // 2) for _ in range(cfg.layers))
        self.norms = nn.ModuleList(nn.LayerNorm(h) if cfg.layer_norm else nn.Identity() for _ in range(cfg.layers))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, src: torch.Tensor, mask: torch.Tensor):
        keep = mask.unsqueeze(-1)
        emb = self.drop(self.embed(src) + self.pos(0, src.size(1)))
        x = self.inp(emb)
        for conv, norm in zip(self.convs, self.norms):
            residual = x
            x = x.masked_fill(~keep, 0.0)  # pads look exactly like the conv's own zero padding
            x = F.glu(conv(self.drop(x).transpose(1, 2)), dim=1).transpose(1, 2)
            x = norm((x + residual) * SQRT_HALF)
        z = self.outp(x).masked_fill(~keep, 0.0)
        return z, (z + emb) * SQRT_HALF


class ConvDecoderLayer(nn.Module):
    """Causal conv + GLU, then attention over the encoder, each with a scaled residual."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, e = cfg.hidden_dim, cfg.emb_dim
        self.k = cfg.kernel_size
        self.conv = nn.Conv1d(h, 2 * h, self.k)
        self.to_emb, self.from_emb = nn.Linear(h, e), nn.Linear(e, h)
        self.norm = nn.LayerNorm(h) if cfg.layer_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, target_emb, enc: Encoded, window: torch.Tensor):
        """x (b, t, h); `window` (b, k-1, h) holds the inputs before x (zeros at the start)."""
        padded = torch.cat([window, x], dim=1)
        y = F.glu(self.conv(self.drop(padded).transpose(1, 2)), dim=1).transpose(1, 2)
        z, values = enc.state
        query = (self.to_emb(y) + target_emb) * SQRT_HALF
        scores = (query @ z.transpose(1, 2)).masked_fill(~enc.mask.unsqueeze(1), float("-inf"))
        context = torch.softmax(scores, dim=-1) @ values
        y = (y + self.from_emb(context)) * SQRT_HALF
        return self.norm((y + x) * SQRT_HALF), padded[:, padded.size(1) - (self.k - 1):]


class ConvSeq2Seq(Seq2Seq):
    """Shared embedding; `hidden_dim` is the convolution width, `kernel_size` its span."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.emb_dim, padding_idx=cfg.pad_id)
        self.encoder = ConvEncoder(cfg, self.embed)
        self.pos = LearnedPositions(cfg.emb_dim, cfg.max_len)
        self.inp = nn.Linear(cfg.emb_dim, cfg.hidden_dim)
        self.layers = nn.ModuleList(ConvDecoderLayer(cfg) for _ in range(cfg.layers))
        self.outp = nn.Linear(cfg.hidden_dim, cfg.emb_dim)
        self.out = nn.Linear(cfg.emb_dim, cfg.vocab_size)
        self.drop = nn.Dropout(cfg.dropout)

    def encode(self, src: torch.Tensor) -> Encoded:
        if src.size(1) > self.cfg.max_len:
            raise ValueError(f"sequence longer than model.max_len={self.cfg.max_len}")
        mask = src != self.cfg.pad_id
        z, values = self.encoder(src, mask)
        return Encoded(memory=z, mask=mask, state=(z, values))

    def init_cache(self, enc: Encoded):
        zeros = enc.mask.new_zeros(enc.mask.size(0), self.cfg.kernel_size - 1, self.cfg.hidden_dim, dtype=torch.float)
        return {"step": 0, "windows": [zeros for _ in self.layers]}

    def _run(self, tokens: torch.Tensor, enc: Encoded, cache):
        if cache["step"] + tokens.size(1) > self.cfg.max_len:
            raise ValueError(f"sequence longer than model.max_len={self.cfg.max_len}")
        emb = self.drop(self.embed(tokens) + self.pos(cache["step"], tokens.size(1)))
        x = self.inp(emb)
        windows = []
        for layer, window in zip(self.layers, cache["windows"]):
            x, window = layer(x, emb, enc, window.to(x.dtype))
            windows.append(window)
        logits = self.out(self.drop(self.outp(x)))
        return logits, {"step": cache["step"] + tokens.size(1), "windows": windows}

    def decode(self, tgt_in: torch.Tensor, enc: Encoded) -> torch.Tensor:
        return self._run(tgt_in, enc, self.init_cache(enc))[0]

    def decode_step(self, tokens: torch.Tensor, enc: Encoded, cache):
        logits, cache = self._run(tokens.unsqueeze(1), enc, cache)
        return logits.squeeze(1), cache
