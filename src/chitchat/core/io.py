"""Atomic writes and params loading shared by every stage.

A stage that is interrupted must never leave a half-written file that DVC would take as valid:
everything is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; it replaces `path` as a whole only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
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
