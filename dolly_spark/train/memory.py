"""Per-device training memory: model states (DeepSpeed's own estimator) + activations + logits.

The arithmetic behind ``dolly_spark.train.plan``; see that module's docstring for the model.
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
    ests = deepspeed_estimators() if use_deepspeed is not False else None
    if use_deepspeed and ests is None:
        raise ImportError("deepspeed is not importable")
    z2, z3 = ests if ests else (_zero2_states_fallback, _zero3_states_fallback)
    n = shape.total_params
    with contextlib.redirect_stdout(io.StringIO()):
        if zero_stage >= 3:
            offload = offload_optimizer or offload_params
            cpu, gpu, _ = z3(
                n,
                shape.largest_layer_params,
                num_gpus_per_node=gpus_per_node,
                num_nodes=num_nodes,
                cpu_offload=offload,
                cpu_offload_params=offload_params,
                zero_init=zero_init,
                additional_buffer_factor=additional_buffer_factor,
            )
        elif zero_stage >= 1:
            cpu, gpu = z2(
                n,
                num_gpus_per_node=gpus_per_node,
                num_nodes=num_nodes,
                cpu_offload=offload_optimizer,
                additional_buffer_factor=additional_buffer_factor,
            )
        else:
            _, gpu = z2(
                n,
                num_gpus_per_node=1,
                num_nodes=1,
                cpu_offload=False,
                additional_buffer_factor=additional_buffer_factor,
            )
            cpu, _ = z2(
                n,
                num_gpus_per_node=gpus_per_node,
                num_nodes=num_nodes,
                cpu_offload=False,
                additional_buffer_factor=additional_buffer_factor,
            )
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
