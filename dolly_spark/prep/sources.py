"""Instruction sources: where records come from and how their columns map to ours.

A source is a ``uri`` (file, folder or glob of JSON lines / JSON / Parquet / CSV, gzip included;
a Delta table path; a Unity Catalog ``catalog.schema.table``; or a hub dataset id), an optional
``format``, a ``preset`` or ``columns`` mapping (our field -> their column), an optional fixed
``category``, a ``name``, a train ``weight`` and a ``license`` (an SPDX id; see ``prep/licenses.py``).

``read_sources`` returns one bronze-shaped DataFrame for all sources, with a ``source`` column
and ``source_version`` (the Delta version read, for Delta sources). Every check that can fail
(unreadable source, a mapped column that does not exist, a preset that does not fit) runs on
the driver and raises :class:`SourceError` before any table is written. Reading only: no writes.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, AtomicType, StructType

from dolly_spark.ops.schemas import BRONZE_COLUMNS
from dolly_spark.prep import licenses

FIELDS = ("instruction", "context", "response", "category")
REQUIRED = ("instruction", "response")
FORMATS = ("jsonl", "json", "parquet", "csv", "delta", "table", "hub")
DOLLY_HUB_ID = "databricks/databricks-dolly-15k"
DOLLY_NAME = "databricks-dolly-15k"
DOLLY_LICENSE = "CC-BY-SA-3.0"  # dolly-15k's own licence, on its dataset card
DOLLY_FILES = ("databricks-dolly-15k*.jsonl", "databricks-dolly-15k*.jsonl.gz")

# A preset is a named columns mapping plus a reader kind ("lines": dolly's own line ingest,
# which keeps malformed lines; "table": a spark reader + mapping; "conversation": first turn).
PRESETS: dict[str, dict[str, str]] = {
    "dolly": {"instruction": "instruction", "context": "context", "response": "response", "category": "category"},
    "alpaca": {"instruction": "instruction", "context": "input", "response": "output"},
    "conversation": {},  # columns found in the data: messages or conversations
}
CONVERSATION_COLUMNS = ("messages", "conversations")
USER_ROLES = ("user", "human", "prompter")
ASSISTANT_ROLES = ("assistant", "gpt", "bot", "model")
_TABLE_NAME = re.compile(r"[A-Za-z0-9_]+\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+")
_HUB_ID = re.compile(r"(?:hf://(?:datasets/)?)?[A-Za-z0-9][\w.-]*/[\w.-]+")
_SUFFIX_FORMAT = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class SourceError(ValueError):
    """A source that cannot be read or does not fit its mapping: one line naming source and column."""


@dataclass(frozen=True)
class SourceConfig:
    uri: str
    format: str | None = None  # inferred from the uri when absent
    preset: str | None = None  # dolly | alpaca | conversation; default dolly unless columns are given
    columns: dict[str, str] = field(default_factory=dict)  # our field -> their column
    category: str | None = None  # fixed category for every record of this source
    name: str | None = None  # default: derived from the uri
    weight: int = 1  # copies of each train record in the training data
    license: str | None = None  # SPDX id; default: dolly-15k's for dolly-15k, else unknown

    def __post_init__(self):
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"source {self.uri}: format {self.format!r} is not one of {list(FORMATS)}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"source {self.uri}: preset {self.preset!r} is not one of {sorted(PRESETS)}")
        unknown = set(self.columns) - set(FIELDS) - {"messages"}
        if unknown:
            raise ValueError(f"source {self.uri}: columns maps unknown fields {sorted(unknown)}; ours are {FIELDS}")
        if self.weight < 1:
            raise ValueError(f"source {self.uri}: weight must be a whole number >= 1, got {self.weight}")
        if self.license is not None:
            try:
                licenses.canonical(self.license)
            except ValueError as err:
                raise ValueError(f"source {self.uri}: {err}") from None

    @property
    def source_name(self) -> str:
        return self.name or name_from_uri(self.uri)

    @property
    def preset_name(self) -> str:
        return self.preset or ("dolly" if not self.columns else "custom")

    @property
    def resolved_license(self) -> str:
        """The licence given, else dolly-15k's when this is dolly-15k (hub id or file name), else unknown."""
        if self.license is not None:
            return licenses.canonical(self.license)
        return DOLLY_LICENSE if is_dolly_15k(self.uri) else licenses.UNKNOWN

    def mapping(self) -> dict[str, str]:
        """The preset's columns overridden by the explicit ones."""
        return {**PRESETS.get(self.preset_name, {}), **self.columns}

    def is_dolly(self) -> bool:
        return self.preset_name == "dolly" and not self.columns and self.category is None


