import math

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from chitchat.evaluation import metrics as M
from chitchat.models.base import Encoded, Seq2Seq
from chitchat.text.prompt import Example
from chitchat.training.loop import corpus_nll

HYPS = ["Привет, как дела?", "Всё хорошо — спасибо!", "не знаю…", "«Ёлки» это ель"]
REFS = ["Привет! Как дела?", "Всё отлично, спасибо", "Не знаю", "«Ёлки» — это ели"]


def test_bleu_equals_sacrebleu_with_intl_tokenizer():
    ours, signature = M.bleu(HYPS, REFS)
    theirs = sacrebleu.corpus_bleu(HYPS, [REFS], tokenize="intl").score
    assert ours == pytest.approx(theirs) and ours > 0
    assert "tok:intl" in signature


def test_chrf_equals_sacrebleu():
    assert M.chrf(HYPS, REFS)[0] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)


def test_rouge_identical_cyrillic_is_one_where_the_default_tokenizer_gives_zero():
    text = "Мама мыла раму, а папа читал газету"
    assert M.rouge([text], [text]) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    default = rouge_scorer.RougeScorer(["rouge1"]).score(text, text)["rouge1"].fmeasure
    assert default == 0.0  # the trap the Unicode tokenizer avoids


def test_rouge_partial_overlap():
    scores = M.rouge(["кот сидит дома"], ["кот сидит на крыше"])
    assert scores["rouge1"] == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))


def test_distinct_n():
    assert M.distinct_n(["а б а б"], 1) == 0.5
    assert M.distinct_n(["а б а б"], 2) == pytest.approx(2 / 3)
    assert M.distinct_n([""], 2) == 0.0


class Uniform(Seq2Seq):
    """Every next token equally likely."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode(self, src):
        return Encoded(src, src != 0, None)

    def decode(self, tgt_in, enc):
        return torch.zeros(*tgt_in.shape, self.vocab) + self.dummy


def test_perplexity_of_uniform_model_equals_vocab_size():
    vocab = 37
    examples = [Example([5, 6, 3], [2, 7, 8, 9, 3]), Example([5, 3], [2, 10, 3])]
    nll, count = corpus_nll(Uniform(vocab), examples, pad_id=0, max_tokens=100, device=torch.device("cpu"))
    assert count == 4 + 2  # EOS counted, BOS and pad not
    assert M.perplexity(nll, count) == pytest.approx(vocab)
    assert math.isinf(M.perplexity(0.0, 0))
