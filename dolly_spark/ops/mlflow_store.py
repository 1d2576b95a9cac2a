"""Where this project's MLflow store is, and creating it: no runs, no logging.

Locally the tracking and registry store is ``sqlite:///<root>/mlflow.db`` (current MLflow
refuses the file store) with artifacts under ``<root>/mlartifacts``; on Databricks it is
``databricks`` / ``databricks-uc``. ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI`` override.
Library code that only reads MLflow (scoring, evaluation) points at the store with ``use_store``;
everything that writes to it lives in ``dolly_spark.tracking``.
"""

from __future__ import annotations

import os
from pathlib import Path


def on_databricks() -> bool:
    return bool(os.environ.get("DATABRICKS_RUNTIME_VERSION"))


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


def use_store(output_root: str | os.PathLike | None = None, catalog: str | None = None) -> tuple[str, str]:
    """Point this process's MLflow at the project's store (created if local and missing);
    returns (tracking_uri, registry_uri)."""
    import mlflow

    tracking_uri, registry_uri = resolve_tracking(output_root, catalog)
    for uri in {tracking_uri, registry_uri}:
        init_sqlite_store(uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri)
    return tracking_uri, registry_uri
