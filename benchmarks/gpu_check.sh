#!/usr/bin/env bash
# One-shot GPU check for a lent NVIDIA machine (H100/H200), run from the repo root:
#
#   bash benchmarks/gpu_check.sh
#
# Needs, next to the tracked files (both git-ignored, so they must travel explicitly):
#   .whl/         wheels the GPU image lacks: deepspeed (pure Python; ops JIT-compiled, none needed
#                 here), hjson, pydantic + pydantic-core (cp312) + annotated-types + typing-inspection,
#                 typing_extensions
#   shared-data/  tokenizer/gpt-neox-20b, databricks-dolly-15k.jsonl,
#                 models/{pythia-410m,pythia-1b,pythia-12b}/config.json (a copy of ../shared/data's files),
#                 and peft (pure Python) in .whl/ for the lora steps
#
# Steps (each under `timeout`, a failing step does not stop the others; the whole run stays under
# ~12 minutes): install the wheels into /tmp/site; nvidia-smi and versions; launch/plan.py's three target
# plans, plus pythia-12b's full/lora/qlora plans on one A100 80 GB and one A10 24 GB; (a) train_mfu.py
# on random-init pythia-1b, bf16, ZeRO-3, one GPU, without and with gradient checkpointing, 60 s each,
# printing measured peak memory next to launch/plan.py's estimate; (b) generate_throughput.py on
# random-init pythia-410m, batched vs per-prompt generation.
# Everything is teed into $OUT/gpu_check.log.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"

START=$(date +%s)
BUDGET_S="${GPU_CHECK_BUDGET_S:-720}"  # hard stop for the last step: 12 min after start
DEADLINE=$((START + BUDGET_S))
STATUS=()

step() {  # step NAME MAX_SECONDS CMD... : run under timeout, never past the deadline
    local name="$1" max="$2"
    shift 2
    local now left t0 rc
    now=$(date +%s)
    left=$((DEADLINE - now))
    if [ "$left" -lt "$max" ]; then max="$left"; fi
    if [ "$max" -le 5 ]; then
        echo "=== $name: SKIPPED (no time left)"
        STATUS+=("$name: skipped")
        return 0
    fi
    echo "=== $name (timeout ${max}s) $(date -u +%H:%M:%S) :: $*"
    t0=$(date +%s)
    timeout -k 10 "$max" bash -c '"$@"' _ "$@"  # bash -c: the step may be an exported function
    rc=$?
    echo "=== $name: rc=$rc in $(( $(date +%s) - t0 ))s$([ "$rc" -eq 124 ] && echo ' (TIMED OUT)')"
    STATUS+=("$name: rc=$rc $(( $(date +%s) - t0 ))s")
    return 0
}

export PYTHONPATH="/tmp/site:$PWD"
export PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR=/tmp/ext
export DOLLY_SHARED_DATA="$PWD/shared-data"
export DS_ACCELERATOR=cuda
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true TOKENIZERS_PARALLELISM=false

install_wheels() {
    ls -la .whl/ || return 1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && return 0
    echo "pip install failed; unpacking the wheels into /tmp/site instead"
    python3 -c "import glob, zipfile; [zipfile.ZipFile(w).extractall('/tmp/site') for w in sorted(glob.glob('.whl/*.whl'))]"
}

versions() {
    nvidia-smi
    ls -R shared-data | head -20
    python3 - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "transformers", "accelerate", "tokenizers", "deepspeed", "pydantic", "pydantic_core", "numpy"):
    try:
        m = importlib.import_module(name)
        print(f"{name:14} {getattr(m, '__version__', '?'):12} {getattr(m, '__file__', '')}")
    except Exception as err:
        print(f"{name:14} MISSING ({type(err).__name__}: {err})")
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"{p.total_memory / 2**30:.1f} GiB", "capability", torch.cuda.get_device_capability(0),
          "bf16", torch.cuda.is_bf16_supported())
from deepspeed.accelerator import get_accelerator
print("deepspeed accelerator", get_accelerator()._name)
for mod in ("pyspark", "mlflow"):
    try:
        importlib.import_module(mod)
        print(mod, "present")
    except ImportError:
        print(mod, "absent (its benchmark modes are skipped)")
EOF
}

