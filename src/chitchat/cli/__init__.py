"""The `chitchat` console script: ask one question, chat in a loop, list the model's categories,
serve the web chat (`serve`) or run the Telegram bot (`bot`); `continue` continues a text with a
language model (model.task lm).

Bad input ends with one line on stderr and exit code 1 (CHITCHAT_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import typer

from chitchat.cli.answer import ask, categories, continue_text
from chitchat.cli.chat import ChatSession, chat
from chitchat.cli.serving import bot, serve

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Talk to a chit-chat model trained by the pipeline (`dvc repro`).")
app.command()(ask)
app.command("continue")(continue_text)
app.command()(categories)
app.command()(chat)
app.command()(serve)
app.command()(bot)


def main() -> None:
    app()


__all__ = ["ChatSession", "app", "main"]
