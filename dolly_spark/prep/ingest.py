"""Bronze ingest: every input line becomes a row, malformed ones included.

Files are read as bytes (``binaryFile``) and split into lines in an Arrow UDF, so invalid
UTF-8, BOMs, UTF-16, CRLF and gzip are all handled in one place with the source file and
line number kept as lineage. Record ids are content addresses (``content_key`` plus an
exact-duplicate tiebreak), so the train/eval split never depends on file names or line order.
A named file is read whatever its name; unsupported compressions (bz2, xz, zstd, zip, gzip in
gzip) are refused for a named file and one ``unsupported_compression`` row inside a folder.
Works on local paths and UC Volume paths; the Hugging Face dataset id is resolved to a local
file first.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import logging
import os
from pathlib import Path

import pyarrow as pa

from dolly_spark.ops.schemas import BRONZE_SCHEMA

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


# Magic numbers of compressions the reader does not decompress (gzip is read, once).
_MAGIC = (
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PK\x03\x04", "zip"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"\x04\x22\x4d\x18", "lz4"),
)
_GZIP = b"\x1f\x8b"
UNSUPPORTED_COMPRESSION = "unsupported_compression"


def unsupported_compression(head: bytes, inside_gzip: bool = False) -> str | None:
    """What an unsupported compression is (``"bz2-compressed"``...), or None for plain text/gzip."""
    if inside_gzip and head.startswith(_GZIP):
        return "gzip-compressed twice (gzip inside gzip)"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return f"{name}-compressed" + (" inside gzip" if inside_gzip else "")
    return None


def _file_compression_problem(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith(_GZIP):
        return unsupported_compression(head)
    try:
        with gzip.open(path, "rb") as g:
            return unsupported_compression(g.read(8), inside_gzip=True)
    except (OSError, EOFError):
        return None  # a corrupt gzip: ingest records it as ``corrupt_gzip``


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
        problem = _file_compression_problem(p)
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


def _decode_lines(content: bytes) -> tuple[list[tuple[bytes, str | None, str | None]], str | None]:
    """Split a file into (raw_bytes, text, error) per line. Returns (lines, file_error)."""
    inside_gzip = content[:2] == _GZIP
    if inside_gzip:
        try:
            content = gzip.decompress(content)
        except Exception:
            return [(content[:4096], None, "corrupt_gzip")], None
    if unsupported_compression(content[:8], inside_gzip):
        # Binary data split into "lines" would read as invalid_utf8 rows: one clear row instead.
        return [(content[:4096], None, UNSUPPORTED_COMPRESSION)], None
    if content[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        try:
            text = content.decode("utf-16").lstrip("\ufeff")
        except UnicodeDecodeError:
            return [(content[:4096], None, "invalid_utf16")], None
        return [(ln.encode("utf-8"), ln.rstrip("\r"), None) for ln in text.split("\n")], None
    if content[:3] == codecs.BOM_UTF8:
        content = content[3:]
    out = []
    for raw in content.split(b"\n"):
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            out.append((raw, raw.decode("utf-8"), None))
        except UnicodeDecodeError:
            out.append((raw, None, "invalid_utf8"))
    return out, None


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


def split_file(path: str, content: bytes) -> dict[str, list]:
    """All rows of one file, as Arrow-ready columns. ``record_id`` holds the content key here;
    ``read_bronze`` turns it into the record id (content key + exact-duplicate tiebreak)."""
    source = path if path.startswith(("/", "dbfs:", "s3:", "abfss:", "gs:")) else "/" + path
    lines, _ = _decode_lines(content)
    # A file ending in a newline yields one empty last piece: that is not a line.
    if lines and lines[-1][0] == b"" and lines[-1][2] is None:
        lines = lines[:-1]
    cols: dict[str, list] = {f.name: [] for f in _ARROW_SCHEMA}
    for i, (raw, text, err) in enumerate(lines, start=1):
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


def split_batches(batches):
    for batch in batches:
        d = batch.to_pydict()
        for path, content in zip(d["path"], d["content"]):
            yield pa.RecordBatch.from_pydict(split_file(path, content), schema=_ARROW_SCHEMA)


def _hidden(name: str) -> bool:
    return name.startswith(("_", "."))


def skipped_files(input_dir: str) -> list[str]:
    """Files the reader ignores by Spark convention: names starting with '_' or '.' (own or parent)."""
    root = Path(input_dir)
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and any(_hidden(part) for part in p.relative_to(root).parts)
    )


def with_record_ids(lines):
    """record_id = content key, plus a tiebreak for exact duplicates: the n-th identical record
    (ordered by source file and line) gets sha256(key:n). Existing records keep their ids when
    files are renamed, reordered or extended (only copies of one content can trade places)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    n = F.row_number().over(Window.partitionBy("record_id").orderBy("source_file", "line_number")) - 1
    tiebroken = F.substring(F.sha2(F.concat_ws(":", F.col("record_id"), n.cast("string")), 256), 1, 20)
    return lines.withColumn("record_id", F.when(n == 0, F.col("record_id")).otherwise(tiebroken))


def read_bronze(spark, input_path: str):
    """DataFrame of every line under ``input_path`` (file or directory; .jsonl, .json, .gz).

    A named file is read whatever its name; in a folder, '_' and '.' files are skipped (logged).
    """
    from pyspark.sql import functions as F

    resolved = check_input(input_path)
    if Path(resolved).is_dir():
        hidden = skipped_files(resolved)
        if hidden:
            log.warning("ignoring %d hidden or '_'-prefixed file(s) under %s: %s", len(hidden), resolved, hidden[:10])
        reader = spark.read.format("binaryFile").option("recursiveFileLookup", "true")
        files = reader.load(resolved).select("path", "content")
    elif _hidden(Path(resolved).name):
        # The engine's file listing drops '_'/'.' names even when named explicitly; the user named
        # this one, so the driver reads it (input paths are local or FUSE-mounted Volume paths).
        files = spark.createDataFrame([(resolved, Path(resolved).read_bytes())], "path string, content binary")
    else:
        files = spark.read.format("binaryFile").load(resolved).select("path", "content")
    lines = files.dropDuplicates(["path"]).mapInArrow(split_batches, BRONZE_SCHEMA)
    return with_record_ids(lines).withColumn("ingested_at", F.current_timestamp())
