"""The Dolly pyfunc logged into a run: from the saved Hugging Face directory, with signature,
pinned requirements and lineage; and everything the train job's run records about its result.

Logged from the saved directory (``artifacts={"hf_model": dir}``): the weights are copied, not
loaded, so a large checkpoint is never held in memory twice. The directory is a saved model or a
LoRA adapter directory (``text.adapters``: loaded onto its pinned base, so it also needs peft).
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import asdict
from pathlib import Path

import mlflow
import pandas as pd

from dolly_spark.serve.generate import GenerationConfig
from dolly_spark.serve.pyfunc_model import (
    DEFAULT_INPUT_EXAMPLE,
    HF_ARTIFACT,
    REQUIRED_PACKAGES,
    DollyInstructionModel,
    model_signature,
)
from dolly_spark.text.adapters import ADAPTER_CONFIG, is_adapter_dir, read_base_ref
from dolly_spark.text.prompts import END_KEY, INTRO_BLURB
from dolly_spark.tracking.lineage import FORM_ADAPTER, FORM_MERGED, gold_licenses, log_data_licenses, log_gold_lineage
from dolly_spark.tracking.methods import ADAPTER_ARTIFACT, log_method, method_summary, model_form
from dolly_spark.tracking.metrics import log_metric_dict, metric_key
from dolly_spark.tracking.runs import field_value, is_rank_zero

ADAPTER_PACKAGES = ("peft",)  # what loading an adapter-only model needs on top of REQUIRED_PACKAGES

log = logging.getLogger(__name__)


def _drop_local_version(version: str) -> str:
    # "2.13.0+cpu" pins a CPU-only wheel; serving on GPU needs the plain release.
    return version.split("+", 1)[0]


def pinned_requirements(packages=REQUIRED_PACKAGES) -> list[str]:
    reqs = []
    for pkg in packages:
        try:
            reqs.append(f"{pkg}=={_drop_local_version(importlib.metadata.version(pkg))}")
        except importlib.metadata.PackageNotFoundError:
            log.warning("%s is not installed; left out of the model's requirements", pkg)
    return reqs


def _check_model_dir(model_dir) -> Path:
    path = Path(model_dir)
    if is_adapter_dir(path):
        return _check_adapter_dir(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a saved Hugging Face model (no config.json) nor an adapter")
    if not list(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path} has no *.safetensors weights (save with safe_serialization=True)")
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path} has no tokenizer.json; save the Dolly tokenizer next to the weights")
    return path


def _check_adapter_dir(path: Path) -> Path:
    if not list(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path}: {ADAPTER_CONFIG} but no *.safetensors adapter weights")
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path} has no tokenizer.json; save the Dolly tokenizer next to the adapter")
    read_base_ref(path)  # ValueError when the base it loads onto is not pinned
    return path


class _PyfuncWithoutServingCheck:
    """The pyfunc flavor minus log-time input-example validation, which would load the model
    (a second copy of a large checkpoint) just to run the example."""

    __name__ = "mlflow.pyfunc"

    @staticmethod
    def save_model(*args, validate_serving_input=None, **kwargs):
        return mlflow.pyfunc.save_model(*args, **kwargs)


def _model_metadata(path: Path, lineage: dict, extra: dict | None) -> dict:
    metadata = {
        "prompt_template": "dolly-v2",
        "intro_blurb": INTRO_BLURB,
        "stop_token": END_KEY,
        "generation_defaults": asdict(GenerationConfig()),
        **lineage,
        **(extra or {}),
    }
    if is_adapter_dir(path):  # what the adapter loads onto, readable without downloading it
        ref = read_base_ref(path)
        metadata["adapter_base"] = {"base_model": ref["base_model"], "revision": ref.get("revision")}
    return metadata


def log_dolly_model(
    model_dir,
    *,
    name: str = "model",
    input_example: pd.DataFrame | None = None,
    registered_model_name: str | None = None,
    lineage: dict | None = None,
    validate_example: bool = False,
    extra_metadata: dict | None = None,
):
    """Log ``model_dir`` (safetensors + tokenizer, or an adapter directory) as a Dolly pyfunc into
    the active run.

    ``lineage`` (``lineage.lineage_tags``, ``lineage.method_tags``) goes into the model's metadata
    and tags, and onto the registered version when ``registered_model_name`` is given.
    ``validate_example`` loads the model once more at log time to run the input example: cheap
    for small models only. A merged lora/qlora model keeps its ``adapter/`` (a few MB to tens of MB)
    inside, so a registered version carries the adapter it was merged from. Returns the ModelInfo.
    """
    import dolly_spark

    path = _check_model_dir(model_dir)
    example = input_example if input_example is not None else pd.DataFrame(DEFAULT_INPUT_EXAMPLE)
    lineage = {k: str(v) for k, v in (lineage or {}).items() if v is not None}
    packages = REQUIRED_PACKAGES + (ADAPTER_PACKAGES if is_adapter_dir(path) else ())
    kwargs = dict(
        name=name,
        python_model=DollyInstructionModel(),
        artifacts={HF_ARTIFACT: str(path)},
        # The model class lives in this package: ship it so loading needs no install.
        code_paths=[str(Path(dolly_spark.__file__).parent)],
        signature=model_signature(),
        input_example=example,
        pip_requirements=pinned_requirements(packages),
        metadata=_model_metadata(path, lineage, extra_metadata),
        tags=lineage or None,
    )
    info = _log_pyfunc(kwargs, validate_example)
    if registered_model_name:
        info = _register_logged(info, registered_model_name, lineage)
    return info


def _log_pyfunc(kwargs: dict, validate_example: bool):
    if validate_example:
        return mlflow.pyfunc.log_model(**kwargs)
    from mlflow.models import Model

    from dolly_spark.ops.runtime import model_log_keywords

    return Model.log(
        flavor=_PyfuncWithoutServingCheck,
        validate_serving_input=False,
        artifact_path=None,
        **model_log_keywords("pyfunc.CustomPythonModel"),
        **kwargs,
    )


def _register_logged(info, model_name: str, tags: dict):
    mv = mlflow.register_model(info.model_uri, model_name, tags=tags or None)
    info.registered_model_version = int(mv.version)
    return info


def training_metrics(result) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in ("final_step", "train_loss_first", "train_loss_last", "eval_loss"):
        v = field_value(result, key)
        if v is not None:
            out[key] = v
    for category, v in (field_value(result, "eval_loss_by_category") or {}).items():
        out[metric_key(f"eval_loss_{category}")] = v
    return out


def log_training_run(
    train_cfg, result, *, spark=None, names=None, name: str = "model", registered_model_name: str | None = None
):
    """Inside the train job's run: log gold lineage, the data's licences (``data.licenses``), how it
    trained (``methods``), final metrics, the metrics file and the model: the model directory, or with ``log_adapter_only`` the adapter.

    ``result`` is launch.TrainResult (model_dir, gold_table, gold_version, silver_version, ...).
    ``names`` (TableNames) resolves a logical gold table name to its path. Returns ModelInfo.
    """
    if not is_rank_zero():
        return None
    if mlflow.active_run() is None:
        raise RuntimeError("log_training_run needs an active MLflow run: call it inside job_run('train', cfg)")
    summary = method_summary(train_cfg, result)
    form = model_form(summary, bool(field_value(train_cfg, "log_adapter_only", False)))
    lineage = {**(_log_lineage(result, spark, names) or {}), **summary.tags(form)}
    own_gold = names is not None and field_value(result, "gold_table") in (
        None,
        "gold",
        names.gold.name,
        names.gold.path,
    )
    log_data_licenses(gold_licenses(spark, names if own_gold else None, field_value(result, "gold_version")))
    log_method(summary, form)
    # Same keys as launch's per-step series, at the final step: the last point of each curve.
    log_metric_dict(training_metrics(result), step=int(field_value(result, "final_step") or 0))
    metrics_path = field_value(result, "metrics_path")
    if metrics_path and Path(metrics_path).is_file():
        mlflow.log_artifact(str(metrics_path), "training")
    model_path = summary.adapter_dir if form == FORM_ADAPTER else field_value(result, "model_dir")
    info = log_dolly_model(model_path, name=name, lineage=lineage, registered_model_name=registered_model_name)
    if form == FORM_MERGED:
        mlflow.log_artifacts(summary.adapter_dir, ADAPTER_ARTIFACT)
    return info


def _log_lineage(result, spark, names) -> dict | None:
    gold = field_value(result, "gold_table")
    if names is not None and (gold is None or gold in (names.gold.name, "gold")):
        gold = names.gold
    if gold is None or field_value(result, "gold_version") is None:
        log.warning("training result names no gold table/version: the model has no data lineage")
        return None
    return log_gold_lineage(
        spark,
        gold,
        field_value(result, "gold_version"),
        silver_version=field_value(result, "silver_version"),
        bronze_version=field_value(result, "bronze_version"),
    )
