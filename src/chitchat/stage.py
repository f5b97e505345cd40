"""What every pipeline script shares: one-line errors with a non-zero exit, and a progress bar."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from chitchat.errors import InputError


@contextlib.contextmanager
def stage_errors(stage: str) -> Iterator[None]:
    """Turn bad input and bad params into `stage: error: <file>: <problem>` and exit 1.

    Set CHITCHAT_DEBUG=1 to see the traceback instead.
    """
    try:
        yield
    except (InputError, ValueError) as exc:
        if os.environ.get("CHITCHAT_DEBUG"):
            raise
        print(f"{stage}: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(f"{stage}: interrupted; no output was written", file=sys.stderr)
        raise SystemExit(130) from None


def progress_bar() -> Progress:
    """A progress bar on stderr with a free-text field for losses and speed."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
        console=Console(stderr=True), transient=False,
    )
