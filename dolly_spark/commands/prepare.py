"""``dolly-spark prepare``: raw JSON lines -> bronze -> silver -> dedup -> gold (+ quarantine,
duplicates, metrics). ``--until STAGE`` stops early."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

from dolly_spark.commands.common import cli_errors, parse_job, spark_session
from dolly_spark.ops.config import ConfigError
from dolly_spark.prep.ingest import InputUnavailableError, UnsupportedInputError, check_input
from dolly_spark.prep.prepare import PrepareConfig, PrepareResult, root_lock, run

CONFIG = PrepareConfig


def preflight(cfg: PrepareConfig) -> None:
    """Every source exists, is readable and in a supported compression: checked before the
    session, any table or the MLflow store (a missing input must not leave an ``mlflow.db``)."""
    from dolly_spark.prep.sources import SourceError, check_names, resolve

    sources = cfg.source_list()
    try:
        check_names(sources)
        for i, src in enumerate(sources):
            if i == 0 and cfg.input and src.is_dolly():
                check_input(cfg.input)  # --input's own messages: missing, unreadable, compression
                continue
            fmt, location, files = resolve(src)  # no engine needed: files, Delta logs, names
            if src.is_dolly() and fmt == "hub":
                check_input(src.uri)
            elif src.is_dolly() and fmt == "jsonl":  # as the line ingest reads it: the path, else each file
                for target in [location] if Path(location).exists() else files:
                    check_input(target)
    except (OSError, UnsupportedInputError, InputUnavailableError, SourceError) as err:
        raise ConfigError(str(err)) from err


def tracked(cfg: PrepareConfig, spark) -> PrepareResult:
    import mlflow

    from dolly_spark.commands.mlflow_logging import job_run, log_metrics_table, reap_dead_runs

    run_id = uuid.uuid4().hex
    # The root lock first: a concurrent loser fails before it opens a run or touches a table.
    with root_lock(cfg, spark, run_id), job_run("prepare", cfg):
        reap_dead_runs()
        result = run(cfg, spark, run_id)
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


@cli_errors("prepare")
def main(argv: list[str] | None = None) -> int:
    cfg = parse_job(PrepareConfig, argv, "prepare", __doc__)
    preflight(cfg)
    print(format_summary(tracked(cfg, spark_session())))
    return 0
