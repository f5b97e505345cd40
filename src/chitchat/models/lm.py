"""Decoder-only transformer language model (`model.task: lm`) from our own layers (layers.py),
behind the Seq2Seq interface so that chitchat.answering.decoding continues text with it unchanged.

The prompt is the source. `encode` runs it once under a causal mask and keeps every layer's keys
and values and the logits after its last token; `decode_step` feeds one token at a time on top of
that cache. The first step's token (generate's BOS) is not fed when there is a prompt: the prompt
already ends where the continuation starts, so the first logits are those after its last token.
Without a prompt (src of width 0, as in training) the tokens are fed from the first, BOS included.

Prompts come right-padded: pad keys are masked out and each row's positions go on from its own
length, so a row's logits do not depend on its batch. The model attends to at most `context`
tokens (the training window): a row about to go beyond it is re-read from its last context // 2
tokens (a sliding window), so continuations can be longer than the window.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from chitchat.models.base import Encoded, Seq2Seq
from chitchat.models.config import ModelConfig
from chitchat.models.layers import EncoderBlock, LearnedPositions, SinusoidalPositions

Past = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values): (batch, heads, len, d_head)


class CausalBlock(EncoderBlock):
    """The pre-LN encoder block under a causal mask, extending a key/value cache."""

    def forward(self, x, mask, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """x (b, t, d) after `past` keys/values (b, h, s, d_head); mask (b|1, 1, t, s + t).

        Returns the block's output and the keys/values of past + x.
        """
        h = self.norm1(x)
        k, v = self.attn.keys_values(h)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        x = x + self.drop(self.attn.attend(h, k, v, mask))
        return x + self.drop(self.ff(self.norm2(x))), (k, v)


class TransformerLM(Seq2Seq):
    """Token embedding, `layers` causal blocks, final norm, output layer (tied to the embedding)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.context = cfg.context or cfg.max_len
        d = cfg.emb_dim
        self.embed = nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.pad_id)
        nn.init.normal_(self.embed.weight, std=d ** -0.5)  # as in transformer.py: unit variance after the scale
        with torch.no_grad():
            self.embed.weight[cfg.pad_id].zero_()
        positions = SinusoidalPositions if cfg.positions == "sinusoidal" else LearnedPositions
        self.pos = positions(d, cfg.max_len)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(CausalBlock(d, cfg.heads, cfg.hidden_dim, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.out.weight = self.embed.weight

    # -- the stack ---------------------------------------------------------------------------------
    def _embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """ids and positions (b, t) -> (b, t, d)."""
        if positions.numel() and int(positions.max()) >= self.cfg.max_len:
            raise ValueError(f"sequence longer than model.max_len={self.cfg.max_len}")
        table = self.pos(0, self.cfg.max_len)
        return self.drop(self.embed(ids) * math.sqrt(self.cfg.emb_dim) + table[positions])

    def _run(self, ids, positions, mask, past: Past | None = None) -> tuple[torch.Tensor, Past]:
        """Logits (b, t, vocab) of ids (b, t) after `past`, and the new keys/values per layer."""
        x = self._embed(ids, positions)
        new: Past = []
        for block, kv in zip(self.blocks, past or [None] * len(self.blocks)):
            x, kv = block(x, mask, kv)
            new.append(kv)
        return self.out(self.norm(x)), new

    def _prefill(self, ids: torch.Tensor, real: torch.Tensor) -> dict:
        """Run right-padded ids (b, s) (`real` marks tokens) from position 0; the decoding state."""
        s = ids.size(1)
        causal = torch.ones(s, s, dtype=torch.bool, device=ids.device).tril()
        mask = causal[None, None] & real[:, None, None, :]  # (b, 1, s, s); position 0 is always real
        logits, past = self._run(ids, torch.arange(s, device=ids.device).expand_as(ids), mask)
        lengths = real.sum(1)
        first = logits[torch.arange(ids.size(0), device=ids.device), lengths - 1]
        return {"past": past, "mask": real, "pos": lengths, "ids": ids, "first": first}

    # -- the Seq2Seq interface ---------------------------------------------------------------------
    def encode(self, src: torch.Tensor) -> Encoded:
        """Run the prompts src (batch, src_len), right-padded; width 0 means no prompt."""
        real = src != self.cfg.pad_id
        memory = src.new_zeros(src.size(0), src.size(1), 0, dtype=torch.float)  # the cache is the memory
        if src.size(1) == 0:
            return Encoded(memory, real, None)
        if not bool(real[:, 0].all()):
            raise ValueError("every prompt needs at least one token")
        if src.size(1) > self.context:
            raise ValueError(f"prompt longer than the model's context of {self.context} tokens")
        return Encoded(memory, real, self._prefill(src, real))

    def init_cache(self, enc: Encoded) -> dict:
        if enc.state is None:  # no prompt: the first token fed (BOS) starts the text
            empty = enc.mask.new_zeros(enc.mask.size(0), 0)
            return {"past": None, "mask": empty, "pos": empty.sum(1), "ids": empty.long(), "first": None}
        return dict(enc.state)

    def decode(self, tgt_in: torch.Tensor, enc: Encoded) -> torch.Tensor:
        """Teacher-forced logits (batch, tgt_len, vocab); after a prompt tgt_in[:, 0] stands for its end."""
        if enc.state is None:
            t = tgt_in.size(1)
            causal = torch.ones(t, t, dtype=torch.bool, device=tgt_in.device).tril()  # right padding: enough
            return self._run(tgt_in, torch.arange(t, device=tgt_in.device).expand_as(tgt_in), causal)[0]
        state, rest = enc.state, tgt_in[:, 1:]
        t, s = rest.size(1), state["mask"].size(1)
        if t == 0:
            return state["first"].unsqueeze(1)
        causal = torch.ones(t, t, dtype=torch.bool, device=rest.device).tril()
        mask = torch.cat([state["mask"][:, None, None, :].expand(-1, 1, t, s),
                          causal[None, None].expand(rest.size(0), 1, t, t)], dim=3)  # (b, 1, t, s + t)
        positions = state["pos"][:, None] + torch.arange(t, device=rest.device)
        logits = self._run(rest, positions, mask, state["past"])[0]
        return torch.cat([state["first"].unsqueeze(1), logits], dim=1)

    def decode_step(self, tokens: torch.Tensor, enc: Encoded, cache: dict) -> tuple[torch.Tensor, dict]:
        """Logits (batch, vocab) after `tokens` (batch,); the first step after a prompt skips its token."""
        if cache["first"] is not None:
            return cache["first"], {**cache, "first": None}
        if cache["pos"].numel() and int(cache["pos"].max()) >= self.context:
            cache = self._slide(cache)
        ones = torch.ones_like(tokens, dtype=torch.bool).unsqueeze(1)
        mask = torch.cat([cache["mask"], ones], dim=1)
        logits, past = self._run(tokens.unsqueeze(1), cache["pos"].unsqueeze(1), mask[:, None, None, :], cache["past"])
        return logits[:, -1], {"past": past, "mask": mask, "pos": cache["pos"] + 1,
                               "ids": torch.cat([cache["ids"], tokens.unsqueeze(1)], dim=1), "first": None}

    def _slide(self, cache: dict) -> dict:
        """Re-read each row at the context limit from its last context // 2 tokens; others as they are."""
        rows = []
        for ids, real in zip(cache["ids"], cache["mask"]):
            kept = ids[real]
            rows.append(kept[-(self.context // 2):] if kept.numel() >= self.context else kept)
        ids = torch.full((len(rows), max(r.numel() for r in rows)), self.cfg.pad_id, dtype=torch.long,
                         device=cache["ids"].device)
        real = torch.zeros_like(ids, dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : row.numel()], real[i, : row.numel()] = row, True
        return {**self._prefill(ids, real), "first": None}

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """decode(tgt_in, encode(src)); training passes no prompt (src of width 0)."""
        return self.decode(tgt_in, self.encode(src))
