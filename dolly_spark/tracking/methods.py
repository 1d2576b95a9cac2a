"""How a train run fine-tuned (``--method full|lora|qlora``) and what it logs about it.

- params: ``method`` always; for lora/qlora the adapter's own settings ``lora_r``, ``lora_alpha``,
  ``lora_dropout`` and ``lora_target_modules`` (the modules that really got adapters, read from
  the adapter directory, so an empty ``--lora-target-modules`` shows the architecture's defaults);
- metrics: ``trainable_parameters`` and ``total_parameters`` (numbers, so runs sort and compare);
- the logged model's form (``lineage.MODEL_FORMS``): a full run's weights; for lora/qlora the
  adapter merged into its base (default, with the adapter also logged as the run artifact
  ``adapter/``), or, with ``--log-adapter-only``, the adapter alone pinned to its base.

What a run did is read from its result (``final_eval.json``'s ``method``, ``lora``,
``trainable_parameters``, ``total_parameters``, ``adapter_dir``), then from the adapter's
``dolly_base.json``, then from the config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dolly_spark.text.adapters import ADAPTER_SUBDIR, is_adapter_dir, read_base_ref
from dolly_spark.tracking.lineage import FORM_ADAPTER, FORM_FULL, FORM_MERGED, method_tags
from dolly_spark.tracking.runs import field_value

log = logging.getLogger(__name__)

ADAPTER_ARTIFACT = "adapter"  # run artifact path of the adapter beside a merged model
LORA_KEYS = ("r", "alpha", "dropout", "target_modules")
ADAPTER_METHODS = ("lora", "qlora")


@dataclass(frozen=True)
class MethodSummary:
    method: str
    base_model: str | None = None
    base_revision: str | None = None
    lora: dict | None = None  # r, alpha, dropout, target_modules; None for a full run
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    adapter_dir: str | None = None

    def params(self) -> dict[str, str]:
        params = {"method": self.method}
        for key, value in (self.lora or {}).items():
            params[f"lora_{key}"] = ",".join(value) if key == "target_modules" else str(value)
        return params

    def metrics(self) -> dict[str, float]:
        counts = {"trainable_parameters": self.trainable_parameters, "total_parameters": self.total_parameters}
        return {k: float(v) for k, v in counts.items() if v is not None}

    def tags(self, form: str) -> dict[str, str]:
        return method_tags(self.method, self.base_model, self.base_revision, form)


def _reported(result, key: str):
    """A key of final_eval.json: a top-level field of the result, else in its ``extra``."""
    value = field_value(result, key)
    if value is None:
        value = (field_value(result, "extra") or {}).get(key)
    return value


def _adapter_dir(result) -> Path | None:
    reported = _reported(result, "adapter_dir")
    if reported:
        return Path(reported)
    model_dir = field_value(result, "model_dir")
    beside = Path(model_dir) / ADAPTER_SUBDIR if model_dir else None
    return beside if beside is not None and is_adapter_dir(beside) else None


def method_summary(train_cfg, result) -> MethodSummary:
    """What the run trained, from its result, its adapter's ``dolly_base.json`` and its config."""
    method = _reported(result, "method") or field_value(train_cfg, "method") or "full"
    base = field_value(result, "base_model") or field_value(train_cfg, "base_model")
    if method not in ADAPTER_METHODS:
        total = _reported(result, "total_parameters") or field_value(result, "num_parameters")
        trainable = _reported(result, "trainable_parameters") or total
        return MethodSummary(method, base or None, None, None, trainable, total)
    adapter = _adapter_dir(result)
    if adapter is None or not is_adapter_dir(adapter):
        raise FileNotFoundError(
            f"a {method} run without its adapter directory (looked for {adapter or 'model_dir/' + ADAPTER_SUBDIR}): "
            "training must save it (text.adapters)"
        )
    ref = read_base_ref(adapter)
    lora = _reported(result, "lora") or {k: ref[k] for k in LORA_KEYS if k in ref}
    return MethodSummary(
        method=method,
        base_model=ref["base_model"],
        base_revision=ref.get("revision"),
        lora={k: (list(lora[k]) if k == "target_modules" else lora[k]) for k in LORA_KEYS if k in lora},
        trainable_parameters=_reported(result, "trainable_parameters") or ref.get("trainable_parameters"),
        total_parameters=_reported(result, "total_parameters") or ref.get("total_parameters"),
        adapter_dir=str(adapter),
    )


def model_form(summary: MethodSummary, adapter_only: bool) -> str:
    if summary.method not in ADAPTER_METHODS:
        if adapter_only:
            raise ValueError("log_adapter_only: only a lora or qlora run has an adapter to log")
        return FORM_FULL
    return FORM_ADAPTER if adapter_only else FORM_MERGED


def log_method(summary: MethodSummary, form: str) -> None:
    """Params, parameter counts and tags of the active run (the model gets the tags as lineage)."""
    import mlflow

    from dolly_spark.tracking.metrics import log_metric_dict
    from dolly_spark.tracking.runs import log_params_batched

    log_params_batched(summary.params())
    log_metric_dict(summary.metrics())
    mlflow.set_tags(summary.tags(form))
    if summary.base_model and Path(summary.base_model).is_absolute() and form == FORM_ADAPTER:
        log.warning(
            "the adapter-only model's base is the path %s: it loads only where that path exists", summary.base_model
        )
