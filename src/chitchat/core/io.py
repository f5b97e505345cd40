"""Atomic writes and params loading shared by every stage.

A stage that is interrupted must never leave a half-written file that DVC would take as valid:
everything is written to a temporary sibling and renamed into place. A write that fails for want of
room or of permission (a full disk, a read-only folder) is an OutputError naming the output; the
previous file stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from dataclasses import fields
from typing import Any, Iterator, TypeVar

import yaml

from chitchat.core.errors import InputError


# How the data stages write their tables: zstd at its fastest level. The tables are written once per
# stage run and read a few times; level 1 costs some 15% in size against the default (3) and saves
# about a fifth of the write time on a million-question dump.
PARQUET = {"compression": "zstd", "compression_level": 1}

# What a write gets from a full disk (ENOSPC, EDQUOT, EFBIG) or a folder it may not write in (EROFS,
# EACCES, EPERM). The last two are also what reading an input can get: they count only for an error
# that names the temporary file.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
DENIED_ERRNOS = frozenset({errno.EACCES, errno.EPERM})
_OS_ERROR = re.compile(r"os error (\d+)")  # polars (Rust) gives the errno only in the text: "... (os error 28)"


class OutputError(InputError):
    """An output that cannot be written: `<path>: cannot write (<reason>)`. An InputError, so every
    place that turns those into one line (stage_errors, the chitchat commands) shows it as well."""

    def __init__(self, path, code: int):
        super().__init__(path, f"cannot write ({os.strerror(code)})")
        self.errno = code


def write_errno(exc: BaseException, tmp: Path | None = None) -> int | None:
    """The errno of a failed write in `exc` or in the errors it came from (torch wraps the OSError
    of a full disk in a RuntimeError, polars puts it in the text of a ComputeError); None when
    `exc` is no failed write. With `tmp`, permission errors count only when they name it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = exc.errno if isinstance(exc, OSError) else None
        text = str(exc)
        if code is None and (found := _OS_ERROR.search(text)):
            code = int(found[1])
        if code in FULL_ERRNOS:
            return code
        if code in DENIED_ERRNOS and (tmp is None or str(tmp) in f"{getattr(exc, 'filename', None)} {text}"):
            return code
        exc = exc.__cause__ or exc.__context__
    return None


def problem_line(exc: BaseException) -> str | None:
    """The one line an error handler shows for `exc`: the message of bad input (InputError,
    ValueError), `<file>: <reason>` of an OSError (an input that cannot be read, a folder that
    cannot be made), `cannot write (<reason>)` of a full disk found in another error; None for
    anything else, whose traceback is worth seeing."""
    if isinstance(exc, (InputError, ValueError)):
        text = str(exc)
    elif isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        text = f"{exc.filename}: {reason}" if exc.filename else reason
    elif (code := write_errno(exc)) is not None:
        text = f"cannot write ({os.strerror(code)}): {exc}"
    else:
        return None
    return "; ".join(part.strip() for part in text.splitlines() if part.strip()) or type(exc).__name__


@contextlib.contextmanager
def _output_errors(path: Path, tmp: Path | None = None) -> Iterator[None]:
    """A failed write to `tmp` (or, with none, any OSError: making the temporary file or renaming
    it) becomes an OutputError naming `path`; other errors pass unchanged."""
    try:
        yield
    except InputError:  # an OutputError of a nested output, or bad input found while writing
        raise
    except Exception as exc:
        code = write_errno(exc, tmp) if tmp is not None else (exc.errno if isinstance(exc, OSError) else None)
        if code is None:
            raise
        raise OutputError(path, code) from exc


def _remove_stale(path: Path) -> None:
    """Remove the temporary siblings of `path` that a killed run left (`kill -9`, a power cut: no
    `finally` ran), so they do not pile up beside the output. Nothing else writes `path` meanwhile:
    DVC runs one stage at a time (as dedup_file assumes of its scratch folders)."""
    stale = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")  # tempfile's names: 8 random characters
    for entry in path.parent.iterdir():
        if stale.fullmatch(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    Whatever fails, the temporary file goes and `path` keeps its previous content; a write that
    fails for a full disk or a read-only folder raises OutputError naming `path`. A killed run's
    temporary file goes when the next run starts.
    """
    path = Path(path)
    with _output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _output_errors(path, tmp_path):
            yield tmp_path
        with _output_errors(path):
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; it replaces `path` as a whole only if the block succeeds
    (a full disk or a read-only folder: OutputError naming `path`, as atomic_path)."""
    path = Path(path)
    with _output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with _output_errors(path, tmp):
            yield tmp
        with _output_errors(path):
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write pretty, key-sorted JSON atomically (stable bytes for `dvc metrics diff`).

    ASCII-escaped on purpose: DVC calls a file whose bytes are mostly non-ASCII "binary" and
    refuses it as metrics, which a Cyrillic category list easily is.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, ensure_ascii=True, indent=2, sort_keys=True) + "\n", encoding="ascii")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def load_params(path: str | os.PathLike = "params.yaml") -> dict[str, Any]:
    """Read params.yaml; a missing or malformed file is an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "params file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise InputError(path, "expected a mapping of sections")
    from chitchat.core.params_schema import check_params  # pydantic, only where params are read

    check_params(data, str(path))
    return data


def section(params: dict[str, Any], name: str, path: str | os.PathLike = "params.yaml") -> dict:
    """One section of params.yaml; a missing section is an InputError naming it."""
    value = params.get(name)
    if not isinstance(value, dict):
        raise InputError(path, f"missing section '{name}'")
    return value


T = TypeVar("T")


def config_from(cls: type[T], params: dict, name: str, ignore: tuple[str, ...] = (), **filled: Any) -> T:
    """Build dataclass `cls` from a params section; unknown keys are a ValueError, so a typo in
    params.yaml (or in `dvc exp run -S`) stops the stage instead of silently using a default."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - known - set(ignore))
    if unknown:
        raise ValueError(f"unknown {name} params: {', '.join(unknown)}")
    return cls(**{k: v for k, v in params.items() if k in known}, **filled)
