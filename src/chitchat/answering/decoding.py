"""Decoding strategies over the Seq2Seq interface: greedy, beam search, nucleus sampling.

Every strategy is batched (one `decode_step` per generated token for the whole batch) and
incremental (the prefix is never recomputed), and shares one step of log-prob processing: banned
ids, `min_new_tokens`, no-repeat n-grams and the repetition penalty. Shapes: `src`
(batch, src_len); inside, `rows` = batch * beams (beam) or batch * samples (nucleus); rows whose
answer has ended are dropped from the batch.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from chitchat.models.base import Encoded, Seq2Seq

STRATEGIES = ("greedy", "beam", "nucleus")
NEG_INF = float("-inf")


@dataclass(frozen=True)
class DecodingConfig:
    strategy: str = "greedy"  # greedy | beam | nucleus
    max_new_tokens: int = 40  # longest answer in tokens (EOS not counted)
    min_new_tokens: int = 0  # EOS is forbidden before this many tokens
    beam_size: int = 5  # beam: hypotheses kept per question
    length_penalty: float = 1.0  # beam: GNMT alpha; score = logprob / ((5+len)/6)**alpha
    no_repeat_ngram_size: int = 0  # every strategy: an n-gram never repeats in one answer (0 = off)
    early_stopping: bool = True  # beam: stop at beam_size finished; False: also until no live one can beat them
    n: int = 1  # answers per question (n-best for beam, samples for nucleus, 1 for greedy)
    temperature: float = 1.0  # nucleus: softmax temperature (> 0)
    top_k: int = 0  # nucleus: keep the k most likely tokens (0 = off)
    top_p: float = 1.0  # nucleus: keep the smallest set with cumulative prob >= p (1.0 = off)
    repetition_penalty: float = 1.0  # every strategy: log-probs of generated tokens are multiplied by it (1.0 = off)
    seed: int = 0  # nucleus: torch.Generator seed, so the same seed gives the same text
    rerank_k: int = 0  # retrieve-then-rank: the model also scores the answers of the k best retrieved train pairs (0 = off)
    rerank_own: bool = True  # rerank: the model's own hypotheses compete with the retrieved answers (False: only those)
    rerank_mmi: float = 0.0  # rerank: score - this * the answer's score with no question (0 = off; 1 = mutual information)

    def validate(self) -> "DecodingConfig":
        """Self, or ValueError with one line naming the first bad field and its allowed range."""
        checks = [
            ("strategy", self.strategy in STRATEGIES, f"one of {STRATEGIES}"),
            ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
            ("min_new_tokens", 0 <= self.min_new_tokens <= self.max_new_tokens, "in [0, max_new_tokens]"),
            ("beam_size", self.beam_size >= 1, ">= 1"),
            ("length_penalty", math.isfinite(self.length_penalty), "a finite number"),
            ("no_repeat_ngram_size", self.no_repeat_ngram_size >= 0, ">= 0 (0 = off)"),
            ("n", self.n >= 1, ">= 1"),
            ("n", self.strategy != "greedy" or self.n == 1, "1 for greedy"),
            ("n", self.strategy != "beam" or self.n <= self.beam_size, f"<= beam_size ({self.beam_size}) for beam"),
            ("temperature", self.temperature > 0, "> 0"),
            ("top_k", self.top_k >= 0, ">= 0 (0 = off)"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0 (1.0 = off)"),
            ("rerank_k", 0 <= self.rerank_k <= 100, "in [0, 100] (0 = off)"),
            ("rerank_mmi", 0 <= self.rerank_mmi <= 1, "in [0, 1] (0 = off)"),
            ("rerank_own", self.rerank_own or self.rerank_k > 0, "true when rerank_k is 0 (nothing to answer with)"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"decoding.{name} must be {allowed}, got {getattr(self, name)!r}")
        return self


OPTION_TYPES = {f.name: type(f.default) for f in dataclasses.fields(DecodingConfig)}
_BOOLS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def parse_option_value(key: str, text: str) -> Any:
    """`text` typed (int, float, str, bool) as the DecodingConfig field `key` expects; ValueError
    names the problem. The chat command's /set and the bot's /strategy options both read through it."""
    kind = OPTION_TYPES[key]
    if kind is bool:
        if text.lower() not in _BOOLS:
            raise ValueError(f"{key} must be true or false, got {text!r}")
        return _BOOLS[text.lower()]
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{key} must be {kind.__name__}, got {text!r}") from None


@dataclass(frozen=True)
class Hypothesis:
    """One answer; `score` ranks answers (see `generate`), `logprob` is under the model."""

    ids: list[int]  # generated ids without BOS/EOS
    score: float  # beam: length-normalized log-prob; greedy/nucleus: equal to logprob
    logprob: float  # sum of the model's log-probs of the chosen tokens (EOS included when generated)


# --- moving the batch dimension of model state ---------------------------------------------------

def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], tree: Any) -> Any:
    """`tree` with `fn` applied to every tensor inside tuples, lists, dicts and dataclasses."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: map_tensors(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        items = [map_tensors(fn, v) for v in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)  # namedtuples unpack
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return dataclasses.replace(tree, **{f.name: map_tensors(fn, getattr(tree, f.name))
                                            for f in dataclasses.fields(tree) if f.init})
    return tree  # ints such as the step counter


