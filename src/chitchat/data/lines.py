"""The lines of an input file (of its members with the wanted suffixes), a chunk at a time.

Inputs have millions of lines, so nothing here loops over them in Python: a background thread
decompresses the file in blocks of CHUNK_BYTES and polars splits each block into lines
(`iter_line_chunks`); the files of a glob are decompressed READ_PARTS at a time, each on a thread
of its own, and handed on in name order. Line numbers run on through the members of an archive
and the files of a glob (`members` in the report gives each one's line count). Hostile input (tests/test_hostile.py): a BOM at the start of a
member and CR line ends are dropped; NUL bytes are removed and counted; a line that is not UTF-8 is
null in its chunk, skipped as `invalid_utf8` by the readers.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import polars as pl

from chitchat.data.archives import STREAM_ERRORS, file_streams, input_files, is_glob, raw_streams, stream_error
from chitchat.data.parallel import prefetch
from chitchat.data.read_report import ReadReport

CHUNK_BYTES = 16 << 20  # decompressed bytes parsed at a time: bounds memory, amortizes each polars call
PREFETCH_CHUNKS = 2  # chunks a decompressing thread may run ahead of the parser
# files of a glob decompressed at once, each on a thread (bz2, xz and gzip decompress on one core
# per stream: several files are the way to more); about 100 MB of blocks each
READ_PARTS = max(1, min(4, os.cpu_count() or 1))
BLANK = " \t\n\r\x0b\x0c"  # what bytes.strip() strips: a line of only these is blank
WHITESPACE_ONLY = r"^[\s\x1c-\x1f]*$"  # Python's str.strip() would leave nothing
TEXT_MEMBERS = (".txt", ".tsv", ".json", ".jsonl")  # archive members a text reader looks at


@dataclass(frozen=True)
class LineChunk:
    """Consecutive lines of one input: line ends and a leading BOM removed, NUL bytes dropped."""

    first_line: int  # 1-based number of lines[0], counted through every member read
    lines: pl.Series  # String; null where the line is not valid UTF-8
    member: str  # archive member the lines come from ("" for a plain or .gz/.xz file)
    nul_bytes: int  # NUL bytes removed from these lines


def iter_lines(path: str | Path, suffixes: tuple[str, ...] = (".jsonl",)) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw line without the line end) across all members of `path`.

    In an archive (zip, tar) only members whose names end with one of `suffixes` are read. For a
    look at the first lines; whole files are read by iter_line_chunks.
    """
    path = Path(path)
    line_no = 0
    try:
        for _, stream in raw_streams(path, suffixes):
            for raw in stream:
                line_no += 1
                if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                yield line_no, raw.rstrip(b"\r\n")
    except STREAM_ERRORS as exc:
        raise stream_error(path, line_no, exc) from None


def _split_lines(body: bytes) -> pl.Series:
    """The lines of `body` (no trailing newline) as strings; null where a line is not UTF-8."""
    try:
        return pl.Series([body], dtype=pl.Binary).cast(pl.String).str.split("\n").explode()
    except pl.exceptions.PolarsError:  # some line is not UTF-8: this chunk is decoded line by line
        return pl.Series([_utf8_or_none(line) for line in body.split(b"\n")], dtype=pl.String)


