"""``dolly-spark prepare``: raw JSON lines -> bronze -> silver -> dedup -> gold (+ quarantine,
duplicates, metrics). ``--until STAGE`` stops early."""

from __future__ import annotations

import dataclasses

from dolly_spark.commands.common import parse_job, spark_session
from dolly_spark.prep.prepare import PrepareConfig, PrepareResult, run

CONFIG = PrepareConfig


def tracked(cfg: PrepareConfig, spark) -> PrepareResult:
    import mlflow

    from dolly_spark.commands.mlflow_logging import job_run, log_metrics_table

    with job_run("prepare", cfg):
        result = run(cfg, spark)
        log_metrics_table(spark, cfg.table_names(), run_id_filter=result.run_id)
        mlflow.set_tags({f"dolly.{k}_version": str(v) for k, v in result.versions.items()})
        # Lineage of Delta sources: the version each one was read at.
        mlflow.set_tags(
            {f"dolly.source.{k}_version": str(v) for k, v in result.details.get("source_versions", {}).items()}
        )
        mlflow.log_dict(dataclasses.asdict(result), "prepare_result.json")
    return result


def format_summary(result: PrepareResult) -> str:
    lines = [f"run {result.run_id}", f"{'stage':<10}{'input':>8}{'output':>8}{'quarant.':>10}{'removed':>9}"]
    for c in result.counts:
        lines.append(f"{c.stage:<10}{c.input_rows:>8}{c.output_rows:>8}{c.quarantined_rows:>10}{c.removed_rows:>9}")
        for reason, n in sorted(c.details.get("quarantined_by_reason", {}).items()):
            lines.append(f"{'':<12}{reason:<28}{n:>6}")
    by_source = result.details.get("by_source") or {}
    if by_source:
        keys = list(next(iter(by_source.values())))
        lines.append(f"{'source':<24}" + "".join(f"{k:>12}" for k in keys))
        for src, t in by_source.items():
            lines.append(f"{src or '(none)':<24}" + "".join(f"{t[k]:>12}" for k in keys))
    lines.append("versions: " + ", ".join(f"{k}@{v}" for k, v in result.versions.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_job(PrepareConfig, argv, "prepare", __doc__)
    print(format_summary(tracked(cfg, spark_session())))
    return 0
