"""Staging tables and the idempotent, retried ``MERGE`` that moves scored rows into ``predictions``."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from dolly_spark.ops import tables

log = logging.getLogger(__name__)

MERGE_RETRIES = 5


def staging_ref(target: tables.TableRef, run_id: str) -> tables.TableRef:
    """A sibling table that holds this run's generations until they are merged."""
    name = tables.validate_identifier(f"{target.name.split('.')[-1]}__staging_{run_id}", "staging table")
    if target.path is not None:
        return tables.TableRef(target.logical, name, str(Path(target.path).parent / name))
    return tables.TableRef(target.logical, ".".join(target.name.split(".")[:-1] + [name]))


def drop_staging(spark, ref: tables.TableRef) -> None:
    if ref.path is not None:
        spark.sql(f"DROP TABLE IF EXISTS `{ref.name}`")
        shutil.rmtree(ref.path, ignore_errors=True)
    else:
        spark.sql(f"DROP TABLE IF EXISTS {ref.sql}")


def remove_stale_staging(spark, target: tables.TableRef, older_than_hours: float) -> list[str]:
    """Drop staging tables a killed run left behind (local roots). Only old ones: a concurrent
    job's fresh staging table is still in use."""
    if target.path is None:
        return []
    cutoff = time.time() - older_than_hours * 3600
    prefix = f"{target.name.split('.')[-1]}__staging_"
    removed = []
    for d in Path(target.path).parent.glob(prefix + "*"):
        newest = max((p.stat().st_mtime for p in d.rglob("*")), default=d.stat().st_mtime)
        if newest < cutoff:
            drop_staging(spark, tables.TableRef(target.logical, d.name, str(d)))
            removed.append(d.name)
            log.warning("removed stale staging table %s (last written %.1f h ago)", d, (time.time() - newest) / 3600)
    return removed


def _is_conflict(err: Exception) -> bool:
    text = str(err).lower()
    # Sail says "Failed to commit transaction"; Databricks raises Concurrent*Exception.
    return any(k in text for k in ("conflict", "concurrent", "failed to commit", "transaction"))


def merge_new_rows(spark, staged: tables.TableRef, target: tables.TableRef, retries: int = MERGE_RETRIES) -> int:
    """Insert staged rows whose (row_key, model_version) the target lacks; returns rows inserted.

    Delta commits optimistically: a concurrent writer makes our commit fail, and the retry re-reads
    the target, so rows the other job inserted meanwhile are matched, not duplicated.
    """
    sql = (
        f"MERGE INTO {target.sql} AS t USING {staged.sql} AS s "
        "ON t.row_key = s.row_key AND t.model_version = s.model_version "
        "WHEN NOT MATCHED THEN INSERT *"
    )
    for attempt in range(retries + 1):
        try:
            row = spark.sql(sql).collect()
            break
        except Exception as err:
            if attempt == retries or not _is_conflict(err):
                raise
            wait = 0.2 * 2**attempt
            log.warning(
                "MERGE into %s conflicted (%s); retry %d in %.1fs", target.name, str(err)[:200], attempt + 1, wait
            )
            time.sleep(wait)
    tables.register_table(spark, target)  # Sail pins the snapshot seen at registration
    return _inserted_rows(row)


def _inserted_rows(rows) -> int:
    if not rows:
        return 0
    d = rows[0].asDict()
    for key in ("num_inserted_rows", "count", "num_affected_rows"):
        if key in d:
            return int(d[key])
    return int(next(iter(d.values())))


def ensure_table(spark, df, ref: tables.TableRef) -> None:
    """Create the target empty with ``df``'s schema; an empty append is harmless if two jobs race."""
    if tables.table_exists(spark, ref):
        return
    for attempt in range(MERGE_RETRIES + 1):
        try:
            tables.write_table(
                spark,
                df.limit(0),
                ref,
                mode="append",
                comment="generations per (row_key, model_version); see docs/scoring.md",
            )
            return
        except Exception as err:
            if tables.table_exists(spark, ref):
                return
            if attempt == MERGE_RETRIES:
                raise
            log.warning("creating %s failed (%s); retrying", ref.name, str(err)[:200])
            time.sleep(0.2 * 2**attempt)
