"""`chitchat chat`: a conversation in the terminal, with commands to change category and decoding."""

from __future__ import annotations

import atexit
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

import typer

from chitchat.answering.decoding import OPTION_TYPES, DecodingConfig, parse_option_value
from chitchat.core.errors import InputError
from chitchat.cli.common import (D, BeamSize, Category, Device, MaxNew, ModelDir, N, NoRepeat, RepPenalty, RerankK,
                                 RerankMMI, RerankOwn, Seed, Strategy, Temperature, TopK, TopP, decoding_from,
                                 one_line_errors, load_chat_service, print_answers, truncation_note, user_input)

HELP = """commands:
  /category NAME   answer in this category (/category alone lists them, /category - clears it)
  /strategy NAME   greedy | beam | nucleus
  /set KEY=VALUE   any decoding option, e.g. /set top_p=0.9 (/set alone shows them)
  /reset           forget the conversation (the model reads its last turns) and go back to the
                   options given on the command line
  /help            this text
  /quit            leave (Ctrl-D and Ctrl-C too)"""


def chat(
    category: Category = None,
    strategy: Strategy = D.strategy,
    beam_size: BeamSize = D.beam_size,
    top_p: TopP = D.top_p,
    top_k: TopK = D.top_k,
    temperature: Temperature = D.temperature,
    n: N = D.n,
    seed: Seed = D.seed,
    max_new_tokens: MaxNew = D.max_new_tokens,
    no_repeat_ngram: NoRepeat = D.no_repeat_ngram_size,
    repetition_penalty: RepPenalty = D.repetition_penalty,
    rerank_k: RerankK = D.rerank_k,
    rerank_own: RerankOwn = D.rerank_own,
    rerank_mmi: RerankMMI = D.rerank_mmi,
    model: ModelDir = Path("data/model"),
    device: Device = "cpu",
) -> None:
    """Talk in a loop; /help lists the commands."""
    with one_line_errors():
        decoding = decoding_from(
            strategy=strategy, beam_size=beam_size, top_p=top_p, top_k=top_k, temperature=temperature,
            n=n, seed=seed, max_new_tokens=max_new_tokens, no_repeat_ngram_size=no_repeat_ngram,
            repetition_penalty=repetition_penalty, rerank_k=rerank_k, rerank_own=rerank_own,
            rerank_mmi=rerank_mmi,
        )
        service = load_chat_service(model, device)
        session = ChatSession(service, service.resolve_category(category), service.check_decoding(decoding))
        if decoding.rerank_k:
            service.index  # read now: a damaged index is one line here, not an error at the first question
    _line_editing()
    typer.echo("chitchat: type a question; /help lists the commands, /quit leaves")
    if service.max_history:
        typer.echo(f"(the model reads the last {service.max_history} turns of the conversation; /reset forgets them)")
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            typer.echo()
            return
        try:
            if not session.handle(user_input(line).strip()):
                return
        except (ValueError, InputError) as exc:  # a bad command or question, a damaged index: the talk goes on
            typer.echo(f"error: {exc}", err=True)
        except KeyboardInterrupt:
            typer.echo("(answer cancelled)", err=True)


class ChatSession:
    """The state of one conversation: category, decoding options and the turns so far."""

    def __init__(self, service, category: str | None, decoding: DecodingConfig):
        self.service = service
        self.start = (category, decoding)
        self.category, self.decoding = self.start
        self.history: list[str] = []

    def handle(self, line: str) -> bool:
        """Run one line (a command or a question); False when the user leaves."""
        if not line:
            return True
        if not line.startswith("/"):
            self.ask(line)
            return True
        command, _, arg = line[1:].partition(" ")
        if command in ("quit", "exit", "q"):
            return False
        handler = {"category": self.set_category, "strategy": self.set_strategy, "set": self.set_option,
                   "reset": self.reset, "help": lambda _: typer.echo(HELP)}.get(command)
        if handler is None:
            raise ValueError(f"unknown command /{command}; /help lists them")
        handler(arg.strip())
        return True

    def ask(self, question: str) -> None:
        reply = self.service.reply(question, self.category, self.decoding, self.history)
        print_answers(reply.answers, "bot> ")
        truncation_note(reply)
        from chitchat.answering.service import MAX_HISTORY_TURNS  # the service is loaded: torch is imported already

        self.history += [question, reply.answers[0].text if reply.answers else ""]
        del self.history[:-MAX_HISTORY_TURNS]  # the oldest turns go; the model reads only its max_history

    def set_category(self, name: str) -> None:
        if not name:
            for known in self.service.categories:
                typer.echo(("* " if known == self.category else "  ") + known)
            return
        self.category = None if name == "-" else self.service.resolve_category(name)
        typer.echo(f"(category: {self.category or 'none'})")

    def set_strategy(self, name: str) -> None:
        self.decoding = self.service.check_decoding(replace(self.decoding, strategy=name))
        typer.echo(f"(strategy: {name})")

    def set_option(self, assignment: str) -> None:
        if not assignment:
            typer.echo("  ".join(f"{k}={v}" for k, v in asdict(self.decoding).items()))
            return
        key, eq, value = assignment.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in OPTION_TYPES:
            raise ValueError(f"/set needs KEY=VALUE with KEY one of {', '.join(OPTION_TYPES)}")
        changed = replace(self.decoding, **{key: parse_option_value(key, value.strip())})
        self.decoding = self.service.check_decoding(changed)
        typer.echo(f"({key}: {getattr(self.decoding, key)})")

    def reset(self, _: str) -> None:
        self.category, self.decoding = self.start
        self.history.clear()
        typer.echo("(conversation reset)")


def _line_editing() -> None:
    """Arrow keys and a history kept across sessions, when a person is typing."""
    if not sys.stdin.isatty():
        return
    try:
        import readline
    except ImportError:  # Windows has no readline; input() still works without it
        return
    path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chitchat" / "chat_history"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        readline.read_history_file(path)
    except OSError:  # first run, or an unwritable home: editing works, history is not kept
        pass
    readline.set_history_length(1000)
    atexit.register(_save_history, readline, path)


def _save_history(readline, path: Path) -> None:
    try:
        readline.write_history_file(path)
    except OSError:
        pass
