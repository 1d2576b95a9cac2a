"""``dolly-spark prepare``: raw JSON lines -> bronze -> silver -> dedup -> gold (+ quarantine,
duplicates, metrics). ``--until STAGE`` stops early."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

from pyspark.sql import functions as F

from dolly_spark.ops import manifest, tables
from dolly_spark.ops.config import Location
from dolly_spark.ops.joins import anti_join
from dolly_spark.ops.lock import ConcurrentRunError, exclusive
from dolly_spark.prep.accounting import StageCount, check_invariant, metrics_frame
from dolly_spark.prep.clean import (
    ANY_CATEGORY,
    KNOWN_CATEGORIES,
    CleanConfig,
    quarantine_rows,
    silver_rows,
    validate,
)
from dolly_spark.prep.dedup import DedupConfig, dedup_metrics, deduplicate
from dolly_spark.prep.gold import GoldConfig, write_gold
from dolly_spark.prep.ingest import HF_DATASET_ID
from dolly_spark.prep.sources import SourceConfig, parse_source_flag, read_sources, weights

log = logging.getLogger(__name__)

STAGES = ("bronze", "silver", "dedup", "gold")
# The tables each stage (re)writes. A run to --until S commits the tables of S and earlier; the
# tables of later stages it leaves behind were built from the previous silver, so it empties them.
STAGE_TABLES = {
    "bronze": ("bronze",),
    "silver": ("silver", "quarantine"),
    "dedup": ("duplicates", "candidates"),
    "gold": ("gold", "quarantine", "gold_stats"),
}
# Databricks has no shared file lock: a started, uncommitted run younger than this holds the root.
LEASE_HOURS = 6.0


# Exact Dolly: the published text, Dolly's 200 eval records with seed 42, and Dolly's length filter
# (it keeps records *shorter* than max_length: one reserved token makes ours strict too).
DOLLY_PRESET = {
    "_help": "Dolly's data: raw text, 200 eval records, seed 42, records shorter than the context",
    "clean": {"raw_text": True},
    "gold": {"eval_size": 200, "split_seed": 42, "pack_separator_tokens": 1},
}


@dataclass
class PrepareConfig(Location):
    PRESETS: ClassVar[dict] = {"dolly": DOLLY_PRESET}

    input: str | None = field(
        default=None,
        metadata={"help": "one dolly-15k-style source: JSONL file/dir, Volume path or HF id (default: the HF id)"},
    )
    # Own data: YAML ``sources: [{uri, format, preset, columns, category, name, weight}, ...]``
    # (prep/sources.py); ``--source NAME=URI`` adds one from the command line.
    sources: tuple[SourceConfig, ...] = field(default=(), metadata={"cli": False})
    source: tuple[str, ...] = field(default=(), metadata={"help": "add a source: NAME=URI (repeatable list)"})
    # YAML ``categories: any`` or a list; default: dolly's eight when every source is dolly-15k,
    # else any. ``--categories`` (clean.categories) sets it from the command line.
    categories: tuple[str, ...] | str | None = field(default=None, metadata={"cli": False})
    experiment: str | None = field(default=None, metadata={"help": "MLflow experiment (default: dolly_spark)"})
    ingest_chunk_mb: int = field(
        default=128,
        metadata={"help": "JSON lines files larger than this are read by several tasks, in ranges this big"},
    )
    until: str = field(default=STAGES[-1], metadata={"help": "stop after this stage", "choices": STAGES})
    # Nested parts: YAML ``clean: {...}``, ``dedup: {...}``, ``gold: {...}``; flags --max-instruction-chars,
    # --dedup-threshold, --max-seq-len (dedup's flags keep their prefix, the others have none).
    clean: CleanConfig = field(default_factory=CleanConfig, metadata={"flag_prefix": ""})
    dedup: DedupConfig = field(default_factory=DedupConfig, metadata={"flag_prefix": "dedup_"})
    gold: GoldConfig = field(default_factory=GoldConfig, metadata={"flag_prefix": ""})

    def __post_init__(self):
        if self.ingest_chunk_mb < 1:
            raise ValueError(f"ingest_chunk_mb: expected a positive number of MiB, got {self.ingest_chunk_mb}")
        if isinstance(self.categories, str) and self.categories != ANY_CATEGORY:
            raise ValueError(f"categories: expected 'any' or a list, got {self.categories!r}")
        if isinstance(self.categories, (list, tuple)) and not all(isinstance(c, str) for c in self.categories):
            raise ValueError(f"categories: expected a list of strings, got {self.categories!r}")

    def source_list(self) -> list[SourceConfig]:
        """--input (first), then the YAML sources, then --source flags; dolly-15k if none."""
        out = [SourceConfig(uri=self.input)] if self.input else []
        out += list(self.sources) + [parse_source_flag(v) for v in self.source]
        return out or [SourceConfig(uri=HF_DATASET_ID)]

    def clean_config(self) -> CleanConfig:
        """clean.categories resolved: explicit > dolly's eight if every source is dolly-15k > any."""
        if isinstance(self.categories, str):
            cats: tuple[str, ...] = (ANY_CATEGORY,)
        elif self.categories is not None:
            cats = tuple(c.strip().lower() for c in self.categories)
        elif tuple(self.clean.categories) != KNOWN_CATEGORIES:
            cats = tuple(self.clean.categories)
        elif all(s.is_dolly() for s in self.source_list()):
            cats = KNOWN_CATEGORIES
        else:
            cats = (ANY_CATEGORY,)
        return dataclasses.replace(self.clean, categories=cats)

    def work_dir(self, purpose: str) -> str | None:
        """Intermediates of one stage: ``--dedup-work-dir`` when given (dedup and gold share it),
        else ``<output root>/_work/<purpose>`` (each run in its own uuid subdir)."""
        if self.dedup.work_dir or not self.output_root:
            return self.dedup.work_dir
        return str(Path(self.output_root).resolve() / "_work" / purpose)

    def dedup_config(self) -> DedupConfig:
        """Intermediates under the output root (never a driver temp dir on a cluster); of records
        duplicated across sources, the earliest listed source's is kept."""
        dedup = self.dedup
        if len(self.source_list()) > 1 and not dedup.source_priority:
            dedup = dataclasses.replace(dedup, source_priority=tuple(s.source_name for s in self.source_list()))
        return dataclasses.replace(dedup, work_dir=self.work_dir("dedup"))


