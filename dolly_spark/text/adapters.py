"""LoRA adapter directories: what a ``--method lora|qlora`` run leaves beside its merged model.

An adapter directory holds peft's ``adapter_config.json`` and ``adapter_model.safetensors``, the
tokenizer, and ``dolly_base.json``: the base it was trained on, pinned (hub id and revision, or a
path), and the adapter's settings. Training, evaluation, scoring and the pyfunc all load an
adapter through ``load_merged``, so an adapter-only model scores exactly like the merged one.
"""

from __future__ import annotations

import json
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
BASE_FILE = "dolly_base.json"
ADAPTER_SUBDIR = "adapter"  # model_dir/adapter: the adapter of a merged lora/qlora model


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def read_base_ref(adapter_dir: str | Path) -> dict:
    """``dolly_base.json`` of an adapter; ValueError (one line) when it is missing or names no base."""
    path = Path(adapter_dir) / BASE_FILE
    if not path.is_file():
        raise ValueError(f"{adapter_dir}: an adapter without {BASE_FILE}, so its base is unknown")
    ref = json.loads(path.read_text())
    if not ref.get("base_model"):
        raise ValueError(f"{path}: names no base_model")
    return ref


def write_base_ref(adapter_dir: str | Path, ref: dict) -> Path:
    path = Path(adapter_dir) / BASE_FILE
    path.write_text(json.dumps(ref, indent=2))
    return path


def dtype_keyword() -> str:
    """``dtype`` where the config declares it (transformers 4.56+), else ``torch_dtype`` (as
    ``ops.runtime.dtype_keyword``; text/ imports no other layer)."""
    import inspect

    from transformers import PretrainedConfig

    return "dtype" if "dtype" in inspect.signature(PretrainedConfig.__init__).parameters else "torch_dtype"


def load_base(base_model: str, revision: str | None, vocab_size: int, torch_dtype=None, trust_remote_code=False):
    """The base an adapter was trained on, resized to the adapter's tokenizer as training resized it."""
    from transformers import AutoModelForCausalLM

    kwargs = {"revision": revision} if revision else {}
    if torch_dtype is not None:
        kwargs[dtype_keyword()] = torch_dtype
    model = AutoModelForCausalLM.from_pretrained(
        base_model, use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs
    )
    if model.get_input_embeddings().weight.shape[0] != vocab_size:
        model.resize_token_embeddings(vocab_size)
    return model


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def load_adapter(base, adapter_dir: str | Path):
    """peft's model of ``base`` with the adapter loaded: safetensors only (a pickle could run code)."""
    from peft import PeftModel

    if not (Path(adapter_dir) / ADAPTER_WEIGHTS).is_file():
        raise ValueError(f"{adapter_dir}: no {ADAPTER_WEIGHTS}; only safetensors adapters are loaded")
    return PeftModel.from_pretrained(base, str(adapter_dir), use_safetensors=True)


def load_merged(adapter_dir: str | Path, torch_dtype=None, trust_remote_code: bool = False):
    """(model, tokenizer): the pinned base with the adapter merged in, a plain transformers model."""
    from dolly_spark.text.tokenizer import load_hf_tokenizer

    ref = read_base_ref(adapter_dir)
    tokenizer = load_hf_tokenizer(str(adapter_dir))
    revision = None if Path(ref["base_model"]).exists() else ref.get("revision")
    base = load_base(ref["base_model"], revision, len(tokenizer), torch_dtype, trust_remote_code)
    model = load_adapter(base, adapter_dir).merge_and_unload()
    return model, tokenizer
