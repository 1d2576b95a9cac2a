"""What each job records in MLflow: the run around it, its params, metrics, artifacts and lineage.

Only the commands layer logs to MLflow. The store itself (where runs go, experiments, the sqlite
file) is ``dolly_spark.ops.tracking``. Jobs open one run each, nested under the pipeline run
when there is one (in-process: the active run; in a subprocess: ``DOLLY_PARENT_RUN_ID``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from dolly_spark.ops.tracking import (
    LINEAGE_TAGS,
    PARENT_RUN_ENV,
    TAG_BRONZE_VERSION,
    TAG_ENGINE,
    TAG_GIT_COMMIT,
    TAG_GOLD_TABLE,
    TAG_GOLD_TABLE_NAME,
    TAG_GOLD_VERSION,
    TAG_JOB,
    TAG_RAW_VERSION,
    TAG_SILVER_VERSION,
    configure,
    git_commit,
    is_rank_zero,
)

log = logging.getLogger(__name__)

# Who runs a job: lets a later job mark the run FAILED when that process died (reap_dead_runs).
TAG_PID, TAG_HOST = "dolly.pid", "dolly.host"

# MLflow's limits (mlflow.utils.validation): longer values are rejected, not truncated.
MAX_PARAM_VALUE = 6000


MAX_KEY = 250


MAX_PER_BATCH = 100


_BAD_METRIC_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def flatten_params(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``a.b`` keys with string values cut to MLflow's limits."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten_params(v, f"{key}."))
            continue
        text = v if isinstance(v, str) else json.dumps(v, default=str)
        if len(text) > MAX_PARAM_VALUE:
            text = text[: MAX_PARAM_VALUE - 3] + "..."
        out[key[:MAX_KEY]] = text
    return out


def config_dict(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, dict):
        return dict(cfg)
    raise TypeError(f"expected a config dataclass or dict, got {type(cfg).__name__}")


def log_params_batched(params: dict[str, str]) -> None:
    import mlflow

    items = list(params.items())
    for i in range(0, len(items), MAX_PER_BATCH):
        mlflow.log_params(dict(items[i : i + MAX_PER_BATCH]))


def child_env(run_id: str | None = None) -> dict[str, str]:
    """Environment for a subprocess job so that its run nests under ``run_id`` in the same store."""
    import mlflow

    run_id = run_id or (mlflow.active_run().info.run_id if mlflow.active_run() else None)
    env = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "MLFLOW_REGISTRY_URI": mlflow.get_registry_uri()}
    if run_id:
        env[PARENT_RUN_ENV] = run_id
    return env


@contextmanager
def job_run(
    job: str,
    cfg: Any,
    *,
    output_root: str | os.PathLike | None = None,
    catalog: str | None = None,
    experiment: str | None = None,
    engine: str | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[Any]:
    """Open an MLflow run for ``job`` and record its config, git commit and engine.

    Yields the ``mlflow.ActiveRun``, or None on ranks other than 0 (they log nothing).
    ``output_root``/``catalog``/``experiment`` default to the config's fields of those names.
    """
    if not is_rank_zero():
        yield None
        return
    import mlflow
    from mlflow import MlflowClient

    output_root = output_root if output_root is not None else _field(cfg, "output_root")
    catalog = catalog if catalog is not None else _field(cfg, "catalog")
    experiment = experiment or _field(cfg, "experiment")
    experiment_id = configure(output_root, catalog, experiment)

    active = mlflow.active_run()
    parent = parent_run_id or (active.info.run_id if active else None)
    if parent is None and os.environ.get(PARENT_RUN_ENV):
        parent = os.environ[PARENT_RUN_ENV]
        if not _run_exists(parent):  # stale or from another store: do not fail the job for it
            log.warning(
                "%s=%s is not a run in %s; starting a top-level run", PARENT_RUN_ENV, parent, mlflow.get_tracking_uri()
            )
            parent = None
    if parent:
        # A child lands in its parent's experiment, whatever name it was given.
        experiment_id = MlflowClient().get_run(parent).info.experiment_id
    if engine is None:
        from dolly_spark.ops.session import detect_engine

        engine = detect_engine().name
    run_tags = {TAG_JOB: job, TAG_ENGINE: engine, TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname()}
    run_tags.update(tags or {})
    commit = git_commit()
    if commit:
        run_tags[TAG_GIT_COMMIT] = commit
        run_tags["mlflow.source.git.commit"] = commit

    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name or job, nested=bool(parent), parent_run_id=parent, tags=run_tags
    ) as run:
        resolved = json.loads(json.dumps(config_dict(cfg), default=str))  # Paths etc. as strings
        log_params_batched(flatten_params(resolved))
        mlflow.log_dict(resolved, "config.yaml")
        yield run


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


def reap_dead_runs() -> list[str]:
    """Mark FAILED the runs left RUNNING by a killed process of this host; returns their ids.

    Only runs tagged with this host and a pid that no longer exists: a live job (or one on
    another machine, whose pid means nothing here) is never touched.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    host = socket.gethostname()
    reaped = []
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    if not exp_ids:
        return reaped
    query = f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}'"
    for r in client.search_runs(exp_ids, filter_string=query, max_results=1000):
        pid = r.data.tags.get(TAG_PID, "")
        if pid.isdigit() and not _pid_alive(int(pid)):
            client.set_tag(r.info.run_id, "dolly.failure", f"process {pid} on {host} died while the run was RUNNING")
            client.set_terminated(r.info.run_id, status="FAILED")
            reaped.append(r.info.run_id)
    if reaped:
        log.warning("marked %d run(s) of dead processes FAILED: %s", len(reaped), ", ".join(reaped))
    return reaped