def is_dolly_15k(uri: str) -> bool:
    """dolly-15k by its hub id, or by the name of its file (``databricks-dolly-15k.jsonl``, a copy
    ``databricks-dolly-15k-v2.jsonl``); any other uri is not known to be it."""
    hub = re.sub(r"^hf://(?:datasets/)?", "", uri).rstrip("/")
    if hub == DOLLY_HUB_ID:
        return True
    base = _strip_scheme(uri).rstrip("/").rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(base.lower(), pattern) for pattern in DOLLY_FILES)


def name_from_uri(uri: str) -> str:
    """``../data/databricks-dolly-15k.jsonl`` -> ``databricks-dolly-15k``; ``main.s.tickets`` -> ``tickets``."""
    if uri.rstrip("/") == DOLLY_HUB_ID or uri.startswith("hf://"):
        return uri.rstrip("/").rsplit("/", 1)[-1]
    base = uri.rstrip("/").rsplit("/", 1)[-1]
    if _TABLE_NAME.fullmatch(uri):
        base = uri.rsplit(".", 1)[-1]
    if re.search(r"[*?\[]", base):  # a glob: its folder names it (/data/chats/*.jsonl -> chats)
        base = uri.rstrip("/").rsplit("/", 2)[-2] if uri.count("/") else "source"
    while Path(base).suffix in (".gz", *_SUFFIX_FORMAT):
        base = base[: -len(Path(base).suffix)]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base) or "source"


def parse_source_flag(value: str) -> SourceConfig:
    """``--source NAME=URI`` (or just ``URI``)."""
    name, sep, uri = value.partition("=")
    if not sep:
        return SourceConfig(uri=value)
    if not name or not uri:
        raise ValueError(f"--source {value!r}: expected NAME=URI")
    return SourceConfig(uri=uri, name=name)


# --- where and what ---------------------------------------------------------------------------


def _strip_scheme(uri: str) -> str:
    return re.sub(r"^(?:file|dbfs):(?://)?(?=/)", "", uri)


def _files(path: str) -> list[str]:
    """Data files of a file, folder or glob (names starting with '_' or '.' skipped, as Spark does)."""
    p = Path(path)
    if p.is_file():
        return [str(p.resolve())]
    if p.is_dir():
        found = p.rglob("*")
        return sorted(
            str(f.resolve())
            for f in found
            if f.is_file() and not any(x.startswith(("_", ".")) for x in f.relative_to(p).parts)
        )
    return sorted(str(Path(f).resolve()) for f in glob.glob(path, recursive=True) if Path(f).is_file())


def _file_format(path: str) -> str | None:
    name = path[:-3] if path.endswith(".gz") else path
    fmt = _SUFFIX_FORMAT.get(Path(name).suffix.lower())
    if fmt == "json":
        # .json holds either JSON lines or one array of records: look at the first byte.
        import gzip

        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as fh:
            head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        fmt = "json" if head[:1] == b"[" else "jsonl"
    return fmt


def resolve(src: SourceConfig) -> tuple[str, str, list[str]]:
    """(format, location, files) of a source; raises SourceError when it cannot be found."""
    uri, fmt, who = src.uri, src.format, src.source_name
    path = _strip_scheme(uri)
    if fmt in (None, "hub") and (uri.rstrip("/") == DOLLY_HUB_ID or uri.startswith("hf://")):
        return "hub", uri, []
    if fmt == "table" or (fmt in (None, "delta") and _TABLE_NAME.fullmatch(uri) and not Path(path).exists()):
        return "table", uri, []
    if fmt == "delta" or (fmt is None and (Path(path) / "_delta_log").is_dir()):
        if not (Path(path) / "_delta_log").is_dir():
            raise SourceError(f"source {who}: {uri} is not a Delta table (no _delta_log)")
        return "delta", str(Path(path).resolve()), []
    files = _files(path)
    if not files:
        if fmt in (None, "hub") and _HUB_ID.fullmatch(uri) and not Path(path).exists():
            return "hub", uri, []
        raise SourceError(f"source {who}: {uri} matches no files")
    if fmt is None:
        kinds = {_file_format(f) for f in files} - {None}
        if src.is_dolly() and kinds <= {"json", "jsonl"}:
            # dolly-15k's layout: every file is read as JSON lines by the line ingest, which
            # quarantines what is not (an array, a binary file) rather than refusing the source.
            return "jsonl", path, files
        if len(kinds) != 1:
            raise SourceError(
                f"source {who}: cannot tell the format of {uri} (found {sorted(kinds) or 'none'}); set format"
            )
        fmt = kinds.pop()
    return fmt, path, files


