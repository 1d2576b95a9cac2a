"""``--method lora|qlora`` on the ranks: a frozen base (4-bit NF4 for qlora) with peft's LoRA adapters.

The base must be the same on every attempt, since checkpoints hold only the adapters. A hub id
or a local model is pinned already; a random-init base (``tiny``, a config) is built once on
rank 0, before any DeepSpeed context exists, saved whole to ``CHECKPOINT_DIR/base`` and marked
complete, and every attempt loads it from there. The adapter directory the run publishes
(``MODEL_DIR/adapter``) names that base in ``dolly_base.json``, so the merged model can always
be rebuilt from the adapter.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from dolly_spark.ops.paths import local_scratch
from dolly_spark.text.adapters import load_base, write_base_ref
from dolly_spark.text.model_config import TINY_MODEL
from dolly_spark.train import checkpoints, distributed

log = logging.getLogger(__name__)

# Dolly's model family: every linear of a GPT-NeoX block (launch/memory.py plans the same set).
GPT_NEOX_TARGETS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
SAVED_BASE = "base"  # CHECKPOINT_DIR/base: a random-init base, kept for resumes and merging


def resolve_targets(model, configured: tuple[str, ...]):
    """The modules that get adapters: the configured names, else GPT-NeoX's linears, else every linear."""
    if configured == ("all-linear",):
        return "all-linear"  # peft's own keyword: a string, not a module name
    if configured:
        return list(configured)
    return list(GPT_NEOX_TARGETS) if model.config.model_type == "gpt_neox" else "all-linear"


def base_has_weights(base_model: str) -> bool:
    from dolly_spark.train.model import model_source_kind

    return base_model != TINY_MODEL and model_source_kind(base_model) != "config"


def pinned_base(job, cfg, tokenizer) -> str:
    """The base every attempt loads: ``cfg.base_model`` when it has weights, else the saved random init.

    All ranks call this before TrainingArguments exist (no ZeRO-3 context yet, so rank 0 builds
    the random init whole).
    """
    if base_has_weights(cfg.base_model):
        return cfg.base_model
    saved = Path(job.checkpoint_dir) / SAVED_BASE
    if distributed.rank() == 0 and not checkpoints.is_published(saved):
        save_random_base(job, cfg, tokenizer, saved)
    distributed.barrier()
    return str(saved)


def save_random_base(job, cfg, tokenizer, dest: Path) -> None:
    from transformers import set_seed

    from dolly_spark.train.model import build_model

    set_seed(cfg.seed)
    model = build_model(cfg.base_model, tokenizer, cfg.trust_remote_code, cfg.resolved_max_seq_len())
    local = local_scratch("lora_base", job.attempt)
    model.save_pretrained(str(local))
    tokenizer.save_pretrained(str(local))
    shutil.rmtree(dest, ignore_errors=True)
    checkpoints.publish(local, dest)
    checkpoints.mark_complete(dest, 0)
    shutil.rmtree(local, ignore_errors=True)
    log.info("random-init base for the adapters saved to %s", dest)


def quantization_config(ds_config: dict):
    """bitsandbytes 4-bit NF4 with double quantisation (QLoRA's), computing in the run's precision."""
    import torch
    from transformers import BitsAndBytesConfig

    bf16 = ds_config.get("bf16", {}).get("enabled") in (True, "auto")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
    )