def _run_exists(run_id: str) -> bool:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().get_run(run_id)
        return True
    except MlflowException:
        return False


def log_dir_artifacts(path: str | os.PathLike, artifact_path: str | None = None) -> list[str]:
    """Log every file under ``path`` (report PNGs and Markdown) into the active run."""
    import mlflow

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no artifact directory {root}")
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    if files:
        mlflow.log_artifacts(str(root), artifact_path)
    return files


def metric_key(*parts: str) -> str:
    return _BAD_METRIC_CHARS.sub("_", ".".join(p for p in parts if p))[:MAX_KEY]


def log_metric_dict(metrics: dict[str, float], step: int | None = None) -> dict[str, float]:
    """Log finite numbers only (MLflow rejects NaN in some stores); returns what was logged."""
    import mlflow

    clean = {
        metric_key(k): float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }
    items = list(clean.items())
    for i in range(0, len(items), MAX_PER_BATCH):
        mlflow.log_metrics(dict(items[i : i + MAX_PER_BATCH]), step=step)
    return clean


def metrics_from_rows(rows: list[dict]) -> dict[str, float]:
    """``<stage>.input_rows`` etc., plus ``<stage>.quarantined.<reason>`` and numeric details;
    for each stage the latest row wins (the metrics table is append-only across runs)."""
    latest: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: (r.get("created_at") is not None, r.get("created_at"))):
        latest[r["stage"]] = r
    out: dict[str, float] = {}
    for stage, r in latest.items():
        for col in ("input_rows", "output_rows", "quarantined_rows", "removed_rows"):
            if r.get(col) is not None:
                out[metric_key(stage, col)] = float(r[col])
        details = json.loads(r["details"]) if r.get("details") else {}
        for reason, n in (details.pop("quarantined_by_reason", None) or {}).items():
            out[metric_key(stage, "quarantined", reason)] = float(n)
        for k, v in details.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[metric_key(stage, k)] = float(v)
    return out


def log_metrics_table(spark, names, run_id_filter: str | None = None) -> dict[str, float]:
    """Log the row counts of the ``metrics`` Delta table as MLflow metrics (latest per stage,
    or only rows of the pipeline run ``run_id_filter``). Returns what was logged."""
    from pyspark.sql import functions as F

    from dolly_spark.ops import tables

    ref = names.metrics
    if not tables.table_exists(spark, ref):
        log.warning("no metrics table at %s; nothing to log", ref.path or ref.name)
        return {}
    df = tables.read_table(spark, ref)
    if run_id_filter:
        df = df.where(F.col("run_id") == F.lit(run_id_filter))
    rows = [r.asDict() for r in df.collect()]
    return log_metric_dict(metrics_from_rows(rows))


def _gold_location(gold_ref_or_path) -> tuple[str | None, str | None, str]:
    """(delta path, table name, display name) for a TableRef, a path, or a catalog name."""
    from dolly_spark.ops.tables import TableRef

    if isinstance(gold_ref_or_path, TableRef):
        return gold_ref_or_path.path, (None if gold_ref_or_path.path else gold_ref_or_path.name), gold_ref_or_path.name
    text = str(gold_ref_or_path)
    if "/" in text or os.sep in text or Path(text).exists():
        path = str(Path(text).resolve())
        return path, None, Path(path).name
    return None, text, text


def lineage_tags(
    gold_ref_or_path, gold_version: int, silver_version=None, raw_version=None, bronze_version=None
) -> dict[str, str]:
    path, table_name, display = _gold_location(gold_ref_or_path)
    tags = {TAG_GOLD_TABLE: path or table_name, TAG_GOLD_TABLE_NAME: display, TAG_GOLD_VERSION: str(int(gold_version))}
    for key, v in (
        (TAG_SILVER_VERSION, silver_version),
        (TAG_RAW_VERSION, raw_version),
        (TAG_BRONZE_VERSION, bronze_version),
    ):
        if v is not None:
            tags[key] = str(int(v))
    return tags