@dataclass
class PrepareResult:
    run_id: str
    counts: list[StageCount]
    versions: dict[str, int]
    details: dict = field(default_factory=dict)


def _reason_counts(df) -> dict[str, int]:
    return {r["reason"]: int(r["count"]) for r in df.groupBy("reason").count().collect()}


def per_source_accounting(spark, names, out_name: str) -> dict[str, dict[str, int]]:
    """{source: {raw, <out_name>, quarantine, duplicates}}; raises if any source loses rows."""
    tallies: dict[str, dict[str, int]] = {}
    parts = {"raw": names.bronze, out_name: getattr(names, out_name), "quarantine": names.quarantine}
    if out_name in ("candidates", "gold"):
        parts["duplicates"] = names.duplicates
    for key, ref in parts.items():
        if not tables.table_exists(spark, ref):
            continue
        df = tables.read_table(spark, ref)
        for r in df.groupBy(F.coalesce(F.col("source"), F.lit("")).alias("s")).count().collect():
            tallies.setdefault(r["s"], dict.fromkeys(parts, 0))[key] = int(r["count"])
    for src, t in tallies.items():
        check_invariant(
            t["raw"], t[out_name], t["quarantine"], t.get("duplicates", 0), what=f"{out_name} (source {src!r})"
        )
    return dict(sorted(tallies.items()))


@contextlib.contextmanager
def root_lock(cfg: PrepareConfig, spark, run_id: str):
    """Hold the output root for one prepare run; on first entry, clean what killed runs left.

    Raises :class:`ConcurrentRunError` at once when another prepare holds the root.
    """
    names = cfg.table_names()
    if names.root is None:
        _check_lease(spark, names)
        yield True
        return
    with exclusive(names.root, run_id) as first:
        if first:
            note = manifest.status_line(spark, names)
            if note:
                log.warning("%s", note)
                print(f"[prepare] warning: {note}", flush=True)
            _clean_stale_work_dirs(cfg)
        yield first


def _check_lease(spark, names: tables.TableNames) -> None:
    cutoff = datetime.now(UTC) - timedelta(hours=LEASE_HOURS)
    for r in manifest.incomplete_runs(spark, names, include_failed=False):
        if datetime.fromisoformat(r["at"]) > cutoff:
            raise ConcurrentRunError(
                f"another prepare (run {r['run_id']}, pid {r['pid']} on {r['host']}, started {r['at']}) has not "
                f"committed to {names.catalog}.{names.schema}; if it is dead, its lease ends {LEASE_HOURS:g} h after start"
            )


