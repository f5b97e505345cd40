"""What every pipeline script shares: one-line errors with a non-zero exit, and a progress bar."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Callable, Iterator, NoReturn

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from chitchat.core.io import problem_line


@contextlib.contextmanager
def stage_errors(stage: str) -> Iterator[None]:
    """Turn bad input and bad params into `stage: error: <file>: <problem>` and exit 1; so too an
    output that cannot be written (`<file>: cannot write (No space left on device)`, the previous
    file kept) and an OSError (`<file>: <reason>`). Any other error keeps its traceback.

    Set CHITCHAT_DEBUG=1 to see the traceback instead.
    """
    try:
        yield
    except Exception as exc:
        problem = problem_line(exc)
        if problem is None or os.environ.get("CHITCHAT_DEBUG"):
            raise
        print(f"{stage}: error: {problem}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(f"{stage}: interrupted; no output was written", file=sys.stderr)
        raise SystemExit(130) from None


def run_stage(app: Callable[[], object]) -> NoReturn:
    """Run a data stage's typer app as the program, then end the process at once with its exit code.

    When the app returns, every output is written, closed and renamed into place; the streams are
    flushed here. What Python's own shutdown would add is tearing down the modules loaded (for split,
    scikit-learn with scipy and pandas: about 0.3 s) and freeing tables the kernel frees anyway.
    An exception other than SystemExit goes the usual way, traceback and all.
    """
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, status 1, as Python does
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe has nothing left to flush into
            stream.flush()
    os._exit(code)


def progress_bar() -> Progress:
    """A progress bar on stderr with a free-text field for losses and speed."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
        console=Console(stderr=True), transient=False,
    )