def gold_dataset(spark, gold_ref_or_path, gold_version: int):
    """An MLflow dataset for gold@version whose source is the Delta table itself.

    The digest is derived from (table, version): a Delta version is immutable, so it is exact,
    and it avoids ``semanticHash``/RDD calls that Spark Connect lacks.
    """
    from mlflow.data.delta_dataset_source import DeltaDatasetSource

    path, table_name, display = _gold_location(gold_ref_or_path)
    name = f"{display}@v{int(gold_version)}"
    digest = hashlib.md5(f"{path or table_name}@{int(gold_version)}".encode()).hexdigest()[:8]
    if path is not None:
        source = DeltaDatasetSource(path=path, delta_table_version=int(gold_version))
    else:
        source = DeltaDatasetSource(delta_table_name=table_name, delta_table_version=int(gold_version))
    if spark is not None:
        from dolly_spark.ops import tables

        ref = (
            gold_ref_or_path
            if not isinstance(gold_ref_or_path, (str, os.PathLike))
            else tables.TableRef("gold", table_name or display, path)
        )
        df = tables.read_table(spark, ref, version=int(gold_version))
        return _connect_spark_dataset_class()(df=df, source=source, name=name, digest=digest)
    if path is None:
        raise ValueError("a catalog table needs a Spark session to describe it")
    import pyarrow as pa
    from deltalake import DeltaTable
    from mlflow.data.pandas_dataset import PandasDataset

    # Schema and an exact row count: lineage needs the table and version, not a copy of the rows.
    arrow = DeltaTable(path, version=int(gold_version)).to_pyarrow_dataset()
    num_rows = arrow.count_rows()

    class DeltaSchemaDataset(PandasDataset):
        @property
        def profile(self):
            return {"num_rows": num_rows}

    return DeltaSchemaDataset(
        df=pa.schema(arrow.schema).empty_table().to_pandas(), source=source, name=name, digest=digest
    )


def _connect_spark_dataset_class():
    from mlflow.data.spark_dataset import SparkDataset

    class ConnectSparkDataset(SparkDataset):
        """SparkDataset whose profile is an exact count: MLflow's own needs RDDs (not on Spark Connect)."""

        @property
        def profile(self):
            return {"num_rows": self.df.count()}

    return ConnectSparkDataset


def log_gold_lineage(
    spark_or_none, gold_ref_or_path, gold_version: int, silver_version=None, raw_version=None, bronze_version=None
) -> dict[str, str]:
    """Record gold@version as the active run's training dataset input, plus lineage tags
    (gold path/name and version, and the silver/raw/bronze versions it came from)."""
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("log_gold_lineage needs an active MLflow run (open one with job_run)")
    tags = lineage_tags(gold_ref_or_path, gold_version, silver_version, raw_version, bronze_version)
    dataset = gold_dataset(spark_or_none, gold_ref_or_path, gold_version)
    mlflow.log_input(dataset, context="training", tags={k: v for k, v in tags.items()})
    mlflow.set_tags(tags)
    return tags


def run_lineage(run_id: str) -> dict[str, str]:
    """The lineage tags of a run (what the registered version is tagged with)."""
    from mlflow import MlflowClient

    run_tags = MlflowClient().get_run(run_id).data.tags
    return {k: run_tags[k] for k in LINEAGE_TAGS if k in run_tags}


def _field(result, name, default=None):
    if isinstance(result, dict):
        return result.get(name, default)
    return getattr(result, name, default)


def training_metrics(result) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in ("final_step", "train_loss_first", "train_loss_last", "eval_loss"):
        v = _field(result, key)
        if v is not None:
            out[key] = v
    for category, v in (_field(result, "eval_loss_by_category") or {}).items():
        out[metric_key(f"eval_loss_{category}")] = v
    return out


def log_training_run(
    train_cfg, result, *, spark=None, names=None, name: str = "model", registered_model_name: str | None = None
):
    """Inside the train job's run: log gold lineage, final metrics, the metrics file and the model.

    ``result`` is launch.TrainResult (model_dir, gold_table, gold_version, silver_version, ...).
    ``names`` (TableNames) resolves a logical gold table name to its path. Returns ModelInfo.
    """
    import mlflow

    from dolly_spark.serve.pyfunc_model import log_dolly_model

    if not is_rank_zero():
        return None
    if mlflow.active_run() is None:
        raise RuntimeError("log_training_run needs an active MLflow run: call it inside job_run('train', cfg)")
    gold = _field(result, "gold_table")
    if names is not None and (gold is None or gold in (names.gold.name, "gold")):
        gold = names.gold
    lineage = None
    if gold is not None and _field(result, "gold_version") is not None:
        lineage = log_gold_lineage(
            spark,
            gold,
            _field(result, "gold_version"),
            silver_version=_field(result, "silver_version"),
            raw_version=_field(result, "raw_version"),
            bronze_version=_field(result, "bronze_version"),
        )
    else:
        log.warning("training result names no gold table/version: the model has no data lineage")
    # Same keys as launch's per-step series, at the final step: the last point of each curve.
    log_metric_dict(training_metrics(result), step=int(_field(result, "final_step") or 0))
    metrics_path = _field(result, "metrics_path")
    if metrics_path and Path(metrics_path).is_file():
        mlflow.log_artifact(str(metrics_path), "training")
    return log_dolly_model(
        _field(result, "model_dir"), name=name, lineage=lineage, registered_model_name=registered_model_name
    )
