"""Model and tokenizer loading: hub id, local directory, or a config (random init).

Safetensors only, and no remote code unless the user asks for it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dolly_spark.text.model_config import PYTHIA_CONTEXT, TINY_MODEL
from dolly_spark.text.prompts import END_KEY

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
# ``--base-model tiny`` (TINY_MODEL) builds the random-init few-MB GPT-NeoX below (a directory
# named tiny is ./tiny), with Pythia's context, so it plans and trains like a Pythia.
TINY_CONTEXT = PYTHIA_CONTEXT


def tiny_config(vocab_size: int, max_positions: int = 2048):
    """A few-MB GPT-NeoX (Pythia-style) config for local runs and CI."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )


# Pickle checkpoints (torch.load runs code from the file): never loaded, but never mistaken for a
# bare config either. training_args.bin is Trainer metadata, not weights.
PICKLE_WEIGHT_GLOBS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "pytorch_model.bin.index.json")
NOT_WEIGHTS = {"training_args.bin"}


def model_source_kind(base_model: str) -> str:
    """'config' (random init), 'local' (weights in a dir) or 'hub'.

    A directory with pickle weights (``pytorch_model.bin``) and no safetensors raises ValueError:
    classing it as a config would silently train from random init.
    """
    p = Path(base_model)
    if p.is_file() and p.suffix == ".json":
        return "config"
    if p.is_dir():
        if any((p / f).exists() for f in WEIGHT_FILES) or any(p.glob("*.safetensors")):
            return "local"
        pickles = sorted({f.name for g in PICKLE_WEIGHT_GLOBS for f in p.glob(g)} - NOT_WEIGHTS)
        if pickles:
            raise ValueError(
                f"{base_model}: has pickle weights ({', '.join(pickles[:3])}) but no safetensors; only "
                "safetensors weights are loaded. Convert them to model.safetensors in a trusted environment "
                "(save_pretrained(..., safe_serialization=True)) or pass the hub id."
            )
        if (p / "config.json").exists():
            return "config"
        raise FileNotFoundError(f"{base_model}: a directory with neither safetensors weights nor config.json")
    return "hub"


def load_tokenizer(src: str):
    from dolly_spark.text.tokenizer import load_hf_tokenizer

    return load_hf_tokenizer(src)


def build_model(base_model: str, tokenizer, trust_remote_code: bool = False, max_positions: int = 2048):
    """Load or initialise a causal LM (``TINY_MODEL``: the tiny config), then resize its embeddings
    to the tokenizer.

    Under ZeRO-3 call this after TrainingArguments exist, so weights are partitioned at load.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if base_model == TINY_MODEL:
        model = AutoModelForCausalLM.from_config(tiny_config(len(tokenizer), max_positions))
        source = "tiny"
    else:
        kind = model_source_kind(base_model)
        if kind == "config":
            # A directory or the config.json file itself: AutoConfig reads either.
            config = AutoConfig.from_pretrained(base_model, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
            source = "random init from config"
        else:
            model = AutoModelForCausalLM.from_pretrained(
                base_model, use_safetensors=True, trust_remote_code=trust_remote_code
            )
            source = "pretrained"
    # Dolly resizes to the tokenizer exactly (its special tokens are the last ids).
    if model.get_input_embeddings().weight.shape[0] != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    configure_generation(model, tokenizer)
    log.info("model %s (%s), vocab %d", base_model, source, len(tokenizer))
    return model


def configure_generation(model, tokenizer) -> None:
    """Stop at ``### End`` as well as EOS; pad with EOS (as in Dolly)."""
    end_id = tokenizer.convert_tokens_to_ids(END_KEY)
    eos = tokenizer.eos_token_id
    model.config.pad_token_id = eos
    gen = model.generation_config
    gen.pad_token_id = eos
    gen.eos_token_id = [eos, end_id] if eos is not None else [end_id]


def count_parameters(model) -> int:
    """Parameter count, ZeRO-3 partitioned parameters included (ds_numel)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


# GPT-NeoX's output layer is ``lm_head`` in transformers 5 and ``embed_out`` before.
FINGERPRINT_PARAMS = (
    "gpt_neox.embed_in.weight",
    "gpt_neox.layers.0.attention.query_key_value.weight",
    "lm_head.weight",
    "embed_out.weight",
)


def canonical_name(name: str) -> str:
    """A parameter's name in the plain model: peft's wrapper prefix and ``base_layer`` removed."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _norm(p) -> float:
    import torch

    if hasattr(p, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            return float(torch.linalg.vector_norm(p.detach().float()))
    return float(torch.linalg.vector_norm(p.detach().float()))


def weight_fingerprint(model, names=FINGERPRINT_PARAMS) -> dict[str, float]:
    """L2 norms of a few named weights, gathered one at a time under ZeRO-3 (all ranks call this).

    With adapters (lora/qlora) ``adapters`` is the norm of all trainable weights together.
    """
    params = {canonical_name(n): p for n, p in model.named_parameters() if "lora_" not in n}
    out = {name: _norm(params[name]) for name in names if name in params}
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    if adapters:
        out["adapters"] = sum(_norm(p) ** 2 for p in adapters) ** 0.5
    return out
