"""Training throughput and MFU: random-init Pythia in bf16 with DeepSpeed ZeRO on packed dolly rows.

GPU (lent H100/H200):   python benchmarks/train_mfu.py --device cuda --seconds 180
GPU, memory vs plan:    python benchmarks/train_mfu.py --device cuda --models pythia-1b --zero-stage 3 \
                            --checkpointing both --seconds 60
CPU smoke (no GPU):     python benchmarks/train_mfu.py --device cpu --models tiny --steps 3   (or --dry-run)

MFU = (6 * N * tokens/s + attention FLOPs/s) / peak, where N counts every weight that takes part
in a matmul (the input embedding lookup does not), the attention term is 12 * layers * hidden *
seq_len per token (PaLM appendix B; full causal rows, an upper bound for packed rows), and the
peak is measured in this same process by a large matmul in the training dtype, so the ratio
does not depend on a datasheet. Anchor: ~46% MFU for a 3B model on H100 (LLM Foundry).

Every run also prints ``dolly_spark.launch.plan``'s memory estimate for exactly that setup (one GPU,
same micro-batch, seq_len, ZeRO stage, checkpointing) and, on CUDA, the measured peaks next to it:
torch.cuda.max_memory_allocated / max_memory_reserved, and the device's used memory (reserved +
CUDA context, from cudaMemGetInfo) at the end of the timed loop, with their ratios to the estimate.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("DOLLY_SHARED_DATA", REPO.parent / "shared" / "data"))
ANCHOR_MFU = 0.46
GiB = 2**30
VOCAB = 50280  # the Dolly tokenizer's size (gpt-neox-20b + Dolly's special tokens)
TINY = "tiny"  # dolly_spark.train.model.TINY_MODEL: the random-init few-MB GPT-NeoX
# The planner now sits on the driver side (launch/); carried wheels may predate the move.
PLAN_MODULES = ("dolly_spark.launch.plan", "dolly_spark.train.plan")
MEMORY_MODULES = ("dolly_spark.launch.memory", "dolly_spark.train.memory", "dolly_spark.train.plan")


def import_first(*names: str):
    """First importable module of ``names``: the package is being reorganised (e.g.
    dolly_spark.tokenizer -> dolly_spark.text.tokenizer). Only a missing module falls through;
    an import error inside an existing module is raised."""
    err = None
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
                raise
            err = e
    raise err


def measure_peak_flops(device, dtype, n: int, iters: int) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - t)


def packed_rows(tokenizer_dir: Path, seq_len: int, max_records: int):
    prompts = import_first("dolly_spark.text.prompts", "dolly_spark.prompts")
    format_prompt, format_text = prompts.format_prompt, prompts.format_text
    build_examples = import_first("dolly_spark.train.data").build_examples

    tok = import_first("dolly_spark.text.tokenizer", "dolly_spark.tokenizer").load_fast_tokenizer(str(tokenizer_dir))
    rows, pack_id, used = [], 0, 0
    with open(SHARED / "databricks-dolly-15k.jsonl") as f:
        for i, line in enumerate(f):
            if i >= max_records:
                break
            rec = json.loads(line)
            ids = tok.encode(
                format_text(rec["instruction"], rec["context"], rec["response"]), add_special_tokens=False
            ).ids
            if len(ids) > seq_len:
                continue  # gold quarantines these as too_long; never truncated
            plen = len(tok.encode(format_prompt(rec["instruction"], rec["context"]), add_special_tokens=False).ids)
            if used and used + len(ids) > seq_len:  # greedy first-fit in file order
                pack_id, used = pack_id + 1, 0
            rows.append(
                {
                    "record_id": f"r{i:05d}",
                    "category": rec["category"],
                    "input_ids": ids,
                    "prompt_len": plen,
                    "pack_id": pack_id,
                }
            )
            used += len(ids)
    examples, _ = build_examples(rows, pack=True, max_seq_len=seq_len)
    return examples


def model_config(name: str, vocab: int, seq_len: int):
    from transformers import AutoConfig

    if name == TINY:
        return import_first("dolly_spark.train.model").tiny_config(vocab, seq_len)
    cfg = AutoConfig.from_pretrained(str(SHARED / "models" / name / "config.json"))
    cfg.vocab_size = vocab
    cfg.use_cache = False
    return cfg


def plan_estimate(args, cfg, checkpointing: bool, device_type: str) -> dict:
    """dolly_spark.launch.plan for exactly this run: one GPU, this micro-batch, seq_len, stage, checkpointing."""
    plan_mod = import_first(*PLAN_MODULES)
    keys = (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "tie_word_embeddings",
    )
    cfg_dict = {k: getattr(cfg, k) for k in keys}
    gpu_gb = None
    if device_type == "cuda":
        import torch

        gpu_gb = torch.cuda.get_device_properties(0).total_memory / GiB
    p = plan_mod.plan(
        cfg_dict,
        gpu_family="h100" if device_type == "cuda" else "cpu",
        gpu_memory_gb=gpu_gb,
        gpus_per_node=1,
        num_nodes=1,
        zero_stage=args.zero_stage,
        precision="bf16" if device_type == "cuda" else "fp32",
        per_device_batch=args.batch_size,
        grad_accum=1,
        seq_len=args.seq_len,
        gradient_checkpointing=checkpointing,
        packing=True,
        train_records=1,
        epochs=1,
        method=args.method,
    )
    b = p["est_breakdown_gb"]
    return {
        "plan_est_gpu_gib": p["est_gpu_mem_gb"],
        "plan_states_gib": b["states"],
        "plan_activations_gib": b["activations"],
        "plan_overhead_gib": b["overhead"],
        "plan_fits": p["fits"],
        "plan_params": p["params"],
        "plan_trainable_params": p.get("trainable_params"),
        "plan_logits_bytes_per_token_vocab": import_first(*MEMORY_MODULES).LOGITS_BYTES_PER_TOKEN_VOCAB,
    }


def build_model(cfg, dtype, device):
    import torch
    from transformers import AutoModelForCausalLM

    if device.type == "cuda":
        try:  # random init straight on the GPU: seconds instead of a minute of CPU init for 1B+
            with torch.device(device):
                return AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        except Exception as err:  # noqa: BLE001 - fall back to the plain CPU init
            print(f"GPU-side init failed ({type(err).__name__}: {err}); initialising on CPU")
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype)


def bench_one(args, name: str, examples, checkpointing: bool) -> dict:
    import deepspeed
    import torch

    PackedCollator = import_first("dolly_spark.train.data").PackedCollator

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = model_config(name, VOCAB, args.seq_len)
    if device.type == "cuda":
        cfg._attn_implementation = "sdpa"
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    est = plan_estimate(args, cfg, checkpointing, device.type)
    model = build_model(cfg, dtype, device)
    model.config.use_cache = False
    model.train()  # HF checkpoints layers only in training mode
    if checkpointing:
        model.gradient_checkpointing_enable()
    n_total = sum(p.numel() for p in model.parameters())
    n_matmul = sum(p.numel() for n, p in model.named_parameters() if "embed_in" not in n)
    if args.method == "lora":  # the training path's own adapters (dolly_spark.train.adapters)
        from types import SimpleNamespace

        adapters = import_first("dolly_spark.train.adapters")
        lora = import_first("dolly_spark.train.config").LoraSettings()
        model = adapters.attach_adapters(model, SimpleNamespace(lora=lora, gradient_checkpointing=checkpointing))
    ds_config = {
        "train_micro_batch_size_per_gpu": args.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": args.zero_stage},
        "bf16": {"enabled": dtype == torch.bfloat16},
        "steps_per_print": 10**9,
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5, fused=device.type == "cuda")
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config)
    collate = PackedCollator(pad_token_id=0)
    step, tokens, t_start = 0, 0, None
    warmup = 0 if args.steps and args.steps <= 3 else args.warmup
    if warmup == 0:
        t_start = time.perf_counter()
    while True:
        for i in range(0, len(examples) - args.batch_size + 1, args.batch_size):
            batch = collate(examples[i : i + args.batch_size])
            inputs = {k: batch[k].to(device) for k in ("input_ids", "labels", "position_ids")}
            loss = engine(**inputs).loss
            engine.backward(loss)
            engine.step()
            step += 1
            if step == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t_start, tokens = time.perf_counter(), 0
            elif step > warmup:
                tokens += int(batch["input_ids"].numel())  # padded row width: what the GPU computed
            elapsed = time.perf_counter() - t_start if t_start else 0.0
            done = (args.steps and step >= args.steps) or (not args.steps and elapsed >= args.seconds)
            if done:
                break
        else:
            continue
        break
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t_start
    mem = {}
    if device.type == "cuda":  # before the peak-FLOPs matmul below allocates its own buffers
        free, total = torch.cuda.mem_get_info()
        mem = {
            "max_allocated_gib": torch.cuda.max_memory_allocated() / GiB,
            "max_reserved_gib": torch.cuda.max_memory_reserved() / GiB,
            "device_used_gib": (total - free) / GiB,
            "baseline_allocated_gib": base_alloc / GiB,
        }
    tps = tokens / elapsed
    L, H = cfg.num_hidden_layers, cfg.hidden_size
    # A frozen weight needs no weight gradient: LoRA's backward is ~2N (input gradients), not 4N.
    flops_per_token = (4 if args.method == "lora" else 6) * n_matmul + 12 * L * H * args.seq_len
    peak = measure_peak_flops(device, dtype, 8192 if device.type == "cuda" else 512, 50 if device.type == "cuda" else 5)
    out = {
        "model": name,
        "method": args.method,
        "params_trainable": sum(p.numel() for p in trainable),
        "params_matmul": n_matmul,
        "params_total": n_total,
        "steps_timed": step - warmup,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "zero_stage": args.zero_stage,
        "gradient_checkpointing": checkpointing,
        "dtype": str(dtype),
        "tokens_per_s": tps,
        "achieved_tflops": flops_per_token * tps / 1e12,
        "peak_tflops_measured": peak / 1e12,
        "mfu": flops_per_token * tps / peak,
        "final_loss": float(loss.detach()),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
    }
    out["mfu_vs_anchor_46pct"] = out["mfu"] / ANCHOR_MFU
    out.update(est)
    out.update(mem)
    if mem:
        out["max_mem_gib"] = mem["max_allocated_gib"]
        # allocated vs states + activations (what the allocator sees); device-used vs the full estimate
        out["ratio_allocated_to_plan_states_acts"] = mem["max_allocated_gib"] / (
            est["plan_states_gib"] + est["plan_activations_gib"]
        )
        out["ratio_reserved_to_plan_states_acts"] = mem["max_reserved_gib"] / (
            est["plan_states_gib"] + est["plan_activations_gib"]
        )
        out["ratio_device_used_to_plan_total"] = mem["device_used_gib"] / est["plan_est_gpu_gib"]
    try:
        engine.destroy()  # ZeRO-3 hooks hold references to the model
    except Exception as err:  # noqa: BLE001 - cleanup only
        print(f"engine.destroy() failed: {type(err).__name__}: {err}")
    del engine, model, opt, loss
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return out


def logits_probe(batch: int, seq_len: int, hidden: int, vocab: int) -> dict:
    """Peak memory of the LM head + causal-LM loss alone (bf16, as in GPTNeoXForCausalLM) per
    token x vocab entry: calibrates memory.LOGITS_BYTES_PER_TOKEN_VOCAB. The weight and hidden-state
    gradients (known sizes) are subtracted."""
    import torch
    from transformers.loss.loss_utils import ForCausalLMLoss

    dev, dt = torch.device("cuda"), torch.bfloat16
    gc.collect()
    torch.cuda.empty_cache()
    hid = torch.randn(batch, seq_len, hidden, device=dev, dtype=dt, requires_grad=True)
    head = torch.nn.Linear(hidden, vocab, bias=False, device=dev, dtype=dt)
    labels = torch.randint(0, vocab, (batch, seq_len), device=dev)

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    # as in the model: the bf16 logits live until the loss returns, then only autograd's saved tensors
    loss = ForCausalLMLoss(head(hid), labels, vocab_size=vocab)
    fwd_peak = torch.cuda.max_memory_allocated() - base
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    known = vocab * hidden * 2 + batch * seq_len * hidden * 2  # weight grad + hidden grad
    n = batch * seq_len * vocab
    out = {
        "batch": batch,
        "seq_len": seq_len,
        "vocab": vocab,
        "forward_peak_gib": fwd_peak / GiB,
        "peak_gib": peak / GiB,
        "bytes_per_token_vocab_forward": fwd_peak / n,
        "bytes_per_token_vocab": (peak - known) / n,
    }
    del hid, head, labels, loss
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return out


def print_memory(res: dict) -> None:
    tag = (
        f"{res['model']} batch {res['batch_size']} seq {res['seq_len']} ZeRO-{res['zero_stage']} "
        f"checkpointing {'on' if res['gradient_checkpointing'] else 'off'}"
    )
    est = (
        f"plan est {res['plan_est_gpu_gib']:.2f} GiB = states {res['plan_states_gib']:.2f} + activations "
        f"{res['plan_activations_gib']:.2f} + overhead {res['plan_overhead_gib']:.2f}"
        f" (params plan {res['plan_params']:,} vs model {res['params_total']:,})"
    )
    print(f"MEMORY {tag}: {est}")
    if "max_allocated_gib" in res:
        sa = res["plan_states_gib"] + res["plan_activations_gib"]
        print(
            f"MEMORY {tag}: measured max_allocated {res['max_allocated_gib']:.2f} GiB "
            f"(/ plan states+acts {sa:.2f} = {res['ratio_allocated_to_plan_states_acts']:.2f}), "
            f"max_reserved {res['max_reserved_gib']:.2f} GiB "
            f"(= {res['ratio_reserved_to_plan_states_acts']:.2f}), "
            f"device used {res['device_used_gib']:.2f} GiB (/ plan total = "
            f"{res['ratio_device_used_to_plan_total']:.2f}), baseline {res['baseline_allocated_gib']:.2f} GiB"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument(
        "--models",
        default="pythia-1b,dolly-v2-3b",
        help=f"configs under shared/data/models, tried in order; {TINY!r}: the tiny GPT-NeoX (CPU smoke)",
    )
    p.add_argument("--steps", type=int, default=0, help="timed steps (0: run --seconds)")
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--zero-stage", type=int, default=2, help="2 on one GPU (3 only adds gathers there)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="same as --checkpointing on")
    p.add_argument(
        "--checkpointing",
        choices=["off", "on", "both"],
        default=None,
        help="gradient checkpointing; 'both' runs each model without, then with it (default off)",
    )
    p.add_argument("--method", choices=["full", "lora"], default="full", help="lora: peft adapters on a frozen base")
    p.add_argument("--max-records", type=int, default=15011)
    p.add_argument("--tokenizer", default=str(SHARED / "tokenizer" / "gpt-neox-20b"))
    p.add_argument("--dry-run", action="store_true", help="same as --device cpu --models tiny --steps 3 --seq-len 256")
    args = p.parse_args(argv)
    if args.checkpointing is None:
        args.checkpointing = "on" if args.gradient_checkpointing else "off"
    variants = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    if args.dry_run:
        args.device, args.models, args.steps, args.seq_len, args.batch_size = "cpu", TINY, 3, 256, 2
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
        if args.models == TINY and args.seq_len == 2048:
            args.seq_len = 256
        args.max_records = min(args.max_records, 400)
    for k, v in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29517",
    }.items():
        os.environ.setdefault(k, v)  # one process without a launcher (else DeepSpeed wants mpi4py)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo" if args.device == "cpu" else "nccl")
    from dolly_spark.launch.processes import remove_shm_segments

    remove_shm_segments(int(os.environ["MASTER_PORT"]))  # the one rank has mapped its CPU segment: unlink the name
    t = time.perf_counter()
    examples = packed_rows(Path(args.tokenizer), args.seq_len, args.max_records)
    fill = sum(len(e["input_ids"]) for e in examples) / (len(examples) * args.seq_len)
    print(f"packed {len(examples)} rows of <= {args.seq_len} tokens, fill {fill:.1%} ({time.perf_counter() - t:.1f}s)")
    names = args.models.split(",")
    if args.device == "cuda":
        try:
            cfg0 = model_config(names[0], VOCAB, args.seq_len)
            probe = logits_probe(args.batch_size, args.seq_len, cfg0.hidden_size, VOCAB)
            plan_const = import_first(*MEMORY_MODULES).LOGITS_BYTES_PER_TOKEN_VOCAB
            print(
                f"LOGITS probe batch {args.batch_size} seq {args.seq_len} vocab {VOCAB}: peak "
                f"{probe['peak_gib']:.2f} GiB -> {probe['bytes_per_token_vocab']:.2f} bytes per token x vocab "
                f"(forward alone {probe['bytes_per_token_vocab_forward']:.2f}); plan constant {plan_const}",
                flush=True,
            )
        except Exception as err:  # noqa: BLE001 - a probe, not the benchmark
            print(f"LOGITS probe failed: {type(err).__name__}: {err}"[:500], flush=True)
    failed = False
    for name in names:
        for ckpt in variants:
            try:
                res = bench_one(args, name, examples, ckpt)
            except Exception as err:  # e.g. CUDA OOM for the larger model: report and stop
                print(
                    json.dumps(
                        {"model": name, "gradient_checkpointing": ckpt, "error": f"{type(err).__name__}: {err}"[:500]}
                    ),
                    flush=True,
                )
                failed = True
                break
            print(json.dumps(res))
            print(
                f"{res['model']} {res['method']} (checkpointing {'on' if ckpt else 'off'}): "
                f"{res['tokens_per_s']:.0f} tokens/s, "
                f"{res['achieved_tflops']:.2f} TFLOP/s of {res['peak_tflops_measured']:.2f} measured peak -> "
                f"MFU {res['mfu']:.1%} ({res['mfu_vs_anchor_46pct']:.2f}x the 46% anchor)"
            )
            print_memory(res)
            sys.stdout.flush()
        if failed:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
