"""`chitchat serve` (the web chat and JSON API) and `chitchat bot` (Telegram); FastAPI, uvicorn and
aiogram are imported only when a command runs, so `chitchat ask` starts fast."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from chitchat.cli.common import Device, ModelDir, one_line_errors, load_chat_service, load_served_service

MaxBatch = Annotated[int, typer.Option("--max-batch", help="questions answered together in one decoder call at most (1 = one at a time)")]
Threads = Annotated[int, typer.Option("--threads", help="torch CPU threads for decoding (0 = one fewer than the cores, at least 1)")]


def _set_threads(threads: int) -> None:
    """Leave a core to the event loop: torch's threads spinning on every core stall it (docs/serving.md)."""
    import torch

    if threads < 0:
        raise ValueError(f"--threads must be >= 0, got {threads}")
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) - 1))


def serve(
    host: Annotated[str, typer.Option("--host", help="address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port")] = 8000,
    model: ModelDir = Path("data/model"),
    device: Device = "cpu",
    max_batch: MaxBatch = 16,
    threads: Threads = 0,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's: critical | error | warning | info | debug")] = "info",
    max_queue: Annotated[int, typer.Option("--max-queue", help="requests that may wait for the model; more get 429 with Retry-After at once")] = 256,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds a request may wait for its answer (streamed: its first token), then 503 (0: no limit)")] = 60.0,
    api_key: Annotated[str, typer.Option("--api-key", help="when set, /v1/* and /api/* need 'Authorization: Bearer KEY' (default: $CHITCHAT_API_KEY; /health and /metrics stay open)", show_default=False)] = "",
) -> None:
    """Serve the chat page, the JSON API and an OpenAI-compatible /v1 API (docs at /docs) until Ctrl-C."""
    with one_line_errors():
        if max_queue < 1:
            raise ValueError(f"--max-queue must be >= 1, got {max_queue}")
        if timeout < 0:
            raise ValueError(f"--timeout must be >= 0 seconds (0: no limit), got {timeout:g}")
        _set_threads(threads)
        service = load_served_service(model, device)
        from chitchat.serve.app import create_app  # FastAPI only here: `ask` must start fast
        from chitchat.serve.ops import resolve_key

        key = resolve_key(api_key or None)
        web = create_app(service, max_batch, max_queue, timeout or None, key)
    import uvicorn

    typer.echo(f"chitchat: {model} on http://{host}:{port}/ (API docs: /docs; OpenAI API: /v1"
               f"{', key required' if key else ''})", err=True)
    uvicorn.run(web, host=host, port=port, log_level=log_level)


def bot(
    model: ModelDir = Path("data/model"),
    device: Device = "cpu",
    max_batch: MaxBatch = 16,
    threads: Threads = 0,
    rate_limit: Annotated[int, typer.Option("--rate-limit", help="messages a user may send at once, then as many per --rate-window (0: no limit)")] = 5,
    rate_window: Annotated[float, typer.Option("--rate-window", help="seconds per --rate-limit messages after the first burst")] = 10.0,
    max_chats: Annotated[int, typer.Option("--max-chats", help="chat states kept at most (least recently used go first)")] = 10_000,
    idle_hours: Annotated[float, typer.Option("--idle-hours", help="a chat silent this long is forgotten (settings, history)")] = 6.0,
) -> None:
    """Run the Telegram bot until Ctrl-C; the token comes from $TELEGRAM_BOT_TOKEN."""
    token = os.environ.get("TELEGRAM_BOT_TOKEN", "").strip()
    if not token:
        typer.echo("chitchat: error: TELEGRAM_BOT_TOKEN is not set (create a bot with @BotFather and "
                   "export its token)", err=True)
        raise typer.Exit(1)
    with one_line_errors():
        from chitchat.serve.bot import check_bot_options, check_token, run_bot  # aiogram only here

        options = dict(rate_limit=rate_limit, rate_window=rate_window, max_chats=max_chats,
                       idle_seconds=idle_hours * 3600)
        check_token(token)
        check_bot_options(**options)
        _set_threads(threads)
        service = load_chat_service(model, device)
        run_bot(service, token, max_batch, **options)
