"""The model registry: register a training run's model under an alias, tag versions.

The version is tagged with the run's data lineage (gold table@version, silver/bronze versions),
its data's ``licenses`` and ``commercial_use``, and its eval metrics. Scoring takes
``models:/NAME@ALIAS`` (resolved by ``serve.model_uri``). ``require_commercial_use`` refuses,
before anything is registered, a run whose data is not cleared for commercial use.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from dolly_spark.ops.config import TrackedLocation
from dolly_spark.prep import licenses
from dolly_spark.serve.model_uri import resolve_alias
from dolly_spark.tracking import gate as gating
from dolly_spark.tracking.experiments import configure
from dolly_spark.tracking.lineage import TAG_VERSION_COMMERCIAL_USE, TAG_VERSION_LICENSES, run_licenses, run_lineage
from dolly_spark.tracking.runs import TAG_JOB

log = logging.getLogger(__name__)

ALIASES = ("champion", "candidate")
LOCAL_MODEL_NAME = "dolly"
TAG_SOURCE_RUN = "dolly.source_run_id"
METRIC_TAG_PREFIX = "dolly.metric."
_LOCAL_NAME = re.compile(r"^[A-Za-z0-9_\-.]+$")
_UC_PART = re.compile(r"^[A-Za-z0-9_]+$")


class NoLoggedModelError(LookupError):
    """The run has no logged model to register."""


class CommercialUseRefused(RuntimeError):
    """``require_commercial_use``: the run's data is not cleared for commercial use (one line: which
    sources, under which licences)."""


@dataclass
class RegisterConfig(TrackedLocation):
    run_id: str | None = field(default=None, metadata={"help": "run to promote; default: latest finished train run"})
    model_name: str | None = field(
        default=None, metadata={"help": "registered name (catalog.schema.model on Databricks)"}
    )
    alias: str = field(default="champion", metadata={"help": "alias to point at the new version", "choices": ALIASES})
    artifact_name: str = field(default="model", metadata={"help": "name the model was logged under in the run"})
    eval_run_id: str | None = field(default=None, metadata={"help": "evaluate run whose metrics tag the version"})
    eval_metrics: tuple[str, ...] = field(
        default=(),
        metadata={"help": "metrics to copy as tags (from the eval run if given, else the train run); default: eval*"},
    )
    gate: bool = field(
        default=True,
        metadata={"help": "move the alias only if the new version is not worse than its holder (--no-gate: always)"},
    )
    gate_options: gating.GateConfig = field(default_factory=gating.GateConfig, metadata={"flag_prefix": "gate_"})
    download_dir: str | None = field(
        default=None, metadata={"help": "where the gate downloads the two models (multi-node: a Volume)"}
    )
    require_commercial_use: bool = field(
        default=False,
        metadata={"help": "refuse, registering nothing, unless every source's licence allows commercial use"},
    )

    def resolved_model_name(self) -> str:
        if self.model_name:
            name = self.model_name
        elif self.catalog:
            name = f"{self.catalog}.{self.schema}.{LOCAL_MODEL_NAME}"
        else:
            name = LOCAL_MODEL_NAME
        return validate_model_name(name, unity_catalog=bool(self.catalog))


@dataclass
class RegisterResult:
    model_name: str
    version: int
    alias: str
    model_uri: str  # models:/NAME@ALIAS
    run_id: str
    tags: dict = field(default_factory=dict)
    gate: gating.GateDecision | None = None

    @property
    def alias_holder(self) -> str:
        """Which version holds the alias now: this one, or the one the gate kept."""
        if self.gate is None or self.gate.moves_alias:
            return str(self.version)
        return str(self.gate.champion_version)


def validate_model_name(name: str, unity_catalog: bool) -> str:
    if unity_catalog:
        parts = name.split(".")
        if len(parts) != 3 or not all(_UC_PART.match(p) for p in parts):
            raise ValueError(
                f"Unity Catalog model names are catalog.schema.model (letters, digits, underscore); got {name!r}"
            )
    elif not _LOCAL_NAME.match(name):
        raise ValueError(f"invalid model name {name!r}: use letters, digits, '_', '-', '.'")
    return name


def latest_train_run(experiment_id: str) -> str:
    import mlflow

    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{TAG_JOB}` = 'train' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        raise NoLoggedModelError(f"no finished train run in experiment {experiment_id}; train first or pass --run-id")
    return runs[0].info.run_id


def logged_model_uri(run_id: str, artifact_name: str = "model") -> str:
    """URI of the model logged as ``artifact_name`` in ``run_id``, or a clear error."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise NoLoggedModelError(f"run {run_id} does not exist in {mlflow.get_tracking_uri()}: {err.message}") from err
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        output_format="list",
    )
    named = [m for m in models if m.name == artifact_name]
    if named:
        return f"models:/{max(named, key=lambda m: m.creation_timestamp).model_id}"
    # MLflow 2 style: the model sits among the run's artifacts.
    if any(a.path == f"{artifact_name}/MLmodel" for a in client.list_artifacts(run_id, artifact_name)):
        return f"runs:/{run_id}/{artifact_name}"
    found = sorted({m.name for m in models})
    raise NoLoggedModelError(
        f"run {run_id} has no logged model named {artifact_name!r}"
        + (f" (it has: {found})" if found else " (it logged no model at all)")
        + "; log one with dolly_spark.tracking.models.log_dolly_model or pick another --run-id"
    )


