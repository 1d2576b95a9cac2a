"""Training staging: gold at one Delta version -> Parquet shards every rank (and node) can read.

The engine writes the shards straight to the staging location (no copy of the table on the
driver); the manifest, written last, lists the files and their row counts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from dolly_spark.ops import tables
from dolly_spark.train.data import TRAIN_COLUMNS

log = logging.getLogger(__name__)

ROWS_PER_SHARD = 4096
SPLITS = ("train", "eval")


@dataclass
class StagedGold:
    directory: str
    gold_version: int
    silver_version: int | None
    train_files: list[str]
    eval_files: list[str]
    train_records: int
    eval_records: int
    file_rows: dict[str, int] = field(default_factory=dict)  # shard path -> rows (older manifests: empty)


def repeat_weighted(df):
    """Train rows of a source with weight k staged k times (gold keeps each record once, so the
    accounting is untouched); eval rows once. Copy j of a pack gets pack_id + j * (max + 1): a
    copy holds a subset of its pack's records, so it still fits the pack budget."""
    from pyspark.sql import functions as F

    if "weight" not in df.columns:
        return df
    weight = F.when(F.col("split") == F.lit("train"), F.coalesce(F.col("weight"), F.lit(1))).otherwise(F.lit(1))
    most, top_pack = df.agg(F.max(weight), F.max(F.coalesce(F.col("pack_id"), F.lit(0)))).first()
    if not most or int(most) <= 1:
        return df.drop("weight")
    stride = int(top_pack or 0) + 1
    copies = df.withColumn("_copy", F.explode(F.sequence(F.lit(0), (weight - 1).cast("int"))))
    return copies.withColumn("pack_id", F.col("pack_id") + F.col("_copy") * F.lit(stride)).drop("_copy", "weight")


def shard_frame(df, split: str, shards: int):
    """One split's rows in ``shards`` partitions; a pack stays in one shard, sorted by (pack_id, record_id)."""
    from pyspark.sql import functions as F

    part = df.where(F.col("split") == F.lit(split))
    return part.repartition(max(1, int(shards)), "pack_id").sortWithinPartitions("pack_id", "record_id")


def _split_counts(df) -> tuple[dict[str, int], int | None]:
    """Rows per split value and the largest silver_version, in one small aggregate job."""
    from pyspark.sql import functions as F

    has_silver = "silver_version" in df.columns
    aggs = [F.count(F.lit(1)).alias("n")]
    aggs.append(F.max("silver_version").alias("sv") if has_silver else F.lit(None).cast("long").alias("sv"))
    rows = df.groupBy("split").agg(*aggs).collect()
    counts = {r["split"]: int(r["n"]) for r in rows}
    versions = [int(r["sv"]) for r in rows if r["sv"] is not None]
    return counts, (max(versions) if versions else None)


def _parquet_rows(path: str) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def _reuse(manifest: Path, version: int) -> StagedGold | None:
    if not manifest.is_file():
        return None
    staged = StagedGold(**json.loads(manifest.read_text()))
    if all(Path(f).is_file() for f in staged.train_files + staged.eval_files):
        log.info("reusing staged gold v%d at %s", version, manifest.parent)
        return staged
    return None


def stage_gold(
    spark, ref: tables.TableRef, version: int, staging_root: Path, rows_per_shard: int = ROWS_PER_SHARD
) -> StagedGold:
    """Gold at ``version`` -> ``STAGING/gold_v<version>/{train,eval}/part-*.parquet``.

    Reused as is when its manifest exists, so a resumed run sees byte-identical data.
    """
    out = Path(staging_root) / f"gold_v{int(version)}"
    manifest = out / "manifest.json"
    staged = _reuse(manifest, version)
    if staged is not None:
        return staged
    if out.exists():
        shutil.rmtree(out)  # a partial staging without manifest
    df = tables.read_table(spark, ref, version)
    cols = list(TRAIN_COLUMNS) + [c for c in ("silver_version", "weight") if c in df.columns]
    df = repeat_weighted(df.select(*cols))
    counts, silver_version = _split_counts(df)
    unknown = sum(n for s, n in counts.items() if s not in SPLITS)
    if unknown:
        raise ValueError(f"gold has {unknown} rows whose split is neither 'train' nor 'eval'")
    if not counts.get("train"):
        raise ValueError(f"gold {ref.name} v{version} has no train rows")
    files: dict[str, list[str]] = {}
    file_rows: dict[str, int] = {}
    for split in SPLITS:
        n = counts.get(split, 0)
        written = []
        if n:
            shards = -(-n // int(rows_per_shard))
            written = tables.write_parquet(shard_frame(df, split, shards), str(out / split))
        # Engines may write empty files for empty partitions; ranks need only the ones with rows.
        rows = {f: _parquet_rows(f) for f in written}
        files[split] = [f for f in written if rows[f]]
        file_rows.update({f: rows[f] for f in files[split]})
        if sum(rows.values()) != n:
            raise RuntimeError(f"staged {sum(rows.values())} {split} rows of gold v{version}, expected {n}")
    staged = StagedGold(
        str(out),
        int(version),
        silver_version,
        files["train"],
        files["eval"],
        counts.get("train", 0),
        counts.get("eval", 0),
        file_rows,
    )
    manifest.write_text(json.dumps(dataclasses.asdict(staged), indent=2))  # last: marks staging complete
    return staged
