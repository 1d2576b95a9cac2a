"""Each job under its MLflow run: the one place that decides what a job logs.

``dolly-<job>`` console scripts and ``dolly-spark run`` both call ``tracked_<job>``, so a job
logs the same whether it runs alone (a bundle task) or nested under the pipeline run.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _log_flat_metrics(prefix: str, values: dict) -> None:
    import mlflow

    metrics = {}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        metrics[f"{prefix}{k}"] = float(v)
    if metrics:
        mlflow.log_metrics(metrics)


def tracked_prepare(cfg, spark):
    import mlflow

    from dolly_spark import prepare
    from dolly_spark.tracking import job_run, log_metrics_table

    with job_run("prepare", cfg):
        result = prepare.run(cfg, spark)
        log_metrics_table(spark, cfg.table_names(), run_id_filter=result.run_id)
        mlflow.set_tags({f"dolly.{k}_version": str(v) for k, v in result.versions.items()})
        mlflow.log_dict(dataclasses.asdict(result), "prepare_result.json")
    return result


def tracked_report(cfg, spark):
    from dolly_spark import report
    from dolly_spark.tracking import job_run, log_dir_artifacts

    with job_run("report", cfg):
        written = report.run(cfg, spark)
        log_dir_artifacts(Path(written["summary"]).parent, "data_quality")
    return written


def upstream_versions(spark, names, gold_version: int) -> dict:
    """Bronze (raw) version behind a gold version, from the prepare run that wrote it."""
    import json

    from dolly_spark import tables

    if not tables.table_exists(spark, names.metrics):
        return {}
    rows = tables.read_table(spark, names.metrics).where("stage = 'gold'").orderBy("created_at").collect()
    for row in reversed(rows):
        versions = json.loads(row["details"] or "{}").get("versions", {})
        if versions.get("gold") == gold_version and "bronze" in versions:
            return {"raw_version": versions["bronze"], "bronze_version": versions["bronze"]}
    return {}


def tracked_train(cfg, spark):
    import mlflow

    from dolly_spark import launch
    from dolly_spark.tracking import job_run, log_training_run

    with job_run("train", cfg) as active:
        result = launch.run(cfg, spark)
        if active is not None:
            for k, v in upstream_versions(spark, cfg.table_names(), result.gold_version).items():
                setattr(result, k, v)  # read by log_training_run as lineage
            log_training_run(cfg, result, spark=spark, names=cfg.table_names())
            mlflow.log_dict(dataclasses.asdict(result), "train_result.json")
    return result, (active.info.run_id if active is not None else None)


def tracked_evaluate(cfg, spark):
    from dolly_spark import evaluate
    from dolly_spark.tracking import job_run

    # evaluate.run logs its metrics and the generations table into the active run
    with job_run("evaluate", cfg) as active:
        result = evaluate.run(cfg, spark)
        if cfg.model_uri.startswith("models:/") and "@" in cfg.model_uri:
            # evaluate runs after register: its metrics reach the model version as tags
            from dolly_spark.register import tag_version_metrics

            metrics = {"eval_loss": result.eval_loss, "perplexity": result.perplexity}
            metrics.update({f"eval_loss_{c}": v for c, v in result.loss_by_category.items()})
            tag_version_metrics(cfg.model_uri, {k: v for k, v in metrics.items() if v is not None})
    return result, (active.info.run_id if active is not None else None)


def tracked_score(cfg, spark):
    import mlflow

    from dolly_spark import score
    from dolly_spark.tracking import job_run

    with job_run("score", cfg):
        result = score.run(cfg, spark)
        _log_flat_metrics("score_", dataclasses.asdict(result))
        mlflow.set_tags({"dolly.model_uri": result.model_uri, "dolly.model_version": str(result.model_version)})
    return result


# ---------------------------------------------------------------------------------------------
# The local pipeline (``dolly-spark run``): RunConfig -> each job's own config.


def _common(cfg) -> dict:
    return {"output_root": cfg.output_root, "catalog": cfg.catalog, "schema": cfg.schema}


def run_prepare(cfg, spark, state: dict) -> dict:
    from dolly_spark.prepare import PrepareConfig

    pcfg = PrepareConfig(input=cfg.input, **_common(cfg), **({"tokenizer": cfg.tokenizer} if cfg.tokenizer else {}))
    result = tracked_prepare(pcfg, spark)
    state["prepare"] = result
    return {"tables": result.details.get("accounting", {}), "splits": result.details.get("splits", {}),
            "versions": result.versions}


def run_report(cfg, spark, state: dict) -> dict:
    from dolly_spark.report import ReportConfig

    written = tracked_report(ReportConfig(**_common(cfg)), spark)
    return {"report_dir": str(Path(written["summary"]).parent)}


def run_train(cfg, spark, state: dict) -> dict:
    from dolly_spark.train.config import TrainConfig

    extra = {"tokenizer": cfg.tokenizer} if cfg.tokenizer else {}
    if cfg.tiny:
        # Dolly's lr 5e-6 / 50 warmup steps barely move a random-init tiny model in a few dozen steps.
        # Short rows keep the 50k-vocab logits cheap on CPU: 2048-token packs are re-split to 512.
        extra.update(lr=1e-3, warmup_steps=5, eval_steps=max(10, cfg.max_steps // 2), save_steps=max(10, cfg.max_steps // 2),
                     max_eval_records=cfg.train_max_eval_records, max_seq_len=cfg.train_max_seq_len,
                     per_device_batch_size=1)
    tcfg = TrainConfig(**_common(cfg), base_model=cfg.base_model, tiny=cfg.tiny, max_steps=cfg.max_steps,
                       experiment=cfg.experiment, **extra)
    result, run_id = tracked_train(tcfg, spark)
    state["train_run_id"] = run_id
    return {"final_step": result.final_step, "train_loss_first": result.train_loss_first_avg,
            "train_loss_last": result.train_loss_last_avg, "eval_loss": result.eval_loss,
            "gold": f"{result.gold_table}@{result.gold_version}", "model_dir": result.model_dir}


def run_register(cfg, spark, state: dict) -> dict:
    from dolly_spark import register

    rcfg = register.RegisterConfig(run_id=state.get("train_run_id"), model_name=cfg.model_name, alias=cfg.alias,
                                   experiment=cfg.experiment, **_common(cfg))
    result = register.run(rcfg, spark)
    state["model_uri"] = result.model_uri
    return {"model_uri": result.model_uri, "version": result.version}


def _model_uri(cfg, state: dict) -> str:
    if state.get("model_uri"):
        return state["model_uri"]
    from dolly_spark import register

    # Stage rerun alone: the alias the register stage set earlier under the same root.
    return f"models:/{register.RegisterConfig(model_name=cfg.model_name, **_common(cfg)).resolved_model_name()}@{cfg.alias}"


def run_evaluate(cfg, spark, state: dict) -> dict:
    from dolly_spark.evaluate import EvaluateConfig

    ecfg = EvaluateConfig(model_uri=_model_uri(cfg, state), sample_size=cfg.eval_sample_size,
                          max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, experiment=cfg.experiment,
                          **_common(cfg))
    result, _ = tracked_evaluate(ecfg, spark)
    return {"eval_loss": result.eval_loss, "perplexity": result.perplexity, "generations": result.generations}


def run_score(cfg, spark, state: dict) -> dict:
    from dolly_spark.score import ScoreConfig

    scfg = ScoreConfig(model_uri=_model_uri(cfg, state), input_table="gold", split="eval",
                       limit=cfg.score_limit or None, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                       greedy=True, experiment=cfg.experiment, **_common(cfg))
    result = tracked_score(scfg, spark)
    return {"scored": result.scored, "skipped": result.skipped, "failed": result.failed,
            "predictions_version": result.predictions_version, "model_version": result.model_version}


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def one_line(summary: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in summary.items() if not isinstance(v, dict))


def summary_lines(cfg, outcomes) -> list[str]:
    from dolly_spark.tracking import resolve_tracking

    lines = ["", "== dolly-spark run: summary =="]
    for o in outcomes:
        lines.append(f"{o.stage:<9} {o.seconds:7.1f}s  {one_line(o.summary)}")
        for k, v in o.summary.items():
            if isinstance(v, dict) and v:
                lines.append(f"{'':<19}{k}: " + ", ".join(f"{a}={_fmt(b)}" for a, b in v.items()))
    tracking_uri, _ = resolve_tracking(cfg.output_root, cfg.catalog)
    lines.append(f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri}")
    return lines