def select_rows(tree: Any, index: torch.Tensor, dim: int) -> Any:
    """Rows `index` (new_rows,) of every tensor in `tree` along `dim`: reorder, repeat or drop."""
    return map_tensors(lambda t: t.index_select(dim, index), tree)


def select_encoded(model: Seq2Seq, enc: Encoded, index: torch.Tensor) -> Encoded:
    """Rows `index` of the encoder output; `state` has the model's cache batch dimension."""
    return Encoded(enc.memory.index_select(0, index), enc.mask.index_select(0, index),
                   select_rows(enc.state, index, model.cache_batch_dim))


def select_cache(model: Seq2Seq, cache: Any, index: torch.Tensor) -> Any:
    """Rows `index` of a decoding cache (new containers, so in-place cache updates stay local)."""
    return select_rows(cache, index, model.cache_batch_dim)


# --- sampling filters -----------------------------------------------------------------------------

def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Logits (..., vocab) with all but the k largest set to -inf (ties with the k-th kept; 0 = off)."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Logits (..., vocab) outside the nucleus set to -inf: the smallest most-likely set with mass >= p."""
    if p >= 1.0:
        return logits
    ordered, order = logits.sort(dim=-1, descending=True)
    probs = ordered.softmax(dim=-1)
    outside = probs.cumsum(dim=-1) - probs >= p  # the mass before a token already reaches p
    outside[..., 0] = False  # the most likely token always stays
    return logits.masked_fill(outside.scatter(-1, order, outside), NEG_INF)


# --- the processing every strategy shares ---------------------------------------------------------

def ban_repeated_ngrams(logprobs: torch.Tensor, history: torch.Tensor, n: int) -> None:
    """In place: -inf for every token that would complete an n-gram already in `history` (rows, t)."""
    t = history.size(1)
    if n <= 0 or t < n:
        return
    grams = history.unfold(1, n, 1)  # (rows, t - n + 1, n)
    prefix = history[:, t - n + 1:]  # (rows, n - 1): the n-gram being completed
    row, at = (grams[:, :, :-1] == prefix.unsqueeze(1)).all(-1).nonzero(as_tuple=True)
    logprobs[row, grams[row, at, -1]] = NEG_INF


