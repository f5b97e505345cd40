"""Decoding: hand-computed beams on a table-driven stub model (fairseq's habit), sampling filters,
and the real model types, whose cache reordering is checked against teacher forcing.
"""

import math

import pytest
import torch

from chitchat.answering.decoding import (DecodingConfig, Hypothesis, beam_search, generate, greedy, length_penalty,
                               sample, select_cache, select_encoded, top_k_filter, top_p_filter)
from chitchat.models import ModelConfig, build_model
from chitchat.models.base import Encoded, Seq2Seq

PAD, UNK, BOS, EOS, A, B, C, D = range(8)


class TableModel(Seq2Seq):
    """Next-token probabilities looked up by question and prefix: src[:, 0] names the question.

    `tables[q]` maps a prefix (tuple of generated ids) to {token: prob}; other prefixes get `default`.
    The cache is the fed prefix itself, so a wrongly reordered cache gives wrong distributions.
    """

    def __init__(self, tables: list[dict], default: dict | None = None, vocab: int = 8):
        super().__init__()
        self.tables, self.default, self.vocab = tables, default or {EOS: 1.0}, vocab

    def encode(self, src):
        return Encoded(torch.zeros(src.size(0), 1, 1), torch.ones(src.size(0), 1, dtype=torch.bool), src[:, 0].clone())

    def init_cache(self, enc):
        return {"prefix": enc.state.new_empty(enc.state.size(0), 0)}

    def decode_step(self, tokens, enc, cache):
        prefix = torch.cat([cache["prefix"], tokens.unsqueeze(1)], dim=1)
        rows = []
        for q, seen in zip(enc.state.tolist(), prefix[:, 1:].tolist()):  # BOS is not part of the key
            probs = torch.zeros(self.vocab)
            for tok, p in self.tables[q].get(tuple(seen), self.default).items():
                probs[tok] = p
            rows.append(probs.log())
        return torch.stack(rows), {"prefix": prefix}

    def decode(self, tgt_in, enc):
        cache, out = self.init_cache(enc), []
        for i in range(tgt_in.size(1)):
            logits, cache = self.decode_step(tgt_in[:, i], enc, cache)
            out.append(logits)
        return torch.stack(out, dim=1)


# Q0: a short hypothesis (B) beats a long one (A B) at alpha 0, loses at alpha 2.
Q0 = {(): {A: .6, B: .4}, (A,): {EOS: .3, A: .2, B: .5}, (B,): {EOS: .9, A: .05, B: .05},
      (A, B): {EOS: 1.0}, (A, A): {EOS: .4, B: .6}}
# Q1: the empty answer is the best, and the question is done a step before Q0.
Q1 = {(): {EOS: .7, B: .2, A: .1}, (B,): {EOS: .6, A: .4}, (A,): {EOS: .9, B: .1}}
# Q2: beam 1, alpha 2: early stopping keeps the empty answer, waiting finds the better (A).
Q2 = {(): {EOS: .5, A: .45, B: .05}, (A,): {EOS: .9, A: .1}}
STUB = TableModel([Q0, Q1, Q2])


def run(model, questions, banned=(), **kw):
    """generate() on the stub for questions by number; beam 2 and alpha 0 unless overridden."""
    cfg = DecodingConfig(**{"strategy": "beam", "beam_size": 2, "length_penalty": 0.0, **kw})
    return generate(model, torch.tensor([[q] for q in questions]), cfg, BOS, EOS, banned)


def ids_scores(hyps):
    return [(h.ids, round(h.score, 6)) for h in hyps]


def test_beam_returns_the_hand_computed_hypotheses():
    out = run(STUB, [0, 1], n=2)
    assert ids_scores(out[0]) == [([B], round(math.log(.36), 6)), ([A, B], round(math.log(.30), 6))]
    assert ids_scores(out[1]) == [([], round(math.log(.7), 6)), ([B], round(math.log(.12), 6))]
    assert all(h.score == pytest.approx(h.logprob) for hyps in out for h in hyps)  # alpha 0


