"""Scaling benchmark: full ``prepare`` plus training staging at 15k, 150k (and 1.5M) records, and a
100k-prompt score run killed midway and rerun.

Input: copy 0 of each dolly-15k line is the line itself; copy c >= 1 has the words of each field
shuffled with a seed of (copy, line), so records stay distinct and dedup does not collapse them.
All copies go into one JSONL file per size, so ingest has to split it into byte ranges
(``--ingest-chunk-mb``, default 128: one range at 15k, two at 150k, ten at 1.5M).

For each size it times ``prepare`` (bronze -> silver -> dedup -> gold) and ``stage_gold`` (the
engine writes the Parquet shards), and samples this process's RSS every 0.2 s (the embedded Sail
engine and its Python UDFs run inside it) for the peak of each run and of each prepare stage
(bounded by the stage lines ``prepare`` prints). Prints time and peak-memory ratios per 10x
step against the first size, in the same process.

Score check (``--score-prompts N``): N distinct short prompts scored by a random-init tiny model
(``max_new_tokens=1``) in chunks of ``--chunk-rows``, in a child process that is SIGKILLed after
``--kill-after-commits`` chunk commits; the rerun here must end with every prompt scored once.

    python benchmarks/prep_scaling.py                                  # 15k, 150k + 100k-prompt score
    python benchmarks/prep_scaling.py --sizes 15000 150000 1500000     # with 1.5M (long)
    python benchmarks/prep_scaling.py --score-prompts 0                # prepare/staging only
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("DOLLY_SHARED_DATA", ROOT.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DOLLY_TOKENIZER", str(SHARED / "tokenizer" / "gpt-neox-20b"))
DOLLY = SHARED / "databricks-dolly-15k.jsonl"
GIB = 1024**3


class PeakRSS:
    """Peak resident memory of this process (and children) while the block runs, sampled; ``mark``
    closes a segment, so ``segments`` holds the peak between consecutive marks."""

    def __init__(self, every: float = 0.2):
        import psutil

        self.proc, self.every, self.peak = psutil.Process(), every, 0
        self._stop = threading.Event()
        self._segment_peak = 0
        self.segments: dict[str, int] = {}

    def mark(self, label: str) -> None:
        self.segments[label] = max(self._segment_peak, self.rss())
        self._segment_peak = 0

    def rss(self) -> int:
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:  # a child that just exited
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            rss = self.rss()
            self.peak = max(self.peak, rss)
            self._segment_peak = max(self._segment_peak, rss)
            self._stop.wait(self.every)

    def __enter__(self):
        self.start_rss = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def shuffle_words(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    rng.shuffle(words)
    return " ".join(words)


def make_input(n: int, out: Path) -> Path:
    """``n`` records in one JSONL file (copy 0 = dolly-15k itself, then shuffled copies)."""
    data = out / "records.jsonl"
    if (out / "DONE").is_file():
        return data
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    lines = [json.loads(line) for line in DOLLY.read_text().splitlines() if line.strip()]
    written, copy = 0, 0
    with data.open("w") as f:
        while written < n:
            for i, rec in enumerate(lines[: n - written]):
                if copy:
                    rng = random.Random(copy * 1_000_003 + i)
                    rec = {k: shuffle_words(v, rng) if k != "category" and v else v for k, v in rec.items()}
                f.write(json.dumps(rec) + "\n")
                written += 1
            copy += 1
    (out / "DONE").write_text(str(n))
    return data


def pad_fraction(spark, names) -> float | None:
    from pyspark.sql import functions as F

    from dolly_spark.ops import tables

    stats = tables.read_table(spark, names.gold_stats)
    per_split = (F.col("split") == "train") & (F.col("category") == "*")
    if "source" in stats.columns:
        per_split &= F.col("source") == "*"  # the all-sources row; per-source rows carry no packing
    row = stats.where(per_split).select("pad_fraction_packed").first()
    return None if row is None else float(row[0])


class StageMarks(io.TextIOBase):
    """stdout that closes a memory segment at each ``[prepare i/n] stage`` line."""

    def __init__(self, mem: PeakRSS, out):
        self.mem, self.out = mem, out

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.startswith("[prepare "):
                self.mem.mark(line.split("]")[1].split()[0])
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def prep_one(spark, n: int, work: Path, chunk_mb: int) -> dict:
    from dolly_spark.launch.staging import stage_gold
    from dolly_spark.ops import tables
    from dolly_spark.prep.prepare import PrepareConfig
    from dolly_spark.prep.prepare import run as prepare

    data = make_input(n, work / f"input_{n}")
    root = work / f"root_{n}"
    shutil.rmtree(root, ignore_errors=True)
    names = tables.TableNames(root=str(root))
    cfg = PrepareConfig(input=str(data), output_root=str(root), ingest_chunk_mb=chunk_mb)
    with PeakRSS() as mem_prep, contextlib.redirect_stdout(StageMarks(mem_prep, sys.stdout)):
        t0 = time.time()
        result = prepare(cfg, spark)
        t_prep = time.time() - t0
    with PeakRSS() as mem_stage:
        t0 = time.time()
        staged = stage_gold(spark, names.gold, result.versions["gold"], root / "staging")
        t_stage = time.time() - t0
    acc = result.details.get("accounting", {})
    return {
        "records": n,
        "prepare_s": round(t_prep, 1),
        "staging_s": round(t_stage, 1),
        "total_s": round(t_prep + t_stage, 1),
        "peak_rss_gib": round(max(mem_prep.peak, mem_stage.peak) / GIB, 2),
        "peak_rss_prepare_gib": round(mem_prep.peak / GIB, 2),
        "peak_rss_staging_gib": round(mem_stage.peak / GIB, 2),
        "peak_rss_by_stage_gib": {k: round(v / GIB, 2) for k, v in mem_prep.segments.items()},
        "rss_before_gib": round(mem_prep.start_rss / GIB, 2),
        "input_mib": round(data.stat().st_size / 2**20, 1),
        "gold": acc.get("gold"),
        "quarantine": acc.get("quarantine"),
        "duplicates": acc.get("duplicates"),
        "train_shards": len(staged.train_files),
        "staged_rows": staged.train_records + staged.eval_records,
        "pad_fraction_train": pad_fraction(spark, names),
    }


def stub_generation_udf(model_dir, gen, version=""):
    """The trivial fast model: a pandas UDF with the real output schema that "generates" one token
    per prompt without a forward pass. Chunking, staging and MERGE are the production code."""
    from pyspark.sql import functions as F

    from dolly_spark.ops.schemas import RESULT_COLUMNS, RESULT_DDL

    def generate_batches(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        for instructions, contexts in batches:
            n = len(instructions)
            yield pd.DataFrame(
                {
                    "response": ["ok"] * n,
                    "prompt_tokens": instructions.str.count(" ").astype("int64") + 1,
                    "completion_tokens": pd.Series([1] * n, dtype="int64"),
                    "finish_reason": ["length"] * n,
                    "error": [None] * n,
                },
                columns=list(RESULT_COLUMNS),
            )

    return F.pandas_udf(generate_batches, RESULT_DDL)


SCORE_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[2])
from dolly_spark.ops.session import get_spark
from dolly_spark.serve import score
if sys.argv[3] == "stub":
    import prep_scaling
    score.generation_udf = prep_scaling.stub_generation_udf
from dolly_spark.serve.generate import GenerationConfig
args = json.loads(sys.argv[1])
args["generation"] = GenerationConfig(**args["generation"])
score.run(score.ScoreConfig(**args), get_spark("score_bench_child"))
"""


