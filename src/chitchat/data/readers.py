"""Line access to input files, plain or compressed (`.gz`, `.xz`, `.zip`, `.tar.*`), and the reader
for the Ответы@Mail.ru dump (`.jsonl`, `.jsonl.gz`, `.jsonl.zip`).

Fatal problems (missing, empty or corrupt file; a zip without a `.jsonl` member) raise InputError.
Recoverable problems (a malformed line, a record without `question`...) skip the record and are
counted by reason in a ReadReport, with the first line numbers of each, so nothing is lost silently.
"""

from __future__ import annotations

import gzip
import json
import lzma
import tarfile
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

from chitchat.errors import InputError

MAX_EXAMPLE_LINES = 5


@dataclass
class ReadReport:
    """What a reader saw: records read, skipped by reason, and responses dropped by reason."""

    lines: int = 0
    records_ok: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_lines: dict[str, list[int]] = field(default_factory=dict)
    responses_skipped: Counter = field(default_factory=Counter)
    category_missing: int = 0

    def skip(self, reason: str, line_no: int) -> None:
        """Count one skipped record and remember its line number among the first few."""
        self.skipped[reason] += 1
        lines = self.skipped_lines.setdefault(reason, [])
        if len(lines) < MAX_EXAMPLE_LINES:
            lines.append(line_no)

    def as_dict(self) -> dict:
        return {
            "lines": self.lines,
            "records_ok": self.records_ok,
            "records_skipped": dict(sorted(self.skipped.items())),
            "records_skipped_total": sum(self.skipped.values()),
            "records_skipped_first_lines": dict(sorted(self.skipped_lines.items())),
            "responses_skipped": dict(sorted(self.responses_skipped.items())),
            "category_missing": self.category_missing,
        }


@dataclass(frozen=True)
class QARecord:
    """One question with its answers, as read from the dump."""

    line: int
    question: str
    category: str
    responses: list[str]


def _members(path: Path, names: list[str], suffixes: tuple[str, ...]) -> list[str]:
    """Archive members with one of `suffixes`, in name order; none is fatal."""
    members = sorted(n for n in names if n.lower().endswith(suffixes) and not n.endswith("/"))
    if not members:
        shown = ", ".join(names[:5]) or "none"
        raise InputError(path, f"archive has no {' or '.join(suffixes)} member (members: {shown})")
    return members


def _zip_stream(path: Path, suffixes: tuple[str, ...]) -> Iterator[IO[bytes]]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise InputError(path, "not a valid zip archive (corrupt or truncated)") from None
    with archive:
        for name in _members(path, archive.namelist(), suffixes):
            with archive.open(name) as handle:
                yield handle


def _tar_stream(path: Path, suffixes: tuple[str, ...]) -> Iterator[IO[bytes]]:
    try:
        archive = tarfile.open(path, "r:*")
    except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error):
        raise InputError(path, "not a valid tar archive (corrupt or truncated)") from None
    with archive:
        files = {m.name: m for m in archive.getmembers() if m.isfile()}
        for name in _members(path, list(files), suffixes):
            handle = archive.extractfile(files[name])
            if handle is not None:
                yield handle


def _raw_streams(path: Path, suffixes: tuple[str, ...]) -> Iterator[IO[bytes]]:
    if not path.exists():
        raise InputError(path, "input file not found")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty")
    name = path.name.lower()
    if name.endswith(".zip"):
        yield from _zip_stream(path, suffixes)
    elif name.endswith((".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2")):
        yield from _tar_stream(path, suffixes)
    elif name.endswith(".gz"):
        with gzip.open(path, "rb") as handle:
            yield handle
    elif name.endswith(".xz"):
        with lzma.open(path, "rb") as handle:
            yield handle
    else:
        with open(path, "rb") as handle:
            yield handle


def iter_lines(path: str | Path, suffixes: tuple[str, ...] = (".jsonl",)) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw line without the line end) across all members of `path`.

    In an archive (zip, tar) only members whose names end with one of `suffixes` are read.
    """
    path = Path(path)
    line_no = 0
    try:
        for stream in _raw_streams(path, suffixes):
            for raw in stream:
                line_no += 1
                if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                yield line_no, raw.rstrip(b"\r\n")
    except (EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError, tarfile.TarError):
        raise InputError(path, f"compressed stream is truncated or corrupt after line {line_no}") from None
    except zipfile.BadZipFile as exc:
        raise InputError(path, f"corrupt zip member ({exc})") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None


def _parse(line_no: int, raw: bytes, report: ReadReport) -> QARecord | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        report.skip("invalid_utf8", line_no)
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        report.skip("malformed_json", line_no)
        return None
    if not isinstance(obj, dict):
        report.skip("not_an_object", line_no)
        return None
    question = obj.get("question")
    if question is None:
        report.skip("missing_question", line_no)
        return None
    if not isinstance(question, str):
        report.skip("question_not_string", line_no)
        return None
    responses = obj.get("responses")
    if responses is None:
        report.skip("missing_responses", line_no)
        return None
    if not isinstance(responses, list):
        report.skip("responses_not_list", line_no)
        return None
    answers = [r for r in responses if isinstance(r, str)]
    if len(answers) < len(responses):
        report.responses_skipped["not_a_string"] += len(responses) - len(answers)
    if not answers:
        report.skip("no_responses", line_no)
        return None
    category = obj.get("category")
    if not isinstance(category, str) or not category.strip():
        report.category_missing += 1
        category = ""
    return QARecord(line_no, question, category, answers)


def read_qa_jsonl(path: str | Path, report: ReadReport) -> Iterator[QARecord]:
    """Yield valid records of a QA dump, counting every skipped one in `report`."""
    for line_no, raw in iter_lines(path):
        if not raw.strip():
            continue
        report.lines += 1
        record = _parse(line_no, raw, report)
        if record is not None:
            report.records_ok += 1
            yield record
    if report.lines == 0:
        raise InputError(path, "file has no records (only blank lines)")
