"""Training memory and schedule planner (behind ``dolly-spark train --plan``).

Answers "will this run fit, and how many optimizer steps will it take?" before a cluster is
started. Runs on the driver, next to the launcher. Pure Python: no Spark, and torch/deepspeed are
only imported lazily (DeepSpeed's own estimator is used when it is installed, the same arithmetic otherwise).

Per-device GPU memory = model states + activations + a fixed overhead:

* **Model states** (parameters, gradients, optimizer states) of what trains: DeepSpeed's public
  estimators, ``deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs`` and
  ``deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs`` (16-bit mixed
  precision with Adam: 18 bytes per parameter before partitioning), for every parameter (full)
  or for the LoRA adapters only, r*(in+out) per adapted linear. Their formulas are copied in
  ``launch/memory.py`` for machines without DeepSpeed; a test checks both agree.
* **Frozen base** (lora, qlora): 2 bytes per parameter in 16 bits; qlora's NF4 linear weights
  0.5 bytes plus one fp32 absmax per 64 (the rest stays 16-bit). Partitioned only under ZeRO-3.
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

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any

from dolly_spark.launch.memory import ModelShape, model_shape, parameter_counts, training_memory_gb
from dolly_spark.train.config import METHODS
from dolly_spark.train.hardware import QLORA_ZERO3, zero_stage_for_method

# Fraction of the card's memory a plan may use: the rest absorbs estimator error and spikes.
USABLE_FRACTION = 0.95
# Memory of each family's usual card when the caller gives none; a100 defaults to the 40 GB part.
DEFAULT_GPU_MEMORY_GB = {"a100": 40.0, "h100": 80.0, "h200": 141.0, "a10": 24.0, "v100": 16.0, "t4": 16.0}
NO_BF16_FAMILIES = ("v100", "t4")
MAX_GPUS_PER_NODE = 8
MAX_NODES_TRIED = 64


@dataclass(frozen=True)
class PlanRequest:
    """One training setup to plan; every stage of ``plan`` reads it.

    ``train_records`` is the number of rows the Trainer iterates (packed rows when ``packing``).
    ``zero_stage`` None is the method's usual stage (ZeRO-3 for full, ZeRO-2 for lora and qlora).
    ``warmup_steps``, ``eval_steps`` and ``save_steps`` below 1 are fractions of the total steps, as in
    the HF Trainer. ``gpu_memory_gb`` defaults to the family's usual card (a100: the 40 GB part).
    """

    model_config: dict[str, Any]
    gpu_family: str = "a100"
    gpu_memory_gb: float | None = None
    gpus_per_node: int = 1
    num_nodes: int = 1
    zero_stage: int | None = None
    offload_optimizer: bool = False
    offload_params: bool = False
    precision: str = "bf16"
    per_device_batch: int = 1
    grad_accum: int = 1
    seq_len: int = 2048
    gradient_checkpointing: bool = False
    packing: bool = False
    train_records: int = 0
    epochs: float = 1.0
    warmup_steps: float = 0
    eval_steps: float | None = None
    save_steps: float | None = None
    max_steps: int = -1
    host_memory_gb: float | None = None
    model_name: str | None = None
    flash_attention: bool = True
    zero_init: bool = True
    method: str = "full"
    lora_r: int = 16
    lora_target_modules: tuple[str, ...] = ()
    double_quant: bool = False  # QLoRA's bnb_4bit_use_double_quant

    @property
    def world(self) -> int:
        return self.gpus_per_node * self.num_nodes

    @property
    def dtype_bytes(self) -> int:
        return 4 if self.precision == "fp32" else 2

    @property
    def device_limit(self) -> float | None:
        """GPU memory a plan must fit in; CPU ranks have only the host limit."""
        return self.gpu_memory_gb if self.gpu_family != "cpu" else None


@dataclass(frozen=True)
class _Setup:
    """The knobs a fix may turn."""

    zero_stage: int
    gpus_per_node: int
    num_nodes: int
    offload_optimizer: bool
    offload_params: bool
    per_device_batch: int
    grad_accum: int
    gradient_checkpointing: bool
    method: str = "full"

    @property
    def world(self) -> int:
        return self.gpus_per_node * self.num_nodes


@dataclass(frozen=True)
class Verdict:
    est: dict[str, float]
    fits: bool
    reason: str
    fix: str | None


@dataclass(frozen=True)
class Schedule:
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    eval_steps: int | None
    save_steps: int | None


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


# ---------------------------------------------------------------- memory of one setup


def _estimate(shape: ModelShape, st: _Setup, req: PlanRequest) -> dict[str, float]:
    return training_memory_gb(
        shape,
        st.method,
        (st.zero_stage, st.gpus_per_node, st.num_nodes, st.offload_optimizer, st.offload_params),
        (st.per_device_batch, req.seq_len, st.gradient_checkpointing),
        (req.lora_r, req.lora_target_modules),
        dtype_bytes=req.dtype_bytes,
        flash_attention=req.flash_attention,
        zero_init=req.zero_init,
        double_quant=req.double_quant,
    )


def _fits(est: dict[str, float], req: PlanRequest) -> bool:
    gpu_ok = req.device_limit is None or est["gpu"] <= USABLE_FRACTION * req.device_limit
    host_ok = req.host_memory_gb is None or est["host"] <= USABLE_FRACTION * req.host_memory_gb
    return gpu_ok and host_ok


# ---------------------------------------------------------------- the cheapest fix


def _describe(base: _Setup, st: _Setup, est: dict[str, float]) -> str:
    parts = []
    if st.gradient_checkpointing and not base.gradient_checkpointing:
        parts.append("enable gradient checkpointing")
    if st.method != base.method:
        usual = zero_stage_for_method(st.method, base.zero_stage)
        stage = f" under ZeRO-{st.zero_stage}" if st.zero_stage != usual else ""
        parts.append(
            f"switch to --method {st.method}" + (" with a 4-bit NF4 base" if st.method == "qlora" else "") + stage
        )
    elif st.zero_stage != base.zero_stage:
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
        dataclasses.replace(st, per_device_batch=b, grad_accum=per_rank // b)
        for b in range(st.per_device_batch - 1, 0, -1)
        if per_rank % b == 0
    ]


def _method_setups(base: _Setup, gc: _Setup) -> list[_Setup]:
    """Cheaper methods on the same GPUs, in order: LoRA at its usual stage, LoRA under ZeRO-3 (the
    16-bit base partitioned over several GPUs), QLoRA. Each is set up as ``hardware.for_method`` sets
    up the family's config (no offload: the adapters' optimizer states are small)."""

    def adapter(method: str, stage: int) -> _Setup:
        return dataclasses.replace(gc, method=method, zero_stage=stage, offload_optimizer=False, offload_params=False)

    out = []
    if base.method == "full":
        out.append(adapter("lora", zero_stage_for_method("lora", base.zero_stage)))
    lora_partitioned = base.method == "lora" and base.zero_stage >= 3
    if base.method != "qlora" and base.world > 1 and not lora_partitioned:
        out.append(adapter("lora", 3))
    if base.method != "qlora":
        out.append(adapter("qlora", zero_stage_for_method("qlora", base.zero_stage)))
    return out


def _offload_setups(base: _Setup, gc: _Setup) -> list[_Setup]:
    """Optimizer offload, then optimizer and parameter offload (ZeRO-3: not for QLoRA's 4-bit base)."""
    out = []
    if not base.offload_optimizer:
        out.append(dataclasses.replace(gc, zero_stage=max(base.zero_stage, 1), offload_optimizer=True))
    if not base.offload_params and base.method != "qlora":
        out.append(dataclasses.replace(gc, zero_stage=3, offload_optimizer=True, offload_params=True))
    return out


def _more_gpus(base: _Setup, gc: _Setup):
    """More GPUs (ZeRO-3; QLoRA at its own stage), the original offload settings: model states shrink with them."""
    top = max(base.gpus_per_node, MAX_GPUS_PER_NODE)
    stage = base.zero_stage if base.method == "qlora" else 3
    for nodes in range(base.num_nodes, MAX_NODES_TRIED + 1):
        start = base.gpus_per_node + 1 if nodes == base.num_nodes else top
        for gpn in range(start, top + 1):
            yield dataclasses.replace(
                gc,
                zero_stage=stage,
                gpus_per_node=gpn,
                num_nodes=nodes,
                offload_optimizer=base.offload_optimizer,
                offload_params=base.offload_params,
            )


def _first_fit(shape: ModelShape, base: _Setup, req: PlanRequest, switch_method: bool):
    """(setup, estimate) of the first change that fits, or None; see ``find_fix`` for the order."""

    def ok(st: _Setup):
        est = _estimate(shape, st, req)
        return (st, est) if _fits(est, req) else None

    gc = dataclasses.replace(base, gradient_checkpointing=True)
    same_hardware = [] if base.gradient_checkpointing else [gc]
    for st in same_hardware + _smaller_batches(gc):
        if hit := ok(st):
            return hit
    methods = [st for st in _method_setups(base, gc) if switch_method or st.method == base.method]
    for st in itertools.chain(methods, _offload_setups(base, gc), _more_gpus(base, gc)):
        for cand in [st] + _smaller_batches(st):
            if hit := ok(cand):
                return hit
    return None


def find_fix(shape: ModelShape, base: _Setup, req: PlanRequest) -> str | None:
    """The cheapest change that fits. Cheapest means: keep the hardware, and of the changes on it, the
    one that costs least training time, then the least change to the result. In that order:
    gradient checkpointing, a smaller per-device batch with more accumulation (same records per
    step), a cheaper method (LoRA, LoRA under ZeRO-3 on several GPUs, QLoRA: faster than full
    fine-tuning, unlike offload), optimizer offload, optimizer + parameter offload (every weight
    crosses PCIe each step), then more GPUs. Each step keeps the earlier ones (checkpointing stays on).
    When the fix changes the method, the cheapest fix that keeps it follows."""
    hit = _first_fit(shape, base, req, switch_method=True)
    if hit is None:
        return None
    fix = _describe(base, *hit)
    if hit[0].method != base.method:
        keep = _first_fit(shape, base, req, switch_method=False)
        if keep:
            fix += f"; or, keeping --method {base.method}: {_describe(base, *keep)}"
    return fix


# ---------------------------------------------------------------- the plan, in stages


def validated(req: PlanRequest) -> PlanRequest:
    """The request with its family lower-cased and the card's memory filled in; ValueError if invalid."""
    if req.precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be bf16, fp16 or fp32, not {req.precision!r}")
    if req.per_device_batch < 1 or req.grad_accum < 1 or req.gpus_per_node < 1 or req.num_nodes < 1:
        raise ValueError("per_device_batch, grad_accum, gpus_per_node and num_nodes must be >= 1")
    if req.method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {req.method!r}")
    stage = zero_stage_for_method(req.method, 3) if req.zero_stage is None else req.zero_stage
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0-3, not {stage}")
    if req.method == "qlora" and stage == 3:
        raise ValueError(QLORA_ZERO3)
    if req.lora_r < 1:
        raise ValueError(f"lora_r must be >= 1, not {req.lora_r}")
    family = req.gpu_family.lower()
    memory = req.gpu_memory_gb
    if memory is None and family != "cpu":
        memory = DEFAULT_GPU_MEMORY_GB.get(family)
        if memory is None:
            raise ValueError(f"unknown GPU family {req.gpu_family!r}: pass gpu_memory_gb")
    targets = tuple(req.lora_target_modules)
    return dataclasses.replace(
        req, gpu_family=family, gpu_memory_gb=memory, zero_stage=stage, lora_target_modules=targets
    )


def _base_setup(req: PlanRequest) -> _Setup:
    return _Setup(
        req.zero_stage,
        req.gpus_per_node,
        req.num_nodes,
        req.offload_optimizer,
        req.offload_params,
        req.per_device_batch,
        req.grad_accum,
        req.gradient_checkpointing,
        req.method,
    )


def fit_verdict(req: PlanRequest, shape: ModelShape) -> Verdict:
    """Memory estimate, whether it fits, why, and (when it does not) the cheapest fix."""
    base = _base_setup(req)
    est = _estimate(shape, base, req)
    limit = req.device_limit
    states = (
        f"model states {est['states']:.1f} GB"
        if req.method == "full"
        else f"frozen base {est['frozen_base']:.1f} GB + trainable states {est['trainable_states']:.1f} GB"
    )
    breakdown = f"{states} + activations {est['activations']:.1f} GB + overhead {est['overhead']:.1f} GB"
    if _fits(est, req):
        usable = f" of {USABLE_FRACTION * limit:.1f} GB usable" if limit else ""
        return Verdict(est, True, f"est {est['gpu']:.1f} GB per GPU{usable} ({breakdown})", None)
    why = []
    if limit is not None and est["gpu"] > USABLE_FRACTION * limit:
        why.append(
            f"est {est['gpu']:.1f} GB per GPU exceeds {USABLE_FRACTION * limit:.1f} GB usable "
            f"({USABLE_FRACTION:.0%} of {limit:g} GB): {breakdown}"
        )
    host = req.host_memory_gb
    if host is not None and est["host"] > USABLE_FRACTION * host:
        why.append(f"est {est['host']:.1f} GB host memory per node exceeds {USABLE_FRACTION * host:.1f} GB usable")
    reason = "; ".join(why)
    fix = find_fix(shape, base, req)
    if fix is None:
        reason += (
            "; no fix found (checkpointing, batch 1, lora and qlora, full offload and up to "
            f"{MAX_NODES_TRIED * MAX_GPUS_PER_NODE} GPUs all tried)"
        )
    return Verdict(est, False, reason, fix)


def step_schedule(req: PlanRequest) -> Schedule:
    per_epoch, total = hf_schedule(
        req.train_records, req.per_device_batch, req.world, req.grad_accum, req.epochs, req.max_steps
    )
    return Schedule(
        per_epoch,
        total,
        _resolve_steps(req.warmup_steps, total) or 0,
        _resolve_steps(req.eval_steps, total),
        _resolve_steps(req.save_steps, total),
    )


def plan_warnings(req: PlanRequest, shape: ModelShape, sched: Schedule) -> list[str]:
    total = sched.total_steps
    warnings = []
    if total > 0 and sched.warmup_steps >= total / 2:
        warnings.append(f"warmup_steps {sched.warmup_steps} is at least half of the {total} total steps")
    if sched.eval_steps is not None and sched.eval_steps > total:
        warnings.append(f"eval_steps {sched.eval_steps} > total steps {total}: no evaluation during training")
    if sched.save_steps is not None and sched.save_steps > total:
        warnings.append(f"save_steps {sched.save_steps} > total steps {total}: no intermediate checkpoint")
    if req.precision == "bf16" and req.gpu_family in NO_BF16_FAMILIES:
        warnings.append(f"{req.gpu_family} has no bf16: use precision fp16")
    if req.offload_params and req.zero_stage < 3:
        warnings.append("parameter offload needs ZeRO-3; estimated without it")
    if req.offload_params and not req.offload_optimizer and req.zero_stage >= 3:
        warnings.append("parameter offload without optimizer offload: estimated as both offloaded")
    if req.seq_len > shape.max_positions:
        warnings.append(f"seq_len {req.seq_len} > the model's max_position_embeddings {shape.max_positions}")
    if req.precision == "fp32":
        warnings.append("model states are estimated for 16-bit mixed precision (fp32 needs about the same)")
    if req.train_records <= 0:
        warnings.append("train_records is 0: the schedule is meaningless")
    return warnings


def plan_result(
    req: PlanRequest, shape: ModelShape, verdict: Verdict, sched: Schedule, warnings: list[str]
) -> dict[str, Any]:
    """The plan as the JSON ``train --plan`` prints."""
    name = (
        req.model_name
        or req.model_config.get("_name_or_path")
        or (f"gpt_neox(h={shape.hidden_size}, layers={shape.num_layers})")
    )
    est = verdict.est
    return {
        "model": name,
        "gpu_family": req.gpu_family,
        "gpu_memory_gb": req.gpu_memory_gb,
        "gpus_per_node": req.gpus_per_node,
        "num_nodes": req.num_nodes,
        "zero_stage": req.zero_stage,
        "offload_optimizer": req.offload_optimizer,
        "offload_params": req.offload_params,
        "precision": req.precision,
        "per_device_batch": req.per_device_batch,
        "gradient_accumulation_steps": req.grad_accum,
        "records_per_step": req.per_device_batch * req.world * req.grad_accum,
        "steps_per_epoch": sched.steps_per_epoch,
        "total_steps": sched.total_steps,
        "warmup_steps": sched.warmup_steps,
        "eval_steps": sched.eval_steps,
        "save_steps": sched.save_steps,
        "gradient_checkpointing": req.gradient_checkpointing,
        "packing": req.packing,
        "params": shape.total_params,
        **parameter_counts(shape, req.method, req.lora_r, req.lora_target_modules),
        "est_gpu_mem_gb": round(est["gpu"], 2),
        "est_host_mem_gb": round(est["host"], 2),
        "est_breakdown_gb": {
            k: round(est[k], 2) for k in ("frozen_base", "trainable_states", "states", "activations", "overhead")
        },
        "fits": verdict.fits,
        "reason": verdict.reason,
        "fix": verdict.fix,
        "warnings": warnings,
    }


def plan(model_config: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """Memory estimate, fit verdict, cheapest fix and step schedule for one training setup.

    ``settings`` are the fields of ``PlanRequest`` (GPU family and memory, devices, ZeRO stage,
    offload, precision, batch, sequence length, records, epochs, ...).
    """
    req = validated(PlanRequest(model_config, **settings))
    shape = model_shape(req.model_config)
    sched = step_schedule(req)
    return plan_result(req, shape, fit_verdict(req, shape), sched, plan_warnings(req, shape, sched))
