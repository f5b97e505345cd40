"""Score a trained model on a pairs table: perplexity from teacher forcing, text metrics from
answers decoded as `evaluate.decoding` says (greedy, beam or nucleus). Each distinct
(question, category) is answered once and compared with each of its reference answers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import polars as pl
import torch

from chitchat.evaluation import metrics as M
from chitchat.answering.continuation import continue_texts
from chitchat.answering.decoding import DecodingConfig, generate
from chitchat.answering.rerank import rerank
from chitchat.answering.retrieval import RetrievalIndex
from chitchat.core.io import config_from
from chitchat.models.base import Seq2Seq
from chitchat.text.prompt import recent_turns
from chitchat.text.tokenizer import Tokenizer
from chitchat.training.batching import collate, encode_pairs, encode_text_windows
from chitchat.training.loop import corpus_nll

PROMPT_KEYS = ["history", "question", "category"]  # what makes two prompts the same


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
                     max_src_len: int, decoding: DecodingConfig, batch_size: int, device,
                     histories: list[list[str]] | None = None, max_history: int | None = None,
                     index: RetrievalIndex | None = None, max_tgt_len: int = 48, hits=None) -> list[str]:
    """The best answer per question (decoded to text), in the order of `questions`.

    `histories` gives each question's earlier turns (oldest first); sources are built as in
    training (chitchat.text.prompt). Nucleus sampling draws from one generator per batch seeded by
    `decoding.seed`, so the same params give the same answers. With `decoding.rerank_k` the model
    also scores the answers `index` retrieves (chitchat.answering.rerank), as serving does; `hits`
    are those already retrieved, one list per question (None: `index` is searched).
    """
    if decoding.rerank_k and index is None:
        raise ValueError("evaluate.decoding.rerank_k needs the retrieval index in data/model/retrieval "
                         "(rerun `dvc repro -f train`)")
    histories = histories if histories is not None else [[] for _ in questions]
    frame = pl.DataFrame({"question": questions, "answer": [""] * len(questions), "category": categories,
                          "history": histories}, schema_overrides={"history": pl.List(pl.String)})
    examples = encode_pairs(frame, tok, max_src_len, 2, model.cfg.condition, max_history)
    neutral = None  # rerank_mmi: the same sources without their question
    if decoding.rerank_k and decoding.rerank_mmi:
        blank = frame.with_columns(question=pl.lit(""), history=pl.Series([[]] * frame.height, dtype=pl.List(pl.String)))
        neutral = [e.src for e in encode_pairs(blank, tok, max_src_len, 2, model.cfg.condition, max_history)]
    turns = [recent_turns(h, max_history) for h in histories]
    answers: list[str] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        if decoding.rerank_k:
            part = slice(start, start + batch_size)
            ranked = rerank(model, tok, index, [e.src for e in batch], questions[part], categories[part], turns[part],
                            decoding, max_tgt_len, device, neutral[part] if neutral is not None else None,
                            hits[part] if hits is not None else None)
            answers += [row[0].text if row else "" for row in ranked]
            continue
        src, _ = collate(batch, tok.pad_id)
        for hyps in generate(model, src.to(device), decoding, tok.bos_id, tok.eos_id, tok.never_generated):
            answers.append(tok.decode(hyps[0].ids))
    return answers


def retrieve(index: RetrievalIndex, prompts: pl.DataFrame, k: int = 1) -> list:
    """The `k` best train pairs for each prompt row (question, category, history)."""
    return index.search(prompts["question"].to_list(), prompts["category"].to_list(), prompts["history"].to_list(), k=k)


def top_answers(hits) -> list[str]:
    """The retrieval baseline's answer: the first hit's, per prompt."""
    return [found[0].answer if found else "" for found in hits]


def text_metrics(answers: list[str], hyps: list[str], refs: list[str]) -> dict:
    """Scores of generated text: `answers` one per prompt, `hyps` one per pair beside its reference."""
    bleu, bleu_sig = M.bleu(hyps, refs)
    chrf, chrf_sig = M.chrf(hyps, refs)
    return {
        "bleu": bleu,
        "bleu_signature": bleu_sig,
        "chrf": chrf,
        "chrf_signature": chrf_sig,
        **M.rouge(hyps, refs),
        "rouge_tokenizer": M.UnicodeWordTokenizer.name,
        "distinct_1": M.distinct_n(answers, 1),
        "distinct_2": M.distinct_n(answers, 2),
        "known_word_rate": M.known_word_rate(answers),
        "unique_answer_rate": M.unique_answer_rate(answers),
        "mean_answer_words": sum(map(M.word_count, answers)) / max(1, len(answers)),
        "empty_answers": sum(not a.strip() for a in answers) / max(1, len(answers)),
    }


def reference_metrics(refs: list[str]) -> dict:
    """What the references themselves score on the metrics that need no reference."""
    return {"reference_known_word_rate": M.known_word_rate(refs),
            "mean_reference_words": sum(map(M.word_count, refs)) / max(1, len(refs))}


def evaluate_model(model: Seq2Seq, tok: Tokenizer, pairs: pl.DataFrame, max_src_len: int,
                   max_tgt_len: int, cfg: EvalConfig, device, max_history: int | None = None,
                   index: RetrievalIndex | None = None) -> tuple[dict, pl.DataFrame]:
    """Return (metrics, one row per pair with the generated answer).

    `max_history` is the checkpoint's (None: every turn of the `history` column); each distinct
    (history the model sees, question, category) is answered once. With the model's retrieval
    `index`, its answers are scored too (under "retrieval") and shown beside the model's.
    """
    pairs = with_context(pairs, max_history)
    examples = encode_pairs(pairs, tok, max_src_len, max_tgt_len, model.cfg.condition)
    nll, n_tokens = corpus_nll(model, examples, tok.pad_id, 4096, device)
    # Words of each reference as the model saw it (after truncation) plus its end of sentence, the
    # word-level convention: the EOS token's NLL is in the numerator, so it counts as a word.
    n_words = sum(M.word_count(tok.decode(e.tgt[1:])) + 1 for e in examples)

    prompts = pairs.select(PROMPT_KEYS).unique(maintain_order=True)
    # one search serves both the baseline's column and rerank_k (its first hit is the baseline's answer)
    hits = retrieve(index, prompts, max(1, cfg.decoding.rerank_k)) if index is not None else None
    answers = generate_answers(model, tok, prompts["question"].to_list(), prompts["category"].to_list(),
                               max_src_len, cfg.decoding, cfg.batch_size, device, prompts["history"].to_list(),
                               index=index, max_tgt_len=max_tgt_len, hits=hits)
    columns = {"generated": answers}
    if hits is not None:
        columns["retrieval"] = top_answers(hits)
    scored = _scored(pairs, prompts, columns)
    refs = scored["answer"].to_list()
    result = {
        "pairs": pairs.height,
        "questions": prompts.height,
        "nll_per_token": nll / max(1, n_tokens),
        "ppl_token": M.perplexity(nll, n_tokens),
        "ppl_word": M.perplexity(nll, n_words),
        **text_metrics(answers, scored["generated"].to_list(), refs),
        **reference_metrics(refs),
        "decoding": asdict(cfg.decoding),
    }
    if index is not None:  # the baseline every model is compared with, on the same questions
        result["retrieval"] = text_metrics(columns["retrieval"], scored["retrieval"].to_list(), refs)
    return result, scored


def evaluate_retrieval(index: RetrievalIndex, pairs: pl.DataFrame, max_history: int) -> tuple[dict, pl.DataFrame]:
    """evaluate_model's text metrics for model type retrieval (no perplexity: it has no probabilities)."""
    pairs = with_context(pairs, max_history)
    prompts = pairs.select(PROMPT_KEYS).unique(maintain_order=True)
    answers = top_answers(retrieve(index, prompts))
    scored = _scored(pairs, prompts, {"generated": answers})
    refs = scored["answer"].to_list()
    result = {"pairs": pairs.height, "questions": prompts.height,
              **text_metrics(answers, scored["generated"].to_list(), refs), **reference_metrics(refs)}
    return result, scored


