"""The four prepare stages: bronze -> silver -> dedup -> gold, run by ``prep/pipeline.py``.

Each declares the logical tables it reads and writes and returns its counts; it reads what the
earlier stages left from the tables and the :class:`StageContext`, never from their locals.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from pyspark.sql import functions as F

from dolly_spark.ops import tables
from dolly_spark.ops.joins import anti_join
from dolly_spark.ops.schemas import SILVER_COLUMNS
from dolly_spark.ops.workdir import WorkDir
from dolly_spark.prep import decontam
from dolly_spark.prep.accounting import StageCount
from dolly_spark.prep.clean import CleanConfig, silver_rows, to_quarantine, validate
from dolly_spark.prep.decontam import DecontamConfig
from dolly_spark.prep.dedup import DedupConfig, dedup_metrics, deduplicate
from dolly_spark.prep.gold import GoldConfig, write_gold
from dolly_spark.prep.pii import PiiConfig, findings_rows, findings_summary, redact_raw_lines, scan_fields
from dolly_spark.prep.pipeline import StageContext, StageResult
from dolly_spark.prep.sources import SourceConfig, license_summary, read_sources

# Bronze keeps the input as it came, PII and secrets included (silver holds the scanned text).
RAW_TEXT_COMMENTS = {
    c: "raw input text, not scanned for PII or secrets: restrict access to this table"
    for c in ("instruction", "context", "response", "raw_line")
}
RAW_TEXT_TAGS = {"pii": "unscanned", "data_class": "raw_text"}


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
        comment = "input records as ingested, malformed ones included, with their source; raw text: restrict access"
        version = tables.write_table(spark, bronze, names.bronze, comment=comment, column_comments=RAW_TEXT_COMMENTS)
        tables.tag_columns(spark, names.bronze, {c: RAW_TEXT_TAGS for c in RAW_TEXT_COMMENTS})
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
    """Validated, cleaned records with PII redacted; the rest to quarantine with the first failing
    rule (or the secret found) as reason; one ``pii_findings`` row per finding."""

    name: ClassVar[str] = "silver"
    inputs: ClassVar[tuple[str, ...]] = ("bronze",)
    outputs: ClassVar[tuple[str, ...]] = ("silver", "quarantine", "pii_findings")
    result_table: ClassVar[str] = "silver"
    clean: CleanConfig
    pii: PiiConfig = PiiConfig()
    work_dir: str | None = None

    def run(self, ctx: StageContext) -> StageResult:
        spark, names = ctx.spark, ctx.names
        bronze = tables.read_table(spark, names.bronze)
        work = WorkDir(self.work_dir, "pii") if self.pii.scan else None
        try:
            scanned = scan_fields(silver_rows(validate(bronze, self.clean)), self.pii)
            # The scan is the costly step: silver, its rejects and the findings read one checkpoint.
            scanned = work.materialize(scanned, "scanned") if work else scanned
            comment = "cleaned, validated records, PII redacted as the scan policy says"
            silver = scanned.where(F.col("pii_reason").isNull()).select(*SILVER_COLUMNS)
            versions = {"silver": tables.write_table(spark, silver, names.silver, comment=comment)}
            rejects, findings = self._rejects(bronze, scanned, spark, names)
            comment = "one row per PII or secret finding: record, field, kind, offsets, action (never the value)"
            versions["pii_findings"] = tables.write_table(spark, findings, names.pii_findings, comment=comment)
            held, by_reason = self._quarantine(ctx, rejects, versions)  # reads the checkpoint: before cleanup
        finally:
            if work:
                shutil.rmtree(work.path, ignore_errors=True)
        pii = findings_summary(tables.read_table(spark, names.pii_findings))
        silver_n = tables.read_table(spark, names.silver).count()
        quarantined = sum(by_reason.values())
        details = {"quarantined_by_reason": by_reason, "pii": pii}
        count = StageCount("silver", ctx.input_rows, silver_n, quarantined, details=details)
        summary = f"{silver_n} rows, {quarantined} quarantined, {pii['findings']} PII/secret findings"
        return StageResult(count, versions, summary, details={"pii": pii}, held=held)

    def _quarantine(self, ctx: StageContext, rejects, versions: dict) -> tuple[dict, dict[str, int]]:
        if ctx.written_later("quarantine"):
            # Held back: gold writes quarantine once, with its own rejects, so a killed run leaves
            # the table at the old version or the new one (rejects are few; they fit the driver).
            held = {"quarantine": rejects.toArrow()}
            return held, dict(Counter(held["quarantine"]["reason"].to_pylist()))
        comment = "rejected rows, one per record, with the first failing rule as reason"
        versions["quarantine"] = tables.write_table(ctx.spark, rejects, ctx.names.quarantine, comment=comment)
        return {}, _reason_counts(tables.read_table(ctx.spark, ctx.names.quarantine))

    def _rejects(self, bronze, scanned, spark, names):
        """Quarantine rows (failed rules, input line redacted; then the scan's) and all findings."""
        # The engine does not cache: validate again only the rows silver left out (few), not all.
        # A left-out row without a reason would be lost; the runner's invariant catches that.
        left_out = anti_join(bronze, tables.read_table(spark, names.silver), "record_id")
        failed = redact_raw_lines(validate(left_out, self.clean).where(F.size("reasons") > 0), self.pii)
        if not self.pii.scan:  # nothing flagged, nothing found: no second pass over all of silver
            return to_quarantine(failed, "silver"), findings_rows(failed)
        flagged = scanned.where(F.col("pii_reason").isNotNull())
        flagged = flagged.withColumn("reason", F.col("pii_reason")).withColumn("reasons", F.array("pii_reason"))
        rejects = to_quarantine(failed, "silver").unionByName(to_quarantine(flagged, "silver"))
        return rejects, findings_rows(scanned).unionByName(findings_rows(failed))


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
    """Dolly prompts, tokens, split and packing plan; too-long rows and train records overlapping
    a benchmark set to quarantine."""

    name: ClassVar[str] = "gold"
    # silver: its version goes into gold's lineage columns.
    inputs: ClassVar[tuple[str, ...]] = ("candidates", "silver")
    outputs: ClassVar[tuple[str, ...]] = ("gold", "quarantine", "gold_stats")
    result_table: ClassVar[str] = "gold"
    gold: GoldConfig
    weights: dict[str, int]
    work_dir: str | None
    decontam: DecontamConfig = field(default_factory=DecontamConfig)

    def _decontaminate(self, ctx: StageContext, candidates):
        work = WorkDir(self.work_dir, "gold")
        try:
            return decontam.decontaminate(ctx.spark, candidates, self.decontam, self.gold, work.materialize)
        finally:
            shutil.rmtree(work.path, ignore_errors=True)

    def run(self, ctx: StageContext) -> StageResult:
        candidates = tables.read_table(ctx.spark, ctx.names.candidates)
        held, dec = ctx.held.get("quarantine"), None
        if self.decontam.enabled:
            # The overlapping train records join silver's held rows: quarantine still gets one commit.
            dec = self._decontaminate(ctx, candidates)
            candidates, held = dec.kept, decontam.append_rows(held, dec.quarantine)
        removed = dec.removed if dec else 0
        g = write_gold(
            ctx.spark,
            ctx.names,
            candidates,
            self.gold,
            ctx.versions.get("silver"),
            other_quarantine=held,
            input_rows=ctx.input_rows - removed,
            weights=self.weights,
            work_dir=self.work_dir,
        )
        gold_n, q_gold_n, splits = g["gold_rows"], g["quarantined_rows"] + removed, g["by_split"]
        details = {
            "quarantined_by_reason": g["quarantined_by_reason"],
            "split_counts": splits,
            "versions": {**ctx.versions, **g["versions"]},
        }
        extra = {"splits": splits}
        if dec is not None:
            gold = tables.read_table(ctx.spark, ctx.names.gold)
            dec.report["eval_train_overlap"] = decontam.split_overlap_counts(gold, self.decontam.decontam_ngram)
            details["quarantined_by_reason"] = {**g["quarantined_by_reason"], **dec.reasons()}
            details.update(decontam.metric_details(dec.report))
            extra["decontamination"] = dec.report
        return StageResult(
            StageCount("gold", g["input_rows"] + removed, gold_n, q_gold_n, details=details),
            g["versions"],
            f"{gold_n} rows ({splits}), {q_gold_n} quarantined",
            details=extra,
        )


PREPARE_STAGES = (BronzeStage, SilverStage, DedupStage, GoldStage)
STAGES = tuple(s.name for s in PREPARE_STAGES)
# The tables each stage (re)writes. A run to --until S commits the tables of S and earlier; the
# tables of later stages it leaves behind were built from the previous silver, so it empties them.
STAGE_TABLES = {s.name: s.outputs for s in PREPARE_STAGES}
