"""Retrieve-then-rank: the generative model scores retrieved train answers beside its own candidates.

For each question the candidates are the model's own hypotheses (as `decoding` decodes them; for
beam, every one of the beam; left out with `decoding.rerank_own` false) and the answers of the
`decoding.rerank_k` best retrieved train pairs. Every candidate is scored by the model's
length-normalized log-likelihood given the question's source (mean log-probability per answer
token, EOS included), and the best `decoding.n` are returned, best first; ties keep the model's own
hypotheses first, then retrieval order.

Likelihood favours the answers that fit every question («Да.», «Не знаю»). `decoding.rerank_mmi`
= λ > 0 subtracts λ times the candidate's score given a source with no question (the category
alone): log p(a|q) - λ log p(a), the maximum-mutual-information ranking of Li et al. (2016, "A
Diversity-Promoting Objective Function for Neural Conversation Models").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from chitchat.answering.decoding import DecodingConfig, Hypothesis, generate
from chitchat.answering.retrieval import Hit, RetrievalIndex
from chitchat.models.base import Seq2Seq, right_pad

SCORE_BATCH = 64  # candidates scored in one teacher-forced pass


@dataclass(frozen=True)
class Candidate:
    text: str
    score: float  # mean log-probability per answer token under the model (minus rerank_mmi x the same without the question)
    source: str  # "model" or "retrieval"
    tokens: int = 0  # answer tokens the model scored (BOS and EOS aside; a retrieved answer cut to max_tgt_len)


def target_ids(tok, text: str, max_tgt_len: int) -> list[int]:
    """An answer as training encodes it: [bos] answer [eos], cut to max_tgt_len."""
    return [tok.bos_id] + tok.encode(text)[: max(0, max_tgt_len - 2)] + [tok.eos_id]


@torch.inference_mode()
def mean_logprobs(model: Seq2Seq, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                  pad_id: int, device) -> list[float]:
    """Mean log-probability per target token (all but BOS) of each target given its source."""
    out: list[float] = []
    for start in range(0, len(targets), SCORE_BATCH):
        src = right_pad(sources[start : start + SCORE_BATCH], pad_id).to(device)
        tgt = right_pad(targets[start : start + SCORE_BATCH], pad_id).to(device)
        logits = model(src, tgt[:, :-1]).float()
        gold = tgt[:, 1:]
        logp = F.log_softmax(logits, dim=-1).gather(-1, gold.unsqueeze(-1)).squeeze(-1)
        real = gold != pad_id
        sums = (logp * real).sum(dim=1)
        out += (sums / real.sum(dim=1).clamp(min=1)).tolist()
    return out


def rerank(model: Seq2Seq, tok, index: RetrievalIndex, sources: Sequence[Sequence[int]], questions: Sequence[str],
           categories: Sequence[str | None], histories: Sequence[Sequence[str] | None], decoding: DecodingConfig,
           max_tgt_len: int, device, neutral: Sequence[Sequence[int]] | None = None,
           hits: Sequence[Sequence[Hit]] | None = None) -> list[list[Candidate]]:
    """The best `decoding.n` candidates per question, model's own and retrieved, best first.

    `neutral` holds each question's source without the question (the same category and
    prompt): needed when `decoding.rerank_mmi` > 0. `hits` are the questions' retrieved pairs
    when the caller has searched already (their first `rerank_k` count); None: `index` is searched.
    """
    if decoding.rerank_mmi and neutral is None:
        raise ValueError("decoding.rerank_mmi needs the sources without their questions")
    own = _own_hypotheses(model, tok, sources, decoding, device) if decoding.rerank_own else [[] for _ in sources]
    if hits is None:
        hits = index.search(questions, categories, histories, k=decoding.rerank_k)
    hits = [found[: decoding.rerank_k] for found in hits]
    pool: list[tuple[int, str, str, list[int]]] = []  # (question, source, text, target ids)
    for q, (hyps, found) in enumerate(zip(own, hits)):
        pool += _own_candidates(q, hyps, tok)
        pool += [(q, "retrieval", h.answer, target_ids(tok, h.answer, max_tgt_len)) for h in found]
    targets = [ids for *_, ids in pool]
    scores = mean_logprobs(model, [sources[q] for q, *_ in pool], targets, tok.pad_id, device)
    if decoding.rerank_mmi:
        prior = mean_logprobs(model, [neutral[q] for q, *_ in pool], targets, tok.pad_id, device)
        scores = [s - decoding.rerank_mmi * p for s, p in zip(scores, prior)]
    ranked: list[list[Candidate]] = [[] for _ in questions]
    for (q, source, text, ids), score in zip(pool, scores):
        ranked[q].append(Candidate(text, score, source, len(ids) - 2))
    return [_best(cands, decoding.n) for cands in ranked]


def _own_hypotheses(model: Seq2Seq, tok, sources, decoding: DecodingConfig, device) -> list[list[Hypothesis]]:
    src = right_pad(sources, tok.pad_id).to(device)
    # beam: every finished hypothesis of the beam competes, not only the n that would be returned
    own_cfg = dataclasses.replace(decoding, n=decoding.beam_size) if decoding.strategy == "beam" else decoding
    with torch.inference_mode():
        return generate(model, src, own_cfg, tok.bos_id, tok.eos_id, banned_ids=tok.never_generated)


def _own_candidates(q: int, hyps: list[Hypothesis], tok) -> list[tuple[int, str, str, list[int]]]:
    return [(q, "model", tok.decode(h.ids), [tok.bos_id] + list(h.ids) + [tok.eos_id]) for h in hyps]


def _best(cands: list[Candidate], n: int) -> list[Candidate]:
    """Distinct texts, highest score first (a stable sort keeps the earlier of equal scores)."""
    seen, unique = set(), []
    for cand in sorted(cands, key=lambda c: -c.score):
        if cand.text not in seen:
            seen.add(cand.text)
            unique.append(cand)
    return unique[:n]
