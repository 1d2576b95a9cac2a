"""Metrics and artifacts a job logs into its active run."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

from dolly_spark.tracking.runs import MAX_KEY, MAX_PER_BATCH

log = logging.getLogger(__name__)

_BAD_METRIC_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


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


def log_flat_metrics(prefix: str, values: dict) -> None:
    """Numbers (not bools) of a result dict as ``<prefix><key>`` metrics of the active run."""
    import mlflow

    metrics = {
        f"{prefix}{k}": float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    if metrics:
        mlflow.log_metrics(metrics)


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