def metric_tags(run_id: str, wanted: tuple[str, ...] = ()) -> dict[str, str]:
    """The run's metrics as ``dolly.metric.<name>`` tags: ``wanted`` ones, or all ``eval*``."""
    from mlflow import MlflowClient

    metrics = MlflowClient().get_run(run_id).data.metrics
    if wanted:
        missing = sorted(set(wanted) - set(metrics))
        if missing:
            raise KeyError(f"run {run_id} has no metrics {missing}; it has {sorted(metrics)}")
        picked = {k: metrics[k] for k in wanted}
    else:
        picked = {k: v for k, v in metrics.items() if k.startswith("eval")}
    return {f"{METRIC_TAG_PREFIX}{k}": repr(float(v)) for k, v in sorted(picked.items())}


def alias_holder(name: str, alias: str):
    """The ModelVersion holding ``name@alias``, or None (no such model, or no such alias yet)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def register(cfg: RegisterConfig, spark=None) -> RegisterResult:
    """Register the run's model; the alias moves to it unless the gate finds it worse than the
    alias holder (the version is registered either way, tagged ``gate=passed|failed|skipped``)."""
    import mlflow
    from mlflow import MlflowClient

    from dolly_spark.ops.session import engine_name
    from dolly_spark.serve.model_download import shared_download_dir

    name = cfg.resolved_model_name()
    experiment_id = configure(cfg.output_root, cfg.catalog, cfg.experiment)
    run_id = cfg.run_id or latest_train_run(experiment_id)
    source_uri = logged_model_uri(run_id, cfg.artifact_name)

    found, use = run_licenses(run_id)
    if cfg.require_commercial_use and use != licenses.TRUE:
        raise CommercialUseRefused(refusal_line(run_id, found, use))
    tags = run_lineage(run_id)
    if not tags:
        log.warning("run %s carries no data lineage tags; the version will not lead back to a table", run_id)
    lineage = dict(tags)
    tags[TAG_VERSION_LICENSES] = licenses.to_text(found) or licenses.UNKNOWN
    tags[TAG_VERSION_COMMERCIAL_USE] = use
    tags[TAG_SOURCE_RUN] = run_id
    tags.update(metric_tags(run_id, cfg.eval_metrics if not cfg.eval_run_id else ()))
    if cfg.eval_run_id:
        tags.update(metric_tags(cfg.eval_run_id, cfg.eval_metrics))
        tags["dolly.eval_run_id"] = cfg.eval_run_id

    if cfg.gate:
        download = shared_download_dir(cfg.download_dir, cfg.output_root, engine_name())
        ctx = gating.GateContext(experiment_id, cfg.table_names(), download, spark)
        decision = gating.run_gate(cfg.gate_options, ctx, source_uri, lineage, alias_holder(name, cfg.alias), cfg.alias)
    else:
        decision = gating.skipped()
    tags.update(gating.version_tags(decision))

    mv = mlflow.register_model(source_uri, name, tags=tags)
    if decision.moves_alias:
        MlflowClient().set_registered_model_alias(name, cfg.alias, mv.version)
        log.info("registered %s version %s as @%s from run %s", name, mv.version, cfg.alias, run_id)
    else:
        log.warning(
            "registered %s version %s; @%s stays on version %s", name, mv.version, cfg.alias, decision.champion_version
        )
    return RegisterResult(name, int(mv.version), cfg.alias, f"models:/{name}@{cfg.alias}", run_id, tags, decision)


def refusal_line(run_id: str, found: dict[str, str], use: str) -> str:
    """``refused: training data is not cleared for commercial use: alpaca (CC-BY-NC-4.0) -> commercial_use=false``."""
    bad = licenses.offending(found)
    which = ", ".join(f"{name} ({lic})" for name, lic in bad) if bad else f"run {run_id} records no data licences"
    return f"refused: training data is not cleared for commercial use: {which} -> commercial_use={use}"


def tag_version_metrics(uri: str, metrics: dict[str, float]) -> dict[str, str]:
    """Tag the version behind ``models:/NAME@ALIAS`` with ``dolly.metric.<name>`` (the evaluate
    job runs after register, so its metrics reach the version this way)."""
    from mlflow import MlflowClient

    mv = resolve_alias(uri)
    tags = {f"{METRIC_TAG_PREFIX}{k}": repr(float(v)) for k, v in sorted(metrics.items())}
    client = MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(mv.name, mv.version, k, v)
    return tags
