"""``dolly-spark score``: generate responses for a Delta table of prompts with a registered model,
MERGEd into the ``predictions`` table (incremental and idempotent), under an MLflow run."""

from __future__ import annotations

import dataclasses

from dolly_spark.commands.common import cli_errors, parse_job, spark_session
from dolly_spark.serve import score as scoring
from dolly_spark.serve.score import ScoreConfig, ScoreResult

CONFIG = ScoreConfig


def run(cfg: ScoreConfig, spark) -> ScoreResult:
    import mlflow

    from dolly_spark.tracking.metrics import log_flat_metrics
    from dolly_spark.tracking.runs import job_run

    with job_run("score", cfg):
        result = scoring.run(cfg, spark)
        log_flat_metrics("score_", dataclasses.asdict(result))
        mlflow.set_tags({"dolly.model_uri": result.model_uri, "dolly.model_version": str(result.model_version)})
    return result


def format_summary(r: ScoreResult) -> str:
    return (
        f"model {r.model_uri} (version {r.model_version})\n"
        f"input {r.total}  scored {r.scored}  skipped {r.skipped}  failed {r.failed}  "
        f"duplicate keys {r.duplicates}\n"
        f"predictions@{r.predictions_version}  ({r.seconds:.1f}s, {r.chunks} chunks)\n"
        f"throughput {r.rows_per_s:.1f} rows/s, {r.tokens_per_s:.1f} generated tokens/s, "
        f"{r.prompt_tokens_per_s:.1f} prompt tokens/s"
    )


@cli_errors("score")
def main(argv: list[str] | None = None) -> int:
    cfg = parse_job(ScoreConfig, argv, "score", __doc__)
    print(format_summary(run(cfg, spark_session())))
    return 0