def _utf8_or_none(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _member_lines(stream, chunk_bytes: int) -> Iterator[tuple[pl.Series, int]]:
    """(lines, NUL bytes removed) of one member, read in blocks cut at the block's last line end."""
    pending, first = [], True  # bytes of the unfinished last line
    while True:
        block = stream.read(chunk_bytes)
        if block:
            cut = block.rfind(b"\n")
            if cut < 0:  # a line longer than a block
                pending.append(block)
                continue
            body, pending = b"".join([*pending, memoryview(block)[:cut]]), [block[cut + 1:]]  # one copy
        elif any(pending):  # the last line has no line end
            body, pending = b"".join(pending), []
        else:
            return
        nul = body.count(b"\x00") if b"\x00" in body else 0  # a memchr; counting is a pass of its own
        lines = _split_lines(body.replace(b"\x00", b"") if nul else body)
        if b"\r" in body:  # CRLF line ends
            lines = lines.str.strip_chars_end("\r")
        if first and lines[0] is not None and lines[0].startswith("\ufeff"):
            lines = lines.scatter(0, lines[0][1:])
        first = False
        yield lines, nul


def _file_lines(file: Path, suffixes: tuple[str, ...], chunk_bytes: int, in_glob: bool
                ) -> Iterator[tuple[str, pl.Series, int] | None]:
    """None at once (the thread that runs this has started), then (member, lines, NUL bytes) of
    every member of one file of an input."""
    yield None
    for member, stream in file_streams(file, suffixes, in_glob):
        for lines, nul in _member_lines(stream, chunk_bytes):
            yield member, lines, nul


def _read_ahead(files: list[Path], suffixes: tuple[str, ...], chunk_bytes: int, in_glob: bool, width: int
                ) -> Iterator[tuple[Path, Iterator]]:
    """(file, its chunks) in name order, with up to `width` files decompressed at once: each on a
    thread of its own, PREFETCH_CHUNKS ahead, so memory holds width * (PREFETCH_CHUNKS + 1) blocks."""
    queued, window = iter(files), deque()

    def start(file: Path) -> None:
        chunks = prefetch(_file_lines(file, suffixes, chunk_bytes, in_glob), PREFETCH_CHUNKS)
        next(chunks)  # the None _file_lines yields first: its thread now runs
        window.append((file, chunks))

    try:
        while True:
            while len(window) < width and (file := next(queued, None)) is not None:
                start(file)
            if not window:
                return
            file, chunks = window.popleft()
            try:
                yield file, chunks
            finally:  # also when the consumer stops mid-file
                chunks.close()
    finally:
        for _, chunks in window:
            chunks.close()


def _chunks(path: Path, suffixes: tuple[str, ...], chunk_bytes: int, width: int) -> Iterator[LineChunk]:
    """Every file of the input through _read_ahead; line numbers run on through files and members."""
    files, in_glob = input_files(path), is_glob(path)
    line_no, reading = 0, path
    parts = _read_ahead(files, suffixes, chunk_bytes, in_glob, width if in_glob else 1)
    try:
        for reading, chunks in parts:
            for member, lines, nul in chunks:
                yield LineChunk(line_no + 1, lines, member, nul)
                line_no += len(lines)
    except STREAM_ERRORS as exc:
        raise stream_error(reading if in_glob else path, line_no, exc) from None
    finally:
        parts.close()


def iter_line_chunks(path: str | Path, suffixes: tuple[str, ...] = (".jsonl",),
                     chunk_bytes: int | None = None, read_parts: int | None = None) -> Iterator[LineChunk]:
    """Every line of `path` (of its members with `suffixes`, in name order) in chunks of lines.

    Line numbers run on through the members and, for a glob, through its files, `read_parts`
    (READ_PARTS) of which are decompressed at once. A truncated or corrupt stream raises InputError.
    """
    return _chunks(Path(path), suffixes, chunk_bytes or CHUNK_BYTES, read_parts or READ_PARTS)


def note_chunk(chunk: LineChunk, report: ReadReport) -> None:
    """Count the chunk's removed NUL bytes and its lines under its archive member."""
    report.nul_bytes += chunk.nul_bytes
    if chunk.member:
        report.members[chunk.member] = report.members.get(chunk.member, 0) + len(chunk.lines)


def nonblank_lines(chunk: LineChunk, report: ReadReport) -> pl.DataFrame:
    """(line, text) of the chunk's non-blank lines; lines that are not UTF-8 are counted and left out."""
    note_chunk(chunk, report)
    frame = pl.DataFrame({"text": chunk.lines}).with_row_index("line", chunk.first_line)
    invalid = frame.filter(pl.col("text").is_null()).select("line", reason=pl.lit("invalid_utf8"))
    frame = frame.filter(pl.col("text").str.strip_chars(BLANK) != "")
    report.lines += frame.height + invalid.height
    report.skip_many(invalid)
    return frame


def blocks(path: str, report: ReadReport, count_lines: bool = False) -> Iterator[list[tuple[int, str]]]:
    """Blank-line separated blocks of (line number, stripped text) of a text input (TEXT_MEMBERS);
    lines that are not UTF-8 are skipped and counted (`count_lines`: every non-blank line also
    counts in report.lines)."""
    block: list[tuple[int, str]] = []
    for chunk in iter_line_chunks(path, TEXT_MEMBERS):
        note_chunk(chunk, report)
        for line_no, text in enumerate(chunk.lines.to_list(), chunk.first_line):
            if text is None:
                report.lines += count_lines
                report.skip("invalid_utf8", line_no)
                continue
            text = text.strip()
            if text:
                report.lines += count_lines
                block.append((line_no, text))
            elif block:
                yield block
                block = []
    if block:
        yield block
