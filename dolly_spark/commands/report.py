"""``dolly-spark report``: PNG plots and a Markdown data-quality summary of the prepared tables,
plus the SQL views; all logged to the report job's MLflow run."""

from __future__ import annotations

from pathlib import Path

from dolly_spark.commands.common import cli_errors, parse_job, spark_session
from dolly_spark.prep import report as reporting
from dolly_spark.prep.report import ReportConfig

CONFIG = ReportConfig


def run(cfg: ReportConfig, spark) -> dict[str, str]:
    from dolly_spark.tracking.metrics import log_dir_artifacts
    from dolly_spark.tracking.runs import job_run

    with job_run("report", cfg):
        written = reporting.run(cfg, spark)
        log_dir_artifacts(Path(written["summary"]).parent, "data_quality")
    return written


@cli_errors("report")
def main(argv: list[str] | None = None) -> int:
    cfg = parse_job(ReportConfig, argv, "report", __doc__)
    for what, path in run(cfg, spark_session()).items():
        print(f"{what}: {path}")
    return 0
