"""``dolly-spark prepare``: raw JSON lines -> bronze -> silver -> dedup -> gold (+ quarantine,
duplicates, metrics). ``--until STAGE`` stops early."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections import Counter
from pathlib import Path
from dataclasses import dataclass, field

from pyspark.sql import functions as F

from dolly_spark import tables
from dolly_spark.accounting import StageCount, check_invariant, metrics_frame
from dolly_spark.clean import CleanConfig, quarantine_rows, silver_rows, validate
from dolly_spark.config import parse_config
from dolly_spark.ingest import read_bronze
from dolly_spark.tokenizer import default_tokenizer

log = logging.getLogger(__name__)

STAGES = ("bronze", "silver", "dedup", "gold")


@dataclass
class PrepareConfig:
    input: str = field(default="databricks/databricks-dolly-15k", metadata={"help": "JSONL file/dir, Volume path or HF id"})
    output_root: str | None = field(default=None, metadata={"help": "local root for Delta tables"})
    catalog: str | None = field(default=None, metadata={"help": "Unity Catalog catalog (Databricks)"})
    schema: str | None = field(default=None, metadata={"help": "Unity Catalog schema (Databricks)"})
    experiment: str | None = field(default=None, metadata={"help": "MLflow experiment (default: dolly_spark)"})
    until: str = field(default=STAGES[-1], metadata={"help": "stop after this stage", "choices": STAGES})
    # silver
    max_instruction_chars: int = 16_000
    max_context_chars: int = 64_000
    max_response_chars: int = 32_000
    strip_citations: bool = True
    # dedup (see docs/dedup.md)
    dedup_fields: str = field(default="all", metadata={"help": "fields that count: all | instruction_context", "choices": ("all", "instruction_context")})
    dedup_lowercase: bool = True
    dedup_collapse_whitespace: bool = True
    dedup_strip_punctuation: bool = True
    dedup_keep: str = field(default="lowest_record_id", metadata={"choices": ("lowest_record_id", "longest_response")})
    dedup_shingle: str = field(default="word", metadata={"choices": ("word", "char")})
    dedup_ngram: int = 2
    dedup_num_perm: int = 128
    dedup_threshold: float = 0.7
    dedup_seed: int = 42
    dedup_fp_weight: float = 0.2
    dedup_fn_weight: float = 0.8
    dedup_per_field_threshold: bool = True
    dedup_max_bucket_size: int = 200
    dedup_union_find_max_edges: int = 2_000_000
    dedup_max_iterations: int = 50
    # gold (see docs/gold.md)
    tokenizer: str = field(default_factory=default_tokenizer, metadata={"help": "tokenizer hub id or local dir (env DOLLY_TOKENIZER)"})
    max_seq_len: int = field(default=2048, metadata={"help": "longer records are quarantined as too_long"})
    eval_size: int = field(default=1000, metadata={"help": "eval records expected out of eval_reference_rows"})
    eval_reference_rows: int = 15011
    split_seed: int = 42
    pack_separator_tokens: int = field(default=0, metadata={"help": "tokens the collator adds per packed record"})

    def table_names(self) -> tables.TableNames:
        return tables.table_names_for(self.output_root, self.catalog, self.schema)

    def clean_config(self) -> CleanConfig:
        return CleanConfig(
            max_instruction_chars=self.max_instruction_chars,
            max_context_chars=self.max_context_chars,
            max_response_chars=self.max_response_chars,
            strip_citations=self.strip_citations,
        )

    def dedup_config(self):
        from dolly_spark.dedup import DedupConfig

        work = str(Path(self.output_root).resolve() / "_work" / "dedup") if self.output_root else None
        # Every DedupConfig field is exposed as dedup_<name>, so the two cannot drift apart.
        values = {f.name: getattr(self, "dedup_" + f.name) for f in dataclasses.fields(DedupConfig) if f.name != "work_dir"}
        return DedupConfig(**values, work_dir=work)

    def gold_config(self):
        from dolly_spark.gold import GoldConfig

        return GoldConfig(tokenizer=self.tokenizer, max_seq_len=self.max_seq_len, eval_size=self.eval_size,
                          eval_reference_rows=self.eval_reference_rows, split_seed=self.split_seed,
                          pack_separator_tokens=self.pack_separator_tokens)


@dataclass
class PrepareResult:
    run_id: str
    counts: list[StageCount]
    versions: dict[str, int]
    details: dict = field(default_factory=dict)


def _reason_counts(df) -> dict[str, int]:
    return {r["reason"]: int(r["count"]) for r in df.groupBy("reason").count().collect()}


def run(cfg: PrepareConfig, spark) -> PrepareResult:
    names = cfg.table_names()
    run_id = uuid.uuid4().hex
    counts: list[StageCount] = []
    versions: dict[str, int] = {}
    details: dict = {}
    total = STAGES.index(cfg.until) + 1

    def progress(i: int, stage: str, t0: float, msg: str) -> None:
        log.info("[%d/%d] %-7s %s (%.1fs)", i, total, stage, msg, time.time() - t0)
        print(f"[prepare {i}/{total}] {stage:<7} {msg} ({time.time() - t0:.1f}s)", flush=True)

    # 1. bronze: every line, malformed ones included.
    t0 = time.time()
    bronze = read_bronze(spark, cfg.input)
    versions["bronze"] = tables.write_table(
        spark, bronze, names.bronze, comment="dolly-15k lines as ingested, malformed ones included"
    )
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
            spark, silver_rows(validate(bronze_df, cfg.clean_config())), names.silver,
            comment="cleaned, validated dolly-15k records",
        )
        # The engine does not cache: validate again only the rows silver left out (few), not all.
        # A left-out row without a reason would be lost; the invariant below catches that.
        left_out = bronze_df.join(tables.read_table(spark, names.silver).select("record_id"), "record_id", "left_anti")
        silver_q = quarantine_rows(validate(left_out, cfg.clean_config()), "silver")
        if cfg.until == "gold":
            # Held back: gold writes quarantine once, with its own rejects, so a killed run leaves
            # the table at the old version or the new one (rejects are few; they fit the driver).
            silver_q_rows = silver_q.toArrow()
            by_reason = dict(Counter(silver_q_rows["reason"].to_pylist()))
        else:
            versions["quarantine"] = tables.write_table(
                spark, silver_q, names.quarantine,
                comment="rejected rows, one per record, with the first failing rule as reason",
            )
            by_reason = _reason_counts(tables.read_table(spark, names.quarantine))
        silver_n = tables.read_table(spark, names.silver).count()
        quarantined = sum(by_reason.values())
        counts.append(StageCount("silver", raw_rows, silver_n, quarantined, details={"quarantined_by_reason": by_reason}))
        progress(2, "silver", t0, f"{silver_n} rows, {quarantined} quarantined")
        check_invariant(raw_rows, silver_n, quarantined)
        out_rows, out_name = silver_n, "silver"

    if STAGES.index(cfg.until) >= 2:
        # 3. dedup: exact, then MinHash LSH; removed rows keep their lineage in `duplicates`.
        from dolly_spark.dedup import dedup_metrics, deduplicate

        t0 = time.time()
        result = deduplicate(tables.read_table(spark, names.silver), cfg.dedup_config())
        try:
            versions["duplicates"] = tables.write_table(
                spark, result.duplicates, names.duplicates,
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
        progress(3, "dedup", t0, f"{cand_n} kept, {duplicates_n} duplicates "
                 f"({dedup_stats['removed_by_method']})")
        check_invariant(raw_rows, cand_n, quarantined, duplicates_n, what="candidates")
        out_rows, out_name = cand_n, "candidates"

    if STAGES.index(cfg.until) >= 3:
        # 4. gold: Dolly prompts, tokens, split, packing plan; too-long rows to quarantine.
        from dolly_spark.gold import write_gold
        from dolly_spark.views import create_views

        t0 = time.time()
        g = write_gold(spark, names, tables.read_table(spark, names.candidates), cfg.gold_config(), versions.get("silver"),
                       other_quarantine=silver_q_rows, input_rows=out_rows)
        versions.update(g["versions"])
        gold_n, q_gold_n, splits = g["gold_rows"], g["quarantined_rows"], g["by_split"]
        counts.append(StageCount("gold", g["input_rows"], gold_n, q_gold_n,
                                 details={"quarantined_by_reason": g["quarantined_by_reason"], "split_counts": splits,
                                          "versions": dict(versions)}))
        details["splits"] = splits
        quarantined += q_gold_n
        progress(4, "gold", t0, f"{gold_n} rows ({splits}), {q_gold_n} quarantined")
        check_invariant(raw_rows, gold_n, quarantined, duplicates_n, what="gold")
        create_views(spark, names)
        out_rows, out_name = gold_n, "gold"

    for c in counts:
        c.check()
    if out_name != "bronze":
        # Recount from the tables themselves: the promise is about what landed, not what we tallied.
        q_table = tables.read_table(spark, names.quarantine).count()
        check_invariant(raw_rows, tables.read_table(spark, getattr(names, out_name)).count(), q_table,
                        duplicates_n, what=out_name)
    tables.write_table(spark, metrics_frame(spark, run_id, counts), names.metrics, mode="append")
    details["accounting"] = {"raw": raw_rows, out_name: out_rows, "quarantine": quarantined, "duplicates": duplicates_n}
    return PrepareResult(run_id, counts, versions, details)


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
    from dolly_spark.stages import tracked_prepare

    result = tracked_prepare(cfg, get_spark())
    print(format_summary(result))
    return 0
