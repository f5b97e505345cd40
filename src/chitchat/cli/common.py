"""What the `chitchat` commands share: the option types, one-line errors, loading the services,
printing answers."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from chitchat.answering.decoding import DecodingConfig
from chitchat.text.user_text import clean_user_text, replaced_note


def user_input(text: str) -> str:
    """`text` as typed (argv, stdin) with invalid UTF-8 and control characters replaced, saying so
    in one line on stderr; the command goes on."""
    text, found = clean_user_text(text)
    if found:
        typer.echo(replaced_note(found), err=True)
    return text


D = DecodingConfig()  # option defaults come from the decoding config, so they cannot drift apart

ModelDir = Annotated[Path, typer.Option("--model", help="model folder written by the train stage")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda (cpu by default: starting CUDA costs more than one answer)")]
Category = Annotated[Optional[str], typer.Option("--category", "-c", help="category of the question (any case)")]
Strategy = Annotated[str, typer.Option("--strategy", "-s", help="greedy | beam | nucleus")]
BeamSize = Annotated[int, typer.Option("--beam-size", help="beams kept by beam search")]
TopP = Annotated[float, typer.Option("--top-p", help="nucleus: keep the smallest set of tokens with this much probability")]
TopK = Annotated[int, typer.Option("--top-k", help="nucleus: keep only the k likeliest tokens (0 = all)")]
Temperature = Annotated[float, typer.Option("--temperature", help="nucleus: <1 sharper, >1 flatter")]
N = Annotated[int, typer.Option("--n", "-n", help="answers per question (beam: at most --beam-size)")]
Seed = Annotated[int, typer.Option("--seed", help="nucleus: the same seed gives the same answers")]
MaxNew = Annotated[int, typer.Option("--max-new-tokens", help="longest answer, in tokens")]
MinNew = Annotated[int, typer.Option("--min-new-tokens", help="shortest answer, in tokens")]
NoRepeat = Annotated[int, typer.Option("--no-repeat-ngram", help="never repeat an n-gram of this size (0 = off)")]
RepPenalty = Annotated[float, typer.Option("--repetition-penalty", help=">1 makes tokens already said less likely")]
LengthPenalty = Annotated[float, typer.Option("--length-penalty", help="beam: >1 favours longer answers")]
RerankK = Annotated[int, typer.Option("--rerank-k", help="also score the answers of the k most similar train questions "
                                      "and return the likeliest (0 = off; needs the index beside the model)")]
RerankOwn = Annotated[bool, typer.Option("--rerank-own/--no-rerank-own",
                                         help="rerank: the model's own answers compete with the retrieved ones")]
RerankMMI = Annotated[float, typer.Option("--rerank-mmi", help="rerank: subtract this x each answer's score "
                                          "with no question, against answers that fit everything (0 = off)")]


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Bad input becomes `chitchat: error: <problem>` and exit 1, never a traceback: a missing or
    damaged model file (InputError), a bad option or question (RequestError and DecodingConfig
    errors are ValueErrors), a file that cannot be read or written (OSError)."""
    try:
        yield
    except Exception as exc:
        from chitchat.core.io import problem_line  # on an error only: `chitchat --help` loads no more

        problem = problem_line(exc)
        if problem is None or os.environ.get("CHITCHAT_DEBUG"):
            raise
        typer.echo(f"chitchat: error: {problem}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("chitchat: interrupted", err=True)
        raise typer.Exit(130) from None


def load_chat_service(model: Path, device: str = "cpu"):
    """The service, imported here so `chitchat --help` does not pay for the model code."""
    from chitchat.answering.service import ChatService

    return ChatService.load(model, device)


def load_served_service(model: Path, device: str = "cpu"):
    """What `chitchat serve` serves: the chat service, or a language model's continuation service
    (it answers /v1/completions only)."""
    from chitchat.answering.service import ChatService, LanguageModelError

    try:
        return ChatService.load(model, device)
    except LanguageModelError:
        return load_lm_service(model, device)


def decoding_from(**options) -> DecodingConfig:
    """A validated decoding config from the command-line options."""
    return DecodingConfig(**options).validate()


def print_answers(answers, prefix: str = "") -> None:
    if len(answers) == 1:
        typer.echo(prefix + (answers[0].text or "(empty answer)"))
        return
    for i, a in enumerate(answers, 1):
        typer.echo(f"{prefix}{i}. {a.text or '(empty answer)'}  [{a.score:.3f}]")


def truncation_note(reply) -> None:
    if reply.truncated:
        typer.echo(f"note: the question was cut to the model's {reply.src_tokens} tokens", err=True)


def load_lm_service(model: Path, device: str = "cpu"):
    """The continuation service of a language model (model.task lm), imported here like load_chat_service."""
    from chitchat.answering.continuation import ContinuationService

    return ContinuationService.load(model, device)