def _clean_stale_work_dirs(cfg: PrepareConfig) -> None:
    """Intermediates of killed runs (``_work/{dedup,gold}/<uuid>``): stale, since we hold the root."""
    if cfg.dedup.work_dir or not cfg.output_root:
        return  # a user-chosen work dir may be shared with other roots: not ours to clean
    for purpose in ("dedup", "gold"):
        work = Path(cfg.work_dir(purpose))
        stale = [p for p in work.iterdir() if p.is_dir()] if work.is_dir() else []
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
        if stale:
            log.info("removed %d stale %s work dir(s) under %s", len(stale), purpose, work)


def _clear_downstream(spark, names: tables.TableNames, until: str, versions: dict[str, int]) -> None:
    """Empty the existing tables of stages after ``until`` (one commit each; history stays)."""
    later = {t for s in STAGES[STAGES.index(until) + 1 :] for t in STAGE_TABLES[s]} - set(versions)
    for logical in sorted(later):
        ref = names.ref(logical)
        if tables.table_exists(spark, ref):
            empty = spark.createDataFrame([], schema=tables.read_table(spark, ref).schema)
            tables.write_table(spark, empty, ref)
            log.info("emptied %s: built from an earlier silver, and this run stopped at %s", logical, until)


def run(cfg: PrepareConfig, spark, run_id: str | None = None) -> PrepareResult:
    run_id = run_id or uuid.uuid4().hex
    with root_lock(cfg, spark, run_id):
        try:
            return _run(cfg, spark, run_id)
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: the original error matters more
                manifest.mark_failed(spark, cfg.table_names(), run_id, cfg.until)
            raise