def hub_files(src: SourceConfig) -> tuple[str, list[str]]:
    """A hub dataset downloaded through the hub client (needs network); dolly-15k via ingest."""
    repo = re.sub(r"^hf://(?:datasets/)?", "", src.uri).rstrip("/")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=repo, repo_type="dataset")
    except Exception as err:
        raise SourceError(
            f"source {src.source_name}: could not download hub dataset {repo} ({type(err).__name__}); "
            "offline, give a local path as uri"
        ) from err
    files = [f for f in _files(local) if _file_format(f)]
    kinds = {_file_format(f) for f in files}
    if len(kinds) != 1:
        raise SourceError(f"source {src.source_name}: hub dataset {repo} has data files of kinds {sorted(kinds)}")
    return kinds.pop(), files


# --- readers ----------------------------------------------------------------------------------


def _json_array_frame(spark, files: list[str], who: str) -> DataFrame:
    """Files holding one JSON array each: parsed in an Arrow UDF (the engine's JSON reader takes
    lines only), then typed with a schema inferred from the first record."""
    import pyarrow as pa

    def explode(batches):
        import gzip as gz

        for batch in batches:
            d = batch.to_pydict()
            for content in d["content"]:
                content = gz.decompress(content) if content[:2] == b"\x1f\x8b" else content
                records = json.loads(content.decode("utf-8-sig"))
                records = records if isinstance(records, list) else [records]
                yield pa.RecordBatch.from_pydict({"_json": [json.dumps(r, ensure_ascii=False) for r in records]})

    raw = spark.read.format("binaryFile").load(files).select("content").mapInArrow(explode, "_json string")
    first = raw.limit(1).collect()
    if not first:
        raise SourceError(f"source {who}: no records")
    ddl = spark.range(1).select(F.schema_of_json(F.lit(first[0]["_json"]))).first()[0]
    return raw.select(F.from_json("_json", ddl).alias("_r")).select("_r.*")


def read_frame(spark, src: SourceConfig, fmt: str, location: str, files: list[str]) -> tuple[DataFrame, int | None]:
    """(their rows as a DataFrame, Delta version read or None)."""
    who = src.source_name
    try:
        df, version = _open_frame(spark, fmt, location, files, who)
        _ = df.schema  # readers are lazy: a missing table or unreadable file fails here, not mid-write
        return df, version
    except SourceError:
        raise
    except Exception as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise SourceError(f"source {who}: cannot read {src.uri} as {fmt} ({type(err).__name__}: {first})") from err


def _open_frame(spark, fmt: str, location: str, files: list[str], who: str) -> tuple[DataFrame, int | None]:
    from dolly_spark.ops.tables import engine_location

    files = [engine_location(f) for f in files]  # any local path: the engine rewrites odd characters
    if fmt == "delta":
        import deltalake

        version = int(deltalake.DeltaTable(location).version())
        # Pinned to the version recorded as lineage, even if the table moves meanwhile.
        return spark.read.format("delta").option("versionAsOf", version).load(engine_location(location)), version
    if fmt == "table":
        return spark.read.table(location), None
    if fmt == "parquet":
        return spark.read.parquet(*files), None
    if fmt == "csv":
        return spark.read.option("header", "true").option("multiLine", "true").option("escape", '"').csv(files), None
    if fmt == "jsonl":
        return spark.read.json(files), None
    if fmt == "json":
        return _json_array_frame(spark, files, who), None
    raise SourceError(f"source {who}: unsupported format {fmt!r}")


