"""The only layer that reads or writes tables.

Logical tables map to Unity Catalog three-part names on Databricks, or to Delta paths under
a local root. Identifiers are validated, never spliced into SQL unchecked. A local root may be any
path: paths are quoted in SQL, and the engine is handed them through ``engine_location``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from dolly_spark.ops.paths import engine_path

log = logging.getLogger(__name__)

LOGICAL_TABLES = (
    "raw",
    "bronze",
    "silver",
    "quarantine",
    "pii_findings",  # one row per PII or secret finding in silver text (never the value)
    "duplicates",
    "candidates",  # silver minus duplicates: the input to gold
    "gold",
    "gold_stats",  # sequence-length statistics and packing plan summary
    "metrics",
    "manifest",  # one row per prepare run started / committed, with the versions it committed
    "predictions",
    "eval_generations",
    "sql_views",  # view definitions, re-created whenever a session opens the tables
)
_IDENT = re.compile(r"[A-Za-z0-9_]+")  # used with fullmatch: "$" would accept a trailing newline
# What a local root may not hold: delta-rs reads "\" as "/" and "%20" as " " (through a symlink
# too) and rejects control characters in a path.
_UNREADABLE_BY_DELTA_RS = re.compile(r"[\\\x00-\x1f\x7f]|%[0-9A-Fa-f]{2}")


class InvalidIdentifierError(ValueError):
    pass


def validate_identifier(name: str, what: str = "identifier") -> str:
    if not isinstance(name, str) or not _IDENT.fullmatch(name):
        raise InvalidIdentifierError(
            f"invalid {what} {name!r}: only letters, digits and underscore ([A-Za-z0-9_]) are allowed"
        )
    return name


def engine_location(path: str) -> str:
    """The path to give the engine for a local ``path``: Databricks takes any path as is; the
    embedded engine (and a local Spark Connect one) goes through ``paths.engine_path``."""
    from dolly_spark.ops.session import engine_name

    return path if engine_name() == "databricks" else engine_path(path)


def quote_path(path: str) -> str:
    """``path`` inside backquotes (``delta.`...```), backquotes in it doubled."""
    return "`" + path.replace("`", "``") + "`"


def sql_string(s: str) -> str:
    """``s`` as a single-quoted SQL string literal (Spark SQL escapes with backslashes)."""
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class TableRef:
    logical: str
    name: str  # validated SQL name: catalog.schema.table, or the bare table name locally
    path: str | None = None  # Delta location for local tables: any local path

    @property
    def sql(self) -> str:
        """How to name the table inside SQL text."""
        if self.path is not None:
            return f"delta.{quote_path(engine_location(self.path))}"
        return ".".join(f"`{p}`" for p in self.name.split("."))


@dataclass(frozen=True)
class TableNames:
    """Where each logical table lives. Either ``root`` (local) or ``catalog`` + ``schema``."""

    root: str | None = None
    catalog: str | None = None
    schema: str | None = None
    prefix: str = ""
    overrides: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if (self.root is None) == (self.catalog is None):
            raise ValueError("give either a local root or a catalog and schema")
        if self.catalog is not None:
            validate_identifier(self.catalog, "catalog")
            validate_identifier(self.schema or "", "schema")
        elif not isinstance(self.root, str) or not self.root or "\x00" in self.root:
            raise ValueError(f"invalid local root {self.root!r}: expected a path")
        elif _UNREADABLE_BY_DELTA_RS.search(self.root):
            raise ValueError(
                f"local root {self.root!r}: a backslash, a control character (tab, newline...) or a %XX escape "
                "in the path is not supported: delta-rs, which reads the tables' versions, cannot open it; "
                "rename the folder"
            )
        if self.prefix:
            validate_identifier(self.prefix, "table prefix")
        for k, v in self.overrides.items():
            validate_identifier(v, f"table name for {k}")

    def ref(self, logical: str) -> TableRef:
        if logical not in LOGICAL_TABLES:
            raise KeyError(f"unknown logical table {logical!r}; known: {LOGICAL_TABLES}")
        table = validate_identifier(self.overrides.get(logical, f"{self.prefix}{logical}"), "table")
        if self.catalog is not None:
            return TableRef(logical, f"{self.catalog}.{self.schema}.{table}")
        return TableRef(logical, table, str(Path(self.root).resolve() / "tables" / table))

    def __getattr__(self, item: str) -> TableRef:
        if item in LOGICAL_TABLES:
            return self.ref(item)
        raise AttributeError(item)


def table_names_for(output_root: str | None, catalog: str | None, schema: str | None) -> TableNames:
    """The tables of a job config: Unity Catalog when a catalog is given, else a local root."""
    if catalog:
        return TableNames(catalog=catalog, schema=schema)
    if not output_root:
        raise ValueError("give --output-root DIR (local) or --catalog and --schema (Databricks)")
    return TableNames(root=output_root)


def table_exists(spark, ref: TableRef) -> bool:
    if ref.path is not None:
        return (Path(ref.path) / "_delta_log").is_dir()
    return spark.catalog.tableExists(ref.name)


def read_table(spark, ref: TableRef, version: int | None = None):
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", int(version))
    if ref.path is not None:
        return reader.load(engine_location(ref.path))
    if version is not None:
        return spark.sql(f"SELECT * FROM {ref.sql} VERSION AS OF {int(version)}")
    return spark.table(ref.name)


# Bounded writer memory on the embedded engine. Sail's Delta writer holds a whole file
# as one row group until it rolls over, and its Parquet writer a row group of up to 1M rows: at
# 150k gold rows that was the whole table in memory. Databricks' writers bound themselves; these
# options are only set for Sail.
DELTA_TARGET_FILE_BYTES = 32 * 1024 * 1024
PARQUET_ROW_GROUP_ROWS = 8192


def _embedded() -> bool:
    from dolly_spark.ops.session import engine_name

    return engine_name() == "sail"


def bounded(writer, fmt: str):
    """``writer`` with the embedded engine's file or row-group bound for ``fmt`` (delta/parquet)."""
    if not _embedded():
        return writer
    if fmt == "delta":
        return writer.option("targetFileSize", str(DELTA_TARGET_FILE_BYTES))
    return writer.option("maxRowGroupSize", str(PARQUET_ROW_GROUP_ROWS))


