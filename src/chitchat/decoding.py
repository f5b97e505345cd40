"""Decoding strategies over the Seq2Seq interface (incremental: the prefix is never recomputed)."""

from __future__ import annotations

import torch

from chitchat.models.base import Seq2Seq


@torch.no_grad()
def greedy(model: Seq2Seq, src: torch.Tensor, bos_id: int, eos_id: int, max_len: int) -> list[list[int]]:
    """Most likely token at every step, for a batch of sources (batch, src_len).

    Returns the generated ids per source, without BOS and EOS.
    """
    model.eval()
    enc = model.encode(src)
    cache = model.init_cache(enc)
    batch = src.size(0)
    tokens = torch.full((batch,), bos_id, dtype=torch.long, device=src.device)
    done = torch.zeros(batch, dtype=torch.bool, device=src.device)
    out: list[torch.Tensor] = []
    for _ in range(max_len):
        logits, cache = model.decode_step(tokens, enc, cache)
        tokens = logits.argmax(-1).masked_fill(done, eos_id)
        out.append(tokens)
        done |= tokens == eos_id
        if bool(done.all()):
            break
    ids = torch.stack(out, 1).tolist()
    return [row[: row.index(eos_id)] if eos_id in row else row for row in ids]
