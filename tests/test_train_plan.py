"""dolly_spark.launch.plan and .memory: parameter counts, DeepSpeed's estimator, activations, HF step arithmetic, fixes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dolly_spark.launch import memory as M
from dolly_spark.launch import plan as P

SHARED = Path(os.environ.get("DOLLY_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PYTHIA_12B = {  # shared/data/models/pythia-12b/config.json (inlined: the tests must not depend on shared/ for this)
    "hidden_size": 5120,
    "intermediate_size": 20480,
    "max_position_embeddings": 2048,
    "num_attention_heads": 40,
    "num_hidden_layers": 36,
    "tie_word_embeddings": False,
    "vocab_size": 50688,
    "rotary_pct": 0.25,
}
PYTHIA_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "max_position_embeddings": 2048,
    "num_attention_heads": 8,
    "num_hidden_layers": 16,
    "tie_word_embeddings": False,
    "vocab_size": 50304,
    "rotary_pct": 0.25,
}
TARGET = dict(
    gpu_family="a100",
    gpus_per_node=8,
    num_nodes=1,
    zero_stage=3,
    per_device_batch=6,
    grad_accum=1,
    seq_len=2048,
    train_records=13964,
    epochs=1,
    model_name="pythia-12b",
)

TINY_CONFIGS = [
    dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        vocab_size=1000,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    ),
    dict(
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=6,
        intermediate_size=100,
        vocab_size=50,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    ),  # MLP is the largest module
    dict(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=128,
        vocab_size=777,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    ),
]


_FRESH_COUNTS = """
import json, sys
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
model = GPTNeoXForCausalLM(GPTNeoXConfig(**json.loads(sys.argv[1])))
total = sum(dict((p.data_ptr(), p.numel()) for p in model.parameters()).values())
largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
try:
    from deepspeed.runtime.zero.stage3 import model_to_params
    ds = list(model_to_params(model))
except ImportError:
    ds = None
print(json.dumps([[total, largest], ds]))
"""


@pytest.mark.parametrize("cfg", TINY_CONFIGS)
def test_param_counts_match_transformers(cfg):
    # A fresh interpreter: in-process, an earlier test's DeepSpeed/transformers global state can
    # change how a new model ties its embeddings, and the count would measure that, not the model.
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _FRESH_COUNTS, json.dumps(cfg)], capture_output=True, text=True, check=True, timeout=300
    )
    counts, ds_counts = json.loads(out.stdout.strip().splitlines()[-1])
    shape = M.model_shape(cfg)
    assert [shape.total_params, shape.largest_layer_params] == counts
    if ds_counts is not None:
        assert [shape.total_params, shape.largest_layer_params] == ds_counts


def test_pythia_totals():
    assert M.model_shape(PYTHIA_12B).total_params == 11_846_072_320
    assert M.model_shape(PYTHIA_12B).largest_layer_params == 50688 * 5120  # embed_in / embed_out
    assert M.model_shape(PYTHIA_1B).total_params == 1_011_781_632
    cfg = SHARED / "models" / "pythia-12b" / "config.json"
    if cfg.exists():
        assert M.model_shape(json.loads(cfg.read_text())).total_params == 11_846_072_320


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("gpus,nodes", [(1, 1), (8, 1), (4, 3)])
@pytest.mark.parametrize("opt,params", [(False, False), (True, False), (True, True), (False, True)])
@pytest.mark.parametrize("zero_init", [True, False])
def test_deepspeed_estimator_and_fallback_agree(stage, gpus, nodes, opt, params, zero_init):
    pytest.importorskip("deepspeed")
    shape = M.model_shape(PYTHIA_12B)
    ds = M.model_states_gb(shape, stage, gpus, nodes, opt, params, zero_init=zero_init, use_deepspeed=True)
    ours = M.model_states_gb(shape, stage, gpus, nodes, opt, params, zero_init=zero_init, use_deepspeed=False)
    assert ds == ours


def test_estimator_matches_platform_notes_for_pythia_12b():
    """PLATFORM-NOTES: ZeRO-3 on 8 GPUs, 25.8 GB per GPU and 11.6 GB host (partitioned at load),
    3.7 GB per GPU with the optimizer offloaded."""
    shape = M.model_shape(PYTHIA_12B)
    gpu, host = M.model_states_gb(shape, 3, 8, 1, use_deepspeed=False)
    assert (round(gpu, 1), round(host, 1)) == (25.8, 11.6)
    gpu, _ = M.model_states_gb(shape, 3, 8, 1, offload_optimizer=True, use_deepspeed=False)
    assert round(gpu, 1) == 3.7


def test_deepspeed_import_stays_off_stdout_and_keeps_its_logger():
    """DeepSpeed's import-time log line would corrupt a JSON --plan on stdout; its later logs must not vanish."""
    pytest.importorskip("deepspeed")
    code = (
        "import dolly_spark.launch.memory as m; assert m.deepspeed_estimators() is not None; "
        "from deepspeed.utils import logger; logger.warning('MARK-AFTER')"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, env=env, timeout=120, capture_output=True, text=True
    ).stdout
    assert "MARK-AFTER" in out
    assert out.strip().count("\n") == 0, out


