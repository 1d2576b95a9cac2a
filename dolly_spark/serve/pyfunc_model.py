"""Dolly as an MLflow pyfunc: the instruction pipeline (prompt template, ``### End`` as the stop
token, Dolly's sampling defaults) around a saved Hugging Face model directory.

Logged from the saved directory (``artifacts={"hf_model": dir}``): the weights are copied, not
loaded, so a large checkpoint is never held in memory twice. No Spark here.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from dataclasses import asdict, fields
from pathlib import Path

import mlflow
import pandas as pd

from dolly_spark.serve.generate import GenerationConfig
from dolly_spark.text.prompts import END_KEY, INTRO_BLURB

log = logging.getLogger(__name__)

HF_ARTIFACT = "hf_model"
OUTPUT_COLUMNS = ("response", "prompt_tokens", "completion_tokens", "finish_reason", "error")
# Packages the model needs at load time, pinned to what is installed here (no network inference).
REQUIRED_PACKAGES = (
    "mlflow",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "accelerate",
    "pandas",
    "numpy",
    "cloudpickle",
    "pyyaml",
)
DEFAULT_INPUT_EXAMPLE = {"instruction": ["Explain what a Delta table is in one sentence."], "context": [""]}
_SEED_UNSET = -1  # ParamSpec defaults cannot be None


class DollyInstructionModel(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame[instruction, context?], params) -> DataFrame[response, prompt_tokens,
    completion_tokens, finish_reason, error]``; one output row per input row, in order."""

    def load_context(self, context):
        # The weights load on the first predict: some MLflow releases (3.0.x) call load_context
        # while saving, which would load a large checkpoint just to log it.
        self.model_dir = context.artifacts[HF_ARTIFACT]
        self.model = self.tokenizer = None

    def _loaded(self):
        from dolly_spark.serve.generate import load_for_generation

        if self.model is None:
            device = os.environ.get("DOLLY_DEVICE") or None
            self.model, self.tokenizer = load_for_generation(self.model_dir, device=device)
        return self.model, self.tokenizer

    def predict(self, context, model_input, params=None):
        from dolly_spark.serve.generate import generate_responses

        frame = _as_frame(model_input)
        instructions = frame["instruction"].tolist()
        contexts = frame["context"].tolist() if "context" in frame.columns else None
        if contexts is not None:
            contexts = [c if isinstance(c, str) else None for c in contexts]
        cfg = generation_config(params)  # bad params fail before any load
        model, tokenizer = self._loaded()
        results = generate_responses(model, tokenizer, instructions, contexts, cfg)
        out = pd.DataFrame(results, columns=list(OUTPUT_COLUMNS))
        for col in ("prompt_tokens", "completion_tokens"):
            out[col] = out[col].astype("int64")
        return out


def _as_frame(model_input) -> pd.DataFrame:
    if isinstance(model_input, pd.DataFrame):
        frame = model_input
    elif isinstance(model_input, dict):
        frame = pd.DataFrame(model_input)
    elif isinstance(model_input, (list, tuple)) and all(isinstance(x, str) for x in model_input):
        frame = pd.DataFrame({"instruction": list(model_input)})
    elif isinstance(model_input, str):
        frame = pd.DataFrame({"instruction": [model_input]})
    else:
        raise TypeError(f"expected a DataFrame with an 'instruction' column, got {type(model_input).__name__}")
    if "instruction" not in frame.columns:
        raise ValueError(f"input needs an 'instruction' column; got columns {list(frame.columns)}")
    return frame.reset_index(drop=True)


def generation_config(params: dict | None) -> GenerationConfig:
    """Dolly's defaults, overridden by the request's params (unknown keys are an error)."""
    params = dict(params or {})
    known = {f.name for f in fields(GenerationConfig)}
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"unknown generation params {sorted(unknown)}; known: {sorted(known)}")
    if params.get("seed") is not None and int(params["seed"]) == _SEED_UNSET:
        params["seed"] = None
    cfg = GenerationConfig(**params)
    if cfg.max_new_tokens < 1 or cfg.batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be >= 1")
    return cfg


def model_signature():
    """Inputs and outputs (Unity Catalog requires both) and the generation params."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    defaults = GenerationConfig()
    inputs = Schema([ColSpec("string", "instruction"), ColSpec("string", "context", required=False)])
    outputs = Schema(
        [
            ColSpec("string", "response", required=False),  # None when the row has an error
            ColSpec("long", "prompt_tokens"),
            ColSpec("long", "completion_tokens"),
            ColSpec("string", "finish_reason", required=False),
            ColSpec("string", "error", required=False),
        ]
    )
    params = ParamSchema(
        [
            ParamSpec("max_new_tokens", "long", defaults.max_new_tokens),
            ParamSpec("top_p", "double", defaults.top_p),
            ParamSpec("top_k", "long", defaults.top_k),
            ParamSpec("temperature", "double", defaults.temperature),
            ParamSpec("greedy", "boolean", defaults.greedy),
            ParamSpec("batch_size", "long", defaults.batch_size),
            ParamSpec("seed", "long", _SEED_UNSET),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


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
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a saved Hugging Face model (no config.json)")
    if not list(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path} has no *.safetensors weights (save with safe_serialization=True)")
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path} has no tokenizer.json; save the Dolly tokenizer next to the weights")
    return path


class _PyfuncWithoutServingCheck:
    """The pyfunc flavor minus log-time input-example validation, which would load the model
    (a second copy of a large checkpoint) just to run the example."""

    __name__ = "mlflow.pyfunc"

    @staticmethod
    def save_model(*args, validate_serving_input=None, **kwargs):
        return mlflow.pyfunc.save_model(*args, **kwargs)


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
    """Log ``model_dir`` (safetensors + tokenizer) as a Dolly pyfunc into the active run.

    ``lineage`` (tracking.lineage_tags) goes into the model's metadata and tags, and onto the
    registered version when ``registered_model_name`` is given. ``validate_example`` loads the
    model once more at log time to run the input example: cheap for small models only.
    Returns the ModelInfo.
    """
    import dolly_spark

    path = _check_model_dir(model_dir)
    example = input_example if input_example is not None else pd.DataFrame(DEFAULT_INPUT_EXAMPLE)
    lineage = {k: str(v) for k, v in (lineage or {}).items() if v is not None}
    metadata = {
        "prompt_template": "dolly-v2",
        "intro_blurb": INTRO_BLURB,
        "stop_token": END_KEY,
        "generation_defaults": asdict(GenerationConfig()),
        **lineage,
        **(extra_metadata or {}),
    }
    kwargs = dict(
        name=name,
        python_model=DollyInstructionModel(),
        artifacts={HF_ARTIFACT: str(path)},
        # The model class lives in this package: ship it so loading needs no install.
        code_paths=[str(Path(dolly_spark.__file__).parent)],
        signature=model_signature(),
        input_example=example,
        pip_requirements=pinned_requirements(),
        metadata=metadata,
        tags=lineage or None,
    )
    if validate_example:
        info = mlflow.pyfunc.log_model(**kwargs)
    else:
        from mlflow.models import Model

        from dolly_spark.ops.runtime import model_log_keywords

        info = Model.log(
            flavor=_PyfuncWithoutServingCheck,
            validate_serving_input=False,
            artifact_path=None,
            **model_log_keywords("pyfunc.CustomPythonModel"),
            **kwargs,
        )
    if registered_model_name:
        info = _register_logged(info, registered_model_name, lineage)
    return info


def _register_logged(info, model_name: str, tags: dict):
    mv = mlflow.register_model(info.model_uri, model_name, tags=tags or None)
    info.registered_model_version = int(mv.version)
    return info