def _text_column(df: DataFrame, col: str, who: str, ours: str):
    """Their column as a string; a missing column or one holding arrays/structs is an error."""
    types = {f.name: f.dataType for f in df.schema.fields}
    if col not in types:
        raise SourceError(
            f"source {who}: column {col!r} (mapped to {ours}) does not exist; its columns are {sorted(types)}"
        )
    if not isinstance(types[col], AtomicType):
        raise SourceError(f"source {who}: column {col!r} (mapped to {ours}) is {types[col].simpleString()}, not text")
    return F.col(col).cast("string")


def _conversation_fields(df: DataFrame, src: SourceConfig) -> dict:
    """First user turn -> instruction, first assistant turn -> response (OpenAssistant/ShareGPT)."""
    who = src.source_name
    types = {f.name: f.dataType for f in df.schema.fields}
    col = src.columns.get("messages") or next((c for c in CONVERSATION_COLUMNS if c in types), None)
    if col is None or col not in types:
        raise SourceError(
            f"source {who}: preset conversation needs a column {col or ' or '.join(CONVERSATION_COLUMNS)!r}; "
            f"its columns are {sorted(types)}"
        )
    tp = types[col]
    keys = (
        set(tp.elementType.fieldNames())
        if isinstance(tp, ArrayType) and isinstance(tp.elementType, StructType)
        else set()
    )
    if {"role", "content"} <= keys:
        role, text = "role", "content"
    elif {"from", "value"} <= keys:
        role, text = "from", "value"
    else:
        raise SourceError(
            f"source {who}: preset conversation does not fit column {col!r} ({tp.simpleString()}): "
            "expected a list of {role, content} or {from, value}"
        )

    def first(roles):
        turns = F.filter(col, lambda m: F.lower(m[role]).isin(*roles))
        return F.get(turns, 0)[text].cast("string")

    return {"instruction": first(USER_ROLES), "response": first(ASSISTANT_ROLES)}


def mapped_frame(df: DataFrame, src: SourceConfig, version: int | None) -> DataFrame:
    """Their rows -> bronze rows: our fields, the row as JSON (raw_line) and a content-addressed id."""
    who = src.source_name
    if src.preset_name == "conversation":
        values = _conversation_fields(df, src)
        extra = {f: c for f, c in src.columns.items() if f in FIELDS}
        values.update({f: _text_column(df, c, who, f) for f, c in extra.items()})
    else:
        mapping = {f: c for f, c in src.mapping().items() if f in FIELDS}
        # A preset's optional columns (context, category) may be absent; explicit ones may not.
        for f in ("context", "category"):
            if f in mapping and f not in src.columns and mapping[f] not in df.columns:
                del mapping[f]
        if src.category is not None:
            mapping.pop("category", None)
        for f in REQUIRED:
            if f not in mapping:
                raise SourceError(f"source {who}: no column mapped to {f}; set columns.{f}")
        values = {f: _text_column(df, c, who, f) for f, c in mapping.items()}
    # No category column: a fixed one, else the source's name.
    if "category" not in values:
        values["category"] = F.lit(src.category if src.category is not None else who)
    raw = F.to_json(F.struct(*[F.col(c) for c in df.columns]))
    # Identical rows stay distinct records (k = 1, 2, ...), so ids never collide within a source.
    occurrence = F.row_number().over(Window.partitionBy("_h").orderBy("_h"))
    out = (
        df.select(raw.alias("raw_line"), *[v.alias(f) for f, v in values.items()])
        .withColumn("_h", F.sha2(F.concat_ws("\x00", F.lit(who), F.col("raw_line")), 256))
        .withColumn("_k", occurrence)
        .withColumn("record_id", F.substring(F.sha2(F.concat_ws("\x00", "_h", F.col("_k").cast("string")), 256), 1, 20))
    )
    for f in FIELDS:
        if f not in values:
            out = out.withColumn(f, F.lit(None).cast("string"))
    return out.select(
        "record_id",
        F.lit(src.uri).alias("source_file"),
        F.col("_k").cast("long").alias("line_number"),  # no line numbers here: the copy index
        "raw_line",
        *FIELDS,
        F.lit(None).cast("string").alias("ingest_error"),
        F.array().cast("array<string>").alias("field_errors"),
        F.array().cast("array<string>").alias("extra_keys"),
        F.lit(who).alias("source"),
        F.lit(version).cast("long").alias("source_version"),
    )


