"""A model's ``config.json`` without its weights: what prepare, ``train --plan`` and training read
to size sequences (no torch, no Spark)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PYTHIA_CONTEXT = 2048  # every Pythia / dolly-v2 model's max_position_embeddings
# The ``base_model`` that builds a random-init few-MB GPT-NeoX (local runs, CI), with Pythia's context.
TINY_MODEL = "tiny"
# The names models use for their context length, in the order Dolly's trainer tries them.
CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "seq_length")


def load_model_config(model: str) -> dict[str, Any]:
    """``config.json`` of a hub id, a model directory or the file itself, as a dict."""
    p = Path(model)
    if p.is_file():
        return json.loads(p.read_text())
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{model}: no config.json in this directory")
        return json.loads((p / "config.json").read_text())
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(model, "config.json")).read_text())
    except Exception as err:  # offline, unknown id: one clear line
        raise RuntimeError(
            f"cannot read the config of model {model!r} ({type(err).__name__}); pass a local config.json or directory"
        ) from err


def context_length(config: dict[str, Any]) -> int | None:
    for key in CONTEXT_KEYS:
        if config.get(key):
            return int(config[key])
    return None


def model_max_positions(model: str) -> int:
    """The model's context length (Dolly's max_length), or Pythia's 2048 when the config has none."""
    if model == TINY_MODEL:
        return PYTHIA_CONTEXT
    return context_length(load_model_config(model)) or PYTHIA_CONTEXT
