"""Bronze ingest: every input line becomes a row, malformed ones included.

Files are split into byte ranges on the driver and read line by line in an Arrow UDF, so a
large file is read by many tasks and no task holds a whole file (prep/line_reader.py). Invalid
UTF-8, BOMs, UTF-16, CRLF and gzip are handled in one place, with the source file and line
number kept as lineage. Record ids are content addresses (``content_key`` plus an exact-duplicate
tiebreak), so the train/eval split never depends on file names, line order or chunking.
A named file is read whatever its name; unsupported compressions (bz2, xz, zstd, zip, gzip in
gzip) are refused for a named file and one ``unsupported_compression`` row inside a folder.
A line longer than ``max_line_bytes`` is one ``line_too_long`` row (its first bytes kept), read
in bounded memory. Works on local paths and UC Volume paths (executors read them through the Volume's FUSE mount);
the Hugging Face dataset id is resolved to a local file first.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import zlib
from pathlib import Path

import pyarrow as pa

from dolly_spark.ops.schemas import BRONZE_SCHEMA
from dolly_spark.prep import line_reader
from dolly_spark.prep.line_reader import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    TEXT,
    Chunk,
    chunk_lines,
    compression_problem,
    file_kind,
    kind_of,
    list_files,
    plan_chunks,
    with_first_lines,
)

log = logging.getLogger(__name__)

HF_DATASET_ID = "databricks/databricks-dolly-15k"
FIELDS = ("instruction", "context", "response", "category")

_ARROW_SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("source_file", pa.string()),
        ("line_number", pa.int64()),
        ("raw_line", pa.string()),
        *[(f, pa.string()) for f in FIELDS],
        ("ingest_error", pa.string()),
        ("field_errors", pa.list_(pa.string())),
        ("extra_keys", pa.list_(pa.string())),
    ]
)
_COUNT_SCHEMA = pa.schema([("path", pa.string()), ("start", pa.int64()), ("lines", pa.int64())])
_COUNT_DDL = "path string, start long, lines long"
_CHUNK_SCHEMA = "path string, kind string, start long, end long, first_line long"
BATCH_LINES = 4096  # lines per Arrow batch a reading task yields, at most ...
BATCH_BYTES = 16 * 1024 * 1024  # ... and raw bytes per batch: no message nears the engine's limit
MAX_READ_TASKS = 4096  # partitions of the chunk list: many small files share tasks beyond this


class InputUnavailableError(RuntimeError):
    """The hub dataset could not be fetched (offline): the message says which --input to pass."""


class UnsupportedInputError(ValueError):
    """A named input file that cannot be read as JSON lines (an unsupported compression)."""


def resolve_input(input_path: str) -> str:
    """A local/Volume path as is; the HF dataset id downloaded through the hub (needs network)."""
    if input_path == HF_DATASET_ID or input_path.startswith("hf://"):
        try:
            from huggingface_hub import hf_hub_download

            return hf_hub_download(repo_id=HF_DATASET_ID, filename="databricks-dolly-15k.jsonl", repo_type="dataset")
        except Exception as err:
            raise InputUnavailableError(
                f"could not download {HF_DATASET_ID} from the Hugging Face hub ({type(err).__name__}: "
                f"{err}). Offline, pass --input with a local or UC Volume path to the JSON lines file, "
                "e.g. --input ../shared/data/databricks-dolly-15k.jsonl"
            ) from err
    p = Path(input_path)
    if not p.exists():
        raise FileNotFoundError(f"--input {input_path!r} does not exist")
    if p.is_dir() and not any(x.is_file() for x in p.rglob("*")):
        raise FileNotFoundError(f"--input {input_path!r} is a directory with no files")
    return str(p.resolve())


def check_input(input_path: str) -> str:
    """Resolve ``--input`` and check it can be read, before anything is written.

    A named file in a compression the reader does not handle is an error (one line naming the
    file); inside a folder such a file becomes one ``unsupported_compression`` row instead.
    """
    resolved = resolve_input(input_path)
    p = Path(resolved)
    if not os.access(p, os.R_OK):
        raise PermissionError(f"--input {input_path!r} is not readable")
    if p.is_file():
        problem = compression_problem(lambda: open(p, "rb"))
        if problem:
            raise UnsupportedInputError(
                f"--input {resolved}: {problem}; only plain or gzip-compressed JSON lines are read "
                "(decompress it first)"
            )
    return resolved


def _hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def content_key(canonical: str | None, raw: bytes) -> str:
    """A record's content address: the hash of its canonical JSON (key order, spacing, escapes,
    BOM, CRLF and gzip do not matter), or of the raw line when it is not a readable record.

    Never the file name or line number, so renaming, reordering or extending the input does not
    change it; ``read_bronze`` adds a tiebreak for exact duplicates.
    """
    if canonical is not None:
        return _hex(b"record\x00" + canonical.encode("utf-8"))
    return _hex(b"line\x00" + raw)


def _parse_line(text: str) -> tuple[dict, str | None, list[str], list[str], str | None]:
    """(field values, error, field errors, extra keys, canonical JSON of a readable object)."""
    dup: list[str] = []

    def pairs_hook(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                dup.append(k)
            seen.add(k)
        return dict(pairs)

    try:
        obj = json.loads(text, object_pairs_hook=pairs_hook)
    except (json.JSONDecodeError, RecursionError):
        return {}, "malformed_json", [], [], None
    if not isinstance(obj, dict):
        return {}, "not_an_object", [], [], None
    if dup:
        return {}, "duplicate_key", [], [], None
    values, field_errors = {}, []
    for f in FIELDS:
        v = obj.get(f)
        if v is None or isinstance(v, str):
            values[f] = v
        else:
            values[f] = None
            field_errors.append(f"wrong_type:{f}")
    # A "\ud800" escape parses to a lone surrogate, which no UTF-8 column can hold.
    if any(isinstance(v, str) and not _utf8_encodable(v) for v in values.values()):
        return {}, "lone_surrogate", [], [], None
    extra = sorted(_printable_key(k) for k in obj if k not in FIELDS)
    canonical = json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return values, None, field_errors, extra, canonical


def _utf8_encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable_key(key: str) -> str:
    return key if _utf8_encodable(key) else key.encode("utf-8", "backslashreplace").decode("ascii")


def _columns(source: str, lines, first_line: int) -> dict[str, list]:
    """Arrow-ready columns of parsed lines. ``record_id`` holds the content key here;
    ``with_record_ids`` turns it into the record id (content key + exact-duplicate tiebreak)."""
    cols: dict[str, list] = {f.name: [] for f in _ARROW_SCHEMA}
    for i, (raw, text, err) in enumerate(lines, start=first_line):
        values, field_errors, extra, canonical = {}, [], [], None
        if err is None and not text.strip():
            err = "blank_line"
        if err is None:
            values, err, field_errors, extra, canonical = _parse_line(text)
        cols["record_id"].append(content_key(canonical, raw))
        cols["source_file"].append(source)
        cols["line_number"].append(i)
        cols["raw_line"].append(text if text is not None else raw.decode("utf-8", errors="replace"))
        for f in FIELDS:
            cols[f].append(values.get(f))
        cols["ingest_error"].append(err)
        cols["field_errors"].append(field_errors)
        cols["extra_keys"].append(extra)
    return cols


def split_file(path: str, content: bytes) -> dict[str, list]:
    """All rows of one file held in memory, as Arrow-ready columns (the readers' unit tests)."""
    source = path if path.startswith("/") else "/" + path
    kind = file_kind(content[:8])
    return _columns(source, chunk_lines(lambda: io.BytesIO(content), kind, 0, len(content)), 1)


def line_blocks(lines, batch_lines: int = BATCH_LINES, batch_bytes: int = BATCH_BYTES):
    """Lists of lines, each at most ``batch_lines`` long and ending at the first line that
    brings it to ``batch_bytes`` raw bytes (so one overlong block holds a single line)."""
    block, size = [], 0
    for line in lines:
        block.append(line)
        size += len(line[0])
        if len(block) >= batch_lines or size >= batch_bytes:
            yield block
            block, size = [], 0
    if block:
        yield block


def read_chunks(
    batches,
    batch_lines: int = BATCH_LINES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    batch_bytes: int = BATCH_BYTES,
):
    """mapInArrow body: each chunk row becomes Arrow batches bounded in rows and in bytes."""
    for batch in batches:
        for c in batch.to_pylist():
            lines = chunk_lines(
                lambda p=c["path"]: open(p, "rb"), c["kind"], c["start"], c["end"], max_line_bytes=max_line_bytes
            )
            first = c["first_line"]
            for block in line_blocks(lines, batch_lines, batch_bytes):
                yield pa.RecordBatch.from_pydict(_columns(c["path"], block, first), schema=_ARROW_SCHEMA)
                first += len(block)


def count_chunks(batches):
    """mapInArrow body of the counting pass: line starts per byte range."""
    for batch in batches:
        rows = batch.to_pylist()
        counts = [line_reader.count_line_starts(lambda p=r["path"]: open(p, "rb"), r["start"], r["end"]) for r in rows]
        yield pa.RecordBatch.from_pydict(
            {"path": [r["path"] for r in rows], "start": [r["start"] for r in rows], "lines": counts},
            schema=_COUNT_SCHEMA,
        )


def sample_keys(
    paths: list[str], lines_per_file: int = 50, max_files: int = 100, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> set[str] | None:
    """Keys of the JSON objects among the first lines of the first files, read on the driver (a
    few KiB, not a pass over the data); None when no sampled line is a readable object."""
    keys: set[str] = set()
    readable = False
    for path in paths[:max_files]:
        lines = chunk_lines(
            lambda p=path: open(p, "rb"), kind_of(path), verify_gzip=False, max_line_bytes=max_line_bytes
        )
        try:
            for _, text, err in itertools.islice(lines, lines_per_file):
                obj = _json_or_none(text) if err is None else None
                if isinstance(obj, dict):
                    readable = True
                    keys |= set(obj)
        except (OSError, EOFError, zlib.error):
            continue  # a corrupt gzip: the line ingest quarantines it
    return keys if readable else None


def _json_or_none(text: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def with_record_ids(lines):
    """record_id = content key, plus a tiebreak for exact duplicates: the n-th identical record
    (ordered by source file and line) gets sha256(key:n). Existing records keep their ids when
    files are renamed, reordered or extended (only copies of one content can trade places)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    n = F.row_number().over(Window.partitionBy("record_id").orderBy("source_file", "line_number")) - 1
    tiebroken = F.substring(F.sha2(F.concat_ws(":", F.col("record_id"), n.cast("string")), 256), 1, 20)
    return lines.withColumn("record_id", F.when(n == 0, F.col("record_id")).otherwise(tiebroken))


def ranges_to_count(chunks: list[Chunk]) -> list[Chunk]:
    """Every range of the files split into several ranges: only those need their lines counted
    (an unsplit file's one range starts at line 1)."""
    split = {c.path for c in chunks if c.kind == TEXT and c.start > 0}
    return [c for c in chunks if c.path in split]


def count_ranges(spark, ranges: list[Chunk]) -> dict[tuple[str, int], int]:
    """Line starts per (path, start), counted on the executors (one small row per range comes back)."""
    frame = spark.createDataFrame([(c.path, c.kind, c.start, c.end, c.first_line) for c in ranges], _CHUNK_SCHEMA)
    counted = frame.repartition(len(ranges)).mapInArrow(count_chunks, _COUNT_DDL).toArrow().to_pylist()
    return {(r["path"], r["start"]): r["lines"] for r in counted}


def number_chunks(spark, chunks: list[Chunk]) -> list[Chunk]:
    """Set each range's first line number, counting only the ranges of split files."""
    ranges = ranges_to_count(chunks)
    if not ranges:
        return chunks
    paths = {c.path for c in ranges}
    return [c for c in chunks if c.path not in paths] + with_first_lines(ranges, count_ranges(spark, ranges))


def read_bronze(
    spark, input_path: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
):
    """DataFrame of every line under ``input_path`` (file or directory; .jsonl, .json, .gz).

    A named file is read whatever its name; in a folder, '_' and '.' files are skipped (logged).
    Plain-text files larger than ``chunk_bytes`` are read by several tasks; a line longer than
    ``max_line_bytes`` becomes one ``line_too_long`` row holding its first bytes.
    """
    from pyspark.sql import functions as F

    line_reader.check_max_line_bytes(max_line_bytes)
    resolved = check_input(input_path)
    files, hidden = list_files(resolved)
    if hidden:
        log.warning("ignoring %d hidden or '_'-prefixed file(s) under %s: %s", len(hidden), resolved, hidden[:10])
    chunks = number_chunks(spark, plan_chunks(files, chunk_bytes))
    if not chunks:
        return spark.createDataFrame([], BRONZE_SCHEMA).withColumn("ingested_at", F.current_timestamp())
    rows = [(c.path, c.kind, c.start, c.end, c.first_line) for c in chunks]
    frame = spark.createDataFrame(rows, _CHUNK_SCHEMA).repartition(min(len(rows), MAX_READ_TASKS))

    def read_capped(batches):
        return read_chunks(batches, max_line_bytes=max_line_bytes)

    lines = frame.mapInArrow(read_capped, BRONZE_SCHEMA)
    return with_record_ids(lines).withColumn("ingested_at", F.current_timestamp())
