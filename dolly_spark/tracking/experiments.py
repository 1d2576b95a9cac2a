"""Experiments: point MLflow at the project's store and find or create the experiment."""

from __future__ import annotations

import os
import re
from pathlib import Path

from dolly_spark.ops.mlflow_store import local_artifact_root, on_databricks, use_store
from dolly_spark.ops.paths import PathOutsideRootError, ensure_within_root

EXPERIMENT_ENV = "DOLLY_EXPERIMENT"
LOCAL_EXPERIMENT = "dolly_spark"
DATABRICKS_EXPERIMENT = "/Shared/dolly_spark"


def ensure_experiment(name: str, artifact_root: str | os.PathLike | None = None) -> str:
    """Experiment id for ``name``, created with an explicit artifact location under
    ``artifact_root`` (without one, local artifacts land in the working directory)."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if artifact_root is not None:
        artifact_root = Path(artifact_root).resolve()
    if exp is not None:
        if artifact_root is not None:
            try:
                ensure_within_root(exp.artifact_location, artifact_root)
            except PathOutsideRootError as err:
                raise PathOutsideRootError(
                    f"experiment {name!r} stores artifacts at {exp.artifact_location}, "
                    f"outside {artifact_root}; use another --experiment name"
                ) from err
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = None
    if artifact_root is not None:
        location = (artifact_root / _safe_dir_name(name)).as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it between the lookup and here
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _safe_dir_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip("._") or "experiment"


def default_experiment() -> str:
    return os.environ.get(EXPERIMENT_ENV) or (DATABRICKS_EXPERIMENT if on_databricks() else LOCAL_EXPERIMENT)


def configure(output_root=None, catalog=None, experiment: str | None = None) -> str:
    """Point MLflow at this project's store and return the experiment id."""
    tracking_uri, _ = use_store(output_root, catalog)
    artifact_root = local_artifact_root(output_root) if tracking_uri.startswith("sqlite:") and output_root else None
    return ensure_experiment(experiment or default_experiment(), artifact_root)
