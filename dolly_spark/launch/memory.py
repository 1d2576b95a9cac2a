"""Per-device training memory: model states (DeepSpeed's own estimator) + activations + logits.

The arithmetic behind ``dolly_spark.launch.plan``; see that module's docstring for the model.
Pure Python: torch and deepspeed are imported lazily, and only DeepSpeed's public estimators.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable

log = logging.getLogger(__name__)

GiB = 2**30


# Fixed per-device overhead added to every GPU estimate, in GiB: the CUDA context and kernels
# (~0.5-1 GiB, invisible to torch's allocator), allocator fragmentation, and DeepSpeed's
# reduce/prefetch buckets (not in DeepSpeed's model-state estimate). Calibrated against
# torch.cuda.max_memory_reserved() in benchmarks/train_mfu.py on a GPU.
CUDA_OVERHEAD_GB = 2.0


# Korthikanti et al. (2022), bytes per (token x hidden) per layer for 16-bit activations:
# 34 for the linear/LayerNorm/GELU/dropout-mask part, and 5*a*s/h for the attention scores,
# softmax and its dropout mask (not stored with SDPA/flash attention).
ACT_BYTES_LINEAR = 34


ACT_BYTES_ATTENTION_SCORES = 5


# LM-head logits, bytes per (token x vocab entry): bf16 logits (2, kept in the model output),
# their fp32 upcast in the loss (4, log-softmax output saved for backward) and the fp32 gradient
# of that (4) that coexist at the loss's backward. The vocabulary term dominates for small
# models at long sequence lengths. Calibrate with benchmarks/train_mfu.py on a GPU.
LOGITS_BYTES_PER_TOKEN_VOCAB = 10


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    tie_word_embeddings: bool
    total_params: int
    largest_layer_params: int  # DeepSpeed's definition: most params held directly by one module

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_params(hidden: int, intermediate: int) -> int:
    """One GPTNeoXLayer: two LayerNorms, fused QKV, attention output, the two MLP projections (all with biases)."""
    h, i = hidden, intermediate
    layernorms = 2 * (2 * h)  # input_layernorm, post_attention_layernorm: weight + bias
    qkv = h * 3 * h + 3 * h
    dense = h * h + h
    mlp = h * i + i + i * h + h
    return layernorms + qkv + dense + mlp


def model_shape(config: dict[str, Any]) -> ModelShape:
    """Exact parameter counts of ``GPTNeoXForCausalLM`` built from a GPT-NeoX ``config.json`` dict.

    embed_in (V*h) + layers + final LayerNorm (2h) + embed_out (V*h, no bias; shared with embed_in
    when ``tie_word_embeddings``). Rotary embeddings have no parameters.
    """
    h = int(config["hidden_size"])
    n_layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    inter = int(config.get("intermediate_size") or 4 * h)
    vocab = int(config["vocab_size"])
    tie = bool(config.get("tie_word_embeddings", False))
    embed = vocab * h
    total = embed + n_layers * layer_params(h, inter) + 2 * h + (0 if tie else embed)
    # deepspeed.runtime.zero.stage3.model_to_params: max over modules of their own (non-recursive) params
    largest = max(embed, h * 3 * h + 3 * h, h * h + h, h * inter + inter, inter * h + h, 2 * h)
    return ModelShape(
        h, n_layers, heads, inter, vocab, int(config.get("max_position_embeddings", 2048)), tie, total, largest
    )


def _zero3_states_fallback(
    total_params,
    largest_layer_params,
    num_gpus_per_node=1,
    num_nodes=1,
    cpu_offload=True,
    cpu_offload_params=True,
    zero_init=True,
    additional_buffer_factor=1.5,
):
    """Copy of deepspeed 0.19.8 ``estimate_zero3_model_states_mem_needs`` -> (cpu_bytes, gpu_bytes, largest_layer_bytes)."""
    total_gpus = num_nodes * num_gpus_per_node
    gpus_factor = 1 / num_nodes
    largest_layer_memory = 4 * largest_layer_params
    if cpu_offload:
        if cpu_offload_params:
            gpu_mem = largest_layer_memory
            if zero_init:
                cpu_mem = total_params * 18 * gpus_factor * additional_buffer_factor
            else:
                cpu_mem = total_params * max(4 * num_gpus_per_node, 18 * gpus_factor) * additional_buffer_factor
        else:
            gpu_mem = largest_layer_memory + int(2 * total_params / total_gpus)
            if zero_init:
                cpu_mem = total_params * 16 * gpus_factor * additional_buffer_factor
            else:
                cpu_mem = total_params * max(4 * num_gpus_per_node, 16 * gpus_factor) * additional_buffer_factor
    else:
        gpu_mem = largest_layer_memory + int(18 * total_params / total_gpus)
        if zero_init:
            cpu_mem = largest_layer_params * 4 * num_gpus_per_node * additional_buffer_factor
        else:
            cpu_mem = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu_mem), int(gpu_mem), largest_layer_memory


def _zero2_states_fallback(
    total_params, num_gpus_per_node=1, num_nodes=1, cpu_offload=True, additional_buffer_factor=1.5
):
    """Copy of deepspeed 0.19.8 ``estimate_zero2_model_states_mem_needs`` -> (cpu_bytes, gpu_bytes)."""
    total_gpus = num_nodes * num_gpus_per_node
    if cpu_offload:
        gpu_mem = 2 * total_params
        cpu_mem = total_params * max(4 * total_gpus, 16) * additional_buffer_factor
    else:
        # 2 = 16-bit params; 18 = 16-bit grads 2 + fp32 grads 4 + fp32 params 4 + Adam moments 8
        gpu_mem = 2 * total_params + int(18 * total_params / total_gpus)
        cpu_mem = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu_mem), int(gpu_mem)


_DS_ESTIMATORS: tuple[Callable, Callable] | None | bool = False  # False: not looked up yet


def deepspeed_estimators() -> tuple[Callable, Callable] | None:
    """(zero2, zero3) estimator functions from DeepSpeed itself, or None when it is not installed.

    Importing DeepSpeed logs its accelerator choice to stdout; that is kept off stdout (a
    ``--plan`` prints JSON there) and DeepSpeed's log handlers are pointed back at stdout after.
    """
    global _DS_ESTIMATORS
    if _DS_ESTIMATORS is False:
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs as z3
                from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs as z2
            _DS_ESTIMATORS = (z2, z3)
        except Exception as err:  # not installed, or a broken install: the copied formulas are exact
            log.debug("deepspeed estimator unavailable (%s); using the built-in copy", err)
            _DS_ESTIMATORS = None
        finally:
            _restore_log_streams(buf)
    return _DS_ESTIMATORS  # type: ignore[return-value]


def _restore_log_streams(buf) -> None:
    import sys

    loggers = [logging.getLogger()] + [
        lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for hd in lg.handlers:
            if isinstance(hd, logging.StreamHandler) and getattr(hd, "stream", None) is buf:
                hd.setStream(sys.stdout)


def model_states_gb(
    shape: ModelShape,
    zero_stage: int,
    gpus_per_node: int = 1,
    num_nodes: int = 1,
    offload_optimizer: bool = False,
    offload_params: bool = False,
    zero_init: bool = True,
    additional_buffer_factor: float = 1.5,
    use_deepspeed: bool | None = None,
) -> tuple[float, float]:
    """(GPU GiB per device, host GiB per node) for parameters, gradients and optimizer states.

    ZeRO-3 uses DeepSpeed's ZeRO-3 estimator (parameter offload implies optimizer offload there);
    ZeRO-1 and -2 use its ZeRO-2 estimator (ZeRO-1 keeps full gradients, so this is a slight
    under-estimate for it; parameter offload needs ZeRO-3 and is ignored); ZeRO-0 is the ZeRO-2
    estimate on a single GPU (nothing partitioned), with host memory for every local rank.
    ``zero_init`` is DeepSpeed's: the model is partitioned as it is loaded (the HF Trainer does this
    for ZeRO-3). ``use_deepspeed``: None = when importable, False = the built-in copy.
    """
    return trained_states_gb(
        shape.total_params,
        shape.largest_layer_params,
        zero_stage,
        gpus_per_node,
        num_nodes,
        offload_optimizer,
        offload_params,
        zero_init,
        additional_buffer_factor,
        use_deepspeed,
    )


def trained_states_gb(
    n: int,
    largest_layer_params: int,
    zero_stage: int,
    gpus_per_node: int = 1,
    num_nodes: int = 1,
    offload_optimizer: bool = False,
    offload_params: bool = False,
    zero_init: bool = True,
    additional_buffer_factor: float = 1.5,
    use_deepspeed: bool | None = None,
) -> tuple[float, float]:
    """``model_states_gb`` for ``n`` trained parameters whose largest module holds ``largest_layer_params``."""
    ests = deepspeed_estimators() if use_deepspeed is not False else None
    if use_deepspeed and ests is None:
        raise ImportError("deepspeed is not importable")
    z2, z3 = ests if ests else (_zero2_states_fallback, _zero3_states_fallback)
    buffers = dict(additional_buffer_factor=additional_buffer_factor)
    with contextlib.redirect_stdout(io.StringIO()):
        if zero_stage >= 3:
            offload = offload_optimizer or offload_params
            cpu, gpu, _ = z3(
                n,
                largest_layer_params,
                num_gpus_per_node=gpus_per_node,
                num_nodes=num_nodes,
                cpu_offload=offload,
                cpu_offload_params=offload_params,
                zero_init=zero_init,
                **buffers,
            )
        elif zero_stage >= 1:
            cpu, gpu = z2(
                n, num_gpus_per_node=gpus_per_node, num_nodes=num_nodes, cpu_offload=offload_optimizer, **buffers
            )
        else:
            _, gpu = z2(n, num_gpus_per_node=1, num_nodes=1, cpu_offload=False, **buffers)
            cpu, _ = z2(n, num_gpus_per_node=gpus_per_node, num_nodes=num_nodes, cpu_offload=False, **buffers)
    return gpu / GiB, cpu / GiB


def activation_gb(
    shape: ModelShape,
    micro_batch: int,
    seq_len: int,
    gradient_checkpointing: bool,
    dtype_bytes: int = 2,
    flash_attention: bool = True,
) -> float:
    """Peak activation memory per device in GiB for one micro-batch (no tensor/sequence parallelism)."""
    s, b, h, a = seq_len, micro_batch, shape.hidden_size, shape.num_heads
    scale = dtype_bytes / 2  # Korthikanti's constants are for 16-bit activations
    per_token_hidden = ACT_BYTES_LINEAR + (0 if flash_attention else ACT_BYTES_ATTENTION_SCORES * a * s / h)
    full_layer = s * b * h * per_token_hidden * scale
    if gradient_checkpointing:
        layers = shape.num_layers * 2 * s * b * h * scale + full_layer  # kept inputs + one recomputed layer
    else:
        layers = shape.num_layers * full_layer
    logits = b * s * shape.vocab_size * (LOGITS_BYTES_PER_TOKEN_VOCAB + dtype_bytes - 2)  # fp32 logits: 4, not 2
    return (layers + logits) / GiB


# ---------------------------------------------------------------- LoRA and QLoRA

# GPT-NeoX's linear layers, the modules LoRA adapts by default (peft matches a target name against
# the end of a module's dotted name).
DEFAULT_LORA_TARGETS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
# bitsandbytes NF4: two weights per byte, plus one fp32 absmax per block of 64 weights. Double
# quantisation stores those absmax in 8 bits, with one fp32 constant per 256 of them.
NF4_BYTES_PER_PARAM = 0.5
NF4_BLOCKSIZE = 64
NF4_DOUBLE_QUANT_BLOCKSIZE = 256


def neox_linears(shape: ModelShape) -> list[tuple[str, int, int]]:
    """(module path in a layer, in features, out features) of each linear layer of one GPTNeoXLayer."""
    h, i = shape.hidden_size, shape.intermediate_size
    return [
        ("attention.query_key_value", h, 3 * h),
        ("attention.dense", h, h),
        ("mlp.dense_h_to_4h", h, i),
        ("mlp.dense_4h_to_h", i, h),
    ]


def lora_targets(shape: ModelShape, target_modules=()) -> list[tuple[str, int, int]]:
    """The linears that get adapters; ValueError naming a target that matches none of them."""
    names = tuple(target_modules) or DEFAULT_LORA_TARGETS
    linears = neox_linears(shape)
    if names == ("all-linear",):
        return linears

    def matches(path: str, name: str) -> bool:
        return path == name or path.endswith("." + name)

    unknown = [t for t in names if not any(matches(path, t) for path, _, _ in linears)]
    if unknown:
        known = ", ".join(path.split(".")[-1] for path, _, _ in linears)
        raise ValueError(f"lora target modules {unknown} are not GPT-NeoX linear layers ({known}, or all-linear)")
    return [lin for lin in linears if any(matches(lin[0], t) for t in names)]


def lora_params(shape: ModelShape, r: int, target_modules=()) -> tuple[int, int]:
    """(adapter parameters, most held by one adapter module): r*(in+out) per adapted linear per layer.

    lora_A is Linear(in, r) and lora_B Linear(r, out), neither with a bias (peft's default).
    """
    targets = lora_targets(shape, target_modules)
    total = shape.num_layers * sum(r * (n_in + n_out) for _, n_in, n_out in targets)
    largest = max(r * max(n_in, n_out) for _, n_in, n_out in targets)
    return total, largest


def nf4_bytes_per_param(double_quant: bool = False) -> float:
    if double_quant:
        return NF4_BYTES_PER_PARAM + 1 / NF4_BLOCKSIZE + 4 / (NF4_BLOCKSIZE * NF4_DOUBLE_QUANT_BLOCKSIZE)
    return NF4_BYTES_PER_PARAM + 4 / NF4_BLOCKSIZE


def frozen_base_bytes(shape: ModelShape, method: str, dtype_bytes: int = 2, double_quant: bool = False) -> float:
    """The whole frozen base of a LoRA (16-bit) or QLoRA run.

    QLoRA quantises only the layers' linear weights to NF4; their biases, the LayerNorms, the
    embeddings and the LM head (transformers never quantises the output embedding) stay 16-bit.
    """
    if method == "lora":
        return shape.total_params * dtype_bytes
    quantised = shape.num_layers * sum(n_in * n_out for _, n_in, n_out in neox_linears(shape))
    return quantised * nf4_bytes_per_param(double_quant) + (shape.total_params - quantised) * dtype_bytes


def frozen_base_gb(
    shape: ModelShape,
    method: str,
    zero_stage: int,
    gpus_per_node: int = 1,
    num_nodes: int = 1,
    offload_params: bool = False,
    dtype_bytes: int = 2,
    zero_init: bool = True,
    double_quant: bool = False,
    additional_buffer_factor: float = 1.5,
) -> tuple[float, float]:
    """(GPU GiB per device, host GiB per node) of the frozen base: no gradients, no optimizer states.

    Below ZeRO-3 every GPU holds the whole base (each local rank loads its 16-bit copy on the host
    first; QLoRA streams tensors to the GPU and quantises them there). ZeRO-3 (LoRA only) partitions
    it over the GPUs and gathers one module at a time, in host memory with parameter offload.
    QLoRA also holds one linear weight dequantised to 16 bits while it runs.
    """
    whole = frozen_base_bytes(shape, method, dtype_bytes, double_quant)
    gathered = dtype_bytes * shape.largest_layer_params
    if method == "qlora":
        largest_linear = max(n_in * n_out for _, n_in, n_out in neox_linears(shape))
        gpu, host = whole + dtype_bytes * largest_linear, gathered * gpus_per_node
    elif zero_stage >= 3 and offload_params:
        gpu, host = gathered, whole / num_nodes * additional_buffer_factor
    elif zero_stage >= 3:
        gpu = gathered + whole / (gpus_per_node * num_nodes)
        host = gathered * gpus_per_node * additional_buffer_factor if zero_init else whole * gpus_per_node
    else:
        gpu, host = whole, whole * gpus_per_node
    return gpu / GiB, host / GiB


def parameter_counts(shape: ModelShape, method: str, r: int = 16, target_modules=()) -> dict[str, Any]:
    """The method, what it trains and the whole model's size (peft counts the adapters in its total)."""
    if method == "full":
        return {
            "method": method,
            "trainable_params": shape.total_params,
            "total_params": shape.total_params,
            "lora": None,
        }
    adapters, _ = lora_params(shape, r, target_modules)
    targets = [path.split(".")[-1] for path, _, _ in lora_targets(shape, target_modules)]
    return {
        "method": method,
        "trainable_params": adapters,
        "total_params": shape.total_params + adapters,
        "lora": {"r": r, "target_modules": targets},
    }


def training_memory_gb(
    shape: ModelShape,
    method: str,
    placement: tuple[int, int, int, bool, bool],
    batch: tuple[int, int, bool],
    lora: tuple[int, tuple[str, ...]] = (16, ()),
    dtype_bytes: int = 2,
    flash_attention: bool = True,
    zero_init: bool = True,
    double_quant: bool = False,
) -> dict[str, float]:
    """GPU GiB per device (``gpu``) and host GiB per node (``host``) of one training setup, with its parts.

    ``placement``: (ZeRO stage, GPUs per node, nodes, offload optimizer, offload parameters);
    ``batch``: (micro-batch, sequence length, gradient checkpointing); ``lora``: (r, target modules).
    Full fine-tuning trains every parameter (DeepSpeed's estimate); LoRA and QLoRA add a frozen base
    (no gradients, no optimizer states) and train only the adapters. LoRA stores no weight gradients
    for the base but the same activations, so the activation model is the same for every method.
    """
    stage, gpn, nodes, offload_optimizer, offload_params = placement
    where = (stage, gpn, nodes, offload_optimizer, offload_params)
    if method == "full":
        base, base_host = 0.0, 0.0
        trained, host = model_states_gb(shape, *where, zero_init=zero_init)
    else:
        base, base_host = frozen_base_gb(
            shape, method, stage, gpn, nodes, offload_params, dtype_bytes, zero_init, double_quant
        )
        n, largest = lora_params(shape, *lora)
        trained, host = trained_states_gb(n, largest, *where, zero_init=zero_init)
    acts = activation_gb(shape, *batch, dtype_bytes, flash_attention)
    return {
        "gpu": base + trained + acts + CUDA_OVERHEAD_GB,
        "host": base_host + host,
        "states": base + trained,
        "frozen_base": base,
        "trainable_states": trained,
        "activations": acts,
        "overhead": CUDA_OVERHEAD_GB,
    }
