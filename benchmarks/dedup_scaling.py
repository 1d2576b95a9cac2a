"""Scaling benchmark for ``dolly_spark.prep.dedup.deduplicate`` on synthetic data made from dolly-15k.

For each size N (default 15k, 150k, 1.5M) it builds N rows from the real records: copy 0 of each
record is the record itself; every further copy has about 40% of its instruction, context and response words
(and of its response) replaced by words drawn from the dataset's vocabulary (a new, distinct record), and 3% of copies
get a single word edit instead (a planted near-duplicate), so the duplicate rate stays similar
across sizes. Data generation runs in Spark (a pandas UDF) and is written to parquet before
timing. The timed part is ``deduplicate`` plus writing ``kept`` and ``duplicates`` to parquet.

Prints rows/s per size, the time ratio per 10x step (target: at most 12x), and, in the same
run, a single-process Python MinHash (same numpy kernels, dict buckets, union-find) on the
15k real records, so Spark's cost shows as a ratio.

Usage: python benchmarks/dedup_scaling.py [--sizes 15000 150000 1500000] [--work /tmp/dir]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import unicodedata
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dolly_spark.prep.clean import normalize_text_value  # noqa: E402
from dolly_spark.prep.dedup import (  # noqa: E402
    FIELD_SEPARATOR,
    FIELDS,
    DedupConfig,
    band_hashes,
    bands_rows_for_recall,
    deduplicate,
    near_duplicate,
    rminhash_signatures,
    shingle_hashes,
)
from dolly_spark.prep.dedup_short import record_keys  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("DOLLY_SHARED_DATA", ROOT.parent / "shared" / "data")) / "databricks-dolly-15k.jsonl"
SILVER_SCHEMA = (
    "record_id string, instruction string, context string, response string, category string, "
    "source_file string, line_number long"
)


def load_real(path: Path) -> pd.DataFrame:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(
        {
            "record_id": [f"r{i:05d}" for i in range(len(rows))],
            "instruction": [normalize_text_value(r["instruction"]) for r in rows],
            "context": [normalize_text_value(r.get("context") or "") for r in rows],
            "response": [normalize_text_value(r["response"]) for r in rows],
            "category": [r["category"] for r in rows],
            "source_file": path.name,
            "line_number": np.arange(1, len(rows) + 1, dtype=np.int64),
        }
    )


def _perturb_udf(vocab: list[str]):
    from pyspark.sql.functions import pandas_udf

    vocab_arr = np.array(vocab, dtype=object)

    @pandas_udf("string")
    def perturb(text: pd.Series, copy: pd.Series, base: pd.Series, salt: pd.Series) -> pd.Series:
        out = []
        for t, c, b, s in zip(text, copy, base, salt):
            if c == 0 or not t:
                out.append(t)
                continue
            # Whether the copy is a near-duplicate depends on (record, copy) only, so all of its
            # fields agree; which words change also depends on the field (salt).
            light = np.random.default_rng((int(b) * 1_000_003 + int(c)) & 0xFFFFFFFF).random() < 0.03
            rng = np.random.default_rng((int(b) * 1_000_003 + int(c) * 7 + int(s)) & 0xFFFFFFFF)
            words = t.split(" ")
            if light:  # planted near-duplicate: one word replaced
                words[rng.integers(len(words))] = vocab_arr[rng.integers(len(vocab_arr))]
            else:
                hit = rng.random(len(words)) < 0.4
                if not hit.any():
                    hit[rng.integers(len(words))] = True
                for i in np.flatnonzero(hit):
                    words[i] = vocab_arr[rng.integers(len(vocab_arr))]
            out.append(" ".join(words))
        return pd.Series(out)

    return perturb


def make_synthetic(spark, real: pd.DataFrame, n: int, path: str) -> None:
    from pyspark.sql import functions as F

    vocab = sorted({w for t in real["instruction"] for w in t.split(" ") if w})
    base = spark.createDataFrame(real.reset_index(names="base_idx"))
    copies = -(-n // len(real))
    perturb = _perturb_udf(vocab)
    df = (
        base.crossJoin(spark.range(copies).withColumnRenamed("id", "copy"))
        .withColumn("row_n", F.col("copy") * len(real) + F.col("base_idx"))
        .where(F.col("row_n") < n)
        .select(
            F.concat(F.col("record_id"), F.lit("-"), F.col("copy").cast("string")).alias("record_id"),
            perturb("instruction", "copy", "base_idx", F.lit(0)).alias("instruction"),
            perturb("context", "copy", "base_idx", F.lit(1)).alias("context"),
            perturb("response", "copy", "base_idx", F.lit(2)).alias("response"),
            "category",
            "source_file",
            "row_n",
        )
        .withColumn("line_number", F.col("row_n") + 1)
        .drop("row_n")
    )
    df.write.mode("overwrite").parquet(path)


# --- single-process baseline --------------------------------------------------------------------


def _normalise(s: str, cfg: DedupConfig) -> str:
    s = s or ""
    if cfg.lowercase:
        s = s.lower()
    if cfg.strip_punctuation:
        s = "".join(ch for ch in s if unicodedata.category(ch)[0] not in "PS")
    if cfg.collapse_whitespace:
        s = re.sub(r"\s+", " ", s).strip()
    return s


def python_minhash(real: pd.DataFrame, cfg: DedupConfig) -> tuple[float, int]:
    """Exact + MinHash LSH dedup in one Python process. Returns (seconds, records removed)."""
    t0 = time.perf_counter()
    cols = FIELDS[cfg.fields]
    texts = [
        FIELD_SEPARATOR.join(_normalise(v, cfg) for v in vals).strip()
        for vals in zip(*(real[c].tolist() for c in cols))
    ]
    ids = real["record_id"].tolist()
    first_of: dict[str, str] = {}
    survivors = []
    for rid, t in sorted(zip(ids, texts)):
        if t not in first_of:
            first_of[t] = rid
            survivors.append((rid, t))
    removed_exact = len(ids) - len(survivors)
    sh = shingle_hashes([t for _, t in survivors], cfg.shingle, cfg.ngram)
    bands, rows = bands_rows_for_recall(cfg.threshold, cfg.num_perm, cfg.lsh_recall)
    bh = band_hashes(rminhash_signatures(sh, cfg.num_perm, cfg.seed), bands, rows)
    fields = [[_normalise(real[c].iloc[int(rid[1:])], cfg) for c in cols] for rid, _ in survivors]
    buckets = defaultdict(list)
    for i in range(len(survivors)):
        for band in range(bands):
            buckets[(band, int(bh[i, band]))].append(i)
        if cfg.short_field_words:  # the short-record keys, as in the pipeline
            args = (cfg.short_field_words, cfg.min_edits, cfg.max_edit_rate, cfg.exact_below_tokens)
            for key in record_keys(fields[i], *args):
                buckets[(-1, key)].append(i)
    cands = set()
    for members in buckets.values():
        members = members[: cfg.max_bucket_size]
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                cands.add((members[x], members[y]))
    parent = list(range(len(survivors)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in cands:
        if near_duplicate(fields[i], fields[j], cfg.min_edits, cfg.max_edit_rate, cfg.exact_below_tokens):
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    removed_near = sum(find(i) != i for i in range(len(survivors)))
    return time.perf_counter() - t0, removed_exact + removed_near


def cpu_seconds() -> float:
    """CPU time of this process (the embedded Sail server runs in it) and its UDF workers."""
    try:
        import psutil
    except ImportError:
        return float("nan")
    me = psutil.Process()
    total = sum(me.cpu_times()[:4])  # user, system, reaped children's user and system
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def time_spark(spark, path: str, cfg: DedupConfig, out: str) -> tuple[float, dict]:
    df = spark.read.parquet(path)
    t0, c0 = time.perf_counter(), cpu_seconds()
    result = deduplicate(df, cfg)
    result.kept.write.mode("overwrite").parquet(out + "/kept")
    result.duplicates.write.mode("overwrite").parquet(out + "/duplicates")
    seconds = time.perf_counter() - t0
    n_dup = spark.read.parquet(out + "/duplicates").count()
    stats = {**result.stats, "removed": n_dup, "cpu_seconds": cpu_seconds() - c0}
    result.cleanup()
    return seconds, stats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--sizes", type=int, nargs="+", default=[15_000, 150_000, 1_500_000])
    p.add_argument("--work", default=None, help="scratch dir for synthetic data (deleted at the end)")
    args = p.parse_args(argv)

    from dolly_spark.ops.session import get_spark

    spark = get_spark("dedup_scaling")
    work = Path(args.work or tempfile.mkdtemp(prefix="dedup_scaling_"))
    cfg = replace(DedupConfig(), work_dir=str(work / "dedup"))
    real = load_real(Path(args.data))
    print(f"config: {cfg}", flush=True)

    c0 = time.process_time()
    base_s, base_removed = python_minhash(real, cfg)
    base_cpu = time.process_time() - c0
    print(
        f"baseline single-process Python MinHash, {len(real)} real rows: {base_s:.1f}s "
        f"({len(real) / base_s:,.0f} rows/s, cpu {base_cpu:.1f}s), removed {base_removed}",
        flush=True,
    )
    real_path = str(work / "real")
    spark.createDataFrame(real, SILVER_SCHEMA).write.mode("overwrite").parquet(real_path)
    warm_path = str(work / "warmup")  # untimed: starts the UDF workers
    spark.createDataFrame(real.head(2000), SILVER_SCHEMA).write.mode("overwrite").parquet(warm_path)
    time_spark(spark, warm_path, cfg, str(work / "out_warmup"))
    real_s, real_stats = time_spark(spark, real_path, cfg, str(work / "out_real"))
    print(
        f"spark deduplicate, {len(real)} real rows: {real_s:.1f}s ({len(real) / real_s:,.0f} rows/s, "
        f"cpu {real_stats['cpu_seconds']:.1f}s), "
        f"removed {real_stats['removed']}; spark / python = {real_s / base_s:.2f}x",
        flush=True,
    )

    results = []
    for n in args.sizes:
        data = str(work / f"synthetic_{n}")
        t0 = time.perf_counter()
        make_synthetic(spark, real, n, data)
        gen_s = time.perf_counter() - t0
        seconds, stats = time_spark(spark, data, cfg, str(work / f"out_{n}"))
        results.append((n, seconds, stats["cpu_seconds"]))
        stages = stats.get("stage_seconds", {})
        print(
            f"size {n:>9,}: {seconds:8.1f}s  {n / seconds:>9,.0f} rows/s  cpu {stats['cpu_seconds']:.1f}s  "
            f"removed {stats['removed']:,}  "
            f"candidates {stats['candidate_pairs']:,}  capped buckets {stats['capped_buckets']}  "
            f"(generation {gen_s:.1f}s)",
            flush=True,
        )
        print(f"    stage seconds: {stages}", flush=True)
        shutil.rmtree(data, ignore_errors=True)
    print(f"{'step':<24}{'wall ratio':>12}{'cpu ratio':>12}   target: <= 12x per 10x rows")
    ok = True
    for (n1, s1, c1), (n2, s2, c2) in zip(results, results[1:]):
        per10 = np.log(10) / np.log(n2 / n1)  # normalise a step that is not exactly 10x
        wall, cpu = (s2 / s1) ** per10, (c2 / c1) ** per10
        ok &= wall <= 12
        print(f"{n1:,} -> {n2:,}".ljust(24) + f"{wall:>11.2f}x{cpu:>11.2f}x")
    shutil.rmtree(work, ignore_errors=True)
    print("scaling target (wall):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
