"""``dolly-spark prepare``: raw JSON lines -> bronze -> silver (+ quarantine, metrics)."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from pyspark.sql import functions as F

from dolly_spark import tables
from dolly_spark.accounting import StageCount, check_invariant, metrics_frame
from dolly_spark.clean import CleanConfig, quarantine_rows, silver_rows, validate
from dolly_spark.config import parse_config
from dolly_spark.ingest import read_bronze

log = logging.getLogger(__name__)

STAGES = ("bronze", "silver")


@dataclass
class PrepareConfig:
    input: str = field(default="databricks/databricks-dolly-15k", metadata={"help": "JSONL file/dir, Volume path or HF id"})
    output_root: str | None = field(default=None, metadata={"help": "local root for Delta tables"})
    catalog: str | None = field(default=None, metadata={"help": "Unity Catalog catalog (Databricks)"})
    schema: str | None = field(default=None, metadata={"help": "Unity Catalog schema (Databricks)"})
    until: str = field(default=STAGES[-1], metadata={"help": "stop after this stage", "choices": STAGES})
    max_instruction_chars: int = 16_000
    max_context_chars: int = 64_000
    max_response_chars: int = 32_000
    strip_citations: bool = True

    def table_names(self) -> tables.TableNames:
        if self.catalog:
            return tables.TableNames(catalog=self.catalog, schema=self.schema)
        if not self.output_root:
            raise ValueError("give --output-root DIR (local) or --catalog and --schema (Databricks)")
        return tables.TableNames(root=self.output_root)

    def clean_config(self) -> CleanConfig:
        return CleanConfig(
            max_instruction_chars=self.max_instruction_chars,
            max_context_chars=self.max_context_chars,
            max_response_chars=self.max_response_chars,
            strip_citations=self.strip_citations,
        )


@dataclass
class PrepareResult:
    run_id: str
    counts: list[StageCount]
    versions: dict[str, int]


def _reason_counts(spark, ref) -> dict[str, int]:
    rows = tables.read_table(spark, ref).groupBy("reason").count().collect()
    return {r["reason"]: int(r["count"]) for r in rows}


def run(cfg: PrepareConfig, spark) -> PrepareResult:
    names = cfg.table_names()
    run_id = uuid.uuid4().hex
    counts: list[StageCount] = []
    versions: dict[str, int] = {}
    total = STAGES.index(cfg.until) + 1

    def progress(i: int, stage: str, t0: float, msg: str) -> None:
        log.info("[%d/%d] %-7s %s (%.1fs)", i, total, stage, msg, time.time() - t0)

    # 1. bronze: every line, malformed ones included.
    t0 = time.time()
    bronze = read_bronze(spark, cfg.input)
    versions["bronze"] = tables.write_table(
        spark, bronze, names.bronze, comment="dolly-15k lines as ingested, malformed ones included"
    )
    raw_rows = tables.read_table(spark, names.bronze).count()
    counts.append(StageCount("bronze", raw_rows, raw_rows))
    progress(1, "bronze", t0, f"{raw_rows} rows")

    if cfg.until != "bronze":
        # 2. silver + quarantine.
        t0 = time.time()
        validated = validate(tables.read_table(spark, names.bronze), cfg.clean_config()).cache()
        versions["silver"] = tables.write_table(
            spark, silver_rows(validated), names.silver, comment="cleaned, validated dolly-15k records"
        )
        versions["quarantine"] = tables.write_table(
            spark, quarantine_rows(validated, "silver"), names.quarantine,
            comment="rejected rows, one per record, with the first failing rule as reason",
        )
        validated.unpersist()
        silver_n = tables.read_table(spark, names.silver).count()
        by_reason = _reason_counts(spark, names.quarantine)
        q_n = sum(by_reason.values())
        counts.append(StageCount("silver", raw_rows, silver_n, q_n, details={"quarantined_by_reason": by_reason}))
        progress(2, "silver", t0, f"{silver_n} rows, {q_n} quarantined")
        check_invariant(raw_rows, silver_n, q_n)

    for c in counts:
        c.check()
    tables.write_table(spark, metrics_frame(spark, run_id, counts), names.metrics, mode="append")
    return PrepareResult(run_id, counts, versions)


def format_summary(result: PrepareResult) -> str:
    lines = [f"run {result.run_id}", f"{'stage':<10}{'input':>8}{'output':>8}{'quarant.':>10}{'removed':>9}"]
    for c in result.counts:
        lines.append(f"{c.stage:<10}{c.input_rows:>8}{c.output_rows:>8}{c.quarantined_rows:>10}{c.removed_rows:>9}")
        for reason, n in sorted(c.details.get("quarantined_by_reason", {}).items()):
            lines.append(f"{'':<12}{reason:<28}{n:>6}")
    lines.append("versions: " + ", ".join(f"{k}@{v}" for k, v in result.versions.items()))
    return "\n".join(lines)


CONFIG = PrepareConfig


def main(argv: list[str] | None = None) -> int:
    from dolly_spark.session import get_spark

    cfg = parse_config(PrepareConfig, argv, prog="dolly-spark prepare", description=__doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run(cfg, get_spark())
    print(format_summary(result))
    return 0
