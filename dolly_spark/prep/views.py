"""SQL views for users over the prepared tables.

Locally (Sail) they are session temp views over ``delta.`path``` (the catalog is in memory
and per session); on Databricks they are persistent views in the Unity Catalog schema. A view
whose source table does not exist yet is skipped and logged, not created broken.

Their definitions are also stored with the tables (the ``sql_views`` table), so any later
session that opens the output root (``open_tables``) re-creates them.
"""

from __future__ import annotations

import logging

from dolly_spark.ops import manifest, tables
from dolly_spark.ops.sqltext import split_statements
from dolly_spark.ops.tables import TableNames, validate_identifier

log = logging.getLogger(__name__)

# Token-length histogram bucket width.
LENGTH_BUCKET = 128

# view name -> (logical tables it reads, SELECT with {logical} placeholders)
VIEW_SQL: dict[str, tuple[tuple[str, ...], str]] = {
    "v_category_stats": (
        ("gold",),
        """
        SELECT category,
               COUNT(*) AS records,
               SUM(CASE WHEN split = 'train' THEN 1 ELSE 0 END) AS train_records,
               SUM(CASE WHEN split = 'eval' THEN 1 ELSE 0 END) AS eval_records,
               AVG(CASE WHEN split = 'eval' THEN 1 ELSE 0 END) AS eval_share,
               AVG(CASE WHEN context <> '' THEN 1 ELSE 0 END) AS with_context_share,
               AVG(seq_len) AS mean_seq_len,
               MAX(seq_len) AS max_seq_len,
               AVG(seq_len - prompt_len) AS mean_response_tokens,
               SUM(seq_len) AS tokens
        FROM {gold}
        GROUP BY category
        """,
    ),
    "v_length_histogram": (
        ("gold",),
        f"""
        SELECT split, category,
               CAST(FLOOR(seq_len / {LENGTH_BUCKET}) * {LENGTH_BUCKET} AS INT) AS bucket_start,
               CAST(FLOOR(seq_len / {LENGTH_BUCKET}) * {LENGTH_BUCKET} + {LENGTH_BUCKET} AS INT) AS bucket_end,
               COUNT(*) AS records
        FROM {{gold}}
        GROUP BY split, category, FLOOR(seq_len / {LENGTH_BUCKET})
        """,
    ),
    "v_duplicates_by_category": (
        ("duplicates", "silver"),
        """
        SELECT s.category,
               COALESCE(d.method, 'none') AS method,
               COALESCE(d.duplicates, 0) AS duplicates,
               COALESCE(d.clusters, 0) AS clusters,
               d.mean_jaccard,
               s.silver_records,
               COALESCE(d.duplicates, 0) / s.silver_records AS duplicate_share
        FROM (SELECT category, COUNT(*) AS silver_records FROM {silver} GROUP BY category) s
        LEFT JOIN (
            SELECT category, method, COUNT(*) AS duplicates, COUNT(DISTINCT cluster_id) AS clusters,
                   AVG(jaccard) AS mean_jaccard
            FROM {duplicates}
            GROUP BY category, method
        ) d ON s.category = d.category
        """,
    ),
    "v_pii_findings_by_kind": (
        ("pii_findings",),
        """
        SELECT kind, field, action, COUNT(*) AS findings, COUNT(DISTINCT record_id) AS records
        FROM {pii_findings}
        GROUP BY kind, field, action
        """,
    ),
}
VIEWS = tuple(VIEW_SQL)
SQL_VIEWS_SCHEMA = "name string, sources array<string>, select_sql string"


def view_name(names: TableNames, view: str) -> str:
    """SQL name of a view: ``catalog.schema.<prefix>view`` on Databricks, ``<prefix>view`` locally."""
    local = validate_identifier(f"{names.prefix}{view}", "view")
    if names.catalog is not None:
        return f"`{names.catalog}`.`{names.schema}`.`{local}`"
    return f"`{local}`"


