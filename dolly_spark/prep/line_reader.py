"""Lines of JSON-lines files, split across tasks by byte range.

The driver lists the input files and plans chunks: a plain-text file larger than
``chunk_bytes`` becomes several byte ranges, read by different tasks; gzip, UTF-16 and
unsupported compressions are one chunk each (none of them can be entered mid-file). A line
belongs to the range holding its first byte, so a line that crosses a boundary is read whole,
once. Every reader streams: a task holds one batch of lines, never a whole file.

A line longer than ``max_line_bytes`` is never held whole: the reader takes at most that many
bytes plus one, keeps a prefix and skips to the next newline in blocks, and the line becomes one
``line_too_long`` row. So a task's memory is bounded by the cap, whatever the input holds.

Line numbers stay exact lineage: a first, cheap pass counts the line starts in each range of a
split file (``count_line_starts``, bytes.count over 8 MiB blocks) and the driver turns the
counts into each range's first line number. Readers take an ``opener`` (a callable returning a
binary file object), so tests run them on bytes; tasks open paths, which are local on the
embedded engine and UC Volume (FUSE) paths on a cluster, visible to every executor.
"""

from __future__ import annotations

import codecs
import gzip
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

# Magic numbers of compressions the reader does not decompress (gzip is read, once).
_MAGIC = (
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PK\x03\x04", "zip"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"\x04\x22\x4d\x18", "lz4"),
)
GZIP_MAGIC = b"\x1f\x8b"
UNSUPPORTED_COMPRESSION = "unsupported_compression"

# File kinds: only TEXT files are split into byte ranges.
TEXT, GZIP, UTF16, UNSUPPORTED = "text", "gzip", "utf16", "unsupported"
DEFAULT_CHUNK_BYTES = 128 * 1024 * 1024  # Spark's own default split size (maxPartitionBytes)
_BLOCK = 8 * 1024 * 1024
_SKIP_BLOCK = 1024 * 1024  # bytes read at a time while skipping the rest of an overlong line
_RAW_KEEP = 4096  # bytes kept as raw text of an unreadable file's row or an overlong line's row
LINE_TOO_LONG = "line_too_long"
# Far above any real record (dolly's longest line is ~30 KB; the bad corpus has 5 MB fields, which
# keep their field-specific reason) and far below the engine's 128 MiB message limit.
DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024
MIN_MAX_LINE_BYTES = 1024

# (raw bytes, decoded text or None, error or None) of one line, without its line ending.
Line = tuple[bytes, "str | None", "str | None"]
Opener = Callable[[], BinaryIO]


def unsupported_compression(head: bytes, inside_gzip: bool = False) -> str | None:
    """What an unsupported compression is (``"bz2-compressed"``...), or None for plain text/gzip."""
    if inside_gzip and head.startswith(GZIP_MAGIC):
        return "gzip-compressed twice (gzip inside gzip)"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return f"{name}-compressed" + (" inside gzip" if inside_gzip else "")
    return None


def compression_problem(opener: Opener) -> str | None:
    """What a file is compressed with that the reader does not read (``"bz2-compressed"``,
    ``"gzip-compressed twice ..."``), from its first bytes; None for plain text, gzip or a corrupt
    gzip (ingest records that as ``corrupt_gzip``)."""
    with opener() as f:
        head = f.read(8)
    if not head.startswith(GZIP_MAGIC):
        return unsupported_compression(head)
    try:
        with opener() as raw, gzip.GzipFile(fileobj=raw) as g:
            return unsupported_compression(g.read(8), inside_gzip=True)
    except (OSError, EOFError, zlib.error):
        return None


def file_kind(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return GZIP
    if unsupported_compression(head):
        return UNSUPPORTED
    if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return UTF16
    return TEXT


@dataclass(frozen=True)
class Chunk:
    """Lines of ``path`` whose first byte lies in [start, end); the first is line ``first_line``."""

    path: str
    kind: str
    start: int
    end: int
    first_line: int = 1


def kind_of(path: str) -> str:
    with open(path, "rb") as f:
        return file_kind(f.read(8))


def _hidden(name: str) -> bool:
    return name.startswith(("_", "."))


def list_files(resolved: str) -> tuple[list[str], list[str]]:
    """(files to read, files skipped). A named file is read whatever its name; inside a folder,
    names starting with '_' or '.' (the file's or a parent folder's) are skipped, as Spark does."""
    root = Path(resolved)
    if root.is_file():
        return [str(root)], []
    read, skipped = [], []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root)
            (skipped if any(_hidden(part) for part in rel.parts) else read).append(str(p))
    return read, skipped


