"""The lines of an input file (of its members with the wanted suffixes), a chunk at a time.

Inputs have millions of lines, so nothing here loops over them in Python: a background thread
decompresses the file in blocks of CHUNK_BYTES and polars splits each block into lines
(`iter_line_chunks`). Line numbers run on through the members of an archive (`members` in the
report gives each one's line count). Hostile input (tests/test_hostile.py): a BOM at the start of a
member and CR line ends are dropped; NUL bytes are removed and counted; a line that is not UTF-8 is
null in its chunk, skipped as `invalid_utf8` by the readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import polars as pl

from chitchat.data.archives import STREAM_ERRORS, failing_file, raw_streams, stream_error
from chitchat.data.parallel import prefetch
from chitchat.data.read_report import ReadReport

CHUNK_BYTES = 16 << 20  # decompressed bytes parsed at a time: bounds memory, amortizes each polars call
PREFETCH_CHUNKS = 2  # chunks the decompressing thread may run ahead of the parser
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


def _chunks(path: Path, suffixes: tuple[str, ...], chunk_bytes: int) -> Iterator[LineChunk]:
    """Read each member in blocks, cut at the last line end of the block, split in polars."""
    line_no, member = 0, ""
    try:
        for member, stream in raw_streams(path, suffixes):
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
                    break
                nul = body.count(b"\x00") if b"\x00" in body else 0  # a memchr; counting is a pass of its own
                lines = _split_lines(body.replace(b"\x00", b"") if nul else body)
                if b"\r" in body:  # CRLF line ends
                    lines = lines.str.strip_chars_end("\r")
                if first and lines[0] is not None and lines[0].startswith("\ufeff"):
                    lines = lines.scatter(0, lines[0][1:])
                first = False
                yield LineChunk(line_no + 1, lines, member, nul)
                line_no += len(lines)
    except STREAM_ERRORS as exc:
        raise stream_error(failing_file(path, member), line_no, exc) from None


def iter_line_chunks(path: str | Path, suffixes: tuple[str, ...] = (".jsonl",),
                     chunk_bytes: int | None = None) -> Iterator[LineChunk]:
    """Every line of `path` (of its members with `suffixes`, in name order) in chunks of lines.

    Line numbers run on through the members. A truncated or corrupt stream raises InputError.
    """
    return prefetch(_chunks(Path(path), suffixes, chunk_bytes or CHUNK_BYTES), PREFETCH_CHUNKS)


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