def delta_commits(table: Path) -> int:
    log = table / "_delta_log"
    return len(list(log.glob("*.json"))) if log.is_dir() else 0


def score_check(spark, n: int, work: Path, chunk_rows: int, kill_after: int, model_kind: str) -> dict:
    from pyspark.sql import functions as F

    from dolly_spark.ops import tables
    from dolly_spark.serve import score
    from dolly_spark.serve.generate import GenerationConfig
    from tests.tiny_model import save_tiny_model

    root = work / "score"
    shutil.rmtree(root, ignore_errors=True)
    names = tables.TableNames(root=str(root))
    model = save_tiny_model(root / "model", seed=1, max_positions=128)
    prompts = spark.range(n).select(
        F.format_string("p%07d", "id").alias("record_id"),
        F.format_string("Name thing %d", "id").alias("instruction"),
        F.lit(None).cast("string").alias("context"),
    )
    tables.write_table(spark, prompts, names.gold)
    cfg = dict(
        model_uri=str(model),
        output_root=str(root),
        split="all",
        generation={"greedy": True, "max_new_tokens": 1, "batch_size": 256},
        chunk_rows=chunk_rows,
    )
    target = Path(names.predictions.path)
    log = (work / "score_child.log").open("w")
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")
    child = subprocess.Popen(
        [sys.executable, "-c", SCORE_CHILD, json.dumps(cfg), str(ROOT / "benchmarks"), model_kind],
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,
    )
    t0 = time.time()
    # Commit 0 creates the empty table; each further one is a chunk's MERGE.
    while delta_commits(target) < kill_after + 1 and child.poll() is None:
        time.sleep(0.2)
    killed = child.poll() is None
    if killed:
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    first_s = time.time() - t0
    if not killed and child.returncode != 0:
        raise RuntimeError(f"score child failed (rc {child.returncode}); see {work / 'score_child.log'}")
    preds = tables.read_table(spark, names.predictions)
    before = preds.count()
    if model_kind == "stub":
        score.generation_udf = stub_generation_udf
    with PeakRSS() as mem:
        rerun = score.run(score.ScoreConfig(**{**cfg, "generation": GenerationConfig(**cfg["generation"])}), spark)
    preds = tables.read_table(spark, names.predictions)
    total, keys = preds.count(), preds.select("row_key", "model_version").distinct().count()
    return {
        "model": model_kind,
        "prompts": n,
        "chunk_rows": chunk_rows,
        "killed": killed,
        "first_run_s": round(first_s, 1),
        "scored_before_kill": before,
        "rerun_scored": rerun.scored,
        "rerun_skipped": rerun.skipped,
        "rerun_chunks": rerun.chunks,
        "rerun_s": round(rerun.seconds, 1),
        "rows_per_s": round(rerun.rows_per_s, 1),
        "tokens_per_s": round(rerun.tokens_per_s, 1),
        "prompt_tokens_per_s": round(rerun.prompt_tokens_per_s, 1),
        "rerun_peak_rss_gib": round(mem.peak / GIB, 2),
        "predictions_rows": total,
        "distinct_keys": keys,
        "every_prompt_once": total == keys == n and rerun.scored == n - before,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[15000, 150000])
    ap.add_argument("--ingest-chunk-mb", type=int, default=128, help="byte range per ingest task")
    ap.add_argument("--work", default=None, help="work directory (default: a temp dir, removed at the end)")
    ap.add_argument("--score-prompts", type=int, default=100000)
    ap.add_argument("--chunk-rows", type=int, default=10000)
    ap.add_argument("--kill-after-commits", type=int, default=3)
    ap.add_argument(
        "--score-model",
        choices=("stub", "tiny"),
        default="stub",
        help="stub: a UDF with no forward pass (fast); tiny: the random-init tiny model, max_new_tokens=1 (~150 rows/s here)",
    )
    args = ap.parse_args()

    from dolly_spark.ops.session import get_spark

    work = Path(args.work or tempfile.mkdtemp(prefix="prep_scaling_"))
    work.mkdir(parents=True, exist_ok=True)
    spark = get_spark("prep_scaling")
    rows = []
    for n in args.sizes:
        r = prep_one(spark, n, work, args.ingest_chunk_mb)
        rows.append(r)
        print(json.dumps(r), flush=True)
    for prev, cur in zip(rows, rows[1:]):
        print(
            f"{prev['records']} -> {cur['records']} ({cur['records'] / prev['records']:.0f}x rows): "
            f"time {cur['total_s'] / prev['total_s']:.2f}x (target <= 12x), "
            f"prepare {cur['prepare_s'] / prev['prepare_s']:.2f}x, staging {cur['staging_s'] / prev['staging_s']:.2f}x, "
            f"peak memory {cur['peak_rss_gib'] / rows[0]['peak_rss_gib']:.2f}x the {rows[0]['records']} peak",
            flush=True,
        )
    if args.score_prompts:
        s = score_check(spark, args.score_prompts, work, args.chunk_rows, args.kill_after_commits, args.score_model)
        print(json.dumps(s), flush=True)
        print(
            f"score: killed after {s['scored_before_kill']} of {s['prompts']} rows committed; rerun scored "
            f"{s['rerun_scored']}, skipped {s['rerun_skipped']}; predictions {s['predictions_rows']} rows, "
            f"{s['distinct_keys']} distinct keys -> every prompt once: {s['every_prompt_once']}; "
            f"{s['rows_per_s']} rows/s, {s['prompt_tokens_per_s']} prompt tokens/s",
            flush=True,
        )
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