def test_activation_formula():
    shape = M.model_shape(PYTHIA_1B)
    s, b, h, a, L, V = 2048, 4, 2048, 8, 16, 50304
    logits = b * s * V * M.LOGITS_BYTES_PER_TOKEN_VOCAB
    full = M.activation_gb(shape, b, s, False) * M.GiB
    assert full == pytest.approx(L * s * b * h * 34 + logits)
    eager = M.activation_gb(shape, b, s, False, flash_attention=False) * M.GiB
    assert eager == pytest.approx(L * s * b * h * (34 + 5 * a * s / h) + logits)
    ckpt = M.activation_gb(shape, b, s, True) * M.GiB
    assert ckpt == pytest.approx(L * 2 * s * b * h + s * b * h * 34 + logits)
    assert ckpt < full < eager
    assert M.activation_gb(shape, 2 * b, s, True) == pytest.approx(2 * M.activation_gb(shape, b, s, True))


def _accelerate_len(records, batch, world) -> int:
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    sampler = BatchSampler(SequentialSampler(range(records)), batch, drop_last=False)
    return len(BatchSamplerShard(sampler, num_processes=world, process_index=0, split_batches=False, even_batches=True))


@pytest.mark.parametrize(
    "records,batch,world,accum",
    [(13964, 6, 8, 1), (13964, 6, 8, 3), (100, 3, 4, 2), (7, 4, 2, 5), (1000, 1, 1, 1), (999, 8, 3, 4)],
)
def test_schedule_matches_hf_and_accelerate(records, batch, world, accum):
    pytest.importorskip("accelerate")
    len_dl = _accelerate_len(records, batch, world)
    per_epoch = max(len_dl // accum + int(len_dl % accum > 0), 1)  # Trainer.set_initial_training_values
    assert P.hf_schedule(records, batch, world, accum, 1) == (per_epoch, per_epoch)
    assert P.hf_schedule(records, batch, world, accum, 2.5)[1] == math.ceil(2.5 * per_epoch)
    assert P.hf_schedule(records, batch, world, accum, 3, max_steps=17)[1] == 17


def test_target_8x_a100_80gb_fits():
    r = P.plan(PYTHIA_12B, gpu_memory_gb=80, gradient_checkpointing=True, **TARGET)
    assert r["records_per_step"] == 48
    assert r["steps_per_epoch"] == r["total_steps"] == math.ceil(13964 / 48) == 291
    assert r["fits"] is True and r["fix"] is None
    assert r["params"] == 11_846_072_320
    assert 30 < r["est_gpu_mem_gb"] < 0.95 * 80
    expected_keys = {
        "model",
        "gpu_family",
        "gpu_memory_gb",
        "gpus_per_node",
        "num_nodes",
        "zero_stage",
        "offload_optimizer",
        "offload_params",
        "precision",
        "per_device_batch",
        "gradient_accumulation_steps",
        "records_per_step",
        "steps_per_epoch",
        "total_steps",
        "warmup_steps",
        "eval_steps",
        "save_steps",
        "gradient_checkpointing",
        "packing",
        "params",
        "method",
        "trainable_params",
        "total_params",
        "est_gpu_mem_gb",
        "est_host_mem_gb",
        "fits",
        "reason",
        "fix",
        "warnings",
    }
    assert expected_keys <= set(r)
    json.dumps(r)


def test_target_8x_a100_40gb_without_checkpointing_does_not_fit():
    r = P.plan(PYTHIA_12B, gpu_memory_gb=40, gradient_checkpointing=False, **TARGET)
    assert r["fits"] is False
    assert "exceeds" in r["reason"] and "activations" in r["reason"]
    assert r["fix"].startswith("enable gradient checkpointing")


def test_target_single_a10_fits_only_with_qlora_or_full_offload():
    r = P.plan(
        PYTHIA_12B,
        gpu_family="a10",
        gpu_memory_gb=24,
        gpus_per_node=1,
        zero_stage=3,
        per_device_batch=6,
        seq_len=2048,
        gradient_checkpointing=True,
        train_records=13964,
    )
    assert r["fits"] is False
    # Same hardware first: a 4-bit base beats moving every weight over PCIe each step ...
    cheapest, keeping = r["fix"].split("; or, keeping --method full: ")
    assert cheapest.startswith("switch to --method qlora with a 4-bit NF4 base (est ")
    # ... and the fix that keeps full fine-tuning is still named.
    assert keeping.startswith("offload optimizer and parameters to CPU")


@pytest.mark.parametrize(
    "kwargs,prefix,keeping",
    [
        # 8x80GB, checkpointing off: turning it on is enough
        (
            dict(gpu_memory_gb=80, gpus_per_node=8, per_device_batch=6, gradient_checkpointing=False),
            "enable gradient checkpointing (",
            None,
        ),
        # 8x40GB, checkpointing already on: smaller batch, more accumulation, same records per step
        (
            dict(gpu_memory_gb=40, gpus_per_node=8, per_device_batch=6, gradient_checkpointing=True),
            "per-device batch 3 with gradient accumulation 2, same records per step",
            None,
        ),
        # 8x40GB, checkpointing off: both
        (
            dict(gpu_memory_gb=40, gpus_per_node=8, per_device_batch=6, gradient_checkpointing=False),
            "enable gradient checkpointing and per-device batch 3",
            None,
        ),
        # 2x80GB: model states alone are too big; LoRA fits on the same GPUs, so does optimizer offload
        (
            dict(gpu_memory_gb=80, gpus_per_node=2, per_device_batch=2, gradient_checkpointing=True),
            "switch to --method lora (est ",
            "offload the optimizer to CPU",
        ),
        # 1x24GB: a 16-bit base alone does not fit, a 4-bit one does; keeping full: offload all of it
        (
            dict(gpu_family="a10", gpu_memory_gb=24, gpus_per_node=1, per_device_batch=1, gradient_checkpointing=True),
            "switch to --method qlora",
            "offload optimizer and parameters to CPU",
        ),
        # ... and with a 128 GB host neither offload fits: full fine-tuning needs more GPUs
        (
            dict(
                gpu_family="a10",
                gpu_memory_gb=24,
                gpus_per_node=1,
                per_device_batch=1,
                gradient_checkpointing=True,
                host_memory_gb=128,
            ),
            "switch to --method qlora",
            "use ",
        ),
        # 8x24GB: LoRA's usual ZeRO-2 keeps a whole 16-bit base per GPU, ZeRO-3 partitions it: before QLoRA
        (
            dict(gpu_family="a10", gpu_memory_gb=24, gpus_per_node=8, per_device_batch=1, gradient_checkpointing=True),
            "switch to --method lora under ZeRO-3 (est ",
            "offload the optimizer to CPU",
        ),
    ],
)
def test_fix_order(kwargs, prefix, keeping):
    args = dict(TARGET, **kwargs)
    r = P.plan(PYTHIA_12B, **args)
    assert r["fits"] is False
    cheapest, _, alternative = r["fix"].partition("; or, keeping --method full: ")
    assert cheapest.startswith(prefix), r["fix"]
    assert "(est " in cheapest
    # A fix that changes the method also names the cheapest one that keeps it.
    assert alternative.startswith(keeping) if keeping else alternative == "", r["fix"]


def test_fix_is_itself_a_fit():
    """The fix for 8x40GB (checkpointing + batch 3 x accumulation 2) is a plan that fits."""
    r = P.plan(
        PYTHIA_12B, **dict(TARGET, gpu_memory_gb=40, per_device_batch=3, grad_accum=2, gradient_checkpointing=True)
    )
    assert r["fits"] is True and r["records_per_step"] == 48


def test_warnings():
    r = P.plan(
        PYTHIA_1B,
        gpu_family="h100",
        gpu_memory_gb=80,
        gpus_per_node=8,
        per_device_batch=8,
        train_records=640,
        epochs=1,
        warmup_steps=5,
        eval_steps=50,
        save_steps=20,
    )
    assert r["total_steps"] == 10 and r["fits"] is True
    text = " | ".join(r["warnings"])
    assert "warmup_steps 5" in text and "eval_steps 50" in text and "save_steps 20" in text
    ok = P.plan(
        PYTHIA_1B,
        gpu_family="h100",
        gpu_memory_gb=80,
        gpus_per_node=8,
        per_device_batch=8,
        train_records=6400,
        epochs=1,
        warmup_steps=0.1,
        eval_steps=0.25,
        save_steps=50,
    )
    assert ok["warnings"] == []
    assert (ok["total_steps"], ok["warmup_steps"], ok["eval_steps"], ok["save_steps"]) == (100, 10, 25, 50)
    v100 = P.plan(PYTHIA_1B, gpu_family="v100", gpus_per_node=8, per_device_batch=1, train_records=6400)
    assert any("fp16" in w for w in v100["warnings"])
    assert v100["gpu_memory_gb"] == 16


def test_plan_imports_neither_spark_nor_torch():
    code = (
        f"import sys, dolly_spark.launch.plan as p; p.plan({PYTHIA_1B!r}, gpu_memory_gb=80, train_records=10); "
        "bad = [m for m in ('pyspark', 'torch', 'transformers', 'mlflow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    # the estimator import is lazy: block deepspeed so the fallback path is what runs here
    code = "import sys; sys.modules['deepspeed'] = None; " + code
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