def test_length_penalty_reorders_short_and_long():
    out = run(STUB, [0], n=2, length_penalty=2.0)[0]
    assert [h.ids for h in out] == [[A, B], [B]]
    assert out[0].score == pytest.approx(math.log(.30) / ((5 + 3) / 6) ** 2)  # 2 tokens + EOS
    assert out[1].score == pytest.approx(math.log(.36) / ((5 + 2) / 6) ** 2)
    assert out[0].logprob == pytest.approx(math.log(.30))


def test_early_stopping_false_waits_for_a_better_longer_hypothesis():
    kw = dict(beam_size=1, length_penalty=2.0, max_new_tokens=3)
    assert run(STUB, [2], early_stopping=True, **kw)[0][0].ids == []
    waited = run(STUB, [2], early_stopping=False, **kw)[0][0]
    assert waited.ids == [A] and waited.score == pytest.approx(math.log(.45 * .9) / length_penalty(2, 2.0))


def test_batched_beam_equals_one_question_at_a_time():
    together = run(STUB, [0, 1, 2, 1], n=2)
    alone = [run(STUB, [q], n=2)[0] for q in [0, 1, 2, 1]]
    assert [ids_scores(h) for h in together] == [ids_scores(h) for h in alone]


def test_beam_size_one_equals_greedy():
    for q in range(3):
        beam = run(STUB, [q], beam_size=1)[0][0]
        best = run(STUB, [q], strategy="greedy")[0][0]
        assert (beam.ids, beam.logprob) == (best.ids, pytest.approx(best.logprob))
    assert run(STUB, [0], strategy="greedy")[0][0].ids == [A, B]


def test_min_new_tokens_forbids_an_early_eos():
    assert ids_scores(run(STUB, [1], n=2, min_new_tokens=1)[0]) == [([B], round(math.log(.12), 6)),
                                                                    ([A], round(math.log(.09), 6))]
    assert run(STUB, [1], strategy="greedy", min_new_tokens=2)[0][0].ids == [B, A]


def test_max_new_tokens_finalizes_unfinished_beams():
    out = run(STUB, [0], n=2, max_new_tokens=1)[0]
    assert ids_scores(out) == [([A], round(math.log(.6), 6)), ([B], round(math.log(.4), 6))]


def test_banned_ids_are_never_generated():
    out = run(STUB, [0, 1], n=2, banned=[A])
    assert [h.ids for h in out[0]] == [[B], [B, B]]
    assert all(A not in h.ids for hyps in out for h in hyps)


REPEATER = TableModel([{}], default={A: .5, B: .3, EOS: .2})


@pytest.mark.parametrize("size, expected", [(0, [A] * 6), (1, [A, B]), (2, [A, A, B, A])])
def test_no_repeat_ngram_on_a_model_that_loves_repeating(size, expected):
    assert run(REPEATER, [0], strategy="greedy", max_new_tokens=6, no_repeat_ngram_size=size)[0][0].ids == expected


def test_repetition_penalty_discourages_seen_tokens():
    # 2 * log .5 < log .3 < 2 * log .3: A, then B, then A again
    assert run(REPEATER, [0], strategy="greedy", max_new_tokens=3, repetition_penalty=2.0)[0][0].ids == [A, B, A]


# --- sampling ---------------------------------------------------------------------------------------

def test_top_k_filter_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5], [0.0, -1.0, 5.0, 4.0]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [[False, True, True, False], [False, False, True, True]]
    assert torch.equal(top_k_filter(logits, 0), logits) and torch.equal(top_k_filter(logits, 9), logits)


def test_top_p_filter_keeps_the_smallest_nucleus():
    logits = torch.tensor([[.5, .3, .15, .05], [.05, .15, .3, .5]]).log()
    assert torch.isfinite(top_p_filter(logits, 0.7)).tolist() == [[True, True, False, False], [False, False, True, True]]
    assert torch.isfinite(top_p_filter(logits, 0.9)).sum(1).tolist() == [3, 3]
    assert torch.isfinite(top_p_filter(logits, 0.1)).sum(1).tolist() == [1, 1]  # the top token always stays
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_top_p_never_samples_outside_the_nucleus():
    nucleus = TableModel([{}], default={A: .5, B: .3, C: .15, EOS: .05})
    out = run(nucleus, [0], strategy="nucleus", top_p=0.75, n=1000, max_new_tokens=1, seed=3)[0]
    firsts = [h.ids[0] if h.ids else EOS for h in out]
    assert set(firsts) == {A, B} and 400 < firsts.count(A) < 850