def _run(cfg: PrepareConfig, spark, run_id: str) -> PrepareResult:
    names = cfg.table_names()
    manifest.mark_started(spark, names, run_id, cfg.until)
    counts: list[StageCount] = []
    versions: dict[str, int] = {}
    details: dict = {}
    total = STAGES.index(cfg.until) + 1

    def progress(i: int, stage: str, t0: float, msg: str) -> None:
        log.info("[%d/%d] %-7s %s (%.1fs)", i, total, stage, msg, time.time() - t0)
        print(f"[prepare {i}/{total}] {stage:<7} {msg} ({time.time() - t0:.1f}s)", flush=True)

    # 1. bronze: every line, malformed ones included.
    t0 = time.time()
    sources = cfg.source_list()
    clean_cfg = cfg.clean_config()
    # Every source is checked here, before any write.
    bronze = read_sources(spark, sources, cfg.ingest_chunk_mb * 1024 * 1024)
    versions["bronze"] = tables.write_table(
        spark, bronze, names.bronze, comment="input records as ingested, malformed ones included, with their source"
    )
    details["sources"] = {s.source_name: {"uri": s.uri, "weight": s.weight} for s in sources}
    details["source_versions"] = {
        r["source"]: r["v"]
        for r in tables.read_table(spark, names.bronze)
        .where(F.col("source_version").isNotNull())
        .groupBy("source")
        .agg(F.max("source_version").alias("v"))
        .collect()
    }
    raw_rows = tables.read_table(spark, names.bronze).count()
    counts.append(StageCount("bronze", raw_rows, raw_rows))
    progress(1, "bronze", t0, f"{raw_rows} rows")
    quarantined = 0
    duplicates_n = 0
    out_rows, out_name = raw_rows, "bronze"

    if STAGES.index(cfg.until) >= 1:
        # 2. silver + quarantine.
        t0 = time.time()
        bronze_df = tables.read_table(spark, names.bronze)
        versions["silver"] = tables.write_table(
            spark,
            silver_rows(validate(bronze_df, clean_cfg)),
            names.silver,
            comment="cleaned, validated dolly-15k records",
        )
        # The engine does not cache: validate again only the rows silver left out (few), not all.
        # A left-out row without a reason would be lost; the invariant below catches that.
        left_out = anti_join(bronze_df, tables.read_table(spark, names.silver), "record_id")
        silver_q = quarantine_rows(validate(left_out, clean_cfg), "silver")
        if cfg.until == "gold":
            # Held back: gold writes quarantine once, with its own rejects, so a killed run leaves
            # the table at the old version or the new one (rejects are few; they fit the driver).
            silver_q_rows = silver_q.toArrow()
            by_reason = dict(Counter(silver_q_rows["reason"].to_pylist()))
        else:
            versions["quarantine"] = tables.write_table(
                spark,
                silver_q,
                names.quarantine,
                comment="rejected rows, one per record, with the first failing rule as reason",
            )
            by_reason = _reason_counts(tables.read_table(spark, names.quarantine))
        silver_n = tables.read_table(spark, names.silver).count()
        quarantined = sum(by_reason.values())
        counts.append(
            StageCount("silver", raw_rows, silver_n, quarantined, details={"quarantined_by_reason": by_reason})
        )
        progress(2, "silver", t0, f"{silver_n} rows, {quarantined} quarantined")
        check_invariant(raw_rows, silver_n, quarantined)
        out_rows, out_name = silver_n, "silver"

    if STAGES.index(cfg.until) >= 2:
        # 3. dedup: exact, then MinHash LSH; removed rows keep their lineage in `duplicates`.
        t0 = time.time()
        result = deduplicate(tables.read_table(spark, names.silver), cfg.dedup_config())
        try:
            versions["duplicates"] = tables.write_table(
                spark,
                result.duplicates,
                names.duplicates,
                comment="one row per removed duplicate: record_id, kept_record_id, cluster_id, method, jaccard",
            )
            versions["candidates"] = tables.write_table(
                spark, result.kept, names.candidates, comment="silver minus duplicates: the gold candidates"
            )
            dedup_stats = dedup_metrics(result)
        finally:
            result.cleanup()
        duplicates_n = tables.read_table(spark, names.duplicates).count()
        cand_n = tables.read_table(spark, names.candidates).count()
        counts.append(StageCount("dedup", out_rows, cand_n, removed_rows=duplicates_n, details=dedup_stats))
        details["dedup"] = dedup_stats
        progress(3, "dedup", t0, f"{cand_n} kept, {duplicates_n} duplicates ({dedup_stats['removed_by_method']})")
        check_invariant(raw_rows, cand_n, quarantined, duplicates_n, what="candidates")
        out_rows, out_name = cand_n, "candidates"

    if STAGES.index(cfg.until) >= 3:
        # 4. gold: Dolly prompts, tokens, split, packing plan; too-long rows to quarantine.
        t0 = time.time()
        g = write_gold(
            spark,
            names,
            tables.read_table(spark, names.candidates),
            cfg.gold,
            versions.get("silver"),
            other_quarantine=silver_q_rows,
            input_rows=out_rows,
            weights=weights(sources),
            work_dir=cfg.work_dir("gold"),
        )
        versions.update(g["versions"])
        gold_n, q_gold_n, splits = g["gold_rows"], g["quarantined_rows"], g["by_split"]
        counts.append(
            StageCount(
                "gold",
                g["input_rows"],
                gold_n,
                q_gold_n,
                details={
                    "quarantined_by_reason": g["quarantined_by_reason"],
                    "split_counts": splits,
                    "versions": dict(versions),
                },
            )
        )
        details["splits"] = splits
        quarantined += q_gold_n
        progress(4, "gold", t0, f"{gold_n} rows ({splits}), {q_gold_n} quarantined")
        check_invariant(raw_rows, gold_n, quarantined, duplicates_n, what="gold")
        out_rows, out_name = gold_n, "gold"

    for c in counts:
        c.check()
    if out_name != "bronze":
        # Recount from the tables themselves: the promise is about what landed, not what we tallied.
        q_table = tables.read_table(spark, names.quarantine).count()
        check_invariant(
            raw_rows, tables.read_table(spark, getattr(names, out_name)).count(), q_table, duplicates_n, what=out_name
        )
    if out_name != "bronze":
        # The promise per source too: each source's rows land in exactly one of out / quarantine / duplicates.
        by_source = per_source_accounting(spark, names, out_name)
        counts[-1].details["by_source"] = by_source
        details["by_source"] = by_source
    _clear_downstream(spark, names, cfg.until, versions)
    versions["metrics"] = tables.write_table(spark, metrics_frame(spark, run_id, counts), names.metrics, mode="append")
    # Last write: from here on readers see this run's tables (manifest.read_committed).
    manifest.commit(spark, names, run_id, cfg.until, versions)
    if cfg.until == "gold":
        from dolly_spark.prep.views import create_views

        create_views(spark, names)  # after the commit: views pin the versions it names
    details["accounting"] = {"raw": raw_rows, out_name: out_rows, "quarantine": quarantined, "duplicates": duplicates_n}
    return PrepareResult(run_id, counts, versions, details)
