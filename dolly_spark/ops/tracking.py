"""MLflow tracking for every job: where runs go, what each run records, and dataset lineage.

Locally the tracking and registry store is ``sqlite:///<root>/mlflow.db`` (current MLflow
refuses the file store) with artifacts under ``<root>/mlartifacts``; on Databricks it is
``databricks`` / ``databricks-uc``. ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI`` override.
Jobs open one run each, nested under the pipeline run when there is one (in-process: the
active run; in a subprocess: ``DOLLY_PARENT_RUN_ID``).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path

from dolly_spark.ops.paths import PathOutsideRootError, ensure_within_root

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "DOLLY_PARENT_RUN_ID"
EXPERIMENT_ENV = "DOLLY_EXPERIMENT"
LOCAL_EXPERIMENT = "dolly_spark"
DATABRICKS_EXPERIMENT = "/Shared/dolly_spark"

# Tags that carry data lineage; the registered model version gets the same ones.
TAG_JOB = "dolly.job"
TAG_ENGINE = "dolly.engine"
TAG_GIT_COMMIT = "dolly.git_commit"
TAG_GOLD_TABLE = "dolly.gold_table"
TAG_GOLD_TABLE_NAME = "dolly.gold_table_name"
TAG_GOLD_VERSION = "dolly.gold_version"
TAG_SILVER_VERSION = "dolly.silver_version"
TAG_RAW_VERSION = "dolly.raw_version"
TAG_BRONZE_VERSION = "dolly.bronze_version"
LINEAGE_TAGS = (
    TAG_GOLD_TABLE,
    TAG_GOLD_TABLE_NAME,
    TAG_GOLD_VERSION,
    TAG_SILVER_VERSION,
    TAG_RAW_VERSION,
    TAG_BRONZE_VERSION,
)


def on_databricks() -> bool:
    return bool(os.environ.get("DATABRICKS_RUNTIME_VERSION"))


def is_rank_zero() -> bool:
    """Only global rank 0 talks to MLflow in a distributed launch."""
    return int(os.environ.get("RANK", "0")) == 0


# mlflow.set_tracking_uri/set_registry_uri also export MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI,
# so an env value this process's MLflow set is not a user override (else one job would pin every
# later job in the process to its store). Values present at import came from outside: they count.
_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_ENV_AT_IMPORT = {v: os.environ.get(v) for v in _URI_VARS}
_USER_SET: set[str] = set()
_DERIVED: set[str] = set()  # URIs resolve_tracking built from a root or the platform


def _set_in_process(var: str) -> str | None:
    """The URI this process's MLflow holds in memory (set_tracking_uri/set_registry_uri), read
    through the public getters with the env var hidden (they prefer memory, then env)."""
    import mlflow

    value = os.environ.pop(var, None)
    try:
        return mlflow.get_tracking_uri() if var == "MLFLOW_TRACKING_URI" else mlflow.get_registry_uri()
    finally:
        if value is not None:
            os.environ[var] = value


def _env_override(var: str) -> str | None:
    value = os.environ.get(var)
    if not value:
        return None
    if value in _USER_SET or value == _ENV_AT_IMPORT.get(var):
        return value
    if value in _DERIVED or value == _set_in_process(var):
        return None
    _USER_SET.add(value)
    return value


def resolve_tracking(output_root: str | os.PathLike | None = None, catalog: str | None = None) -> tuple[str, str]:
    """(tracking_uri, registry_uri). Env ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI`` win."""
    env_tracking = _env_override("MLFLOW_TRACKING_URI")
    env_registry = _env_override("MLFLOW_REGISTRY_URI")
    if env_tracking:
        default_registry = "databricks-uc" if env_tracking.startswith("databricks") else env_tracking
        return env_tracking, env_registry or default_registry
    if on_databricks() or (catalog and not output_root):
        _DERIVED.update(("databricks", "databricks-uc"))
        return "databricks", env_registry or "databricks-uc"
    if not output_root:
        raise ValueError(
            "no MLflow location: give --output-root DIR (local sqlite store) or run on "
            "Databricks, or set MLFLOW_TRACKING_URI"
        )
    root = Path(output_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root}/mlflow.db"
    _DERIVED.add(uri)
    return uri, env_registry or uri


def local_artifact_root(output_root: str | os.PathLike) -> Path:
    return Path(output_root).resolve() / "mlartifacts"


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
    import mlflow

    tracking_uri, registry_uri = resolve_tracking(output_root, catalog)
    for uri in {tracking_uri, registry_uri}:
        init_sqlite_store(uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri)
    artifact_root = local_artifact_root(output_root) if tracking_uri.startswith("sqlite:") and output_root else None
    return ensure_experiment(experiment or default_experiment(), artifact_root)


def init_sqlite_store(uri: str) -> None:
    """Create a local sqlite store atomically.

    MLflow builds its schema by running migrations in place: two jobs starting together on a fresh
    root both migrate (one fails), and a job killed mid-migration leaves a half-built database that
    every later job fails on. So: build it in a temporary file under a file lock, then rename it in.
    """
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///") :])
    if db.exists():
        return
    import fcntl

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if db.exists():  # another job built it while we waited
            return
        tmp = db.with_name(f".{db.name}.init-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        # Building the store runs every migration (tracking and registry tables share the file).
        store = SqlAlchemyStore(f"sqlite:///{tmp}", (db.parent / "mlartifacts").as_uri())
        store.engine.dispose()  # close its connections: the file is renamed, never reused
        os.replace(tmp, db)


def git_commit(start: str | os.PathLike | None = None) -> str | None:
    """HEAD of the repository holding this package, or None outside git."""
    where = Path(start) if start else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


# --- dataset lineage ---------------------------------------------------------------------


# --- training integration ----------------------------------------------------------------
