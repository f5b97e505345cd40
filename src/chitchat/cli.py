"""The `chitchat` console script: ask one question, chat in a loop, list the model's categories,
serve the web chat (`serve`) or run the Telegram bot (`bot`); `continue` continues a text with a
language model (model.task lm).

Bad input ends with one line on stderr and exit code 1 (CHITCHAT_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from chitchat.answering.decoding import OPTION_TYPES, DecodingConfig, parse_option_value
from chitchat.core.errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Talk to a chit-chat model trained by the pipeline (`dvc repro`).")
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

HELP = """commands:
  /category NAME   answer in this category (/category alone lists them, /category - clears it)
  /strategy NAME   greedy | beam | nucleus
  /set KEY=VALUE   any decoding option, e.g. /set top_p=0.9 (/set alone shows them)
  /reset           forget the conversation (the model reads its last turns) and go back to the
                   options given on the command line
  /help            this text
  /quit            leave (Ctrl-D and Ctrl-C too)"""


@contextmanager
def _errors() -> Iterator[None]:
    """Bad input becomes `chitchat: error: <problem>` and exit 1, never a traceback."""
    try:
        yield
    except (InputError, ValueError) as exc:  # RequestError and DecodingConfig errors are ValueErrors
        if os.environ.get("CHITCHAT_DEBUG"):
            raise
        typer.echo(f"chitchat: error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("chitchat: interrupted", err=True)
        raise typer.Exit(130) from None


def _load(model: Path, device: str = "cpu"):
    """The service, imported here so `chitchat --help` does not pay for the model code."""
    from chitchat.answering.service import ChatService

    return ChatService.load(model, device)


def _decoding(**options) -> DecodingConfig:
    """A validated decoding config from the command-line options."""
    return DecodingConfig(**options).validate()


def _print_answers(answers, prefix: str = "") -> None:
    if len(answers) == 1:
        typer.echo(prefix + (answers[0].text or "(empty answer)"))
        return
    for i, a in enumerate(answers, 1):
        typer.echo(f"{prefix}{i}. {a.text or '(empty answer)'}  [{a.score:.3f}]")


def _truncation_note(reply) -> None:
    if reply.truncated:
        typer.echo(f"note: the question was cut to the model's {reply.src_tokens} tokens", err=True)


@app.command()
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
    model: ModelDir = Path("data/model"),
    device: Device = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Answer one question and exit."""
    with _errors():
        decoding = _decoding(
            strategy=strategy, beam_size=beam_size, top_p=top_p, top_k=top_k, temperature=temperature,
            n=n, seed=seed, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
            no_repeat_ngram_size=no_repeat_ngram, repetition_penalty=repetition_penalty,
            length_penalty=length_penalty,
        )
        service = _load(model, device)
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
    _print_answers(reply.answers)
    _truncation_note(reply)


MaxNewText = Annotated[int, typer.Option("--max-new-tokens", help="longest continuation, in tokens")]


def _load_lm(model: Path, device: str = "cpu"):
    """The continuation service of a language model (model.task lm), imported here like _load."""
    from chitchat.answering.continuation import ContinuationService

    return ContinuationService.load(model, device)


@app.command("continue")
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
    with _errors():
        decoding = _decoding(
            strategy=strategy, beam_size=beam_size, top_p=top_p, top_k=top_k, temperature=temperature,
            n=n, seed=seed, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
            no_repeat_ngram_size=no_repeat_ngram, repetition_penalty=repetition_penalty,
            length_penalty=length_penalty,
        )
        service = _load_lm(model, device)
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


@app.command()
def categories(model: ModelDir = Path("data/model")) -> None:
    """List the categories the model knows, one a line."""
    with _errors():
        service = _load(model)
    for name in service.categories:
        typer.echo(name)
    if not service.conditioned:
        typer.echo("note: this model was trained without categories; they do not change its answers", err=True)


@app.command()
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
    model: ModelDir = Path("data/model"),
    device: Device = "cpu",
) -> None:
    """Talk in a loop; /help lists the commands."""
    with _errors():
        decoding = _decoding(
            strategy=strategy, beam_size=beam_size, top_p=top_p, top_k=top_k, temperature=temperature,
            n=n, seed=seed, max_new_tokens=max_new_tokens, no_repeat_ngram_size=no_repeat_ngram,
            repetition_penalty=repetition_penalty,
        )
        service = _load(model, device)
        session = ChatSession(service, service.resolve_category(category), service.check_decoding(decoding))
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
            if not session.handle(line.strip()):
                return
        except ValueError as exc:  # a bad command or question; the conversation goes on
            typer.echo(f"error: {exc}", err=True)
        except KeyboardInterrupt:
            typer.echo("(answer cancelled)", err=True)


MaxBatch = Annotated[int, typer.Option("--max-batch", help="questions answered together in one decoder call at most (1 = one at a time)")]
Threads = Annotated[int, typer.Option("--threads", help="torch CPU threads for decoding (0 = one fewer than the cores, at least 1)")]


def _set_threads(threads: int) -> None:
    """Leave a core to the event loop: torch's threads spinning on every core stall it (see README)."""
    import torch

    if threads < 0:
        raise ValueError(f"--threads must be >= 0, got {threads}")
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) - 1))


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port")] = 8000,
    model: ModelDir = Path("data/model"),
    device: Device = "cpu",
    max_batch: MaxBatch = 16,
    threads: Threads = 0,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's: critical | error | warning | info | debug")] = "info",
) -> None:
    """Serve the chat page and the JSON API (docs at /docs) until Ctrl-C."""
    with _errors():
        _set_threads(threads)
        service = _load(model, device)
        from chitchat.serve.app import create_app  # FastAPI only here: `ask` must start fast

        web = create_app(service, max_batch)
    import uvicorn

    typer.echo(f"chitchat: {model} on http://{host}:{port}/ (API docs: /docs)", err=True)
    uvicorn.run(web, host=host, port=port, log_level=log_level)


@app.command()
def bot(
    model: ModelDir = Path("data/model"),
    device: Device = "cpu",
    max_batch: MaxBatch = 16,
    threads: Threads = 0,
) -> None:
    """Run the Telegram bot until Ctrl-C; the token comes from $TELEGRAM_BOT_TOKEN."""
    token = os.environ.get("TELEGRAM_BOT_TOKEN", "").strip()
    if not token:
        typer.echo("chitchat: error: TELEGRAM_BOT_TOKEN is not set (create a bot with @BotFather and "
                   "export its token)", err=True)
        raise typer.Exit(1)
    with _errors():
        from chitchat.serve.bot import check_token, run_bot  # aiogram only here

        check_token(token)
        _set_threads(threads)
        service = _load(model, device)
        run_bot(service, token, max_batch)


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
        _print_answers(reply.answers, "bot> ")
        _truncation_note(reply)
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
