"""`chitchat ask`, `chitchat continue` and `chitchat categories`: one request, one answer, exit."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from chitchat.cli.common import (D, BeamSize, Category, Device, LengthPenalty, MaxNew, MinNew, ModelDir, N,
                                 NoRepeat, RepPenalty, RerankK, RerankMMI, RerankOwn, Seed, Strategy, Temperature,
                                 TopK, TopP, decoding_from, one_line_errors, load_chat_service, load_lm_service,
                                 print_answers, truncation_note, user_input)


def ask(
    question: Annotated[str, typer.Argument(help="the question, in quotes")],
    category: Category = None,
    strategy: Strategy = D.strategy,
    beam_size: BeamSize = D.beam_size,
    top_p: TopP = D.top_p,
    top_k: TopK = D.top_k,
    temperature: Temperature = D.temperature,
    n: N = D.n,
    seed: Seed = D.seed,
    max_new_tokens: MaxNew = D.max_new_tokens,
    min_new_tokens: MinNew = D.min_new_tokens,
    no_repeat_ngram: NoRepeat = D.no_repeat_ngram_size,
    repetition_penalty: RepPenalty = D.repetition_penalty,
    length_penalty: LengthPenalty = D.length_penalty,
    rerank_k: RerankK = D.rerank_k,
    rerank_own: RerankOwn = D.rerank_own,
    rerank_mmi: RerankMMI = D.rerank_mmi,
    model: ModelDir = Path("data/model"),
    device: Device = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Answer one question and exit."""
    question = user_input(question)
    with one_line_errors():
        decoding = decoding_from(
            strategy=strategy, beam_size=beam_size, top_p=top_p, top_k=top_k, temperature=temperature,
            n=n, seed=seed, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
            no_repeat_ngram_size=no_repeat_ngram, repetition_penalty=repetition_penalty,
            length_penalty=length_penalty, rerank_k=rerank_k, rerank_own=rerank_own,
            rerank_mmi=rerank_mmi,
        )
        service = load_chat_service(model, device)
        start = time.perf_counter()
        reply = service.reply(question, category, decoding)
        latency_ms = (time.perf_counter() - start) * 1000
    if as_json:
        typer.echo(json.dumps({
            "question": question,
            "category": reply.category,
            "decoding": asdict(decoding),
            "answers": [{"text": a.text, "score": a.score} for a in reply.answers],
            "truncated": reply.truncated,
            "latency_ms": round(latency_ms, 1),
        }, ensure_ascii=False))
        return
    print_answers(reply.answers)
    truncation_note(reply)


MaxNewText = Annotated[int, typer.Option("--max-new-tokens", help="longest continuation, in tokens")]


def continue_text(
    text: Annotated[str, typer.Argument(help="the beginning of a text, in quotes")],
    strategy: Strategy = D.strategy,
    beam_size: BeamSize = D.beam_size,
    top_p: TopP = D.top_p,
    top_k: TopK = D.top_k,
    temperature: Temperature = D.temperature,
    n: N = D.n,
    seed: Seed = D.seed,
    max_new_tokens: MaxNewText = 200,
    min_new_tokens: MinNew = D.min_new_tokens,
    no_repeat_ngram: NoRepeat = D.no_repeat_ngram_size,
    repetition_penalty: RepPenalty = D.repetition_penalty,
    length_penalty: LengthPenalty = D.length_penalty,
    model: ModelDir = Path("data/model"),
    device: Device = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Continue a text in the style of the training text (a model trained with model.task lm)."""
    text = user_input(text)
    with one_line_errors():
        decoding = decoding_from(
            strategy=strategy, beam_size=beam_size, top_p=top_p, top_k=top_k, temperature=temperature,
            n=n, seed=seed, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
            no_repeat_ngram_size=no_repeat_ngram, repetition_penalty=repetition_penalty,
            length_penalty=length_penalty,
        )
        service = load_lm_service(model, device)
        start = time.perf_counter()
        results = service.continue_text(text, decoding)
        latency_ms = (time.perf_counter() - start) * 1000
    if as_json:
        typer.echo(json.dumps({
            "text": text,
            "decoding": asdict(decoding),
            "continuations": [{"text": c.text, "continuation": c.continuation, "score": c.score,
                               "new_tokens": c.new_tokens} for c in results],
            "prompt_tokens": results[0].prompt_tokens,
            "truncated": results[0].truncated,
            "latency_ms": round(latency_ms, 1),
        }, ensure_ascii=False))
        return
    if len(results) == 1:
        typer.echo(results[0].text)
    else:
        for i, c in enumerate(results, 1):
            typer.echo(f"{i}. {c.text}  [{c.score:.3f}]")
    if results[0].truncated:
        typer.echo(f"note: only the last {results[0].prompt_tokens} tokens of the text were read "
                   "(the model's context)", err=True)


def categories(model: ModelDir = Path("data/model")) -> None:
    """List the categories the model knows, one a line."""
    with one_line_errors():
        service = load_chat_service(model)
    for name in service.categories:
        typer.echo(name)
    if not service.conditioned:
        typer.echo("note: this model was trained without categories; they do not change its answers", err=True)
