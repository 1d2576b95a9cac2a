"""Dolly as an MLflow pyfunc: the instruction pipeline (prompt template, ``### End`` as the stop
token, Dolly's sampling defaults) around a saved Hugging Face model directory.

This module is what loading needs: the model class, its request params and its signature.
Logging it into a run (from the saved directory, weights copied, not loaded) is
``dolly_spark.tracking.models.log_dolly_model``. No Spark here.
"""

from __future__ import annotations

import os
from dataclasses import fields

import mlflow
import pandas as pd

from dolly_spark.serve.generate import GenerationConfig

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