UNIFORM = TableModel([{}], default={A: .25, B: .25, C: .25, D: .25})


def test_same_seed_same_text_different_seed_differs():
    texts = {seed: [h.ids for h in run(UNIFORM, [0], strategy="nucleus", n=4, max_new_tokens=10, seed=seed)[0]]
             for seed in (0, 0, 1)}
    again = [h.ids for h in run(UNIFORM, [0], strategy="nucleus", n=4, max_new_tokens=10, seed=0)[0]]
    assert texts[0] == again and texts[0] != texts[1]


def test_sampled_answers_are_sorted_by_logprob():
    out = run(REPEATER, [0], strategy="nucleus", n=8, max_new_tokens=5, seed=1)[0]
    assert len(out) == 8 and [h.score for h in out] == sorted((h.score for h in out), reverse=True)


# --- real model types -------------------------------------------------------------------------------

VOCAB = 12
TYPES = [dict(type="gru", layers=2), dict(type="lstm", attention="additive"), dict(type="cnn", layers=2),
         dict(type="transformer", layers=2)]
TYPE_IDS = [t["type"] for t in TYPES]


def tiny(variant) -> Seq2Seq:
    torch.manual_seed(0)
    return build_model(ModelConfig(vocab_size=VOCAB, pad_id=PAD, emb_dim=16, hidden_dim=32, dropout=0.0, **variant)).eval()


def sources() -> torch.Tensor:
    src = torch.randint(4, VOCAB, (3, 6), generator=torch.Generator().manual_seed(1))
    src[1, 3:] = PAD
    return src


def teacher_forced(model, src_row, hyp: Hypothesis, max_new_tokens: int) -> float:
    """Log-prob of `hyp` recomputed by one full `decode`; EOS is scored unless it was cut at the limit."""
    target = hyp.ids + ([] if len(hyp.ids) == max_new_tokens else [EOS])
    tgt_in = torch.tensor([[BOS] + target[:-1]]) if target else torch.tensor([[BOS]])
    logp = model.decode(tgt_in, model.encode(src_row.unsqueeze(0))).log_softmax(-1)[0]
    return float(logp[torch.arange(len(target)), torch.tensor(target)].sum().detach())


@pytest.mark.parametrize("variant", TYPES, ids=TYPE_IDS)
def test_incremental_decoding_and_reordered_cache_equal_full_decoding(variant):
    model, src = tiny(variant), sources()
    prefix = torch.randint(4, VOCAB, (3, 4), generator=torch.Generator().manual_seed(2))
    prefix[:, 0] = BOS
    with torch.no_grad():
        enc = model.encode(src)
        cache = model.init_cache(enc)
        for i in range(2):
            _, cache = model.decode_step(prefix[:, i], enc, cache)
        index = torch.tensor([2, 0, 0, 1])  # reorder, repeat and drop, as beam search does
        enc, cache, prefix = select_encoded(model, enc, index), select_cache(model, cache, index), prefix[index]
        steps = []
        for i in range(2, 4):
            logits, cache = model.decode_step(prefix[:, i], enc, cache)
            steps.append(logits)
        full = model.decode(prefix, model.encode(src[index]))[:, 2:]
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)


