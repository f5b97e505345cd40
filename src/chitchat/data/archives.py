"""The bytes of an input, plain or compressed: a stream per part to read (a `.gz`, `.bz2`, `.xz` or
`.zst` file, the members of a `.zip` or `.tar.*` archive), with deflated zip members inflated by ISA-L.

An input path may be a glob (`data/raw/*.jsonl.zst`, `data/raw/**/part-*.jsonl.gz`): the files it
matches are read in name order as the parts of one input, as the members of an archive are.

Fatal problems (missing, empty or corrupt file; a glob that matches nothing; an archive without a
wanted member) raise InputError; so does a stream that fails mid-way, through `stream_error`. Every
member of an archive with a wanted suffix is read, in name order; macOS resource forks are left out.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import lzma
import os
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, Iterator

import zstandard
from isal import igzip, isal_zlib

from chitchat.core.errors import InputError


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


GLOB_CHARS = frozenset("*?[")


def is_glob(path: str | Path) -> bool:
    """Whether an input path is a pattern (`*`, `?` or `[`) rather than one file."""
    return bool(GLOB_CHARS & set(str(path)))


def expand(path: str | Path) -> list[Path]:
    """The files a glob matches (`**` spans folders), in name order."""
    files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files:
        raise InputError(path, "the pattern matches no file")
    return files


class _Zstd(io.RawIOBase):
    """A `.zst` file's frames, one after another (the public dump's chunks may hold several), with
    an end check zstandard's stream reader lacks: a file that ends inside a frame is an EOFError."""

    def __init__(self, path: Path) -> None:
        self._raw, self._dctx = open(path, "rb"), zstandard.ZstdDecompressor()
        self._frame, self._out, self._at = None, b"", 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()
        super().close()

    def readinto(self, buffer) -> int:
        while self._at == len(self._out):
            self._out, self._at = b"", 0  # nothing left to hand out, also when the file ends here
            data = self._raw.read(1 << 22)
            if not data:
                if self._frame is not None:
                    raise EOFError("zstd stream ends inside a frame")
                return 0
            parts = []
            while data:  # the frames this read holds, or the part of one
                if self._frame is None:
                    self._frame = self._dctx.decompressobj()
                parts.append(self._frame.decompress(data))
                data = b""
                if self._frame.eof:
                    data, self._frame = self._frame.unused_data, None
            self._out = b"".join(parts)
        n = min(len(buffer), len(self._out) - self._at)
        buffer[:n] = memoryview(self._out)[self._at:self._at + n]
        self._at += n
        return n


def _zstd_open(path: Path) -> IO[bytes]:
    return io.BufferedReader(_Zstd(path), 1 << 20)


def input_files(path: str | Path) -> list[Path]:
    """The files an input path names: the matches of a glob (expand), else the path itself."""
    return expand(path) if is_glob(path) else [Path(path)]


def raw_streams(path: Path, suffixes: tuple[str, ...]) -> Iterator[tuple[str, IO[bytes]]]:
    """(member name, binary stream) for each part of `path` to read; "" names a plain or compressed
    file; for a glob, each matched file's path (`path::member` for the members of archives among them)."""
    for file in input_files(path):
        yield from file_streams(file, suffixes, is_glob(path))


def file_streams(file: Path, suffixes: tuple[str, ...], in_glob: bool = False) -> Iterator[tuple[str, IO[bytes]]]:
    """raw_streams of one file of an input; `in_glob`: the names carry the file's path, as a glob's do."""
    for member, stream in _file_streams(file, suffixes):
        yield ((f"{file}::{member}" if member else str(file)) if in_glob else member), stream


def _file_streams(path: Path, suffixes: tuple[str, ...]) -> Iterator[tuple[str, IO[bytes]]]:
    """raw_streams of one file."""
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
    elif name.endswith(".bz2"):
        with bz2.open(path, "rb") as handle:
            yield "", handle
    elif name.endswith((".zst", ".zstd")):
        with _zstd_open(path) as handle:
            yield "", handle
    else:
        with open(path, "rb") as handle:
            yield "", handle


def stream_error(path: Path, line_no: int, exc: BaseException) -> InputError:
    """The one-line error for a stream that fails mid-way (with one of STREAM_ERRORS)."""
    if isinstance(exc, zipfile.BadZipFile):
        return InputError(path, f"corrupt zip member ({exc})")
    if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile):
        return InputError(path, f"cannot read ({exc.strerror or exc})")
    return InputError(path, f"compressed stream is truncated or corrupt after line {line_no}")


# what reading a stream of raw_streams may raise mid-way
STREAM_ERRORS = (EOFError, zlib.error, isal_zlib.error, lzma.LZMAError, tarfile.TarError, zipfile.BadZipFile, OSError,
                 zstandard.ZstdError)