def view_select(names: TableNames, view: str, definitions=None, sources_sql: dict[str, str] | None = None) -> str:
    """The view's SELECT with its source tables named for ``names`` (or as ``sources_sql`` gives
    them); checked to be one read-only query."""
    sources, sql = (definitions or VIEW_SQL)[view]
    select = sql.format(**{s: (sources_sql or {}).get(s, names.ref(s).sql) for s in sources})
    statements = split_statements(select)
    if len(statements) != 1 or statements[0].first not in ("SELECT", "WITH") or not statements[0].is_read_only():
        raise ValueError(f"view {view}: its definition must be one SELECT statement")
    return select


def _pinned_source(spark, names: TableNames, logical: str) -> str:
    """SQL naming ``logical`` at the last completed prepare run's version, so a view never mixes
    tables of two runs. Locally a hidden temp view over the pinned frame (Sail has no time travel
    in SQL on path tables); on Databricks ``VERSION AS OF``."""
    version = manifest.committed_version(spark, names, logical)
    if version is None:
        return names.ref(logical).sql
    if names.catalog is not None:
        return f"{names.ref(logical).sql} VERSION AS OF {int(version)}"
    hidden = validate_identifier(f"_committed_{names.prefix}{logical}", "view")
    manifest.read_committed(spark, names, logical).createOrReplaceTempView(hidden)
    return f"`{hidden}`"


def create_views(spark, names: TableNames, definitions=None) -> list[str]:
    """Create (or replace) every view whose source tables are committed; returns the created view names.

    ``definitions`` defaults to this module's ``VIEW_SQL``; the definitions given are stored
    in the ``sql_views`` table unless they were read from it.
    """
    given = definitions is not None
    definitions = VIEW_SQL if definitions is None else definitions
    created = []
    for view, (sources, _) in definitions.items():
        absent = [s for s in sources if not manifest.available(spark, names, s)]
        if absent:
            log.warning("view %s skipped: table(s) %s not in the last completed prepare run", view, ", ".join(absent))
            continue
        pinned = {s: _pinned_source(spark, names, s) for s in sources}
        select = view_select(names, view, definitions, pinned)
        kind = "VIEW" if names.catalog is not None else "TEMP VIEW"
        spark.sql(f"CREATE OR REPLACE {kind} {view_name(names, view)} AS {select}")
        created.append(view_name(names, view).replace("`", ""))
    if not given:
        store_definitions(spark, names, definitions)
    return created


def store_definitions(spark, names: TableNames, definitions) -> int:
    rows = [(view, list(sources), sql) for view, (sources, sql) in definitions.items()]
    return tables.write_table(
        spark,
        spark.createDataFrame(rows, SQL_VIEWS_SCHEMA),
        names.sql_views,
        comment="SQL view definitions ({logical} placeholders), re-created when a session opens the tables",
    )


def stored_definitions(spark, names: TableNames) -> dict[str, tuple[tuple[str, ...], str]] | None:
    """The definitions in ``sql_views``, or None if the table was never written."""
    if not tables.table_exists(spark, names.sql_views):
        return None
    out = {}
    for r in tables.read_table(spark, names.sql_views).collect():
        validate_identifier(r["name"], "view")
        for s in r["sources"]:
            names.ref(s)  # unknown logical table: KeyError naming it
        out[r["name"]] = (tuple(r["sources"]), r["select_sql"])
    return out


def open_tables(spark, names: TableNames) -> tuple[list[str], list[str]]:
    """Make the tables and views of ``names`` queryable by bare name in this session.

    Locally: register every Delta table, then re-create the stored views (the built-in ones
    when the root has no ``sql_views`` table yet). On Databricks, select the catalog and schema:
    the tables and views already live in Unity Catalog.
    """
    if names.catalog is not None:
        spark.catalog.setCurrentCatalog(names.catalog)
        spark.catalog.setCurrentDatabase(names.schema)
        return [], []
    registered = tables.register_all(spark, names)
    definitions = stored_definitions(spark, names)
    return registered, create_views(spark, names, VIEW_SQL if definitions is None else definitions)