@pytest.mark.parametrize("variant", TYPES, ids=TYPE_IDS)
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_scores_equal_teacher_forced_logprobs(variant, alpha):
    model, src = tiny(variant), sources()
    cfg = DecodingConfig(strategy="beam", beam_size=4, n=4, length_penalty=alpha, max_new_tokens=7)
    out = beam_search(model, src, cfg, BOS, EOS)
    for row, hyps in zip(src, out):
        assert len(hyps) == 4 and [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            with torch.no_grad():
                expected = teacher_forced(model, row, h, cfg.max_new_tokens)
            assert h.logprob == pytest.approx(expected, abs=1e-4)
            length = len(h.ids) + (len(h.ids) < cfg.max_new_tokens)
            assert h.score == pytest.approx(h.logprob / length_penalty(length, alpha), abs=1e-4)
    best = greedy(model, src, cfg, BOS, EOS)
    assert all(b[0].logprob == pytest.approx(teacher_forced(model, r, b[0], 7), abs=1e-4) for r, b in zip(src, best))


@pytest.mark.parametrize("variant", TYPES, ids=TYPE_IDS)
def test_real_models_batched_equals_alone_and_beam_one_is_greedy(variant):
    model, src = tiny(variant), sources()
    cfg = DecodingConfig(strategy="beam", beam_size=3, n=2, max_new_tokens=6)
    together = beam_search(model, src, cfg, BOS, EOS)
    alone = [beam_search(model, src[i:i + 1, : int((src[i] != PAD).sum())], cfg, BOS, EOS)[0] for i in range(3)]
    assert [[h.ids for h in hs] for hs in together] == [[h.ids for h in hs] for hs in alone]
    assert [h.score for hs in together for h in hs] == pytest.approx([h.score for hs in alone for h in hs], abs=1e-5)
    one = beam_search(model, src, DecodingConfig(strategy="beam", beam_size=1, max_new_tokens=6), BOS, EOS)
    assert [h[0].ids for h in one] == [h[0].ids for h in greedy(model, src, cfg, BOS, EOS)]


@pytest.mark.parametrize("variant", TYPES, ids=TYPE_IDS)
def test_waiting_without_early_stopping_never_finds_worse(variant):
    model, src = tiny(variant), sources()
    runs = [beam_search(model, src, DecodingConfig(strategy="beam", beam_size=3, length_penalty=2.0, max_new_tokens=8,
                                                   early_stopping=stop), BOS, EOS) for stop in (True, False)]
    assert all(late[0].score >= early[0].score - 1e-6 for early, late in zip(*runs))


@pytest.mark.parametrize("variant", TYPES, ids=TYPE_IDS)
def test_real_models_sampling_limits_equal_greedy(variant):
    model, src = tiny(variant), sources()
    best = [h[0].ids for h in greedy(model, src, DecodingConfig(max_new_tokens=6), BOS, EOS)]
    for kw in (dict(top_k=1), dict(temperature=1e-4)):
        cfg = DecodingConfig(strategy="nucleus", max_new_tokens=6, seed=5, **kw)
        assert [h[0].ids for h in sample(model, src, cfg, BOS, EOS)] == best


@pytest.mark.parametrize("variant", TYPES, ids=TYPE_IDS)
@pytest.mark.parametrize("strategy", ["greedy", "beam", "nucleus"])
def test_real_models_respect_bans_and_no_repeat_ngrams(variant, strategy):
    model, src = tiny(variant), sources()
    n = 1 if strategy == "greedy" else 3
    cfg = DecodingConfig(strategy=strategy, n=n, beam_size=3, max_new_tokens=12, min_new_tokens=4,
                         no_repeat_ngram_size=2, seed=1)
    banned = [PAD, UNK, BOS, 4]
    out = generate(model, src, cfg, BOS, EOS, banned)
    for hyps in out:
        assert len(hyps) == n
        for h in hyps:
            bigrams = list(zip(h.ids, h.ids[1:]))
            assert len(bigrams) == len(set(bigrams)) and not set(h.ids) & set(banned + [EOS])
            assert len(h.ids) >= 4


@pytest.mark.parametrize("variant", TYPES[:1], ids=TYPE_IDS[:1])
def test_decoding_restores_training_mode(variant):
    model = tiny(variant).train()
    greedy(model, sources(), DecodingConfig(max_new_tokens=3), BOS, EOS)
    assert model.training


# --- config -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, field", [
    (dict(beam_size=0), "beam_size"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(temperature=0.0), "temperature"), (dict(temperature=-1.0), "temperature"),
    (dict(strategy="beam", beam_size=2, n=3), "n"), (dict(strategy="topk"), "strategy"),
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(min_new_tokens=50), "min_new_tokens"),
    (dict(n=2), "n"), (dict(top_k=-1), "top_k"), (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(no_repeat_ngram_size=-2), "no_repeat_ngram_size"),
])
def test_validate_rejects_bad_values(bad, field):
    with pytest.raises(ValueError, match=rf"^decoding\.{field} must be "):
        DecodingConfig(**bad).validate()


def test_validate_returns_the_config():
    cfg = DecodingConfig(strategy="nucleus", n=4, top_p=0.9)
    assert cfg.validate() is cfg