def _scored(pairs: pl.DataFrame, prompts: pl.DataFrame, columns: dict[str, list[str]]) -> pl.DataFrame:
    """`pairs` with each prompt's answers (one column per answerer) joined to every pair of the prompt."""
    answered = prompts.with_columns(*(pl.Series(name, values, dtype=pl.String) for name, values in columns.items()))
    return pairs.join(answered, on=PROMPT_KEYS, how="left", maintain_order="left")


def with_context(pairs: pl.DataFrame, max_history: int | None) -> pl.DataFrame:
    """`pairs` with a `history` column holding the turns the model sees (never null)."""
    if "history" not in pairs.columns:
        return pairs.with_columns(history=pl.lit([], dtype=pl.List(pl.String)))
    history = pl.col("history").fill_null(pl.lit([], dtype=pl.List(pl.String)))
    return pairs.with_columns(history=history if max_history is None else history.list.tail(max(0, max_history)))


def examples_markdown(scored: pl.DataFrame, n: int, seed: int) -> str:
    """A Markdown table of `n` seeded rows: question, category, reference, generated; with a context
    column (earlier turns joined by ` / `) where any pair has history, and the retrieval baseline's
    answer where `scored` has one."""
    rows = scored.sample(n=min(n, scored.height), seed=seed, shuffle=False) if scored.height else scored
    context = "history" in rows.columns and bool(rows["history"].list.len().sum())

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ") or "∅"

    retrieval = "retrieval" in rows.columns  # a generative model's table shows the baseline beside it
    head = ["context"] * context + ["question", "category", "reference", "generated"] + ["retrieval"] * retrieval
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows.iter_rows(named=True):
        cells = ([" / ".join(r["history"] or [])] * context + [r["question"], r["category"], r["answer"], r["generated"]]
                 + ([r["retrieval"]] if retrieval else []))
        lines.append("| " + " | ".join(map(cell, cells)) + " |")
    return "\n".join(lines) + "\n"


