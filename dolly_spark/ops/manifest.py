"""The prepare manifest: which table versions form one consistent, completed prepare run.

``prepare`` writes many tables, each one atomic Delta commit, but a run killed between two of
them leaves new bronze/silver next to old gold. So a run appends a ``started`` row to the
``manifest`` table first and a ``committed`` row naming the version of every table it wrote
LAST. Readers (train staging, report, evaluate, score, the SQL views) pin the versions of the
latest ``committed`` row: they see the previous run's tables or the new run's, never a mix.
The committed row also carries ``details`` about the data (JSON: its sources' licences and their
``commercial_use``), which train reads for the gold version it trains on.

A root prepared before the manifest existed has no manifest table: readers fall back to the
latest version of each table (the old behaviour).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dolly_spark.ops import tables

log = logging.getLogger(__name__)

STARTED, COMMITTED, FAILED = "started", "committed", "failed"
# The tables a prepare run commits together; other tables (predictions...) are read at their latest.
PREPARE_TABLES = (
    "bronze",
    "silver",
    "quarantine",
    "pii_findings",
    "duplicates",
    "candidates",
    "gold",
    "gold_stats",
    "metrics",
)
# ``details`` came later: appends merge it into an older manifest (its rows read as null).
SCHEMA = "run_id string, status string, until string, versions string, pid long, host string, at string, details string"


class NotCommittedError(RuntimeError):
    """The table a reader asked for is not part of the last completed prepare run."""


@dataclass(frozen=True)
class Manifest:
    run_id: str
    until: str
    versions: dict[str, int]
    at: str
    # Runs started after this commit that never committed (killed or failed).
    incomplete: list[dict] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # about the data: licences, commercial_use

    def version(self, logical: str) -> int | None:
        return self.versions.get(logical)


def _row(run_id: str, status: str, until: str, versions: dict[str, int], details: dict | None = None) -> tuple:
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    text = json.dumps(details) if details else None  # keys unsorted: sources stay in their order
    return (run_id, status, until, json.dumps(versions, sort_keys=True), os.getpid(), socket.gethostname(), now, text)


def _append(spark, names: tables.TableNames, row: tuple) -> int:
    df = spark.createDataFrame([row], schema=SCHEMA)
    return tables.write_table(
        spark,
        df,
        names.manifest,
        mode="append",
        comment="prepare runs: started, then committed with table versions",
        merge_schema=True,
    )


def mark_started(spark, names: tables.TableNames, run_id: str, until: str) -> int:
    return _append(spark, names, _row(run_id, STARTED, until, {}))


def mark_failed(spark, names: tables.TableNames, run_id: str, until: str) -> int:
    """A run that raised says so (a killed one cannot): it no longer holds a Databricks lease."""
    return _append(spark, names, _row(run_id, FAILED, until, {}))


def commit(
    spark, names: tables.TableNames, run_id: str, until: str, versions: dict[str, int], details: dict | None = None
) -> int:
    """The run's last write: from this commit on, readers see ``versions`` (and ``details``)."""
    return _append(spark, names, _row(run_id, COMMITTED, until, versions, details))


def _details(row: dict) -> dict:
    return json.loads(row.get("details") or "{}")


def _rows(spark, names: tables.TableNames) -> list[dict]:
    ref = names.manifest
    if not tables.table_exists(spark, ref):
        return []
    # Delta appends keep commit order only by timestamp; ``at`` has microseconds; ties (never seen) put
    # started before committed or failed.
    rows = [r.asDict() for r in tables.read_table(spark, ref).collect()]
    return sorted(rows, key=lambda r: (r["at"], r["status"] != STARTED))


def latest(spark, names: tables.TableNames) -> Manifest | None:
    """The last committed prepare run, or None when the root has no manifest (or no commit yet)."""
    rows = _rows(spark, names)
    committed = [r for r in rows if r["status"] == COMMITTED]
    if not committed:
        return None
    last = committed[-1]
    done = {r["run_id"] for r in committed}
    later = [r for r in rows[rows.index(last) + 1 :] if r["status"] == STARTED and r["run_id"] not in done]
    return Manifest(last["run_id"], last["until"], json.loads(last["versions"]), last["at"], later, _details(last))


def details_for(spark, names: tables.TableNames, logical: str, version: int) -> dict | None:
    """``details`` of the last committed run that committed ``logical`` at ``version`` ({} when it
    recorded none); None when no committed run did (a root without a manifest, a table written
    outside prepare)."""
    rows = [r for r in _rows(spark, names) if r["status"] == COMMITTED]
    for r in reversed(rows):
        if json.loads(r["versions"]).get(logical) == int(version):
            return _details(r)
    return None


def incomplete_runs(spark, names: tables.TableNames, include_failed: bool = True) -> list[dict]:
    """``started`` rows with no ``committed`` row: runs that were killed (or, with
    ``include_failed``, that raised)."""
    rows = _rows(spark, names)
    ended = (COMMITTED,) if include_failed else (COMMITTED, FAILED)
    done = {r["run_id"] for r in rows if r["status"] in ended}
    return [r for r in rows if r["status"] == STARTED and r["run_id"] not in done]


def has_manifest(spark, names: tables.TableNames) -> bool:
    return tables.table_exists(spark, names.manifest)


def committed_version(spark, names: tables.TableNames, logical: str) -> int | None:
    """The Delta version of ``logical`` that the last completed prepare run committed.

    None when the root has no manifest (prepared by an older version: read the latest).
    Raises :class:`NotCommittedError` when there is a manifest but the table is not in its set
    (the last completed run stopped before writing it, or no run has completed yet).
    """
    if logical not in PREPARE_TABLES or not has_manifest(spark, names):
        return None
    m = latest(spark, names)
    if m is None:
        raise NotCommittedError(
            f"no prepare run has completed under {names.root or names.catalog}: run `dolly-spark prepare` to the end"
        )
    if logical not in m.versions:
        raise NotCommittedError(
            f"table {logical} is not part of the last completed prepare run {m.run_id} (it stopped at "
            f"--until {m.until}): run `dolly-spark prepare` without --until first"
        )
    return int(m.versions[logical])


def read_committed(spark, names: tables.TableNames, logical: str):
    """``logical`` at the version the last completed prepare run committed (see above)."""
    return tables.read_table(spark, names.ref(logical), committed_version(spark, names, logical))


def pinned_version(spark, names: tables.TableNames, logical: str) -> int:
    """The committed version, or the latest one on a root without a manifest."""
    v = committed_version(spark, names, logical)
    return v if v is not None else tables.table_version(spark, names.ref(logical))


def available(spark, names: tables.TableNames, logical: str) -> bool:
    """Whether readers can see ``logical``: in the committed set (or, without a manifest, on disk)."""
    if logical in PREPARE_TABLES and has_manifest(spark, names):
        m = latest(spark, names)
        return m is not None and logical in m.versions
    return tables.table_exists(spark, names.ref(logical))


def status_line(spark, names: tables.TableNames) -> str | None:
    """A warning when the last prepare run(s) did not complete, else None."""
    m = latest(spark, names)
    pending = m.incomplete if m is not None else incomplete_runs(spark, names)
    if not pending:
        return None
    last = pending[-1]
    seen = f"run {m.run_id}'s tables (committed {m.at})" if m else "no committed tables"
    return (
        f"the last prepare run {last['run_id']} (pid {last['pid']} on {last['host']}, started {last['at']}) did not "
        f"complete; readers see {seen}"
    )