def load_qlora_base(base: str, tokenizer, cfg, ds_config: dict, cpu: bool):
    """The base in 4-bit on this rank's device, prepared for k-bit training (norms in fp32)."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    from dolly_spark.train.model import configure_generation

    device = "cpu" if cpu else f"cuda:{distributed.local_rank()}"
    model = AutoModelForCausalLM.from_pretrained(
        base,
        use_safetensors=True,
        trust_remote_code=cfg.trust_remote_code,
        quantization_config=quantization_config(ds_config),
        device_map={"": device},
    )
    if model.get_input_embeddings().weight.shape[0] != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    configure_generation(model, tokenizer)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)


def attach_adapters(model, cfg):
    """The base frozen, LoRA adapters on the target modules (peft)."""
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=resolve_targets(model, lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    if cfg.gradient_checkpointing:
        # Reentrant checkpointing drops gradients whose inputs need none: with frozen embeddings
        # the adapters inside checkpointed blocks would never train.
        model.enable_input_require_grads()
    return model


def trainable_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters, ZeRO-3 partitioned ones counted whole."""
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", p.numel())
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def hub_revision(repo_id: str) -> str | None:
    """The commit of the hub snapshot this process loaded (from the local cache), or None."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True)).name
    except Exception:  # not cached as a snapshot (or an offline hub error): nothing to pin from here
        return None


def base_reference(cfg, base: str, model) -> dict:
    """``dolly_base.json``: the base pinned (hub id and revision, or an absolute path) and the adapter."""
    trainable, total = trainable_counts(model)
    is_path = Path(base).exists()
    peft_config = model.peft_config["default"]
    targets = peft_config.target_modules
    return {
        "base_model": str(Path(base).resolve()) if is_path else base,
        "revision": None if is_path else hub_revision(base),
        "method": cfg.method,
        "r": cfg.lora.r,
        "alpha": cfg.lora.alpha,
        "dropout": cfg.lora.dropout,
        "target_modules": sorted(targets) if not isinstance(targets, str) else [targets],
        "trainable_parameters": trainable,
        "total_parameters": total,
    }


def write_adapter_dir(adapter_dir: Path, tokenizer, ref: dict) -> None:
    """Tokenizer and base reference beside the adapter weights the Trainer saved (rank 0)."""
    from dolly_spark.text.tokenizer import save_portable_tokenizer

    save_portable_tokenizer(tokenizer, adapter_dir)
    (adapter_dir / "training_args.bin").unlink(missing_ok=True)
    write_base_ref(adapter_dir, ref)


def merge_into_base(adapter_dir: Path, ref: dict, dest: Path, torch_dtype=None) -> None:
    """The plain merged model: the pinned base reloaded unquantised, the adapter merged in."""
    from dolly_spark.text.adapters import load_adapter
    from dolly_spark.text.tokenizer import load_hf_tokenizer
    from dolly_spark.train.model import configure_generation

    tokenizer = load_hf_tokenizer(str(adapter_dir))
    revision = None if Path(ref["base_model"]).exists() else ref["revision"]
    base = load_base(ref["base_model"], revision, len(tokenizer), torch_dtype)
    merged = load_adapter(base, adapter_dir).merge_and_unload()
    configure_generation(merged, tokenizer)
    merged.config.use_cache = True
    merged.save_pretrained(str(dest))


DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def merge_in_subprocess(adapter_dir: Path, dest: Path, bf16: bool) -> None:
    """``merge_into_base`` in a fresh interpreter on the CPU (rank 0): loading the base here would
    enter the Trainer's ZeRO-3 context, whose collectives the other ranks never join, and would
    hold a second copy of the model beside the training one."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, "-m", "dolly_spark.train.adapters", str(adapter_dir), str(dest)]
    out = subprocess.run(cmd + (["--bf16"] if bf16 else []), env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"merging the adapter into its base failed:\n{out.stderr[-4000:]}")


def main(argv: list[str] | None = None) -> int:
    """``python -m dolly_spark.train.adapters ADAPTER_DIR DEST [--bf16]``: merge (see merge_in_subprocess)."""
    import argparse

    import torch

    from dolly_spark.text.adapters import read_base_ref

    p = argparse.ArgumentParser(prog="dolly_spark.train.adapters")
    p.add_argument("adapter_dir", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--bf16", action="store_true")
    args = p.parse_args(argv)
    ref = read_base_ref(args.adapter_dir)
    merge_into_base(args.adapter_dir, ref, args.dest, torch.bfloat16 if args.bf16 else torch.float32)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