# --- language models (model.task lm) ----------------------------------------------------------------

PROMPT_WORDS = 30  # an example's prompt: the first half of a paragraph, at most this many words
REFERENCE_WORDS = 60  # words of the true continuation shown beside the generated one


def text_perplexity(model: Seq2Seq, tok: Tokenizer, texts: list[str], window: int, device) -> dict:
    """Teacher-forced NLL of `texts` in the training windows, as ppl per token and per word.

    Tokens are every token but BOS (EOS counted); words are each text's words plus one for its
    EOS, evaluate_model's convention (DESIGN.md §3), so ppl_word compares across tokenizers.
    """
    nll, n_tokens = corpus_nll(model, encode_text_windows(texts, tok, window), tok.pad_id, 4096, device)
    n_words = sum(M.word_count(t) + 1 for t in texts)
    return {"paragraphs": len(texts), "tokens": n_tokens, "words": n_words,
            "nll_per_token": nll / max(1, n_tokens), "ppl_token": M.perplexity(nll, n_tokens),
            "ppl_word": M.perplexity(nll, n_words)}


def evaluate_lm(model: Seq2Seq, tok: Tokenizer, valid: pl.DataFrame, test: pl.DataFrame, window: int,
                cfg: EvalConfig, device) -> tuple[dict, pl.DataFrame]:
    """Return (metrics, example rows) for a language model: perplexities of the `answer` texts of
    test (top level, the keys evaluate_model uses) and valid (under "valid"), and continuations
    of `cfg.num_examples` seeded test paragraphs from their first half, decoded as cfg.decoding says."""
    texts = test["answer"].to_list()
    sample = test.sample(n=min(cfg.num_examples, test.height), seed=cfg.seed, shuffle=False) if test.height else test
    prompts, references = [], []
    for text in sample["answer"].to_list():
        words = text.split()
        cut = min(PROMPT_WORDS, max(1, len(words) // 2))
        prompts.append(" ".join(words[:cut]))
        references.append(" ".join(words[cut : cut + REFERENCE_WORDS]) + (" …" if len(words) > cut + REFERENCE_WORDS else ""))
    generated = [c[0].continuation.strip() for c in continue_texts(model, tok, prompts, cfg.decoding, device,
                                                                     cfg.batch_size)]
    result = {
        "task": "lm",
        **text_perplexity(model, tok, texts, window, device),
        "valid": text_perplexity(model, tok, valid["answer"].to_list(), window, device),
        "window": window,
        "continuations": len(generated),
        "distinct_1": M.distinct_n(generated, 1),
        "distinct_2": M.distinct_n(generated, 2),
        "mean_continuation_words": sum(map(M.word_count, generated)) / max(1, len(generated)),
        "empty_continuations": sum(not g for g in generated) / max(1, len(generated)),
        "decoding": asdict(cfg.decoding),
    }
    return result, pl.DataFrame({"prompt": prompts, "reference": references, "generated": generated},
                                schema={"prompt": pl.String, "reference": pl.String, "generated": pl.String})


def continuations_markdown(rows: pl.DataFrame) -> str:
    """A Markdown table of evaluate_lm's example rows: prompt, true continuation, generated one."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ") or "∅"

    lines = ["| prompt | reference continuation | generated continuation |", "|---|---|---|"]
    lines += [f"| {cell(p)} | {cell(r)} | {cell(g)} |" for p, r, g in rows.iter_rows()]
    return "\n".join(lines) + "\n"
