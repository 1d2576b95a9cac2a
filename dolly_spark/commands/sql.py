"""``dolly-spark sql "QUERY"`` (or ``-f FILE.sql``): SQL over the prepared tables and views.

Every table and view of the output root is registered first (or, on Databricks, the catalog and
schema are selected), so queries use bare names: ``SELECT * FROM v_length_histogram``. With
``SPARK_REMOTE`` pointing at ``dolly-spark engine`` the root is optional: the engine's session
already has them. Read-only statements only unless ``--allow-writes``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
from dataclasses import dataclass, field

from dolly_spark.commands.common import parse_job, spark_session
from dolly_spark.ops.config import Location
from dolly_spark.ops.sqltext import SqlTextError, check_read_only, split_statements

FORMATS = ("table", "csv", "json")


@dataclass
class SqlConfig(Location):
    query: str | None = field(default=None, metadata={"positional": True, "help": "SQL statement(s) to run"})
    file: str | None = field(
        default=None, metadata={"aliases": ("-f",), "help": "run the statements of this .sql file, in order"}
    )
    format: str = field(
        default="table",
        metadata={"choices": FORMATS, "help": "table (aligned), csv, or json (one array of row objects per statement)"},
    )
    allow_writes: bool = field(default=False, metadata={"help": "also run DML/DDL (INSERT, CREATE, DROP, ...)"})
    max_rows: int = field(default=1000, metadata={"help": "rows printed per statement (0: all)"})
    max_width: int = field(default=60, metadata={"help": "widest cell of --format table (0: no limit)"})

    def __post_init__(self):
        if (self.query is None) == (self.file is None):
            raise ValueError('give one query ("SELECT ...") or -f FILE.sql')
        if self.max_rows < 0 or self.max_width < 0:
            raise ValueError("--max-rows and --max-width must be >= 0")


CONFIG = SqlConfig


class SqlError(RuntimeError):
    """A statement the engine rejected: one line, prefixed with its position in the script."""


def plain(value):
    """Python value of a Spark cell, nested Rows as dicts (for JSON and CSV)."""
    if hasattr(value, "asDict"):
        return {k: plain(v) for k, v in value.asDict().items()}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _cell(value, max_width: int) -> str:
    if value is None:
        return "NULL"
    v = plain(value)
    text = json.dumps(v, default=str, ensure_ascii=False) if isinstance(v, dict | list) else str(v)
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    if max_width and len(text) > max_width:
        text = text[: max_width - 1] + "…"
    return text


def render_table(columns: list[str], rows: list, max_width: int) -> str:
    cells = [[_cell(r[i], max_width) for i in range(len(columns))] for r in rows]
    numeric = [
        all(isinstance(r[i], int | float) and not isinstance(r[i], bool) for r in rows if r[i] is not None)
        for i in range(len(columns))
    ]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]

    def line(values):
        return " | ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(columns), "-+-".join("-" * w for w in widths)] + [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def render_csv(columns: list[str], rows: list) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(
            [
                "" if v is None else json.dumps(p, default=str) if isinstance(p := plain(v), dict | list) else p
                for v in r
            ]
        )
    return buf.getvalue().rstrip("\n")


def render_json(columns: list[str], rows: list) -> str:
    return json.dumps([dict(zip(columns, (plain(v) for v in r))) for r in rows], default=str, ensure_ascii=False)


def render(columns: list[str], rows: list, fmt: str, max_width: int) -> str:
    if fmt == "csv":
        return render_csv(columns, rows)
    if fmt == "json":
        return render_json(columns, rows)
    return render_table(columns, rows, max_width)


def engine_message(err: Exception) -> str:
    """The engine's own message, on one line."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def read_script(cfg: SqlConfig) -> str:
    if cfg.query is not None:
        return cfg.query
    try:
        with open(cfg.file, encoding="utf-8") as fh:
            return fh.read()
    except OSError as err:
        raise SqlTextError(f"-f {cfg.file}: cannot read it ({err.strerror or err})") from err


def run_statements(spark, cfg: SqlConfig, out=None, err=None) -> int:
    """Run the script's statements in order, printing each result; returns how many ran."""
    out, err = out or sys.stdout, err or sys.stderr
    from pyspark.errors import PySparkException

    statements = split_statements(read_script(cfg))
    if not statements:
        raise SqlTextError("no SQL statement given")
    if not cfg.allow_writes:
        check_read_only(statements)
    for k, st in enumerate(statements, 1):
        where = f"statement {k}: " if len(statements) > 1 else ""
        try:
            df = spark.sql(st.text)
            rows = (df.limit(cfg.max_rows + 1) if cfg.max_rows else df).collect() if df.columns else []
        except PySparkException as e:
            raise SqlError(f"{where}{engine_message(e)}") from e
        if cfg.max_rows and len(rows) > cfg.max_rows:
            rows = rows[: cfg.max_rows]
            print(f"dolly-spark sql: {where}showing the first {cfg.max_rows} rows (--max-rows 0 for all)", file=err)
        if cfg.format == "table" and k > 1:
            print(file=out)
        print(render(list(df.columns), rows, cfg.format, cfg.max_width), file=out, flush=True)
    return len(statements)


def open_location(spark, cfg: Location) -> None:
    """Register the location's tables and views in ``spark``'s session (see ``views.open_tables``)."""
    from dolly_spark.prep.views import open_tables

    if not (cfg.output_root or cfg.catalog) and os.environ.get("SPARK_REMOTE"):
        return  # the remote session (dolly-spark engine) already holds them
    open_tables(spark, cfg.table_names())


def main(argv: list[str] | None = None) -> int:
    cfg = parse_job(SqlConfig, argv, "sql", __doc__, level=logging.WARNING)
    from pyspark.errors import PySparkException

    try:
        spark = spark_session()
        open_location(spark, cfg)
        run_statements(spark, cfg)
    except (SqlTextError, SqlError, ValueError, KeyError) as e:
        print(f"dolly-spark sql: error: {e}", file=sys.stderr)
        return 1
    except PySparkException as e:  # opening the tables failed (a broken Delta log, say)
        print(f"dolly-spark sql: error: {engine_message(e)}", file=sys.stderr)
        return 1
    return 0
