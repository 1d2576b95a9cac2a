"""``dolly-spark evaluate``: response-token loss and perplexity per category on gold's eval split,
plus generations for a fixed sample written to ``eval_generations``; metrics and both tables are
logged to the evaluate run and, for ``models:/NAME@ALIAS``, tagged on the model version."""

from __future__ import annotations

import pandas as pd

from dolly_spark.commands.common import cli_errors, parse_job, spark_session
from dolly_spark.serve import evaluate as evaluation
from dolly_spark.serve.evaluate import ALL, EvaluateConfig, EvaluateResult

CONFIG = EvaluateConfig


def log_evaluation(losses: pd.DataFrame, generations: pd.DataFrame) -> None:
    """Metrics and both tables into the active MLflow run."""
    import mlflow

    from dolly_spark.tracking.metrics import log_metric_dict, metric_key

    metrics = {}
    for r in losses.itertuples():
        if r.category == ALL:
            metrics.update({"eval_loss": r.loss, "eval_perplexity": r.perplexity})
        else:
            metrics[metric_key("eval_loss", r.category)] = r.loss
            metrics[metric_key("eval_perplexity", r.category)] = r.perplexity
    metrics["eval_generations"] = len(generations)
    metrics["eval_generations_failed"] = int(generations["error"].notna().sum()) if len(generations) else 0
    log_metric_dict(metrics)
    mlflow.log_table(losses, artifact_file="eval/loss_by_category.json")
    gens = generations.copy()
    for c in gens.columns:  # timestamps are not JSON
        if pd.api.types.is_datetime64_any_dtype(gens[c]):
            gens[c] = gens[c].astype(str)
    mlflow.log_table(gens, artifact_file="eval/eval_generations.json")


def log_measured_set(result: EvaluateResult, split: str) -> None:
    """The generation checks as ``eval_gen_<check>`` metrics, and tags naming exactly what was
    measured (model, gold table, version, split): register's gate reuses these numbers."""
    import mlflow

    from dolly_spark.tracking.gate import GEN_METRIC_PREFIX, evaluation_tags
    from dolly_spark.tracking.metrics import log_metric_dict

    log_metric_dict({f"{GEN_METRIC_PREFIX}{k}": v for k, v in result.generation_checks.items()})
    tags = evaluation_tags(result.model_version, result.gold_table, result.gold_version, split)
    if tags:
        mlflow.set_tags(tags)


def run(cfg: EvaluateConfig, spark) -> tuple[EvaluateResult, str | None]:
    from dolly_spark.tracking.registry import tag_version_metrics
    from dolly_spark.tracking.runs import job_run

    with job_run("evaluate", cfg) as active:
        result = evaluation.run(cfg, spark)
        if active is not None:
            log_evaluation(result.loss_table, result.generations_table)
            log_measured_set(result, cfg.split)
            if len(result.loss_by_source) > 1:
                from dolly_spark.tracking.metrics import log_metric_dict

                log_metric_dict({f"eval_loss_source_{s}": v for s, v in result.loss_by_source.items()})
        if cfg.model_uri.startswith("models:/") and "@" in cfg.model_uri:
            # evaluate runs after register: its metrics reach the model version as tags
            metrics = {"eval_loss": result.eval_loss, "perplexity": result.perplexity}
            metrics.update({f"eval_loss_{c}": v for c, v in result.loss_by_category.items()})
            metrics.update({f"eval_loss_source_{s}": v for s, v in result.loss_by_source.items()})
            tag_version_metrics(cfg.model_uri, {k: v for k, v in metrics.items() if v is not None})
    return result, (active.info.run_id if active is not None else None)


def format_summary(r: EvaluateResult) -> str:
    lines = [
        f"model {r.model_uri} (version {r.model_version}), eval {r.eval_id}",
        f"{'category':<24}{'loss':>8}{'ppl':>12}",
    ]
    for cat in sorted(r.loss_by_category):
        lines.append(f"{cat:<24}{r.loss_by_category[cat]:>8.4f}{r.ppl_by_category[cat]:>12.2f}")
    lines.append(f"{ALL:<24}{r.eval_loss:>8.4f}{r.perplexity:>12.2f}  ({r.records} records, {r.loss_tokens} tokens)")
    for src in sorted(r.loss_by_source):
        lines.append(f"{'source ' + src:<24}{r.loss_by_source[src]:>8.4f}")
    lines.append(
        f"generations {r.generations} ({r.failed_generations} failed) -> eval_generations@{r.eval_generations_version}"
    )
    if r.generation_checks:
        c = r.generation_checks
        lines.append(
            f"ended at ### End {c['end_share']:.0%}, empty {c['empty_share']:.0%}, "
            f"median {c['median_tokens']:.0f} tokens"
        )
    return "\n".join(lines)


@cli_errors("evaluate")
def main(argv: list[str] | None = None) -> int:
    cfg = parse_job(EvaluateConfig, argv, "evaluate", __doc__)
    result, _ = run(cfg, spark_session())
    print(format_summary(result))
    return 0
