"""Metrics for Russian chit-chat: perplexity, BLEU and chrF (sacrebleu), ROUGE (rouge-score with a
Unicode word tokenizer) and distinct-n. All text metrics score decoded text, never BPE pieces.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Sequence

from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

_WORD = re.compile(r"\w+", re.UNICODE)


class UnicodeWordTokenizer:
    """Lower-cased \\w+ words in any script; rouge-score's default keeps only [a-z0-9]."""

    name = "unicode-word-lower"

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())


def perplexity(nll_sum: float, count: int) -> float:
    """exp(total NLL / count): count is tokens for ppl_token, words for ppl_word."""
    return math.exp(nll_sum / count) if count else math.inf


def word_count(text: str) -> int:
    return len(text.split())


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """Corpus BLEU with the international tokenizer (13a glues «» — … to words) and its signature."""
    metric = BLEU(tokenize="intl")
    return metric.corpus_score(list(hypotheses), [list(references)]).score, str(metric.get_signature())


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    metric = CHRF()
    return metric.corpus_score(list(hypotheses), [list(references)]).score, str(metric.get_signature())


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 in [0, 1] over pairs."""
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=UnicodeWordTokenizer())
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for hyp, ref in zip(hypotheses, references):
        for name, score in scorer.score(ref, hyp).items():
            totals[name] += score.fmeasure
    n = max(1, len(hypotheses))
    return {name: value / n for name, value in totals.items()}


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique word n-grams / all word n-grams across `texts` (0 when there are none)."""
    seen, total = set(), 0
    for text in texts:
        words = text.split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0


_CYRILLIC_WORD = re.compile(r"[а-яё]+(?:-[а-яё]+)*")


@functools.lru_cache(maxsize=1)
def _morph():
    import pymorphy3  # the OpenCorpora dictionary: loaded once, only by the metric that needs it

    return pymorphy3.MorphAnalyzer()


def cyrillic_words(text: str) -> list[str]:
    """The Cyrillic words of `text`, lower-cased (hyphenated words stay whole: «кто-нибудь»)."""
    return _CYRILLIC_WORD.findall(text.lower())


def known_word_rate(texts: Sequence[str]) -> float:
    """Share of the Cyrillic words in `texts` that the OpenCorpora dictionary (pymorphy3) knows.

    Tells Russian from Russian-looking noise: «средролировать» is unknown, «спрашивай» known.
    Dictionary misses (slang, names, typos) lower the references' own rate too, so compare a
    model's rate with the references'. Every occurrence counts; 0.0 when there is no such word.
    """
    morph = _morph()
    known = total = 0
    cache: dict[str, bool] = {}
    for text in texts:
        for word in cyrillic_words(text):
            if word not in cache:
                cache[word] = morph.word_is_known(word)
            known += cache[word]
            total += 1
    return known / total if total else 0.0


def unique_answer_rate(answers: Sequence[str]) -> float:
    """Distinct answers (after stripping spaces) per answer: 1.0 when no two questions get the same one."""
    return len({a.strip() for a in answers}) / len(answers) if answers else 0.0
