"""Generated tokens/s for the same model, prompts and settings, in one process:

  udf_batched   the scoring path: Spark pandas iterator UDF, length-sorted left-padded batches
  spark_udf     mlflow.pyfunc.spark_udf over the logged pyfunc (when dolly_spark.serve.pyfunc_model exists)
  per_row       one prompt per generate() call (Dolly's original pipeline shape)
  hf_batched    plain HF generate in the same batches, no Spark (the ceiling for the UDF path)

Ratios are against per_row and hf_batched measured in this same run. Each mode is timed end to end
including its own model load (the UDF loads once per worker), so the numbers are what a job sees;
``--repeats N`` keeps each mode's best of N runs (a shared machine only ever adds time).

  python benchmarks/generate_throughput.py                      # tiny random-init model, CPU
  python benchmarks/generate_throughput.py --dry-run            # seconds-long smoke run
  python benchmarks/generate_throughput.py --model-config ../shared/data/models/pythia-1b/config.json \\
      --device cuda --num-prompts 512 --batch-size 64 --max-new-tokens 128   # GPU (not run here)
  python benchmarks/generate_throughput.py --modes per_row,hf_batched ...   # no Spark, no MLflow needed

Spark (pyspark) and MLflow are imported only when a mode that needs them is chosen.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("DOLLY_SHARED_DATA", REPO.parent / "shared" / "data"))
MODES = ("udf_batched", "spark_udf", "per_row", "hf_batched")
SPARK_MODES = {"udf_batched", "spark_udf"}


def import_first(*names: str):
    """First importable module of ``names``: the package is being reorganised (e.g.
    dolly_spark.generate -> dolly_spark.serve.generate). Only a missing module falls through;
    an import error inside an existing module (say, pyspark missing) is raised."""
    err = None
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
                raise
            err = e
    raise err


def parse_modes(values: list[str]) -> list[str]:
    """``--modes per_row,hf_batched`` or ``--modes per_row hf_batched``; order kept, duplicates dropped."""
    modes = []
    for v in values:
        for m in v.split(","):
            m = m.strip()
            if not m:
                continue
            if m not in MODES:
                raise SystemExit(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
            if m not in modes:
                modes.append(m)
    return modes


def build_model(out: Path, model_config: str | None, tokenizer_dir: Path, max_positions: int) -> Path:
    """Random-init GPT-NeoX: the tiny test shape, or any Pythia config.json (e.g. pythia-1b)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    load_hf_tokenizer = import_first("dolly_spark.text.tokenizer", "dolly_spark.tokenizer").load_hf_tokenizer

    tok = load_hf_tokenizer(str(tokenizer_dir))
    torch.manual_seed(0)
    if model_config:
        cfg = GPTNeoXConfig.from_json_file(model_config)
        cfg.vocab_size = max(cfg.vocab_size, len(tok))
    else:
        cfg = GPTNeoXConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=max_positions,
        )
    cfg.eos_token_id = cfg.pad_token_id = tok.eos_token_id
    GPTNeoXForCausalLM(cfg).save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


def load_prompts(n: int) -> list[tuple[str, str | None]]:
    rows = []
    with open(SHARED / "databricks-dolly-15k.jsonl") as f:
        for line in f:
            r = json.loads(line)
            rows.append((r["instruction"], r.get("context") or None))
            if len(rows) == n:
                break
    return rows


