"""Training throughput and MFU: random-init Pythia in bf16 with DeepSpeed ZeRO on packed dolly rows.

GPU (lent H100/H200):   python benchmarks/train_mfu.py --device cuda --seconds 180
CPU smoke (no GPU):     python benchmarks/train_mfu.py --device cpu --tiny --steps 3

MFU = (6 * N * tokens/s + attention FLOPs/s) / peak, where N counts every weight that takes part
in a matmul (the input embedding lookup does not), the attention term is 12 * layers * hidden *
seq_len per token (PaLM appendix B; full causal rows, an upper bound for packed rows), and the
peak is measured in this same process by a large matmul in the training dtype, so the ratio
does not depend on a datasheet. Anchor: ~46% MFU for a 3B model on H100 (LLM Foundry).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("DOLLY_SHARED_DATA", REPO.parent / "shared" / "data"))
ANCHOR_MFU = 0.46


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
    from dolly_spark.text.prompts import format_prompt, format_text
    from dolly_spark.text.tokenizer import load_fast_tokenizer
    from dolly_spark.train.data import build_examples

    tok = load_fast_tokenizer(str(tokenizer_dir))
    rows, pack_id, used = [], 0, 0
    with open(SHARED / "databricks-dolly-15k.jsonl") as f:
        for i, line in enumerate(f):
            if i >= max_records:
                break
            rec = json.loads(line)
            ids = tok.encode(format_text(rec["instruction"], rec["context"], rec["response"]), add_special_tokens=False).ids
            if len(ids) > seq_len:
                continue  # gold quarantines these as too_long; never truncated
            plen = len(tok.encode(format_prompt(rec["instruction"], rec["context"]), add_special_tokens=False).ids)
            if used and used + len(ids) > seq_len:  # greedy first-fit in file order
                pack_id, used = pack_id + 1, 0
            rows.append({"record_id": f"r{i:05d}", "category": rec["category"], "input_ids": ids, "prompt_len": plen,
                         "pack_id": pack_id})
            used += len(ids)
    examples, _ = build_examples(rows, pack=True, max_seq_len=seq_len)
    return examples


def model_config(name: str, tiny: bool, vocab: int, seq_len: int):
    from transformers import AutoConfig

    from dolly_spark.train.model import tiny_config

    if tiny:
        return tiny_config(vocab, seq_len)
    cfg = AutoConfig.from_pretrained(str(SHARED / "models" / name / "config.json"))
    cfg.vocab_size = vocab
    cfg.use_cache = False
    return cfg


def bench_one(args, name: str, examples) -> dict:
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM

    from dolly_spark.train.data import PackedCollator

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = model_config(name, args.tiny, 50280, args.seq_len)
    if device.type == "cuda":
        cfg._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.config.use_cache = False
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    n_matmul = sum(p.numel() for n, p in model.named_parameters() if "embed_in" not in n)
    ds_config = {
        "train_micro_batch_size_per_gpu": args.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": args.zero_stage},
        "bf16": {"enabled": dtype == torch.bfloat16},
        "steps_per_print": 10**9,
    }
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config)
    collate = PackedCollator(pad_token_id=0)
    step, tokens, t_start = 0, 0, None
    warmup = 0 if args.steps and args.steps <= 3 else args.warmup
    if warmup == 0:
        t_start = time.perf_counter()
    while True:
        for i in range(0, len(examples) - args.batch_size + 1, args.batch_size):
            batch = collate(examples[i:i + args.batch_size])
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
    tps = tokens / elapsed
    L, H = cfg.num_hidden_layers, cfg.hidden_size
    flops_per_token = 6 * n_matmul + 12 * L * H * args.seq_len
    peak = measure_peak_flops(device, dtype, 8192 if device.type == "cuda" else 512, 50 if device.type == "cuda" else 5)
    out = {
        "model": "tiny" if args.tiny else name, "params_matmul": n_matmul, "steps_timed": step - warmup,
        "seq_len": args.seq_len, "batch_size": args.batch_size, "zero_stage": args.zero_stage, "dtype": str(dtype),
        "tokens_per_s": tps, "achieved_tflops": flops_per_token * tps / 1e12, "peak_tflops_measured": peak / 1e12,
        "mfu": flops_per_token * tps / peak, "final_loss": float(loss.detach()),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
    }
    out["mfu_vs_anchor_46pct"] = out["mfu"] / ANCHOR_MFU
    del engine, model, opt
    if device.type == "cuda":
        out["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--models", default="pythia-1b,dolly-v2-3b", help="configs under shared/data/models, tried in order")
    p.add_argument("--tiny", action="store_true", help="tiny GPT-NeoX instead (CPU smoke)")
    p.add_argument("--steps", type=int, default=0, help="timed steps (0: run --seconds)")
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--zero-stage", type=int, default=2, help="2 on one GPU (3 only adds gathers there)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--max-records", type=int, default=15011)
    p.add_argument("--tokenizer", default=str(SHARED / "tokenizer" / "gpt-neox-20b"))
    p.add_argument("--dry-run", action="store_true", help="same as --device cpu --tiny --steps 3 --seq-len 256")
    args = p.parse_args(argv)
    if args.dry_run:
        args.device, args.tiny, args.steps, args.seq_len, args.batch_size = "cpu", True, 3, 256, 2
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
        if args.tiny and args.seq_len == 2048:
            args.seq_len = 256
        args.max_records = min(args.max_records, 400)
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517"}.items():
        os.environ.setdefault(k, v)  # one process without a launcher (else DeepSpeed wants mpi4py)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo" if args.device == "cpu" else "nccl")
    t = time.perf_counter()
    examples = packed_rows(Path(args.tokenizer), args.seq_len, args.max_records)
    fill = sum(len(e["input_ids"]) for e in examples) / (len(examples) * args.seq_len)
    print(f"packed {len(examples)} rows of <= {args.seq_len} tokens, fill {fill:.1%} ({time.perf_counter() - t:.1f}s)")
    names = ["tiny"] if args.tiny else args.models.split(",")
    for name in names:
        try:
            res = bench_one(args, name, examples)
        except Exception as err:  # e.g. CUDA OOM for the larger model: report and stop
            print(json.dumps({"model": name, "error": f"{type(err).__name__}: {err}"[:500]}))
            break
        print(json.dumps(res))
        print(f"{res['model']}: {res['tokens_per_s']:.0f} tokens/s, {res['achieved_tflops']:.2f} TFLOP/s of "
              f"{res['peak_tflops_measured']:.2f} measured peak -> MFU {res['mfu']:.1%} "
              f"({res['mfu_vs_anchor_46pct']:.2f}x the 46% anchor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