def process_logprobs(raw: torch.Tensor, history: torch.Tensor, step: int, cfg: DecodingConfig,
                     banned: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Model log-probs (rows, vocab) -> the scores a strategy chooses from; -inf = never.

    `history` (rows, step) holds the tokens generated so far, `banned` (k,) ids never to generate.
    """
    x = raw.clone()
    if cfg.repetition_penalty != 1.0 and history.size(1):
        # log-probs are <= 0, so a penalty > 1 makes a seen token less likely whatever its value
        x.scatter_(1, history, x.gather(1, history) * cfg.repetition_penalty)
    x[:, banned] = NEG_INF
    if step < cfg.min_new_tokens:
        x[:, eos_id] = NEG_INF
    ban_repeated_ngrams(x, history, cfg.no_repeat_ngram_size)
    stuck = x.amax(dim=1) == NEG_INF  # every token forbidden: ending is the only way out
    x[stuck, eos_id] = raw[stuck, eos_id]
    return x


@contextmanager
def _inference(model: Seq2Seq):
    """No gradients and eval mode inside; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _banned_tensor(banned_ids: Sequence[int], device) -> torch.Tensor:
    return torch.tensor(sorted(set(banned_ids)), dtype=torch.long, device=device)


# --- greedy and sampling: one row per answer -------------------------------------------------------

# on_step(slots, tokens) -> slots to stop: called once per step with the answer slot (question *
# copies + copy) and chosen token of every live row (EOS included: that row ends); a returned slot
# ends now with the token just chosen (a stop string matched, or its client left).
StepHook = Callable[[list[int], list[int]], "set[int] | None"]


def _decode_rows(model: Seq2Seq, src: torch.Tensor, cfg: DecodingConfig, bos_id: int, eos_id: int,
                 banned_ids: Sequence[int], copies: int, choose, on_step: StepHook | None = None
                 ) -> list[list[Hypothesis]]:
    """`copies` answers per source, each token picked by `choose(scores (rows, vocab)) -> (rows,)`."""
    device, batch = src.device, src.size(0)
    banned = _banned_tensor(banned_ids, device)
    enc = model.encode(src)
    owner = torch.arange(batch * copies, device=device)  # answer slot of each row; question = slot // copies
    if copies > 1:
        enc = select_encoded(model, enc, owner // copies)
    cache = model.init_cache(enc)
    tokens = torch.full((owner.numel(),), bos_id, dtype=torch.long, device=device)
    history = tokens.new_empty(owner.numel(), 0)
    logprob = torch.zeros(owner.numel(), device=device)
    done: dict[int, Hypothesis] = {}

    def finish(slots: torch.Tensor, ids: torch.Tensor, sums: torch.Tensor) -> None:
        for slot, answer, lp in zip(slots.tolist(), ids.tolist(), sums.tolist()):
            done[slot] = Hypothesis(answer, lp, lp)

    for step in range(cfg.max_new_tokens):
        logits, cache = model.decode_step(tokens, enc, cache)
        raw = logits.float().log_softmax(dim=-1)
        tokens = choose(process_logprobs(raw, history, step, cfg, banned, eos_id))
        logprob = logprob + raw.gather(1, tokens.unsqueeze(1)).squeeze(1)
        ended = tokens == eos_id
        stopped = _stopped(on_step, owner, tokens, ended)
        if bool(stopped.any()):  # the token that completed a stop string is the answer's last
            finish(owner[stopped], torch.cat([history[stopped], tokens[stopped].unsqueeze(1)], dim=1),
                   logprob[stopped])
        if bool(ended.any()):
            finish(owner[ended], history[ended], logprob[ended])
        ended = ended | stopped
        if bool(ended.any()):  # drop ended answers from the batch
            keep = (~ended).nonzero().squeeze(1)
            owner, tokens, history, logprob = owner[keep], tokens[keep], history[keep], logprob[keep]
            if not keep.numel():
                break
            enc, cache = select_encoded(model, enc, keep), select_cache(model, cache, keep)
        history = torch.cat([history, tokens.unsqueeze(1)], dim=1)
    finish(owner, history, logprob)  # the rest stop at max_new_tokens
    answers = [done[slot] for slot in range(batch * copies)]
    return [sorted(answers[q * copies:(q + 1) * copies], key=lambda h: -h.score) for q in range(batch)]


def _stopped(on_step: StepHook | None, owner: torch.Tensor, tokens: torch.Tensor, ended: torch.Tensor
             ) -> torch.Tensor:
    """Rows (not ending at EOS) whose slot `on_step` asks to stop; all False without a hook."""
    if on_step is None:
        return torch.zeros_like(ended)
    stop = on_step(owner.tolist(), tokens.tolist()) or ()
    if not stop:
        return torch.zeros_like(ended)
    asked = torch.tensor([slot in stop for slot in owner.tolist()], dtype=torch.bool, device=ended.device)
    return asked & ~ended


def greedy(model: Seq2Seq, src: torch.Tensor, cfg: DecodingConfig, bos_id: int, eos_id: int,
           banned_ids: Sequence[int] = (), on_step: StepHook | None = None) -> list[list[Hypothesis]]:
    """The most likely allowed token at every step: one hypothesis per source (batch, src_len)."""
    cfg.validate()
    with _inference(model):
        return _decode_rows(model, src, cfg, bos_id, eos_id, banned_ids, 1, lambda s: s.argmax(dim=-1), on_step)


def sample(model: Seq2Seq, src: torch.Tensor, cfg: DecodingConfig, bos_id: int, eos_id: int,
           banned_ids: Sequence[int] = (), on_step: StepHook | None = None) -> list[list[Hypothesis]]:
    """cfg.n answers per source drawn with temperature, top-k and top-p, most likely first."""
    cfg.validate()
    generator = torch.Generator(device=src.device).manual_seed(cfg.seed)

    def choose(scores: torch.Tensor) -> torch.Tensor:
        logits = top_p_filter(top_k_filter(scores / cfg.temperature, cfg.top_k), cfg.top_p)
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)

    with _inference(model):
        return _decode_rows(model, src, cfg, bos_id, eos_id, banned_ids, cfg.n, choose, on_step)


# --- beam search ----------------------------------------------------------------------------------

def length_penalty(length: int, alpha: float) -> float:
    """GNMT's lp = ((5 + length) / 6) ** alpha; `length` counts the scored tokens, EOS included."""
    return ((5 + length) / 6) ** alpha


def _question_done(finished: list[Hypothesis], best_live: float, length: int, cfg: DecodingConfig) -> bool:
    """Whether beam search can stop for one question; `best_live` is its best live log-prob sum."""
    if best_live == NEG_INF:
        return True
    if len(finished) < cfg.beam_size:
        return False
    if cfg.early_stopping:
        return True
    worst_kept = sorted(h.score for h in finished)[-cfg.beam_size]
    # log-probs only fall, so the live best can at most keep its sum and get the kindest length
    kindest = max(length_penalty(length + 1, cfg.length_penalty),
                  length_penalty(cfg.max_new_tokens, cfg.length_penalty))
    return best_live / kindest <= worst_kept


def beam_search(model: Seq2Seq, src: torch.Tensor, cfg: DecodingConfig, bos_id: int, eos_id: int,
                banned_ids: Sequence[int] = ()) -> list[list[Hypothesis]]:
    """cfg.n best of cfg.beam_size hypotheses per source (batch, src_len), sorted by score.

    Beams are ranked by their summed processed log-probs; a hypothesis ends at EOS, or at
    max_new_tokens (then without an EOS term), and is scored by its sum / length_penalty.
    """
    cfg.validate()
    with _inference(model):
        return _beam_search(model, src, cfg, bos_id, eos_id, banned_ids)


def _beam_search(model, src, cfg, bos_id, eos_id, banned_ids) -> list[list[Hypothesis]]:
    device, beams = src.device, cfg.beam_size
    banned = _banned_tensor(banned_ids, device)
    questions = list(range(src.size(0)))  # original index of every live question
    enc = select_encoded(model, model.encode(src), torch.arange(len(questions), device=device).repeat_interleave(beams))
    cache = model.init_cache(enc)
    scores = torch.full((len(questions), beams), NEG_INF, device=device)  # (live, beams) processed sums
    scores[:, 0] = 0.0  # one beam per question at the start, so the first step does not pick duplicates
    tokens = torch.full((scores.numel(),), bos_id, dtype=torch.long, device=device)
    history = tokens.new_empty(scores.numel(), 0)
    raw_sum = torch.zeros(scores.numel(), device=device)  # the model's own log-prob sums, per row
    finished: list[list[Hypothesis]] = [[] for _ in questions]

    def finish(q: int, ids: list[int], processed: float, raw: float, length: int) -> None:
        finished[q].append(Hypothesis(ids, processed / length_penalty(length, cfg.length_penalty), raw))

    for step in range(cfg.max_new_tokens):
        live = len(questions)
        logits, cache = model.decode_step(tokens, enc, cache)
        raw = logits.float().log_softmax(dim=-1)  # (live * beams, vocab)
        vocab = raw.size(1)
        cand = (scores.view(-1, 1) + process_logprobs(raw, history, step, cfg, banned, eos_id)).view(live, -1)
        top, flat = cand.topk(min(2 * beams, cand.size(1)), dim=1)  # (live, 2 * beams), sorted
        row = flat // vocab + torch.arange(live, device=device).unsqueeze(1) * beams  # source row
        tok = flat % vocab
        is_eos = tok == eos_id
        # an EOS outranked by beam_size live candidates is worse than what the beam keeps anyway
        ends = is_eos & (torch.arange(top.size(1), device=device) < beams) & torch.isfinite(top)
        for a, j in ends.nonzero().tolist():
            r = int(row[a, j])
            finish(questions[a], history[r].tolist(), float(top[a, j]), float(raw_sum[r] + raw[r, eos_id]), step + 1)
        # at most one EOS per beam among 2 * beams candidates, so beam_size others always remain
        best, pos = top.masked_fill(is_eos, NEG_INF).topk(beams, dim=1)
        row, tok = row.gather(1, pos), tok.gather(1, pos)  # (live, beams)
        new_raw = raw_sum[row] + raw[row, tok]
        best_live = best[:, 0].tolist()
        keep = [a for a, q in enumerate(questions)
                if not _question_done(finished[q], best_live[a], step + 1, cfg)]
        if step + 1 == cfg.max_new_tokens:  # unfinished beams are finalized at the length limit
            for a in keep:
                for j in range(beams):
                    if best[a, j] > NEG_INF:
                        r = int(row[a, j])
                        finish(questions[a], history[r].tolist() + [int(tok[a, j])], float(best[a, j]),
                               float(new_raw[a, j]), step + 1)
            break
        if not keep:
            break
        if len(keep) < live:  # drop finished questions from the batch
            k = torch.tensor(keep, device=device)
            row, tok, best, new_raw = row[k], tok[k], best[k], new_raw[k]
            enc = select_encoded(model, enc, (k.unsqueeze(1) * beams + torch.arange(beams, device=device)).view(-1))
            questions = [questions[a] for a in keep]
        rows = row.view(-1)
        cache = select_cache(model, cache, rows)
        history = torch.cat([history[rows], tok.view(-1, 1)], dim=1)
        tokens, scores, raw_sum = tok.view(-1), best, new_raw.view(-1)
    return [sorted(hyps, key=lambda h: -h.score)[: cfg.n] for hyps in finished]


# --- one entry point ------------------------------------------------------------------------------

def generate(model: Seq2Seq, src: torch.Tensor, cfg: DecodingConfig, bos_id: int, eos_id: int,
             banned_ids: Sequence[int] = (), on_step: StepHook | None = None) -> list[list[Hypothesis]]:
    """For src (batch, src_len): per question a list of cfg.n hypotheses, best first (beam: sorted by score).

    `banned_ids` (pad, unk, bos, sep, category tokens) are never generated. `on_step` (StepHook)
    sees every token as it is chosen, for greedy and nucleus; beam search decides its answers only
    at the end, so it has no such hook (a stream gets beam answers whole).
    """
    cfg.validate()
    if cfg.strategy == "beam":
        return beam_search(model, src, cfg, bos_id, eos_id, banned_ids)
    strategy = greedy if cfg.strategy == "greedy" else sample
    return strategy(model, src, cfg, bos_id, eos_id, banned_ids, on_step)
