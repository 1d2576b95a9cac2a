"""The run around every job: its config as params, git commit, engine and nesting.

Jobs open one run each, nested under the pipeline run when there is one (in-process: the
active run; in a subprocess: ``DOLLY_PARENT_RUN_ID``). Only global rank 0 talks to MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from dolly_spark.tracking.experiments import configure

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "DOLLY_PARENT_RUN_ID"
TAG_JOB = "dolly.job"
TAG_ENGINE = "dolly.engine"
TAG_GIT_COMMIT = "dolly.git_commit"
# Who runs a job: lets a later job mark the run FAILED when that process died (reap_dead_runs).
TAG_PID, TAG_HOST = "dolly.pid", "dolly.host"

# MLflow's limits (mlflow.utils.validation): longer values are rejected, not truncated.
MAX_PARAM_VALUE = 6000
MAX_KEY = 250
MAX_PER_BATCH = 100


def is_rank_zero() -> bool:
    """Only global rank 0 talks to MLflow in a distributed launch."""
    return int(os.environ.get("RANK", "0")) == 0


def git_commit(start: str | os.PathLike | None = None) -> str | None:
    """HEAD of the repository holding this package, or None outside git."""
    where = Path(start) if start else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def field_value(obj, name: str, default=None):
    """``obj[name]`` for a dict, else ``obj.name``: configs and results come as either."""
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def config_dict(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, dict):
        return dict(cfg)
    raise TypeError(f"expected a config dataclass or dict, got {type(cfg).__name__}")


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


def log_params_batched(params: dict[str, str]) -> None:
    import mlflow

    items = list(params.items())
    for i in range(0, len(items), MAX_PER_BATCH):
        mlflow.log_params(dict(items[i : i + MAX_PER_BATCH]))


@contextmanager
def job_run(
    job: str,
    cfg: Any,
    *,
    output_root: str | os.PathLike | None = None,
    catalog: str | None = None,
    experiment: str | None = None,
    engine: str | None = None,
    omit_params: tuple[str, ...] = (),
) -> Iterator[Any]:
    """Open an MLflow run for ``job`` and record its config, git commit and engine.

    Yields the ``mlflow.ActiveRun``, or None on ranks other than 0 (they log nothing).
    ``output_root``/``catalog``/``experiment`` default to the config's fields of those names.
    ``omit_params``: top-level config sections left out of the params (the job logs what they
    came to itself); ``config.yaml`` keeps the whole config.
    """
    if not is_rank_zero():
        yield None
        return
    import mlflow
    from mlflow import MlflowClient

    output_root = output_root if output_root is not None else field_value(cfg, "output_root")
    catalog = catalog if catalog is not None else field_value(cfg, "catalog")
    experiment_id = configure(output_root, catalog, experiment or field_value(cfg, "experiment"))
    parent = _parent_run_id()
    if parent:
        # A child lands in its parent's experiment, whatever name it was given.
        experiment_id = MlflowClient().get_run(parent).info.experiment_id
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=job,
        nested=bool(parent),
        parent_run_id=parent,
        tags=_run_tags(job, engine),
    ) as run:
        resolved = json.loads(json.dumps(config_dict(cfg), default=str))  # Paths etc. as strings
        log_params_batched(flatten_params({k: v for k, v in resolved.items() if k not in omit_params}))
        mlflow.log_dict(resolved, "config.yaml")
        yield run


def _parent_run_id() -> str | None:
    """The active run (in-process nesting), else ``DOLLY_PARENT_RUN_ID`` if it names a run here."""
    import mlflow

    active = mlflow.active_run()
    if active is not None:
        return active.info.run_id
    parent = os.environ.get(PARENT_RUN_ENV)
    if parent and not _run_exists(parent):  # stale or from another store: do not fail the job for it
        log.warning(
            "%s=%s is not a run in %s; starting a top-level run", PARENT_RUN_ENV, parent, mlflow.get_tracking_uri()
        )
        return None
    return parent or None


def _run_tags(job: str, engine: str | None) -> dict[str, str]:
    if engine is None:
        from dolly_spark.ops.session import detect_engine

        engine = detect_engine().name
    tags = {TAG_JOB: job, TAG_ENGINE: engine, TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname()}
    commit = git_commit()
    if commit:
        tags[TAG_GIT_COMMIT] = commit
        tags["mlflow.source.git.commit"] = commit
    return tags


def _run_exists(run_id: str) -> bool:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().get_run(run_id)
        return True
    except MlflowException:
        return False


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