def write_table(
    spark,
    df,
    ref: TableRef,
    mode: str = "overwrite",
    comment: str | None = None,
    column_comments: dict[str, str] | None = None,
    partition_by: list[str] | None = None,
    merge_schema: bool = False,
) -> int:
    """Write ``df`` as Delta (one atomic commit) and return the new table version. ``merge_schema``:
    an append may add nullable columns to the table (its older rows read them as null)."""
    writer = bounded(df.write.format("delta").mode(mode), "delta")
    if mode == "overwrite":
        writer = writer.option("overwriteSchema", "true")
    elif merge_schema:
        writer = writer.option("mergeSchema", "true")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    if ref.path is not None:
        writer.save(engine_location(ref.path))
        register_table(spark, ref)
    else:
        writer.saveAsTable(ref.name)
    _apply_comments(spark, ref, comment, column_comments or {})
    return table_version(spark, ref)


def register_table(spark, ref: TableRef) -> None:
    """Locally, name a path table in the session catalog so users can query it by name.

    Sail's catalog lives in memory: re-registering is cheap and needed after each restart.
    Drop first: Sail pins the Delta snapshot seen at CREATE time, so a stale entry would hide
    later commits.
    """
    if ref.path is None:
        return
    spark.sql(f"DROP TABLE IF EXISTS `{ref.name}`")
    spark.sql(f"CREATE TABLE `{ref.name}` USING delta LOCATION {sql_string(engine_location(ref.path))}")


def register_all(spark, names: TableNames) -> list[str]:
    done = []
    for logical in LOGICAL_TABLES:
        ref = names.ref(logical)
        if ref.path is not None and table_exists(spark, ref):
            register_table(spark, ref)
            done.append(ref.name)
    return done


def local_versions(names: TableNames) -> dict[str, int]:
    """{table name: Delta version} of the local tables that exist (cheap: delta-rs reads the log)."""
    out = {}
    for logical in LOGICAL_TABLES:
        ref = names.ref(logical)
        if ref.path is not None and (Path(ref.path) / "_delta_log").is_dir():
            out[ref.name] = table_version(None, ref)
    return out


def _apply_comments(spark, ref: TableRef, comment: str | None, column_comments: dict[str, str]) -> None:
    """Table and column comments where the engine supports them (Databricks does; Sail does not)."""
    if ref.path is not None:
        return  # the embedded engine has no COMMENT ON / ALTER COLUMN COMMENT for path tables
    if comment:
        spark.sql(f"COMMENT ON TABLE {ref.sql} IS {sql_string(comment)}")
    for col, text in column_comments.items():
        validate_identifier(col, "column")
        spark.sql(f"ALTER TABLE {ref.sql} ALTER COLUMN `{col}` COMMENT {sql_string(text)}")


def tag_columns(spark, ref: TableRef, tags: dict[str, dict[str, str]]) -> None:
    """Unity Catalog column tags (``ALTER COLUMN ... SET TAGS``); local path tables have none."""
    if ref.path is not None:
        return
    for col, pairs in tags.items():
        validate_identifier(col, "column")
        assigned = ", ".join(f"{sql_string(k)} = {sql_string(v)}" for k, v in pairs.items())
        spark.sql(f"ALTER TABLE {ref.sql} ALTER COLUMN `{col}` SET TAGS ({assigned})")


def table_version(spark, ref: TableRef) -> int:
    if ref.path is not None:
        from deltalake import DeltaTable

        return int(DeltaTable(ref.path).version())
    row = spark.sql(f"DESCRIBE HISTORY {ref.sql} LIMIT 1").collect()[0]
    return int(row["version"])


def table_history(ref: TableRef) -> list[dict]:
    """Commit history of a local table via delta-rs (Sail does not parse DESCRIBE HISTORY)."""
    from deltalake import DeltaTable

    return DeltaTable(ref.path).history()


def write_parquet(df, path: str, num_files: int | None = None) -> list[str]:
    """Write ``df`` as Parquet files under ``path`` by the engine (no driver copy of the rows).

    Returns the data files written, sorted. ``num_files`` repartitions first, so each file holds
    about ``rows / num_files`` rows.
    """
    if num_files:
        df = df.repartition(int(num_files))
    bounded(df.write.mode("overwrite"), "parquet").parquet(engine_location(str(path)))
    return sorted(str(p) for p in Path(path).rglob("*.parquet") if not p.name.startswith((".", "_")))
