"""Duplicate clusters sampled for a human to judge (docs/dedup.md's samples come from here)."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from dolly_spark.prep.dedup import DedupResult


def sample_clusters(
    result: DedupResult, silver: DataFrame, n: int = 10, seed: int = 0, method: str | None = None
) -> list[dict]:
    """``n`` duplicate groups picked by a seeded hash of the kept id, for a human to judge:
    each ``{"kept": {record_id, instruction, context}, "removed": [{..., method, jaccard}]}``.
    ``method`` ("exact" or "minhash") picks only groups with a removal by that method."""
    dups = result.duplicates if method is None else result.duplicates.where(F.col("method") == method)
    picked = dups.select("kept_record_id").distinct().orderBy(F.xxhash64(F.lit(seed), F.col("kept_record_id"))).limit(n)
    text = silver.select("record_id", "instruction", "context")
    kept = {
        r["record_id"]: r.asDict()
        for r in text.join(picked.withColumnRenamed("kept_record_id", "record_id"), "record_id").collect()
    }
    removed = (
        result.duplicates.join(picked, "kept_record_id")
        .join(text, "record_id")
        .orderBy("kept_record_id", "record_id")
        .collect()
    )
    groups = {k: {"kept": v, "removed": []} for k, v in sorted(kept.items())}
    for r in removed:
        groups[r["kept_record_id"]]["removed"].append(
            {k: r[k] for k in ("record_id", "instruction", "context", "method", "jaccard")}
        )
    return list(groups.values())