def plan_chunks(paths: list[str], chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[Chunk]:
    """Chunks of every file; ``first_line`` is still 1 for the second and later ranges of a file
    (``with_first_lines`` sets it from the line counts)."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    out = []
    for path in paths:
        size, kind = os.path.getsize(path), kind_of(path)
        if kind != TEXT or size <= chunk_bytes:
            out.append(Chunk(path, kind, 0, size))
            continue
        out += [Chunk(path, kind, s, min(s + chunk_bytes, size)) for s in range(0, size, chunk_bytes)]
    return out


def count_line_starts(opener: Opener, start: int, end: int) -> int:
    """How many lines begin in [start, end): position 0 (if the range holds it) and every byte
    after a newline, i.e. the newlines in [start - 1, end - 1)."""
    if end <= start:
        return 0
    lo = max(start - 1, 0)
    n = 1 if start == 0 else 0
    with opener() as f:
        f.seek(lo)
        left = end - 1 - lo
        while left > 0:
            block = f.read(min(_BLOCK, left))
            if not block:
                break
            n += block.count(b"\n")
            left -= len(block)
    return n


def with_first_lines(chunks: list[Chunk], counts: dict[tuple[str, int], int]) -> list[Chunk]:
    """Each range's first line number from the line counts of the ranges before it in its file."""
    seen: dict[str, int] = {}
    out = []
    for c in sorted(chunks, key=lambda c: (c.path, c.start)):
        before = seen.get(c.path, 0)
        out.append(replace(c, first_line=before + 1))
        seen[c.path] = before + counts.get((c.path, c.start), 0)
    return out


def check_max_line_bytes(max_line_bytes: int) -> int:
    if isinstance(max_line_bytes, bool) or not isinstance(max_line_bytes, int) or max_line_bytes < MIN_MAX_LINE_BYTES:
        raise ValueError(f"max_line_bytes: expected a whole number >= {MIN_MAX_LINE_BYTES}, got {max_line_bytes!r}")
    return max_line_bytes


def _skip_rest_of_line(f: BinaryIO) -> int:
    """Read up to and including the next newline (or EOF) in bounded blocks; bytes consumed."""
    n = 0
    while True:
        block = f.readline(_SKIP_BLOCK)
        n += len(block)
        if not block or block.endswith(b"\n"):
            return n


def _read_line(f: BinaryIO, max_line_bytes: int) -> tuple[bytes, int, bool]:
    """(the line, or the first bytes of an overlong one; bytes consumed; too long?). A line is
    too long when more than ``max_line_bytes`` bytes come before its newline."""
    raw = f.readline(max_line_bytes + 1)
    if len(raw) <= max_line_bytes or raw.endswith(b"\n"):
        return raw, len(raw), False
    return raw[:_RAW_KEEP], len(raw) + _skip_rest_of_line(f), True


def _text_line(raw: bytes) -> Line:
    raw = raw[:-1] if raw.endswith(b"\n") else raw
    raw = raw[:-1] if raw.endswith(b"\r") else raw
    try:
        return raw, raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw, None, "invalid_utf8"


def range_lines(f: BinaryIO, start: int, end: int, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[Line]:
    """Lines beginning in [start, end) of a seekable binary file; a UTF-8 BOM at byte 0 is dropped.
    A line over ``max_line_bytes`` is one ``line_too_long`` line holding its first bytes."""
    if start > 0:
        f.seek(start - 1)
        pos = start - 1 + _skip_rest_of_line(f)  # a line begun before ``start`` (or the newline before it)
    else:
        f.seek(0)
        pos = 0
    while pos < end:
        raw, used, too_long = _read_line(f, max_line_bytes)
        if not used:
            return
        bom = pos == 0 and raw.startswith(codecs.BOM_UTF8)
        pos += used
        if bom:
            raw = raw[len(codecs.BOM_UTF8) :]
        if too_long:
            yield raw, None, LINE_TOO_LONG
        else:
            yield _text_line(raw)


def _gzip_problem(opener: Opener) -> str | None:
    """None for a whole, readable gzip stream; else its error. Read through once, so a truncated or
    corrupt file is one ``corrupt_gzip`` row, never a few lines and then an error."""
    if compression_problem(opener):
        return UNSUPPORTED_COMPRESSION
    try:
        with opener() as raw, gzip.GzipFile(fileobj=raw) as g:
            while g.read(_BLOCK):
                pass
    except (OSError, EOFError, zlib.error):
        return "corrupt_gzip"
    return None


def _head(opener: Opener) -> bytes:
    with opener() as f:
        return f.read(_RAW_KEEP)


def chunk_lines(
    opener: Opener,
    kind: str,
    start: int = 0,
    end: int | None = None,
    verify_gzip: bool = True,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[Line]:
    """Every line of one chunk, streamed. Unreadable files give one line holding the error.
    ``verify_gzip=False`` (a peek at the first lines) skips the read-through of a gzip file; a
    corrupt one then raises while being read."""
    if kind == UNSUPPORTED:
        yield _head(opener), None, UNSUPPORTED_COMPRESSION
    elif kind == GZIP:
        problem = _gzip_problem(opener) if verify_gzip else None
        if problem:
            yield _head(opener), None, problem
            return
        with opener() as raw, gzip.GzipFile(fileobj=raw) as g:
            yield from range_lines(g, 0, float("inf"), max_line_bytes)
    elif kind == UTF16:
        yield from _utf16_lines(opener, max_line_bytes)
    else:
        with opener() as f:
            yield from range_lines(f, start, end if end is not None else float("inf"), max_line_bytes)


def _utf16_lines(opener: Opener, max_line_bytes: int) -> Iterator[Line]:
    # Whole-file decode: UTF-16 JSON lines are rare and small; a bad pair anywhere is one row.
    with opener() as f:
        content = f.read()
    try:
        text = content.decode("utf-16").lstrip("\ufeff")
    except UnicodeDecodeError:
        yield content[:_RAW_KEEP], None, "invalid_utf16"
        return
    pieces = text.split("\n")
    if pieces and pieces[-1] == "":
        pieces.pop()  # a final newline ends the last line; it does not start one
    for ln in pieces:
        raw = ln.encode("utf-8", "surrogatepass")
        if len(raw) > max_line_bytes:
            yield raw[:_RAW_KEEP], None, LINE_TOO_LONG
        else:
            yield raw, ln.rstrip("\r"), None