def _dolly_lines(spark, src: SourceConfig, fmt: str, location: str, files: list[str], **ingest) -> DataFrame:
    """dolly-15k's own JSON lines go through the line ingest, which keeps malformed lines.
    ``ingest``: ``chunk_bytes`` and ``max_line_bytes`` of ``read_bronze`` (its defaults if absent)."""
    from dolly_spark.prep.ingest import read_bronze, sample_keys

    if fmt == "jsonl" and files:
        # The first lines of the first files, read on the driver: inferring a schema would be a
        # pass over all the data. Malformed lines are skipped here; the line ingest quarantines them.
        peek = {k: v for k, v in ingest.items() if k == "max_line_bytes"}
        cols = sample_keys(files, **peek)
        if cols:
            missing = [c for c in REQUIRED if c not in cols]
            if missing:
                raise SourceError(
                    f"source {src.source_name}: preset dolly does not fit: column {missing[0]!r} does not exist; "
                    f"its columns are {sorted(cols)} (set preset or columns)"
                )
    target = location if fmt == "hub" else (location if Path(location).exists() else None)
    frames = [read_bronze(spark, target, **ingest)] if target else [read_bronze(spark, f, **ingest) for f in files]
    bronze = frames[0]
    for f in frames[1:]:
        bronze = bronze.unionByName(f)
    return bronze.withColumn("source", F.lit(src.source_name)).withColumn("source_version", F.lit(None).cast("long"))


def read_source(
    spark, src: SourceConfig, chunk_bytes: int | None = None, max_line_bytes: int | None = None
) -> DataFrame:
    fmt, location, files = resolve(src)
    if src.is_dolly() and fmt in ("jsonl", "hub") and (fmt != "hub" or src.uri.rstrip("/") == DOLLY_HUB_ID):
        ingest = {"chunk_bytes": chunk_bytes, "max_line_bytes": max_line_bytes}
        return _dolly_lines(spark, src, fmt, location, files, **{k: v for k, v in ingest.items() if v})
    if fmt == "hub":
        fmt, files = hub_files(src)
    df, version = read_frame(spark, src, fmt, location, files)
    return mapped_frame(df, src, version)


def check_names(sources: list[SourceConfig]) -> None:
    seen: dict[str, str] = {}
    for s in sources:
        if s.source_name in seen:
            raise SourceError(
                f"sources {seen[s.source_name]} and {s.uri} have the same name {s.source_name!r}; set name"
            )
        seen[s.source_name] = s.uri


def read_sources(
    spark, sources: list[SourceConfig], chunk_bytes: int | None = None, max_line_bytes: int | None = None
) -> DataFrame:
    """Bronze rows of every source (``source``, ``source_version`` included), checked up front.

    Mapped sources hash their name into their ids. Line-ingested dolly sources after the first are
    salted with their name too, so a file listed twice keeps two sets of ids; the first source's
    ids stay as a one-source run makes them (adding sources never moves its records' split).
    ``chunk_bytes`` and ``max_line_bytes`` go to the line ingest (its defaults when None).
    """
    if not sources:
        raise SourceError("no sources: give --input, --source NAME=URI or a sources: list")
    check_names(sources)
    frames = []
    for i, src in enumerate(sources):
        df = read_source(spark, src, chunk_bytes, max_line_bytes)
        if i > 0 and src.is_dolly():
            df = df.withColumn(
                "record_id", F.substring(F.sha2(F.concat_ws("\x00", F.lit(src.source_name), "record_id"), 256), 1, 20)
            )
        frames.append(df.select(*BRONZE_COLUMNS, "source", "source_version"))
    out = frames[0]
    for df in frames[1:]:
        out = out.unionByName(df)
    return out.withColumn("ingested_at", F.current_timestamp())


def weights(sources: list[SourceConfig]) -> dict[str, int]:
    return {s.source_name: s.weight for s in sources}


def license_summary(sources: list[SourceConfig]) -> dict:
    """``licenses`` ({source name: resolved licence}, in source order) and their ``commercial_use``."""
    found = {s.source_name: s.resolved_license for s in sources}
    return {"licenses": found, "commercial_use": licenses.combined_use(found)}
