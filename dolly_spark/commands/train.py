"""``dolly-spark train``: stage gold at a pinned Delta version, train with DeepSpeed, and log the
run (per-step metrics, lineage to gold@version, the model with its signature) to MLflow."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from dolly_spark.commands.common import cli_errors, parse_job, spark_session
from dolly_spark.launch import launcher
from dolly_spark.launch.config import TrainJobConfig
from dolly_spark.launch.failures import TrainingFailed
from dolly_spark.launch.launcher import TrainResult, read_metrics
from dolly_spark.launch.methods import check_method_support
from dolly_spark.launch.planning import WontFit

CONFIG = TrainJobConfig


def upstream_versions(spark, names, gold_version: int) -> dict:
    """Bronze version behind a gold version, from the prepare run that wrote it."""
    from dolly_spark.ops import tables

    if not tables.table_exists(spark, names.metrics):
        return {}
    rows = tables.read_table(spark, names.metrics).where("stage = 'gold'").orderBy("created_at").collect()
    for row in reversed(rows):
        versions = json.loads(row["details"] or "{}").get("versions", {})
        if versions.get("gold") == gold_version and "bronze" in versions:
            return {"bronze_version": versions["bronze"]}
    return {}


def log_step_metrics(rows: list[dict]) -> int:
    """Per-step metrics into the active MLflow run (no-op without one). Returns metrics logged."""
    import mlflow
    from mlflow.entities import Metric

    run_ = mlflow.active_run()
    if run_ is None:
        return 0
    now = int(time.time() * 1000)
    metrics = []
    for r in rows:
        if r["kind"] == "train":
            for key in ("loss", "lr", "tokens_per_s", "grad_norm"):
                if r.get(key) is not None:
                    metrics.append(Metric(key, float(r[key]), now, int(r["step"])))
        elif r["kind"] == "eval":
            metrics.append(Metric(f"eval_loss_{r['category']}", float(r["eval_loss"]), now, int(r["step"])))
    client = mlflow.MlflowClient()
    for i in range(0, len(metrics), 1000):  # the tracking API takes at most 1000 per batch
        client.log_batch(run_.info.run_id, metrics=metrics[i : i + 1000])
    return len(metrics)


def run(cfg: TrainJobConfig, spark) -> tuple[TrainResult, str | None]:
    import mlflow

    from dolly_spark.tracking.models import log_training_run
    from dolly_spark.tracking.runs import job_run

    check_method_support(cfg)  # qlora without 4-bit kernels: one line before any run, stage or launch
    # lora settings: logged as what the adapter became (lora_* params, tracking.methods), never for full.
    with job_run("train", cfg, omit_params=("lora",)) as active:
        result = launcher.run(cfg, spark)
        if active is not None:
            for k, v in upstream_versions(spark, cfg.table_names(), result.gold_version).items():
                setattr(result, k, v)  # read by log_training_run as lineage
            log_step_metrics(read_metrics(result.metrics_path))
            log_schedule(result)
            log_training_run(cfg, result, spark=spark, names=cfg.table_names())
            mlflow.log_dict(dataclasses.asdict(result), "train_result.json")
    return result, (active.info.run_id if active is not None else None)


def log_schedule(result: TrainResult) -> None:
    """What the schedule was, so a packed run is never mistaken for Dolly's: params, tags, pad fraction."""
    import mlflow

    if mlflow.active_run() is None:
        return
    schedule = result.extra.get("schedule") or {}
    plan = result.extra.get("plan") or {}
    # "schedule." keys: the config's own params (pack, gradient_checkpointing) are already logged.
    params = {
        "records_per_step": result.records_per_step if result.records_per_step is not None else "varies (packed)",
        "packing": result.packing,
        "gradient_checkpointing": result.gradient_checkpointing,
        "group_by_length": schedule.get("group_by_length"),
        "steps_per_epoch": plan.get("steps_per_epoch"),
        "est_gpu_mem_gb": plan.get("est_gpu_mem_gb"),
    }
    mlflow.log_params({f"schedule.{k}": v for k, v in params.items()})
    for key in ("pad_fraction", "pad_fraction_random_batches"):
        if schedule.get(key) is not None:
            mlflow.log_metric(key, float(schedule[key]))
    if schedule.get("note"):
        mlflow.set_tag("dolly.schedule_note", schedule["note"])


def print_plan(cfg: TrainJobConfig, spark) -> int:
    """``--plan``: one JSON object on stdout, nothing launched; exit 0 whether or not it fits."""
    from dolly_spark.launch.planning import plan_for

    print(json.dumps(plan_for(cfg, spark), indent=2))
    return 0


@cli_errors("train")
def main(argv: list[str] | None = None) -> int:
    cfg = parse_job(TrainJobConfig, argv, "train", __doc__)
    if cfg.plan:
        return print_plan(cfg, spark_session())
    try:
        result, run_id = run(cfg, spark_session())
    except (TrainingFailed, WontFit) as err:
        print(str(err), file=sys.stderr)
        return 1
    if run_id:
        set_task_value("run_id", run_id)
    print(json.dumps(dataclasses.asdict(result), indent=2))
    return 0


def set_task_value(key: str, value: str) -> bool:
    """On Databricks, hand ``value`` to downstream tasks of this job run
    (``{{tasks.train.values.<key>}}``: register registers exactly this run). A no-op elsewhere."""
    if not os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return False
    from databricks.sdk.runtime import dbutils

    dbutils.jobs.taskValues.set(key=key, value=value)
    return True
