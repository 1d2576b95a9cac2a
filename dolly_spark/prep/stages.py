"""The four prepare stages: bronze -> silver -> dedup -> gold, run by ``prep/pipeline.py``.

Each declares the logical tables it reads and writes and returns its counts; it reads what the
earlier stages left from the tables and the :class:`StageContext`, never from their locals.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

from pyspark.sql import functions as F

from dolly_spark.ops import tables
from dolly_spark.ops.joins import anti_join
from dolly_spark.prep.accounting import StageCount
from dolly_spark.prep.clean import CleanConfig, quarantine_rows, silver_rows, validate
from dolly_spark.prep.dedup import DedupConfig, dedup_metrics, deduplicate
from dolly_spark.prep.gold import GoldConfig, write_gold
from dolly_spark.prep.pipeline import StageContext, StageResult
from dolly_spark.prep.sources import SourceConfig, license_summary, read_sources


def _reason_counts(df) -> dict[str, int]:
    return {r["reason"]: int(r["count"]) for r in df.groupBy("reason").count().collect()}


@dataclass(frozen=True)
class BronzeStage:
    """Every input line, malformed ones included, with its source."""

    name: ClassVar[str] = "bronze"
    inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ("bronze",)
    result_table: ClassVar[str] = "bronze"
    sources: tuple[SourceConfig, ...]
    chunk_bytes: int
    max_line_bytes: int

    def run(self, ctx: StageContext) -> StageResult:
        spark, names = ctx.spark, ctx.names
        # Every source is checked here, before any write.
        bronze = read_sources(spark, list(self.sources), self.chunk_bytes, self.max_line_bytes)
        comment = "input records as ingested, malformed ones included, with their source"
        version = tables.write_table(spark, bronze, names.bronze, comment=comment)
        written = tables.read_table(spark, names.bronze)
        source_versions = {
            r["source"]: r["v"]
            for r in written.where(F.col("source_version").isNotNull())
            .groupBy("source")
            .agg(F.max("source_version").alias("v"))
            .collect()
        }
        raw_rows = written.count()
        return StageResult(
            StageCount("bronze", raw_rows, raw_rows),
            {"bronze": version},
            f"{raw_rows} rows",
            details={
                "sources": {
                    s.source_name: {"uri": s.uri, "weight": s.weight, "license": s.resolved_license}
                    for s in self.sources
                },
                "source_versions": source_versions,
                **license_summary(list(self.sources)),
            },
        )


@dataclass(frozen=True)
class SilverStage:
    """Validated, cleaned records; the rest to quarantine with the first failing rule as reason."""

    name: ClassVar[str] = "silver"
    inputs: ClassVar[tuple[str, ...]] = ("bronze",)
    outputs: ClassVar[tuple[str, ...]] = ("silver", "quarantine")
    result_table: ClassVar[str] = "silver"
    clean: CleanConfig

    def run(self, ctx: StageContext) -> StageResult:
        spark, names = ctx.spark, ctx.names
        bronze = tables.read_table(spark, names.bronze)
        versions = {
            "silver": tables.write_table(
                spark,
                silver_rows(validate(bronze, self.clean)),
                names.silver,
                comment="cleaned, validated dolly-15k records",
            )
        }
        # The engine does not cache: validate again only the rows silver left out (few), not all.
        # A left-out row without a reason would be lost; the runner's invariant catches that.
        left_out = anti_join(bronze, tables.read_table(spark, names.silver), "record_id")
        rejects = quarantine_rows(validate(left_out, self.clean), "silver")
        held = {}
        if ctx.written_later("quarantine"):
            # Held back: gold writes quarantine once, with its own rejects, so a killed run leaves
            # the table at the old version or the new one (rejects are few; they fit the driver).
            held["quarantine"] = rejects.toArrow()
            by_reason = dict(Counter(held["quarantine"]["reason"].to_pylist()))
        else:
            comment = "rejected rows, one per record, with the first failing rule as reason"
            versions["quarantine"] = tables.write_table(spark, rejects, names.quarantine, comment=comment)
            by_reason = _reason_counts(tables.read_table(spark, names.quarantine))
        silver_n = tables.read_table(spark, names.silver).count()
        quarantined = sum(by_reason.values())
        count = StageCount(
            "silver", ctx.input_rows, silver_n, quarantined, details={"quarantined_by_reason": by_reason}
        )
        return StageResult(count, versions, f"{silver_n} rows, {quarantined} quarantined", held=held)


@dataclass(frozen=True)
class DedupStage:
    """Exact, then MinHash LSH duplicates out of silver; removed rows keep their lineage."""

    name: ClassVar[str] = "dedup"
    inputs: ClassVar[tuple[str, ...]] = ("silver",)
    outputs: ClassVar[tuple[str, ...]] = ("duplicates", "candidates")
    result_table: ClassVar[str] = "candidates"
    dedup: DedupConfig

    def run(self, ctx: StageContext) -> StageResult:
        spark, names = ctx.spark, ctx.names
        result = deduplicate(tables.read_table(spark, names.silver), self.dedup)
        try:
            comment = "one row per removed duplicate: record_id, kept_record_id, cluster_id, method, jaccard"
            versions = {
                "duplicates": tables.write_table(spark, result.duplicates, names.duplicates, comment=comment),
                "candidates": tables.write_table(
                    spark, result.kept, names.candidates, comment="silver minus duplicates: the gold candidates"
                ),
            }
            stats = dedup_metrics(result)
        finally:
            result.cleanup()
        duplicates_n = tables.read_table(spark, names.duplicates).count()
        cand_n = tables.read_table(spark, names.candidates).count()
        return StageResult(
            StageCount("dedup", ctx.input_rows, cand_n, removed_rows=duplicates_n, details=stats),
            versions,
            f"{cand_n} kept, {duplicates_n} duplicates ({stats['removed_by_method']})",
            details={"dedup": stats},
        )


@dataclass(frozen=True)
class GoldStage:
    """Dolly prompts, tokens, split and packing plan; too-long rows to quarantine."""

    name: ClassVar[str] = "gold"
    # silver: its version goes into gold's lineage columns.
    inputs: ClassVar[tuple[str, ...]] = ("candidates", "silver")
    outputs: ClassVar[tuple[str, ...]] = ("gold", "quarantine", "gold_stats")
    result_table: ClassVar[str] = "gold"
    gold: GoldConfig
    weights: dict[str, int]
    work_dir: str | None

    def run(self, ctx: StageContext) -> StageResult:
        g = write_gold(
            ctx.spark,
            ctx.names,
            tables.read_table(ctx.spark, ctx.names.candidates),
            self.gold,
            ctx.versions.get("silver"),
            other_quarantine=ctx.held.get("quarantine"),
            input_rows=ctx.input_rows,
            weights=self.weights,
            work_dir=self.work_dir,
        )
        gold_n, q_gold_n, splits = g["gold_rows"], g["quarantined_rows"], g["by_split"]
        details = {
            "quarantined_by_reason": g["quarantined_by_reason"],
            "split_counts": splits,
            "versions": {**ctx.versions, **g["versions"]},
        }
        return StageResult(
            StageCount("gold", g["input_rows"], gold_n, q_gold_n, details=details),
            g["versions"],
            f"{gold_n} rows ({splits}), {q_gold_n} quarantined",
            details={"splits": splits},
        )


PREPARE_STAGES = (BronzeStage, SilverStage, DedupStage, GoldStage)
STAGES = tuple(s.name for s in PREPARE_STAGES)
# The tables each stage (re)writes. A run to --until S commits the tables of S and earlier; the
# tables of later stages it leaves behind were built from the previous silver, so it empties them.
STAGE_TABLES = {s.name: s.outputs for s in PREPARE_STAGES}