def completion_tokens(rows) -> int:
    return int(sum(r["completion_tokens"] for r in rows if r["error"] is None))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", help="existing HF model dir (default: build a random-init one)")
    ap.add_argument("--model-config", help="config.json to random-init (e.g. pythia-1b); default: tiny model")
    ap.add_argument("--tokenizer", default=str(SHARED / "tokenizer" / "gpt-neox-20b"))
    ap.add_argument("--num-prompts", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--max-positions", type=int, default=2048, help="tiny model context window")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    ap.add_argument(
        "--modes",
        nargs="*",
        default=list(MODES),
        help=f"comma- or space-separated, from {', '.join(MODES)} (default: all)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="time each mode N times and keep the best")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--dry-run", action="store_true", help="16 prompts, 4 new tokens: check it runs")
    args = ap.parse_args(argv)
    args.modes = parse_modes(args.modes)
    if args.dry_run:
        args.num_prompts, args.max_new_tokens, args.batch_size = 16, 4, 8

    work = Path(tempfile.mkdtemp(prefix="gen_bench_"))
    try:
        return run_benchmark(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # a pythia-1b checkpoint is 4 GB


def run_benchmark(args, work: Path) -> int:
    import torch

    G = import_first("dolly_spark.serve.generate", "dolly_spark.generate")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = G.pick_device(args.device)
    model_dir = (
        Path(args.model_dir)
        if args.model_dir
        else build_model(work / "model", args.model_config, Path(args.tokenizer), args.max_positions)
    )
    prompts = load_prompts(args.num_prompts)
    instructions = [p[0] for p in prompts]
    contexts = [p[1] for p in prompts]
    gen = G.GenerationConfig(max_new_tokens=args.max_new_tokens, greedy=True, batch_size=args.batch_size)
    print(
        f"model {args.model_config or 'tiny'} on {device}, torch threads {torch.get_num_threads()}, "
        f"{len(prompts)} prompts, batch {gen.batch_size}, max_new_tokens {gen.max_new_tokens}, greedy"
    )

    results: dict[str, tuple[float, int, list]] = {}

    def timed(mode, fn):
        times = []
        for _ in range(max(1, args.repeats)):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            rows = fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        dt = min(times)  # best of N: the machine may be shared, and noise only ever adds time
        results[mode] = (dt, completion_tokens(rows), rows)
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(
            f"{mode:<12} {dt:8.2f}s  {results[mode][1]:>7} tokens  {results[mode][1] / dt:9.1f} tok/s  (runs: {runs}s)",
            flush=True,
        )

    def plain(batched: bool):
        def fn():
            model, tok = G.load_for_generation(str(model_dir), device=device)
            f = G.generate_responses if batched else G.generate_one_at_a_time
            return f(model, tok, instructions, contexts, gen)

        return fn

    spark = None
    if SPARK_MODES & set(args.modes):
        S = import_first("dolly_spark.serve.score", "dolly_spark.score")  # imports pyspark
        get_spark = import_first("dolly_spark.ops.session", "dolly_spark.session").get_spark
        spark = get_spark("generate_throughput")
        spark.range(1).collect()  # engine start-up is not generation
        df = spark.createDataFrame(
            [(i, ins, ctx) for i, (ins, ctx) in enumerate(prompts)], "idx long, instruction string, context string"
        )
        resolved = S.ResolvedModel(str(model_dir), str(model_dir), "bench")

        def via_spark(mode, model):
            def fn():
                S._MODEL_CACHE.clear()  # a worker loads the model once: count that load
                out = S.with_generation(df, model, gen, mode, spark).orderBy("idx").toPandas()
                return out.to_dict("records")

            return fn

    # Untimed warm-up (first generate() call, lazy imports, first UDF plan), so mode order does not matter.
    warm = G.load_for_generation(str(model_dir), device=device)
    G.generate_responses(*warm, instructions[:4], contexts[:4], gen)
    if spark is not None:
        S.with_generation(df.limit(4), resolved, gen, "pandas_iter", spark).toPandas()
        from pyspark.sql import functions as F

        parts = df.select(F.spark_partition_id().alias("p")).distinct().count()
        print(
            f"Spark input partitions: {parts} (UDF tasks run in parallel, each with {torch.get_num_threads()} torch threads)"
        )
    del warm

    for mode in args.modes:
        if mode == "udf_batched":
            timed(mode, via_spark("pandas_iter", resolved))
        elif mode == "hf_batched":
            timed(mode, plain(batched=True))
        elif mode == "per_row":
            timed(mode, plain(batched=False))
        elif mode == "spark_udf":
            pyfunc_dir = save_pyfunc(model_dir, work)
            if pyfunc_dir is None:
                print("spark_udf    skipped: dolly_spark.serve.pyfunc_model is not available")
                continue
            timed(
                mode,
                via_spark(
                    "spark_udf", S.ResolvedModel(str(pyfunc_dir), str(model_dir), "bench", pyfunc_uri=str(pyfunc_dir))
                ),
            )

    # Same greedy model and prompts: every mode must produce the same text.
    ref = results.get("hf_batched") or next(iter(results.values()))
    for mode, (_, _, rows) in results.items():
        same = sum(a["response"] == b["response"] for a, b in zip(rows, ref[2]))
        if same != len(rows):
            print(f"WARNING {mode}: {same}/{len(rows)} responses equal to the reference mode")

    def rate(m):
        return results[m][1] / results[m][0]

    if "hf_batched" in results and "per_row" in results:
        print(f"hf_batched / per_row     = {rate('hf_batched') / rate('per_row'):6.2f}x")
    if "udf_batched" in results and "per_row" in results:
        print(f"udf_batched / per_row    = {rate('udf_batched') / rate('per_row'):6.2f}x  (target >= 10x)")
    if "udf_batched" in results and "hf_batched" in results:
        print(f"udf_batched / hf_batched = {rate('udf_batched') / rate('hf_batched'):6.2f}x  (target >= 0.7x)")
    if "spark_udf" in results and "hf_batched" in results:
        print(f"spark_udf / hf_batched   = {rate('spark_udf') / rate('hf_batched'):6.2f}x")
    if "spark_udf" in results and "udf_batched" in results:
        print(f"spark_udf / udf_batched  = {rate('spark_udf') / rate('udf_batched'):6.2f}x")
    return 0


def save_pyfunc(model_dir: Path, work: Path) -> Path | None:
    """Save the project's pyfunc around ``model_dir`` (artifacts={"hf_model": dir}) for spark_udf."""
    try:
        pyfunc_model = import_first("dolly_spark.serve.pyfunc_model", "dolly_spark.pyfunc_model")
    except ImportError:
        return None
    import mlflow.pyfunc

    out = work / "pyfunc"
    if not out.exists():
        mlflow.pyfunc.save_model(
            str(out),
            python_model=pyfunc_model.DollyInstructionModel(),
            artifacts={pyfunc_model.HF_ARTIFACT: str(model_dir)},
            signature=pyfunc_model.model_signature(),
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
