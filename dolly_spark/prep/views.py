"""SQL views for users over the prepared tables.

Locally (Sail) they are session temp views over ``delta.`path``` (the catalog is in memory
anyway); on Databricks they are persistent views in the Unity Catalog schema. A view whose
source table does not exist yet is skipped and logged, not created broken.
"""

from __future__ import annotations

import logging

from dolly_spark.ops import manifest
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
}
VIEWS = tuple(VIEW_SQL)


def view_name(names: TableNames, view: str) -> str:
    """SQL name of a view: ``catalog.schema.<prefix>view`` on Databricks, ``<prefix>view`` locally."""
    local = validate_identifier(f"{names.prefix}{view}", "view")
    if names.catalog is not None:
        return f"`{names.catalog}`.`{names.schema}`.`{local}`"
    return f"`{local}`"


def view_select(names: TableNames, view: str, sources_sql: dict[str, str] | None = None) -> str:
    sources, sql = VIEW_SQL[view]
    return sql.format(**{s: (sources_sql or {}).get(s, names.ref(s).sql) for s in sources})


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


def create_views(spark, names: TableNames) -> list[str]:
    """Create (or replace) every view whose source tables are committed; returns the created view names."""
    created = []
    for view, (sources, _) in VIEW_SQL.items():
        absent = [s for s in sources if not manifest.available(spark, names, s)]
        if absent:
            log.warning("view %s skipped: table(s) %s not in the last completed prepare run", view, ", ".join(absent))
            continue
        pinned = {s: _pinned_source(spark, names, s) for s in sources}
        kind = "VIEW" if names.catalog is not None else "TEMP VIEW"
        spark.sql(f"CREATE OR REPLACE {kind} {view_name(names, view)} AS {view_select(names, view, pinned)}")
        created.append(view_name(names, view).replace("`", ""))
    return created
