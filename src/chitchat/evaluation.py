"""Score a trained model on a pairs table: perplexity from teacher forcing, text metrics from
answers decoded as `evaluate.decoding` says (greedy, beam or nucleus). Each distinct
(question, category) is answered once and compared with each of its reference answers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import polars as pl
import torch

from chitchat import metrics as M
from chitchat.decoding import DecodingConfig, generate
from chitchat.io import config_from
from chitchat.models.base import Seq2Seq
from chitchat.tokenizer import Tokenizer
from chitchat.training.batching import collate, encode_pairs
from chitchat.training.loop import corpus_nll


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 64  # questions decoded together
    num_examples: int = 30  # rows in the examples table
    seed: int = 7  # picks the example rows
    decoding: DecodingConfig = field(default_factory=DecodingConfig)  # how answers are generated

    def __post_init__(self):
        if isinstance(self.decoding, dict):  # from params.yaml: evaluate.decoding is a mapping
            object.__setattr__(self, "decoding", config_from(DecodingConfig, self.decoding, "evaluate.decoding"))
        if self.batch_size < 1:
            raise ValueError(f"evaluate.batch_size must be >= 1, got {self.batch_size}")
        try:
            self.decoding.validate()
        except ValueError as exc:
            raise ValueError(f"evaluate.{exc}") from None


@torch.no_grad()
def generate_answers(model: Seq2Seq, tok: Tokenizer, questions: list[str], categories: list[str],
                     max_src_len: int, decoding: DecodingConfig, batch_size: int, device) -> list[str]:
    """The best answer per question (decoded to text), in the order of `questions`.

    Nucleus sampling draws from one generator per batch seeded by `decoding.seed`, so the same
    params give the same answers.
    """
    frame = pl.DataFrame({"question": questions, "answer": [""] * len(questions), "category": categories})
    examples = encode_pairs(frame, tok, max_src_len, 2, model.cfg.condition)
    answers: list[str] = []
    for start in range(0, len(examples), batch_size):
        src, _ = collate(examples[start : start + batch_size], tok.pad_id)
        for hyps in generate(model, src.to(device), decoding, tok.bos_id, tok.eos_id, tok.never_generated):
            answers.append(tok.decode(hyps[0].ids))
    return answers


def evaluate_model(model: Seq2Seq, tok: Tokenizer, pairs: pl.DataFrame, max_src_len: int,
                   max_tgt_len: int, cfg: EvalConfig, device) -> tuple[dict, pl.DataFrame]:
    """Return (metrics, one row per pair with the generated answer)."""
    examples = encode_pairs(pairs, tok, max_src_len, max_tgt_len, model.cfg.condition)
    nll, n_tokens = corpus_nll(model, examples, tok.pad_id, 4096, device)
    # Words of each reference as the model saw it (after truncation) plus its end of sentence, the
    # word-level convention: the EOS token's NLL is in the numerator, so it counts as a word.
    n_words = sum(M.word_count(tok.decode(e.tgt[1:])) + 1 for e in examples)

    prompts = pairs.select("question", "category").unique(maintain_order=True)
    answers = generate_answers(model, tok, prompts["question"].to_list(), prompts["category"].to_list(),
                               max_src_len, cfg.decoding, cfg.batch_size, device)
    scored = pairs.join(prompts.with_columns(pl.Series("generated", answers)),
                        on=["question", "category"], how="left", maintain_order="left")
    hyps, refs = scored["generated"].to_list(), scored["answer"].to_list()
    bleu, bleu_sig = M.bleu(hyps, refs)
    chrf, chrf_sig = M.chrf(hyps, refs)
    rouge = M.rouge(hyps, refs)
    result = {
        "pairs": pairs.height,
        "questions": prompts.height,
        "nll_per_token": nll / max(1, n_tokens),
        "ppl_token": M.perplexity(nll, n_tokens),
        "ppl_word": M.perplexity(nll, n_words),
        "bleu": bleu,
        "bleu_signature": bleu_sig,
        "chrf": chrf,
        "chrf_signature": chrf_sig,
        **rouge,
        "rouge_tokenizer": M.UnicodeWordTokenizer.name,
        "distinct_1": M.distinct_n(answers, 1),
        "distinct_2": M.distinct_n(answers, 2),
        "mean_answer_words": sum(map(M.word_count, answers)) / max(1, len(answers)),
        "mean_reference_words": sum(map(M.word_count, refs)) / max(1, len(refs)),
        "empty_answers": sum(not a.strip() for a in answers) / max(1, len(answers)),
        "decoding": asdict(cfg.decoding),
    }
    return result, scored


def examples_markdown(scored: pl.DataFrame, n: int, seed: int) -> str:
    """A Markdown table of `n` seeded rows: question, category, reference, generated."""
    rows = scored.sample(n=min(n, scored.height), seed=seed, shuffle=False) if scored.height else scored

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ") or "∅"

    lines = ["| question | category | reference | generated |", "|---|---|---|---|"]
    for r in rows.iter_rows(named=True):
        lines.append(f"| {cell(r['question'])} | {cell(r['category'])} | {cell(r['answer'])} | {cell(r['generated'])} |")
    return "\n".join(lines) + "\n"
