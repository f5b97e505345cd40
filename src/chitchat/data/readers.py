"""Line access to input files, plain or compressed (`.gz`, `.xz`, `.zip`, `.tar.*`), and the reader
for the Ответы@Mail.ru dump (`.jsonl`, `.jsonl.gz`, `.jsonl.zip`).

The dump has millions of lines, so nothing here loops over them in Python: a background thread
decompresses the file in blocks of CHUNK_BYTES, polars splits each block into lines and parses the
JSON (`qa_frames`). Only lines the vectorized parser could get wrong (a value of the wrong type, a key
twice, malformed JSON) go through `json.loads`, which defines the rules.

Fatal problems (missing, empty or corrupt file; a zip without a `.jsonl` member) raise InputError.
Recoverable problems (a malformed line, a record without `question`...) skip the record and are
counted by reason in a ReadReport, with the first line numbers of each, so nothing is lost silently.
Hostile input (tests/test_hostile.py): a BOM at the start of a member and CR line ends are dropped;
NUL bytes are removed and counted; a line that is not UTF-8 is skipped as `invalid_utf8`; of two
equal keys the last wins, as in json.loads; a lone surrogate escape ("\\ud800") becomes NUL, which
normalization removes; every member of an archive with the wanted suffix is read, in name order,
with line numbers running on through them (`members` in the report gives each one's line count).
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import queue
import re
import tarfile
import threading
import zipfile
import zlib
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, TypeVar

import polars as pl
from isal import igzip, isal_zlib

from chitchat.core.errors import InputError

MAX_EXAMPLE_LINES = 5
CHUNK_BYTES = 16 << 20  # decompressed bytes parsed at a time: bounds memory, amortizes each polars call
PREFETCH_CHUNKS = 2  # chunks the decompressing thread may run ahead of the parser
# threads that parse chunks at once (polars releases the GIL): with the decompressing thread and
# polars' own, every core has work; each chunk in flight holds some 100 MB of frames
PARSE_WORKERS = max(1, min(4, os.cpu_count() or 1))
BLANK = " \t\n\r\x0b\x0c"  # what bytes.strip() strips: a line of only these is blank
QA_DTYPE = pl.Struct({"question": pl.String, "category": pl.String, "responses": pl.List(pl.String)})
# Polars' JSON decoder coerces (5 -> "5", "x" -> ["x"]) and keeps the first of two equal keys; a
# line where that could matter goes to json.loads instead. Over-matching only costs speed.
_STRING = r'"(?:[^"\\]|\\.)*"'
_SUSPECT = "|".join([
    r'"(?:question|category)"\s*:\s*[^"\sn]',  # a value neither a string nor null
    r'"responses"\s*:\s*(?:[^\[\sn]|\[\s*(?:' + _STRING + r'\s*,\s*)*[^"\s\]])',  # not a list of strings
    *(rf'"{key}"\s*:.*"{key}"\s*:' for key in ("question", "responses", "category")),  # a key twice
    r'"[^"]*\\u[0-9a-fA-F]{4}[^"]*"\s*:',  # an escaped key name ("\u0071uestion")
])
WHITESPACE_ONLY = r"^[\s\x1c-\x1f]*$"  # Python's str.strip() would leave nothing
_SURROGATE = re.compile("[\ud800-\udfff]")
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class ReadReport:
    """What a reader saw: records read, skipped by reason, and responses dropped by reason."""

    lines: int = 0
    records_ok: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_lines: dict[str, list[int]] = field(default_factory=dict)
    responses_skipped: Counter = field(default_factory=Counter)
    category_missing: int = 0
    nul_bytes: int = 0  # NUL bytes removed from the lines before parsing
    members: dict[str, int] = field(default_factory=dict)  # archive member -> lines read from it

    def skip(self, reason: str, line_no: int) -> None:
        """Count one skipped record and remember its line number among the first few."""
        self.skipped[reason] += 1
        lines = self.skipped_lines.setdefault(reason, [])
        if len(lines) < MAX_EXAMPLE_LINES:
            lines.append(line_no)

    def skip_many(self, skips: pl.DataFrame) -> None:
        """Count skipped records given as a (line, reason) frame, in line order."""
        if skips.height == 0:
            return
        per_reason = (skips.sort("line").group_by("reason", maintain_order=True)
                      .agg(pl.len(), pl.col("line").head(MAX_EXAMPLE_LINES)))
        for reason, count, lines in per_reason.iter_rows():
            self.skipped[reason] += count
            kept = self.skipped_lines.setdefault(reason, [])
            kept.extend(lines[: MAX_EXAMPLE_LINES - len(kept)])

    def merge(self, other: "ReadReport") -> None:
        """Add the counts of a later part of the same input (a chunk read on its own)."""
        self.lines += other.lines
        self.records_ok += other.records_ok
        for reason, count in other.skipped.items():
            self.skipped[reason] += count
            kept = self.skipped_lines.setdefault(reason, [])
            kept.extend(other.skipped_lines.get(reason, [])[: MAX_EXAMPLE_LINES - len(kept)])
        self.responses_skipped.update(other.responses_skipped)
        self.category_missing += other.category_missing
        self.nul_bytes += other.nul_bytes
        for member, lines in other.members.items():
            self.members[member] = self.members.get(member, 0) + lines

    def as_dict(self) -> dict:
        return {
            "lines": self.lines,
            "records_ok": self.records_ok,
            "records_skipped": dict(sorted(self.skipped.items())),
            "records_skipped_total": sum(self.skipped.values()),
            "records_skipped_first_lines": dict(sorted(self.skipped_lines.items())),
            "responses_skipped": dict(sorted(self.responses_skipped.items())),
            "category_missing": self.category_missing,
            "nul_bytes_removed": self.nul_bytes,
            "members": dict(sorted(self.members.items())),
        }


@dataclass(frozen=True)
class QARecord:
    """One question with its answers, as read from the dump."""

    line: int
    question: str
    category: str
    responses: list[str]


@dataclass(frozen=True)
class LineChunk:
    """Consecutive lines of one input: line ends and a leading BOM removed, NUL bytes dropped."""

    first_line: int  # 1-based number of lines[0], counted through every member read
    lines: pl.Series  # String; null where the line is not valid UTF-8
    member: str  # archive member the lines come from ("" for a plain or .gz/.xz file)
    nul_bytes: int  # NUL bytes removed from these lines


def _members(path: Path, names: list[str], suffixes: tuple[str, ...]) -> list[str]:
    """Archive members with one of `suffixes`, in name order; none is fatal.

    macOS's resource forks (`__MACOSX/`, `._name`) are binary whatever their suffix: left out.
    """
    members = sorted(n for n in names if n.lower().endswith(suffixes) and not n.endswith("/")
                     and not n.startswith("__MACOSX/") and not Path(n).name.startswith("._"))
    if not members:
        shown = ", ".join(names[:5]) or "none"
        raise InputError(path, f"archive has no {' or '.join(suffixes)} member (members: {shown})")
    return members


class _Inflate(io.RawIOBase):
    """A deflated zip member inflated by ISA-L (twice zlib's speed or more: the reader thread is
    the one part of prepare that cannot be spread over cores), with zipfile's checks: data that
    ends early is an EOFError, a CRC-32 that does not match a BadZipFile."""

    def __init__(self, raw: IO[bytes], size: int, crc: int) -> None:
        self._raw, self._left, self._want = raw, size, crc
        self._inflate, self._crc = isal_zlib.decompressobj(-15), 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()
        super().close()

    def readall(self) -> bytes:
        """The rest of the member, inflated 16 MB at a time (RawIOBase's would go 8 KB at a time)."""
        parts, view = [], memoryview(bytearray(1 << 24))
        while n := self.readinto(view):
            parts.append(view[:n].tobytes())
        return b"".join(parts)

    def readinto(self, buffer) -> int:
        while not self._inflate.eof:
            data = self._inflate.unconsumed_tail
            if not data and self._left > 0:  # b"" when the file is shorter than its directory says
                data = self._raw.read(min(self._left, 1 << 22))
                self._left -= len(data)
            out = self._inflate.decompress(data, len(buffer))  # b"" drains output held back
            if out:
                self._crc = isal_zlib.crc32(out, self._crc)
                buffer[: len(out)] = out
                return len(out)
            if not data:
                raise EOFError("zip member ends before its deflated data does")
        if self._crc != self._want:
            raise zipfile.BadZipFile("Bad CRC-32")
        return 0


def open_zip_member(archive: zipfile.ZipFile, path: Path, name: str) -> IO[bytes]:
    """A deflated member through _Inflate, any other (stored, bzip2, lzma) through zipfile."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_DEFLATED or info.flag_bits & 0x1:  # encrypted: zipfile says so
        return archive.open(name)
    raw = open(path, "rb")
    raw.seek(info.header_offset)
    header = raw.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raw.close()
        raise zipfile.BadZipFile(f"bad local header of {name}")
    raw.seek(int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little"), os.SEEK_CUR)
    return io.BufferedReader(_Inflate(raw, info.compress_size, info.CRC), 1 << 20)


def _zip_stream(path: Path, suffixes: tuple[str, ...]) -> Iterator[tuple[str, IO[bytes]]]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise InputError(path, "not a valid zip archive (corrupt or truncated)") from None
    with archive:
        for name in _members(path, archive.namelist(), suffixes):
            with open_zip_member(archive, path, name) as handle:
                yield name, handle


def _tar_stream(path: Path, suffixes: tuple[str, ...]) -> Iterator[tuple[str, IO[bytes]]]:
    try:
        archive = tarfile.open(path, "r:*")
    except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error):
        raise InputError(path, "not a valid tar archive (corrupt or truncated)") from None
    with archive:
        files = {m.name: m for m in archive.getmembers() if m.isfile()}
        for name in _members(path, list(files), suffixes):
            handle = archive.extractfile(files[name])
            if handle is not None:
                yield name, handle


def _raw_streams(path: Path, suffixes: tuple[str, ...]) -> Iterator[tuple[str, IO[bytes]]]:
    """(member name, binary stream) for each part of `path` to read; "" names a non-archive."""
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
        with igzip.open(path, "rb") as handle:  # ISA-L: gzip's format and errors, faster
            yield "", handle
    elif name.endswith(".xz"):
        with lzma.open(path, "rb") as handle:
            yield "", handle
    else:
        with open(path, "rb") as handle:
            yield "", handle


def _stream_errors(path: Path, line_no: int, exc: BaseException) -> InputError:
    """The one-line error for a stream that fails mid-way."""
    if isinstance(exc, zipfile.BadZipFile):
        return InputError(path, f"corrupt zip member ({exc})")
    if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile):
        return InputError(path, f"cannot read ({exc.strerror or exc})")
    return InputError(path, f"compressed stream is truncated or corrupt after line {line_no}")


_STREAM_ERRORS = (EOFError, zlib.error, isal_zlib.error, lzma.LZMAError, tarfile.TarError, zipfile.BadZipFile, OSError)


def iter_lines(path: str | Path, suffixes: tuple[str, ...] = (".jsonl",)) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw line without the line end) across all members of `path`.

    In an archive (zip, tar) only members whose names end with one of `suffixes` are read. For a
    look at the first lines; whole files are read by iter_line_chunks.
    """
    path = Path(path)
    line_no = 0
    try:
        for _, stream in _raw_streams(path, suffixes):
            for raw in stream:
                line_no += 1
                if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                yield line_no, raw.rstrip(b"\r\n")
    except _STREAM_ERRORS as exc:
        raise _stream_errors(path, line_no, exc) from None


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
    line_no = 0
    try:
        for member, stream in _raw_streams(path, suffixes):
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
    except _STREAM_ERRORS as exc:
        raise _stream_errors(path, line_no, exc) from None


def _prefetch(items: Iterator[T], depth: int) -> Iterator[T]:
    """Run the iterator `items` in a thread up to `depth` items ahead.

    zlib, lzma and polars release the GIL, so decompressing the next block overlaps with parsing
    this one. Errors raised in the thread are raised here.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop, end = threading.Event(), object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put((None, exc))
        finally:
            getattr(items, "close", lambda: None)()

    thread = threading.Thread(target=work, name="chitchat-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = slots.get()
            if exc is not None:
                raise exc
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 1) -> Iterator[R]:
    """fn over items on `workers` threads, the results in the order of the items; at most
    workers + 1 items are in flight, so memory holds a few chunks whatever the input's size. An
    error in fn is raised here, in order; when the consumer stops, pending items are cancelled."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="chitchat-parse")
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def iter_line_chunks(path: str | Path, suffixes: tuple[str, ...] = (".jsonl",),
                     chunk_bytes: int | None = None) -> Iterator[LineChunk]:
    """Every line of `path` (of its members with `suffixes`, in name order) in chunks of lines.

    Line numbers run on through the members. A truncated or corrupt stream raises InputError.
    """
    return _prefetch(_chunks(Path(path), suffixes, chunk_bytes or CHUNK_BYTES), PREFETCH_CHUNKS)


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


def _text(value: str) -> str:
    """A lone surrogate escape ("\\ud800") becomes NUL, as polars' decoder makes it (normalize drops it)."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return _SURROGATE.sub("\x00", value)


def _parse(line: int, text: str) -> tuple:
    """(line, question, category, responses, reason, non-string responses) by json.loads: the rules."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return line, None, None, None, "malformed_json", 0
    if not isinstance(obj, dict):
        return line, None, None, None, "not_an_object", 0
    question, responses, category = obj.get("question"), obj.get("responses"), obj.get("category")
    if question is None:
        return line, None, None, None, "missing_question", 0
    if not isinstance(question, str):
        return line, None, None, None, "question_not_string", 0
    if responses is None:
        return line, None, None, None, "missing_responses", 0
    if not isinstance(responses, list):
        return line, None, None, None, "responses_not_list", 0
    answers = [_text(r) for r in responses if isinstance(r, str)]
    bad = len(responses) - len(answers)
    if not answers:
        return line, None, None, None, "no_responses", bad
    category = _text(category) if isinstance(category, str) and category.strip() else None
    return line, _text(question), category, answers, None, bad


_PARSED = {"line": pl.UInt32, "question": pl.String, "category": pl.String, "responses": pl.List(pl.String),
           "reason": pl.String, "bad": pl.Int64}


def _decode(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(decoded, failed): polars parses the lines; a failing batch is halved to isolate the bad lines."""
    try:
        return frame.select("line", rec=pl.col("text").str.json_decode(QA_DTYPE)).unnest("rec"), frame.clear()
    except pl.exceptions.PolarsError:
        if frame.height <= 16:
            return pl.DataFrame(schema={"line": pl.UInt32, **{f.name: f.dtype for f in QA_DTYPE.fields}}), frame
        half = frame.height // 2
        (ok_a, bad_a), (ok_b, bad_b) = _decode(frame.slice(0, half)), _decode(frame.slice(half))
        return pl.concat([ok_a, ok_b]), pl.concat([bad_a, bad_b])


def _classify(decoded: pl.DataFrame) -> pl.DataFrame:
    """The rules of _parse on lines polars decoded exactly (strings or null, lists of strings)."""
    n = pl.col("responses").list.len()
    reason = (pl.when(pl.col("question").is_null()).then(pl.lit("missing_question"))
              .when(pl.col("responses").is_null()).then(pl.lit("missing_responses"))
              .when(n == 0).then(pl.lit("no_responses")))
    blank = pl.col("category").is_null() | pl.col("category").str.contains(WHITESPACE_ONLY)
    return decoded.select(
        "line", "question", pl.when(blank).then(None).otherwise("category").alias("category"), "responses",
        reason.alias("reason"), pl.lit(0, pl.Int64).alias("bad"))


def parse_qa_lines(frame: pl.DataFrame, report: ReadReport) -> pl.DataFrame:
    """Valid records of (line, text) JSON lines as (line, question, category, responses).

    `category` is null where missing or blank. Skipped records and dropped responses are counted.
    """
    text = pl.col("text").str.strip_chars(BLANK)
    suspect = ~text.str.starts_with("{") | ~text.str.ends_with("}") | text.str.contains(_SUSPECT)
    frame = frame.with_columns(text, suspect=suspect)
    decoded, failed = _decode(frame.filter(~pl.col("suspect")))
    slow = pl.concat([frame.filter(pl.col("suspect")), failed]).select("line", "text")
    parsed = pl.concat([_classify(decoded),
                        pl.DataFrame([_parse(*row) for row in slow.iter_rows()], schema=_PARSED, orient="row")])
    parsed = parsed.sort("line")
    report.skip_many(parsed.filter(pl.col("reason").is_not_null()).select("line", "reason"))
    bad = int(parsed["bad"].sum())
    if bad:
        report.responses_skipped["not_a_string"] += bad
    ok = parsed.filter(pl.col("reason").is_null()).drop("reason", "bad")
    report.records_ok += ok.height
    report.category_missing += ok["category"].null_count()
    return ok


def qa_chunk(chunk: LineChunk) -> tuple[pl.DataFrame, ReadReport]:
    """The valid records of one chunk of a QA dump (see parse_qa_lines) and the chunk's own report:
    chunks can be parsed on several threads and their reports merged in order."""
    report = ReadReport()
    return parse_qa_lines(nonblank_lines(chunk, report), report), report


def qa_frames(path: str | Path, report: ReadReport, workers: int = 1) -> Iterator[pl.DataFrame]:
    """The valid records of a QA dump, a frame per chunk; skips are counted in `report`."""
    for records, part in ordered_map(qa_chunk, iter_line_chunks(path), workers):
        report.merge(part)
        if records.height:
            yield records
    if report.lines == 0:
        raise InputError(path, "file has no records (only blank lines)")


def read_qa_jsonl(path: str | Path, report: ReadReport) -> Iterator[QARecord]:
    """Yield valid records of a QA dump, counting every skipped one in `report`."""
    for frame in qa_frames(path, report):
        for line, question, category, responses in frame.iter_rows():
            yield QARecord(line, question, category or "", responses)
