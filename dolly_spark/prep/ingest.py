"""Bronze ingest: every input line becomes a row, malformed ones included.

Files are read as bytes (``binaryFile``) and split into lines in an Arrow UDF, so invalid
UTF-8, BOMs, UTF-16, CRLF and gzip are all handled in one place with the source file and
line number kept. Works on local paths and UC Volume paths; the Hugging Face dataset id is
resolved to a local file first.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import logging
import os
import re
from pathlib import Path

import pyarrow as pa

from dolly_spark.ops.schemas import BRONZE_SCHEMA

log = logging.getLogger(__name__)

HF_DATASET_ID = "databricks/databricks-dolly-15k"
_SCHEME = re.compile(r"^(?:file|dbfs):(?://)?(?=/)")
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


def resolve_input(input_path: str) -> str:
    """A local/Volume path as is; the HF dataset id downloaded through the hub (needs network)."""
    if input_path == HF_DATASET_ID or input_path.startswith("hf://"):
        try:
            from huggingface_hub import hf_hub_download

            return hf_hub_download(repo_id=HF_DATASET_ID, filename="databricks-dolly-15k.jsonl", repo_type="dataset")
        except Exception as err:
            raise RuntimeError(
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


def record_id_for(source_name: str, line_number: int, raw: bytes) -> str:
    h = hashlib.sha256()
    h.update(f"{source_name}\x00{line_number}\x00".encode())
    h.update(raw)
    return h.hexdigest()[:20]


def _decode_lines(content: bytes) -> tuple[list[tuple[bytes, str | None, str | None]], str | None]:
    """Split a file into (raw_bytes, text, error) per line. Returns (lines, file_error)."""
    if content[:2] == b"\x1f\x8b":
        try:
            content = gzip.decompress(content)
        except Exception:
            return [(content[:4096], None, "corrupt_gzip")], None
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


def _parse_line(text: str) -> tuple[dict, str | None, list[str], list[str]]:
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
        return {}, "malformed_json", [], []
    if not isinstance(obj, dict):
        return {}, "not_an_object", [], []
    if dup:
        return {}, "duplicate_key", [], []
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
        return {}, "lone_surrogate", [], []
    extra = sorted(_printable_key(k) for k in obj if k not in FIELDS)
    return values, None, field_errors, extra


def _utf8_encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable_key(key: str) -> str:
    return key if _utf8_encodable(key) else key.encode("utf-8", "backslashreplace").decode("ascii")


def source_name(source: str, root: str | None) -> str:
    """The file's path relative to the input root (its base name for a single-file input).

    Record ids hash this name, so files with the same base name in different folders of one
    input get different ids, while the ids stay the same wherever the input folder lives.
    """
    plain = _SCHEME.sub("", source)
    if root:
        base = _SCHEME.sub("", root).rstrip("/") + "/"
        if plain.startswith(base):
            return plain[len(base) :]
    return os.path.basename(plain)


def split_file(path: str, content: bytes, root: str | None = None) -> dict[str, list]:
    """All rows of one file, as Arrow-ready columns. ``root``: the input folder, if any."""
    source = path if path.startswith(("/", "dbfs:", "s3:", "abfss:", "gs:")) else "/" + path
    name = source_name(source, root)
    lines, _ = _decode_lines(content)
    # A file ending in a newline yields one empty last piece: that is not a line.
    if lines and lines[-1][0] == b"" and lines[-1][2] is None:
        lines = lines[:-1]
    cols: dict[str, list] = {f.name: [] for f in _ARROW_SCHEMA}
    for i, (raw, text, err) in enumerate(lines, start=1):
        values, field_errors, extra = {}, [], []
        if err is None and not text.strip():
            err = "blank_line"
        if err is None:
            values, err, field_errors, extra = _parse_line(text)
        cols["record_id"].append(record_id_for(name, i, raw))
        cols["source_file"].append(source)
        cols["line_number"].append(i)
        cols["raw_line"].append(text if text is not None else raw.decode("utf-8", errors="replace"))
        for f in FIELDS:
            cols[f].append(values.get(f))
        cols["ingest_error"].append(err)
        cols["field_errors"].append(field_errors)
        cols["extra_keys"].append(extra)
    return cols


def _splitter(root: str | None):
    # A factory rather than a default argument: the root is bound when the plan is built.
    def split_batches(batches):
        for batch in batches:
            d = batch.to_pydict()
            for path, content in zip(d["path"], d["content"]):
                yield pa.RecordBatch.from_pydict(split_file(path, content, root), schema=_ARROW_SCHEMA)

    return split_batches


def skipped_files(input_dir: str) -> list[str]:
    """Files the reader ignores by Spark convention: names starting with '_' or '.' (own or parent)."""
    root = Path(input_dir)
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and any(part.startswith(("_", ".")) for part in p.relative_to(root).parts)
    )


def read_bronze(spark, input_path: str):
    """DataFrame of every line under ``input_path`` (file or directory; .jsonl, .json, .gz)."""
    from pyspark.sql import functions as F

    resolved = resolve_input(input_path)
    reader = spark.read.format("binaryFile")
    root = None
    if Path(resolved).is_dir():
        reader = reader.option("recursiveFileLookup", "true")
        root = resolved
        hidden = skipped_files(resolved)
        if hidden:
            log.warning("ignoring %d hidden or '_'-prefixed file(s) under %s: %s", len(hidden), resolved, hidden[:10])
    files = reader.load(resolved).select("path", "content").dropDuplicates(["path"])
    return files.mapInArrow(_splitter(root), BRONZE_SCHEMA).withColumn("ingested_at", F.current_timestamp())
