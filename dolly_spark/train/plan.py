"""Training memory and schedule planner (behind ``dolly-spark train --plan``).

Answers "will this run fit, and how many optimizer steps will it take?" before a cluster is
started. Pure Python: no Spark, and torch/deepspeed are only imported lazily (DeepSpeed's own
estimator is used when it is installed, the same arithmetic otherwise).

Per-device GPU memory = model states + activations + a fixed overhead:

* **Model states** (parameters, gradients, optimizer states): DeepSpeed's public estimators,
  ``deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs`` and
  ``deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs`` (16-bit mixed
  precision with Adam: 18 bytes per parameter before partitioning). Their formulas are copied
  below for machines without DeepSpeed; a test checks both agree.
* **Activations**: Korthikanti et al. (2022), "Reducing Activation Recomputation in Large
  Transformer Models", per layer ``s*b*h*(34 + 5*a*s/h)`` bytes for 16-bit activations. With
  SDPA / flash attention the ``5*a*s/h`` attention-score term is not stored. With gradient
  checkpointing only each layer's 16-bit input (``2*s*b*h`` bytes) is kept, plus one layer's
  full activations while it is recomputed in the backward pass. Plus the LM head's logits.
* **Overhead**: CUDA context, allocator fragmentation and DeepSpeed's communication buffers.

"GB" throughout means GiB (2**30 bytes), the unit of DeepSpeed's estimator and ``nvidia-smi``
(an "80 GB" A100 has 81,920 MiB).

The step arithmetic is the HF Trainer's (transformers 5.x ``Trainer.set_initial_training_values``
with accelerate's sharded batch sampler, ``dataloader_drop_last=False``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from dolly_spark.train.memory import (
    ACT_BYTES_ATTENTION_SCORES,
    ACT_BYTES_LINEAR,
    CUDA_OVERHEAD_GB,
    LOGITS_BYTES_PER_TOKEN_VOCAB,
    GiB,
    ModelShape,
    activation_gb,
    deepspeed_estimators,
    layer_params,
    model_shape,
    model_states_gb,
)

# The memory model is re-exported: callers plan with one module.
__all__ = [
    "ACT_BYTES_ATTENTION_SCORES",
    "ACT_BYTES_LINEAR",
    "CUDA_OVERHEAD_GB",
    "LOGITS_BYTES_PER_TOKEN_VOCAB",
    "GiB",
    "ModelShape",
    "activation_gb",
    "deepspeed_estimators",
    "layer_params",
    "model_shape",
    "model_states_gb",
    "find_fix",
    "hf_schedule",
    "plan",
]


# Fraction of the card's memory a plan may use: the rest absorbs estimator error and spikes.
USABLE_FRACTION = 0.95


# Memory of each family's usual card when the caller gives none; a100 defaults to the 40 GB part.
DEFAULT_GPU_MEMORY_GB = {"a100": 40.0, "h100": 80.0, "h200": 141.0, "a10": 24.0, "v100": 16.0, "t4": 16.0}
NO_BF16_FAMILIES = ("v100", "t4")
MAX_GPUS_PER_NODE = 8
MAX_NODES_TRIED = 64

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- activations


# ---------------------------------------------------------------- schedule (HF Trainer arithmetic)


def hf_schedule(
    train_records: int,
    per_device_batch: int,
    world_size: int,
    grad_accum: int,
    epochs: float,
    max_steps: int = -1,
    dataloader_drop_last: bool = False,
) -> tuple[int, int]:
    """(update steps per epoch, total update steps), exactly as the HF Trainer computes them.

    Each rank's dataloader is accelerate's ``BatchSamplerShard`` over batches of
    ``per_device_batch`` with ``even_batches``: ``ceil(ceil(records / batch) / world)`` batches,
    or ``floor(floor(records / batch) / world)`` with ``drop_last``. Then
    ``max(len // accum + int(len % accum > 0), 1)`` update steps per epoch, and
    ``max_steps`` if > 0 else ``ceil(epochs * steps_per_epoch)``.
    """
    if dataloader_drop_last:
        len_dl = (train_records // per_device_batch) // world_size
    else:
        len_dl = math.ceil(math.ceil(train_records / per_device_batch) / world_size)
    steps_per_epoch = max(len_dl // grad_accum + int(len_dl % grad_accum > 0), 1)
    total = int(max_steps) if max_steps and max_steps > 0 else math.ceil(epochs * steps_per_epoch)
    return steps_per_epoch, total


def _resolve_steps(value: float | None, total_steps: int) -> int | None:
    """HF semantics: a value below 1 is a fraction of the total steps (rounded up)."""
    if value is None:
        return None
    if 0 < value < 1:
        return math.ceil(total_steps * value)
    return int(value)


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class _Setup:
    zero_stage: int
    gpus_per_node: int
    num_nodes: int
    offload_optimizer: bool
    offload_params: bool
    per_device_batch: int
    grad_accum: int
    gradient_checkpointing: bool

    @property
    def world(self) -> int:
        return self.gpus_per_node * self.num_nodes


def _estimate(
    shape: ModelShape, st: _Setup, seq_len: int, dtype_bytes: int, flash_attention: bool, zero_init: bool
) -> dict[str, float]:
    states, host = model_states_gb(
        shape,
        st.zero_stage,
        st.gpus_per_node,
        st.num_nodes,
        st.offload_optimizer,
        st.offload_params,
        zero_init=zero_init,
    )
    acts = activation_gb(shape, st.per_device_batch, seq_len, st.gradient_checkpointing, dtype_bytes, flash_attention)
    return {
        "gpu": states + acts + CUDA_OVERHEAD_GB,
        "host": host,
        "states": states,
        "activations": acts,
        "overhead": CUDA_OVERHEAD_GB,
    }


def _fits(est: dict[str, float], gpu_memory_gb: float | None, host_memory_gb: float | None) -> bool:
    gpu_ok = gpu_memory_gb is None or est["gpu"] <= USABLE_FRACTION * gpu_memory_gb
    host_ok = host_memory_gb is None or est["host"] <= USABLE_FRACTION * host_memory_gb
    return gpu_ok and host_ok


def _describe(base: _Setup, st: _Setup, est: dict[str, float]) -> str:
    parts = []
    if st.gradient_checkpointing and not base.gradient_checkpointing:
        parts.append("enable gradient checkpointing")
    if st.zero_stage != base.zero_stage:
        parts.append(f"switch to ZeRO-{st.zero_stage}")
    if st.offload_params and not base.offload_params:
        parts.append(
            "offload optimizer and parameters to CPU"
            if not base.offload_optimizer
            else "also offload parameters to CPU"
        )
    elif st.offload_optimizer and not base.offload_optimizer:
        parts.append("offload the optimizer to CPU")
    if st.world != base.world:
        parts.append(f"use {st.world} GPUs ({st.num_nodes} node(s) x {st.gpus_per_node})")
    if st.per_device_batch != base.per_device_batch or st.grad_accum != base.grad_accum:
        same = st.per_device_batch * st.grad_accum * st.world == base.per_device_batch * base.grad_accum * base.world
        parts.append(
            f"per-device batch {st.per_device_batch} with gradient accumulation {st.grad_accum}"
            + (", same records per step" if same else "")
        )
    host = f", {est['host']:.1f} GB host per node" if st.offload_optimizer or st.offload_params else ""
    return f"{' and '.join(parts)} (est {est['gpu']:.1f} GB per GPU{host})"


def _smaller_batches(st: _Setup) -> list[_Setup]:
    """Same records per step: per-device batch b' dividing batch*accum, largest first."""
    per_rank = st.per_device_batch * st.grad_accum
    return [
        _Setup(
            st.zero_stage,
            st.gpus_per_node,
            st.num_nodes,
            st.offload_optimizer,
            st.offload_params,
            b,
            per_rank // b,
            st.gradient_checkpointing,
        )
        for b in range(st.per_device_batch - 1, 0, -1)
        if per_rank % b == 0
    ]


def find_fix(
    shape: ModelShape,
    base: _Setup,
    seq_len: int,
    dtype_bytes: int,
    flash_attention: bool,
    zero_init: bool,
    gpu_memory_gb: float | None,
    host_memory_gb: float | None,
) -> str | None:
    """The cheapest change that fits, tried in order: gradient checkpointing, a smaller per-device batch
    with more accumulation, optimizer offload, optimizer + parameter offload, more GPUs. Each step
    keeps the earlier ones (checkpointing stays on once it is turned on)."""

    def ok(st: _Setup):
        est = _estimate(shape, st, seq_len, dtype_bytes, flash_attention, zero_init)
        return est if _fits(est, gpu_memory_gb, host_memory_gb) else None

    def first_batch_that_fits(st: _Setup):
        for cand in [st] + _smaller_batches(st):
            est = ok(cand)
            if est:
                return cand, est
        return None

    gc = _Setup(
        base.zero_stage,
        base.gpus_per_node,
        base.num_nodes,
        base.offload_optimizer,
        base.offload_params,
        base.per_device_batch,
        base.grad_accum,
        True,
    )
    if not base.gradient_checkpointing:
        est = ok(gc)
        if est:
            return _describe(base, gc, est)
    for cand in _smaller_batches(gc):
        est = ok(cand)
        if est:
            return _describe(base, cand, est)
    if not base.offload_optimizer:
        st = _Setup(
            max(base.zero_stage, 1),
            gc.gpus_per_node,
            gc.num_nodes,
            True,
            gc.offload_params,
            gc.per_device_batch,
            gc.grad_accum,
            True,
        )
        hit = first_batch_that_fits(st)
        if hit:
            return _describe(base, *hit)
    if not base.offload_params:
        st = _Setup(3, gc.gpus_per_node, gc.num_nodes, True, True, gc.per_device_batch, gc.grad_accum, True)
        hit = first_batch_that_fits(st)
        if hit:
            return _describe(base, *hit)
    # More GPUs with ZeRO-3 (model states shrink with the world size), original offload settings.
    for nodes in range(base.num_nodes, MAX_NODES_TRIED + 1):
        start = base.gpus_per_node + 1 if nodes == base.num_nodes else max(base.gpus_per_node, MAX_GPUS_PER_NODE)
        for gpn in range(start, max(base.gpus_per_node, MAX_GPUS_PER_NODE) + 1):
            st = _Setup(
                3, gpn, nodes, base.offload_optimizer, base.offload_params, gc.per_device_batch, gc.grad_accum, True
            )
            hit = first_batch_that_fits(st)
            if hit:
                return _describe(base, *hit)
    return None


def plan(
    model_config: dict[str, Any],
    gpu_family: str = "a100",
    gpu_memory_gb: float | None = None,
    gpus_per_node: int = 1,
    num_nodes: int = 1,
    zero_stage: int = 3,
    offload_optimizer: bool = False,
    offload_params: bool = False,
    precision: str = "bf16",
    per_device_batch: int = 1,
    grad_accum: int = 1,
    seq_len: int = 2048,
    gradient_checkpointing: bool = False,
    packing: bool = False,
    train_records: int = 0,
    epochs: float = 1.0,
    warmup_steps: float = 0,
    eval_steps: float | None = None,
    save_steps: float | None = None,
    max_steps: int = -1,
    host_memory_gb: float | None = None,
    model_name: str | None = None,
    flash_attention: bool = True,
    zero_init: bool = True,
) -> dict[str, Any]:
    """Memory estimate, fit verdict, cheapest fix and step schedule for one training setup.

    ``train_records`` is the number of rows the Trainer iterates (packed rows when ``packing``).
    ``warmup_steps``, ``eval_steps`` and ``save_steps`` below 1 are fractions of the total steps, as in
    the HF Trainer. ``gpu_memory_gb`` defaults to the family's usual card (a100: the 40 GB part).
    """
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be bf16, fp16 or fp32, not {precision!r}")
    if per_device_batch < 1 or grad_accum < 1 or gpus_per_node < 1 or num_nodes < 1:
        raise ValueError("per_device_batch, grad_accum, gpus_per_node and num_nodes must be >= 1")
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0-3, not {zero_stage}")
    family = gpu_family.lower()
    if gpu_memory_gb is None and family != "cpu":
        gpu_memory_gb = DEFAULT_GPU_MEMORY_GB.get(family)
        if gpu_memory_gb is None:
            raise ValueError(f"unknown GPU family {gpu_family!r}: pass gpu_memory_gb")
    shape = model_shape(model_config)
    dtype_bytes = 4 if precision == "fp32" else 2
    world = gpus_per_node * num_nodes
    base = _Setup(
        zero_stage,
        gpus_per_node,
        num_nodes,
        offload_optimizer,
        offload_params,
        per_device_batch,
        grad_accum,
        gradient_checkpointing,
    )
    device_limit = gpu_memory_gb if family != "cpu" else None  # CPU ranks: only the host limit applies
    est = _estimate(shape, base, seq_len, dtype_bytes, flash_attention, zero_init)
    fits = _fits(est, device_limit, host_memory_gb)

    steps_per_epoch, total_steps = hf_schedule(train_records, per_device_batch, world, grad_accum, epochs, max_steps)
    warmup = _resolve_steps(warmup_steps, total_steps) or 0
    ev = _resolve_steps(eval_steps, total_steps)
    sv = _resolve_steps(save_steps, total_steps)

    breakdown = (
        f"model states {est['states']:.1f} GB + activations {est['activations']:.1f} GB"
        f" + overhead {est['overhead']:.1f} GB"
    )
    if fits:
        limit = f" of {USABLE_FRACTION * device_limit:.1f} GB usable" if device_limit else ""
        reason = f"est {est['gpu']:.1f} GB per GPU{limit} ({breakdown})"
        fix = None
    else:
        why = []
        if device_limit is not None and est["gpu"] > USABLE_FRACTION * device_limit:
            why.append(
                f"est {est['gpu']:.1f} GB per GPU exceeds {USABLE_FRACTION * device_limit:.1f} GB usable "
                f"({USABLE_FRACTION:.0%} of {device_limit:g} GB): {breakdown}"
            )
        if host_memory_gb is not None and est["host"] > USABLE_FRACTION * host_memory_gb:
            why.append(
                f"est {est['host']:.1f} GB host memory per node exceeds "
                f"{USABLE_FRACTION * host_memory_gb:.1f} GB usable"
            )
        reason = "; ".join(why)
        fix = find_fix(shape, base, seq_len, dtype_bytes, flash_attention, zero_init, device_limit, host_memory_gb)
        if fix is None:
            reason += (
                "; no fix found (checkpointing, batch 1, full offload and up to "
                f"{MAX_NODES_TRIED * MAX_GPUS_PER_NODE} GPUs all tried)"
            )

    warnings = []
    if total_steps > 0 and warmup >= total_steps / 2:
        warnings.append(f"warmup_steps {warmup} is at least half of the {total_steps} total steps")
    if ev is not None and ev > total_steps:
        warnings.append(f"eval_steps {ev} > total steps {total_steps}: no evaluation during training")
    if sv is not None and sv > total_steps:
        warnings.append(f"save_steps {sv} > total steps {total_steps}: no intermediate checkpoint")
    if precision == "bf16" and family in NO_BF16_FAMILIES:
        warnings.append(f"{family} has no bf16: use precision fp16")
    if offload_params and zero_stage < 3:
        warnings.append("parameter offload needs ZeRO-3; estimated without it")
    if offload_params and not offload_optimizer and zero_stage >= 3:
        warnings.append("parameter offload without optimizer offload: estimated as both offloaded")
    if seq_len > shape.max_positions:
        warnings.append(f"seq_len {seq_len} > the model's max_position_embeddings {shape.max_positions}")
    if precision == "fp32":
        warnings.append("model states are estimated for 16-bit mixed precision (fp32 needs about the same)")
    if train_records <= 0:
        warnings.append("train_records is 0: the schedule is meaningless")

    name = (
        model_name
        or model_config.get("_name_or_path")
        or (f"gpt_neox(h={shape.hidden_size}, layers={shape.num_layers})")
    )
    return {
        "model": name,
        "gpu_family": family,
        "gpu_memory_gb": gpu_memory_gb,
        "gpus_per_node": gpus_per_node,
        "num_nodes": num_nodes,
        "zero_stage": zero_stage,
        "offload_optimizer": offload_optimizer,
        "offload_params": offload_params,
        "precision": precision,
        "per_device_batch": per_device_batch,
        "gradient_accumulation_steps": grad_accum,
        "records_per_step": per_device_batch * world * grad_accum,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "warmup_steps": warmup,
        "eval_steps": ev,
        "save_steps": sv,
        "gradient_checkpointing": gradient_checkpointing,
        "packing": packing,
        "params": shape.total_params,
        "est_gpu_mem_gb": round(est["gpu"], 2),
        "est_host_mem_gb": round(est["host"], 2),
        "est_breakdown_gb": {k: round(est[k], 2) for k in ("states", "activations", "overhead")},
        "fits": fits,
        "reason": reason,
        "fix": fix,
        "warnings": warnings,
    }