plan_targets() {
    python3 - <<'EOF'
import json
from dolly_spark.launch import memory as M
from dolly_spark.launch import plan as P

cfg = json.load(open("shared-data/models/pythia-1b/config.json"))
print("pythia-1b params", f"{M.model_shape(cfg).total_params:,}", "estimator:",
      "deepspeed" if M.deepspeed_estimators() else "built-in copy")
c12 = {"hidden_size": 5120, "intermediate_size": 20480, "max_position_embeddings": 2048, "num_attention_heads": 40,
       "num_hidden_layers": 36, "tie_word_embeddings": False, "vocab_size": 50688}
base = dict(gpu_family="a100", gpus_per_node=8, zero_stage=3, per_device_batch=6, seq_len=2048,
            train_records=13964, model_name="pythia-12b")
cases = {
    "8xA100-80GB ckpt on": dict(base, gpu_memory_gb=80, gradient_checkpointing=True),
    "8xA100-40GB ckpt off": dict(base, gpu_memory_gb=40, gradient_checkpointing=False),
    "1xA10-24GB ckpt on": dict(base, gpu_family="a10", gpu_memory_gb=24, gpus_per_node=1, gradient_checkpointing=True),
}
# --method: one GPU each; lora and qlora at their usual ZeRO-2 (zero_stage None), full at ZeRO-3
one = dict(base, gpus_per_node=1, zero_stage=None, gradient_checkpointing=True)
cases.update({
    "1xA100-80GB lora": dict(one, gpu_memory_gb=80, method="lora"),
    "1xA100-80GB full": dict(one, gpu_memory_gb=80, method="full"),
    "1xA10-24GB lora": dict(one, gpu_family="a10", gpu_memory_gb=24, per_device_batch=4, method="lora"),
    "1xA10-24GB qlora": dict(one, gpu_family="a10", gpu_memory_gb=24, per_device_batch=4, method="qlora"),
})
for name, kw in cases.items():
    r = P.plan(c12, **kw)
    print(f"PLAN {name}: method={r['method']} zero={r['zero_stage']} trainable={r['trainable_params']:,} "
          f"fits={r['fits']} est={r['est_gpu_mem_gb']} GB host={r['est_host_mem_gb']} GB "
          f"records/step={r['records_per_step']} steps={r['total_steps']} fix={r['fix']!r}")
EOF
}

export -f install_wheels versions plan_targets

main() {
echo "gpu_check start $(date -u) in $PWD, log $LOG"
step install 60 install_wheels
step versions 45 versions
step plan 30 plan_targets
# (a) ~30 s start-up (imports, tokenising dolly-15k) + 2 x (~20 s init/warm-up + 60 s timed)
step train_mfu 250 python3 benchmarks/train_mfu.py --device cuda --models pythia-1b --zero-stage 3 \
    --checkpointing both --seconds 60 --batch-size 4 --seq-len 2048
# (c) --method lora: pythia-1b lora beside (a)'s full run (tokens/s ratio), then lora on
# random-init pythia-12b on the one GPU (peak memory vs the plan, within 25%; tokens/s). Needs
# shared-data/models/pythia-12b/config.json; not run yet on a GPU (benchmarks/README.md).
step train_lora_1b 120 python3 benchmarks/train_mfu.py --device cuda --models pythia-1b --method lora \
    --checkpointing on --seconds 45 --batch-size 4 --seq-len 2048
step train_lora_12b 180 python3 benchmarks/train_mfu.py --device cuda --models pythia-12b --method lora \
    --checkpointing on --seconds 45 --batch-size 4 --seq-len 2048
# (b) per_row dominates: 48 prompts x 64 new tokens, one decode step at a time
step generate 120 python3 benchmarks/generate_throughput.py --device cuda --modes hf_batched,per_row \
    --model-config shared-data/models/pythia-410m/config.json --num-prompts 48 --batch-size 16 --max-new-tokens 64
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
echo "=== steps ($(( $(date +%s) - START ))s total)"
printf '%s\n' "${STATUS[@]}"
}

main 2>&1 | tee "$LOG"
{
    echo "=== summary"
    grep -E '^(PLAN|MEMORY|LOGITS)|MFU|tok/s|/ per_row|"error"|^=== .*: rc=' "$LOG" || true
} 2>&1 | tee -a "$LOG"
exit 0
